"""harness.spec: loading matrix files safely, their defaults, their lines and their error sentences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.checks import check_device
from harness.errors import MatrixError
from harness.settings import Settings
from harness.spec import OptimizerEntry, load_matrix, matrix_from_data
from harness.vocabulary import DTYPES


def test_minimal_file_takes_every_default(resources: Path) -> None:
    matrix = load_matrix(resources / "good" / "minimal.yaml")

    assert matrix.optimizers == (OptimizerEntry("torch.optim.AdamW", {}, 2),)
    assert matrix.devices == ("cpu",)
    assert matrix.dtypes == ("float32",)
    assert matrix.kwargs == {"plain": {}}
    assert matrix.builders == ("direct",)
    assert matrix.exclude == () and matrix.include == ()
    assert matrix.settings == Settings()


def test_full_file_keeps_every_key_in_order(resources: Path) -> None:
    path = resources / "good" / "full.yaml"
    matrix = load_matrix(path)

    assert matrix.path == path
    assert [(e.name, e.defaults, e.line) for e in matrix.optimizers] == [
        ("torch.optim.AdamW", {}, 3),
        ("torch.optim.SGD", {"lr": 0.05, "momentum": 0.9}, 4),
        ("grokadamw.GrokAdamW", {}, 6),
    ]
    assert matrix.devices == ("cpu", "cuda")
    assert matrix.dtypes == ("float32", "bfloat16")
    assert list(matrix.kwargs.items()) == [
        ("plain", {}),
        ("fused", {"fused": True}),
        ("foreach+lr.2", {"foreach": True, "lr": 0.2}),
    ]
    assert matrix.builders == ("direct", "signature", "safe", "my_framework.optim:build_optimizer")
    assert matrix.exclude == ({"device": "cpu", "kwargs": "fused"},)
    assert matrix.include == ({"optimizer": "torch.optim.SGD", "note": "classic"},)
    assert (matrix.settings.train.steps, matrix.settings.train.seed) == (10, 3)
    assert matrix.settings.train.batch_size == Settings().train.batch_size  # untouched keys keep defaults
    assert matrix.settings.model.d_model == 32
    assert matrix.settings.bench.enabled is False
    assert matrix.settings.bench.cells == [{"builder": "direct", "kwargs": "fused"}]


def test_line_of_finds_keys_items_and_falls_back_to_the_nearest_ancestor(resources: Path) -> None:
    matrix = load_matrix(resources / "good" / "full.yaml")

    assert matrix.line_of("optimizers") == 2
    assert matrix.line_of("optimizers", 1) == 4
    assert matrix.line_of("optimizers", 1, "defaults") == 5
    assert matrix.line_of("kwargs", "foreach+lr.2") == 12
    assert matrix.line_of("include", 0, "note") == 18
    assert matrix.line_of("train", "seed") == 21
    assert matrix.line_of("bench", "cells", 0, "builder") == 27
    assert matrix.line_of("train", "not_written") == 19
    assert matrix.line_of() == 2


def test_sections_with_every_key_commented_out_mean_the_defaults(resources: Path) -> None:
    matrix = load_matrix(resources / "good" / "empty_sections.yaml")

    assert matrix.settings.train == Settings().train
    assert matrix.exclude == () and matrix.include == ()


def test_anchors_and_merge_keys_share_defaults(resources: Path) -> None:
    matrix = load_matrix(resources / "good" / "anchors.yaml")

    sgd, rmsprop = matrix.optimizers
    assert sgd.defaults == {"lr": 0.1, "momentum": 0.9}
    assert rmsprop.defaults == {"lr": 0.1, "momentum": 0.9, "alpha": 0.95}


def test_a_python_tag_is_refused_and_never_runs(write_matrix, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = write_matrix(
        f"""
        optimizers:
          - torch.optim.AdamW
          - !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ["{marker}"]]
        """
    )

    with pytest.raises(MatrixError) as caught:
        load_matrix(path)

    assert not marker.exists()
    assert caught.value.line == 3
    assert "the tag '!!python/object/apply:pathlib.Path.touch' is not allowed" in str(caught.value)


@pytest.mark.parametrize(
    "document",
    [
        "optimizers: [!!python/name:os.system ]",
        "optimizers: [!!python/object:collections.OrderedDict {}]",
        "optimizers: [!custom thing]",
    ],
)
def test_every_non_plain_tag_is_refused(write_matrix, document: str) -> None:
    with pytest.raises(MatrixError, match=r":1: the tag '![^']+' is not allowed: a matrix file holds plain data"):
        load_matrix(write_matrix(document))


def test_a_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(MatrixError) as caught:
        load_matrix(tmp_path / "nowhere.yaml")

    assert caught.value.line is None
    assert f"no matrix file here (looked for {tmp_path / 'nowhere.yaml'})" in str(caught.value)


def test_a_directory_is_not_a_matrix_file(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="is a directory, not a matrix file"):
        load_matrix(tmp_path)


@pytest.mark.parametrize(
    ("document", "line", "fragment"),
    [
        ("optimizers: [a.B]\nbench:\n  repeats: 2\n", 3, "`bench.repeats` must be at least 3, not 2."),
        ("optimizers: [a.B]\ntrain:\n  min_rel_drop: 1.5\n", 3, "`train.min_rel_drop` must be less than 1, not 1.5."),
        ("optimizers: [a.B]\ntrain:\n  timeout_s: 0\n", 3, "`train.timeout_s` must be greater than 0, not 0."),
        (
            "optimizers: [a.B]\nbench:\n  enabled: maybe\n",
            3,
            "`bench.enabled` must be true or false, not the string 'maybe'.",
        ),
        (
            "optimizers: [a.B]\nbench:\n  tolerances:\n    float16: {atol: 0.1}\n",
            4,
            "`bench.tolerances.float16` is missing the required key 'rtol'.",
        ),
        (
            "optimizers: [a.B]\nbench:\n  cells:\n    - {devise: cpu}\n",
            4,
            "`bench.cells[0]`: unknown axis 'devise': did you mean 'device'? Available: optimizer, device,",
        ),
        (
            "optimizers:\n  - name: a.B\n    defaults: [lr]\n",
            3,
            "`optimizers[0].defaults` must be a mapping, not a list.",
        ),
        ("optimizers:\n  - defaults: {lr: 1}\n", 2, "`optimizers[0]` is missing the required key 'name'."),
        ("optimizers: [a.B]\ndevices: [CUDA]\n", 2, "device types are lower case: write 'cuda', not 'CUDA'."),
        ("optimizers: [torch optim]\n", 1, "'torch optim' is not a name: write it without spaces"),
        (
            "optimizers: [a.B]\nbench:\n  devices:\n    cuda:\n      d_model: 2\n",
            5,
            "`bench.devices.cuda.d_model` must be at least 4, not 2.",
        ),
        (
            "optimizers: [a.B]\nbench:\n  devices:\n    cuda:\n      n_layers: 2\n      dmodel: 8\n",
            6,
            "unknown key 'dmodel' in `bench.devices.cuda`: did you mean 'd_model'? Available: enabled, d_model,",
        ),
        ("optimizers: [a.B]\nkwargs: {}\n", 2, "`kwargs` is empty; give at least one."),
        ("optimizers: [a.B]\nexclude:\n  - {}\n", 3, "`exclude[0]` is empty; name at least one axis"),
        (
            "optimizers: [a.B]\ninclude:\n  - optimizer: 3\n",
            3,
            "`include[0].optimizer` must be a string naming one optimizer",
        ),
    ],
)
def test_mistakes_become_one_sentence_at_their_line(write_matrix, document: str, line: int, fragment: str) -> None:
    path = write_matrix(document)

    with pytest.raises(MatrixError) as caught:
        load_matrix(path)

    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert fragment in str(caught.value)


def test_a_misspelt_key_is_reported_before_the_missing_key_it_explains() -> None:
    expected = "unknown key 'optimisers' in the top level: did you mean 'optimizers'?"
    with pytest.raises(MatrixError, match=re.escape(expected)):
        matrix_from_data({"devices": ["cpu"], "optimisers": ["a.B"]}, path="m.yaml")


def test_include_may_carry_extra_keys_but_exclude_may_not() -> None:
    matrix = matrix_from_data({"optimizers": ["a.B"], "include": [{"device": "cpu", "color": "green"}]}, path="m.yaml")
    assert matrix.include == ({"device": "cpu", "color": "green"},)

    with pytest.raises(MatrixError, match=re.escape("`exclude[0]`: unknown axis 'color'. Available: optimizer,")):
        matrix_from_data({"optimizers": ["a.B"], "exclude": [{"device": "cpu", "color": "green"}]}, path="m.yaml")


def test_builders_are_checked_for_form_not_importability() -> None:
    matrix = matrix_from_data({"optimizers": ["a.B"], "builders": ["not_installed.anywhere:build"]}, path="m.yaml")

    assert matrix.builders == ("not_installed.anywhere:build",)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps", "xpu", "npu", "privateuseone:0"])
def test_real_and_custom_backend_devices_are_accepted(device: str) -> None:
    assert check_device(device) is None


@pytest.mark.parametrize("device", ["cdua", "cpus", "Cuda", "cuda:x", ""])
def test_misspelt_devices_are_refused(device: str) -> None:
    assert check_device(device)


def test_a_device_kind_takes_its_own_bench_settings() -> None:
    matrix = matrix_from_data(
        {"optimizers": ["a.B"], "bench": {"d_model": 64, "devices": {"cuda": {"d_model": 768, "n_layers": 12}}}},
        path="m.yaml",
    )
    bench = matrix.settings.bench

    assert (bench.for_device("cuda:1").d_model, bench.for_device("cuda:1").n_layers) == (768, 12)
    assert bench.for_device("cuda").repeats == bench.repeats  # what the device does not set stays
    assert bench.for_device("cpu") == bench


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=16), st.text(max_size=6)
)
_values = st.one_of(
    _scalars, st.lists(_scalars, max_size=2), st.dictionaries(st.text(max_size=4), _scalars, max_size=2)
)
_sections = {
    "train": ["steps", "seed", "timeout_s", "batch_size", "threads", "min_rel_drop", "stpes"],
    "model": ["vocab_size", "seq_len", "d_model", "n_layers", "n_heads"],
    "bench": ["enabled", "cells", "repeats", "warmup", "tolerances", "speedup_tolerance"],
}


@st.composite
def _matrix_data(draw: st.DrawFn) -> dict:
    data: dict = {"optimizers": draw(st.one_of(st.just(["a.B"]), _values))}
    for key in ("devices", "dtypes", "kwargs", "builders", "exclude", "include"):
        if draw(st.booleans()):
            names = st.lists(st.sampled_from(["cpu", "cuda", *DTYPES, "direct"]), max_size=3)
            data[key] = draw(st.one_of(_values, names))
    for section, keys in _sections.items():
        if draw(st.booleans()):
            data[section] = draw(st.one_of(_values, st.dictionaries(st.sampled_from(keys), _values, max_size=3)))
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_matrix_data())
def test_any_data_loads_or_fails_with_one_plain_sentence(data: dict) -> None:
    try:
        matrix = matrix_from_data(data, path="m.yaml")
    except MatrixError as exc:
        message = str(exc)
        assert message.startswith("m.yaml: ")
        assert "\n" not in message
        assert "pydantic" not in message and "validation error" not in message.lower()
        assert message.rstrip().endswith((".", "?"))
    else:
        assert matrix.optimizers and matrix.devices and matrix.dtypes and matrix.kwargs and matrix.builders
        assert set(matrix.dtypes) <= set(DTYPES)
