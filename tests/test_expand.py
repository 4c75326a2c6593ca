"""harness.expand: GitHub Actions `strategy.matrix` semantics over this project's axes, and shards."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cells import AXES, Cell
from harness.errors import HarnessError, MatrixError, UnknownOptimizerError
from harness.expand import expand_matrix, parse_shard, shard_cells
from harness.spec import Matrix, load_matrix, matrix_from_data


def identity(name: str) -> list[str]:
    return [name]


def build(**data: Any) -> Matrix:
    data.setdefault("optimizers", ["pkg.Opt"])
    return matrix_from_data(data, path="m.yaml")


def axes_and_extra(cell: Cell) -> dict[str, Any]:
    """A cell as GitHub's docs write a combination: its axis values plus the keys includes added."""
    return {**{axis: cell.axis(axis) for axis in AXES}, **cell.extra}


# --- the product -------------------------------------------------------------------------------------


def test_product_runs_in_declaration_order_and_overlays_kwargs_on_defaults() -> None:
    matrix = build(
        optimizers=["pkg.A", {"name": "pkg.B", "defaults": {"lr": 0.1, "foreach": False}}],
        devices=["cpu", "cuda"],
        dtypes=["float32"],
        kwargs={"plain": {}, "foreach": {"foreach": True}},
        builders=["direct", "safe"],
    )

    cells = expand_matrix(matrix, expand_optimizer=identity)

    assert [cell.id for cell in cells[:4]] == [
        "pkg.A-cpu-float32-plain-direct",
        "pkg.A-cpu-float32-plain-safe",
        "pkg.A-cpu-float32-foreach-direct",
        "pkg.A-cpu-float32-foreach-safe",
    ]
    assert len(cells) == 2 * 2 * 1 * 2 * 2
    by_id = {cell.id: cell for cell in cells}
    assert by_id["pkg.B-cuda-float32-plain-direct"].kwargs == {"lr": 0.1, "foreach": False}
    assert by_id["pkg.B-cuda-float32-foreach-direct"].kwargs == {"lr": 0.1, "foreach": True}
    assert by_id["pkg.A-cuda-float32-foreach-safe"].kwargs == {"foreach": True}


def test_each_entry_expands_into_concrete_names_that_keep_its_defaults() -> None:
    families = {"torch.optim:*": ["torch.optim.Adam", "torch.optim.SGD"], "AdamW": ["torch.optim.AdamW"]}
    matrix = build(optimizers=[{"name": "torch.optim:*", "defaults": {"lr": 0.01}}, "AdamW"])

    cells = expand_matrix(matrix, expand_optimizer=lambda name: families[name])

    assert [(cell.optimizer, dict(cell.kwargs)) for cell in cells] == [
        ("torch.optim.Adam", {"lr": 0.01}),
        ("torch.optim.SGD", {"lr": 0.01}),
        ("torch.optim.AdamW", {}),
    ]


def test_an_optimizer_named_alone_leaves_its_family_and_keeps_its_own_defaults() -> None:
    families = {"torch.optim:*": ["torch.optim.Adam", "torch.optim.SGD"], "torch.optim.SGD": ["torch.optim.SGD"]}
    matrix = build(
        optimizers=[
            {"name": "torch.optim:*", "defaults": {"lr": 0.01}},
            {"name": "torch.optim.SGD", "defaults": {"lr": 0.1, "momentum": 0.9}},
        ]
    )

    cells = expand_matrix(matrix, expand_optimizer=lambda name: families[name])

    assert [(cell.optimizer, dict(cell.kwargs)) for cell in cells] == [
        ("torch.optim.Adam", {"lr": 0.01}),
        ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9}),
    ]


def test_an_exclude_glob_may_aim_at_a_family_whose_package_is_missing() -> None:
    # timm not installed: `timm:*` stays itself (one skipped cell), and `timm:kron*` excludes nothing
    families = {"timm:*": ["timm:*"], "torch.optim.AdamW": ["torch.optim.AdamW"]}
    matrix = build(optimizers=["timm:*", "torch.optim.AdamW"], exclude=[{"optimizer": "timm:kron*"}])

    cells = expand_matrix(matrix, expand_optimizer=lambda name: families[name])

    assert [cell.optimizer for cell in cells] == ["timm:*", "torch.optim.AdamW"]
    with pytest.raises(MatrixError, match="unknown optimizer 'timm:kron[*]' in the matrix"):
        expand_matrix(
            build(optimizers=["torch.optim.AdamW"], exclude=[{"optimizer": "timm:kron*"}]), expand_optimizer=identity
        )


def test_kwargs_of_each_cell_are_its_own_copy() -> None:
    matrix = build(optimizers=["pkg.A", "pkg.B"], kwargs={"fused": {"fused": True}})
    cells = expand_matrix(matrix, expand_optimizer=identity)

    cells[0].kwargs["fused"] = False  # type: ignore[index]

    assert cells[1].kwargs == {"fused": True}


# --- GitHub's documented examples, rebuilt with this project's axes -----------------------------------


def test_githubs_include_example() -> None:
    # GitHub's example ("Using a matrix for your jobs", "Example: Expanding configurations"):
    #   fruit: [apple, pear], animal: [cat, dog], include: [{color: green}, {color: pink, animal: cat},
    #   {fruit: apple, shape: circle}, {fruit: banana}, {fruit: banana, animal: cat}]
    # rebuilt as fruit -> device (apple=cpu, pear=cuda, banana=mps), animal -> dtype (cat=float32,
    # dog=bfloat16), with one optimizer, one variant and one builder. In this project an include that
    # adds a NEW combination must name every axis, so the two banana entries also name optimizer,
    # kwargs and builder, and `{fruit: banana}` (no animal in GitHub) gets a dtype that is on no
    # original combination (float16).
    one = {"optimizer": "pkg.Opt", "kwargs": "plain", "builder": "direct"}
    matrix = build(
        devices=["cpu", "cuda"],
        dtypes=["float32", "bfloat16"],
        include=[
            {"color": "green"},
            {"color": "pink", "dtype": "float32"},
            {"device": "cpu", "shape": "circle"},
            {**one, "device": "mps", "dtype": "float16"},
            {**one, "device": "mps", "dtype": "float32"},
        ],
    )

    cells = expand_matrix(matrix, expand_optimizer=identity)

    # GitHub's documented result, in its order:
    assert [axes_and_extra(cell) for cell in cells] == [
        {**one, "device": "cpu", "dtype": "float32", "color": "pink", "shape": "circle"},  # apple cat
        {**one, "device": "cpu", "dtype": "bfloat16", "color": "green", "shape": "circle"},  # apple dog
        {**one, "device": "cuda", "dtype": "float32", "color": "pink"},  # pear cat
        {**one, "device": "cuda", "dtype": "bfloat16", "color": "green"},  # pear dog
        {**one, "device": "mps", "dtype": "float16"},  # banana
        {**one, "device": "mps", "dtype": "float32"},  # banana cat
    ]


def test_githubs_exclude_example() -> None:
    # GitHub's example ("Excluding matrix configurations"): os: [macos-latest, windows-latest],
    # version: [12, 14, 16], environment: [staging, production], exclude: [{os: macos-latest,
    # version: 12, environment: production}, {os: windows-latest, version: 16}] -> 12 - 1 - 2 = 9 jobs,
    # "an excluded configuration only has to be a partial match for it to be excluded".
    # Rebuilt as os -> device, version -> dtype, environment -> kwargs variant.
    matrix = build(
        devices=["cpu", "cuda"],
        dtypes=["float16", "bfloat16", "float32"],
        kwargs={"staging": {}, "production": {"fused": True}},
        exclude=[
            {"device": "cpu", "dtype": "float16", "kwargs": "production"},
            {"device": "cuda", "dtype": "float32"},
        ],
    )

    cells = expand_matrix(matrix, expand_optimizer=identity)

    assert [(cell.device, cell.dtype, cell.variant) for cell in cells] == [
        ("cpu", "float16", "staging"),
        ("cpu", "bfloat16", "staging"),
        ("cpu", "bfloat16", "production"),
        ("cpu", "float32", "staging"),
        ("cpu", "float32", "production"),
        ("cuda", "float16", "staging"),
        ("cuda", "float16", "production"),
        ("cuda", "bfloat16", "staging"),
        ("cuda", "bfloat16", "production"),
    ]


# --- include and exclude details ---------------------------------------------------------------------


def test_optimizer_values_match_a_concrete_name_the_entry_as_written_or_a_glob() -> None:
    families = {"torch.optim:*": ["torch.optim.Adam", "torch.optim.SGD"], "bnb.AdamW8bit": ["bnb.AdamW8bit"]}
    matrix = build(
        optimizers=["torch.optim:*", "bnb.AdamW8bit"],
        devices=["cpu", "cuda"],
        exclude=[{"optimizer": "torch.optim:*", "device": "cuda"}, {"optimizer": "*8bit", "device": "cpu"}],
        include=[{"optimizer": "torch.optim.SGD", "note": "momentum"}, {"optimizer": "*Adam*", "family": "adam"}],
    )

    cells = expand_matrix(matrix, expand_optimizer=lambda name: families[name])

    assert [(cell.id, dict(cell.extra)) for cell in cells] == [
        ("torch.optim.Adam-cpu-float32-plain-direct", {"family": "adam"}),
        ("torch.optim.SGD-cpu-float32-plain-direct", {"note": "momentum"}),
        ("bnb.AdamW8bit-cuda-float32-plain-direct", {"family": "adam"}),
    ]


def test_include_adds_back_a_combination_an_exclude_removed() -> None:
    full = {"optimizer": "pkg.Opt", "device": "cuda", "dtype": "float32", "kwargs": "plain", "builder": "direct"}
    matrix = build(devices=["cpu", "cuda"], exclude=[{"device": "cuda"}], include=[{**full, "why": "back"}])

    cells = expand_matrix(matrix, expand_optimizer=identity)

    assert [axes_and_extra(cell) for cell in cells] == [
        {**full, "device": "cpu"},
        {**full, "why": "back"},
    ]


def test_include_never_overwrites_an_axis_but_overwrites_extra_keys_added_before() -> None:
    matrix = build(
        devices=["cpu", "cuda"],
        include=[{"device": "cpu", "note": "first"}, {"note": "second", "tier": 1}, {"device": "cuda", "tier": 2}],
    )

    cells = expand_matrix(matrix, expand_optimizer=identity)

    assert [(cell.device, dict(cell.extra)) for cell in cells] == [
        ("cpu", {"note": "second", "tier": 1}),
        ("cuda", {"note": "second", "tier": 2}),
    ]


def test_include_that_only_repeats_axis_values_adds_nothing() -> None:
    matrix = build(devices=["cpu", "cuda"], include=[{"device": "cpu"}])

    cells = expand_matrix(matrix, expand_optimizer=identity)

    assert [cell.device for cell in cells] == ["cpu", "cuda"]
    assert all(not cell.extra for cell in cells)


def test_later_includes_extend_only_original_combinations_not_added_ones() -> None:
    new = {"optimizer": "pkg.Opt", "device": "mps", "dtype": "float32", "kwargs": "plain", "builder": "direct"}
    matrix = build(include=[new, {"device": "mps", "color": "pink"}])

    with pytest.raises(MatrixError, match="lacks optimizer, dtype, kwargs, builder"):
        expand_matrix(matrix, expand_optimizer=identity)


def test_a_new_include_uses_its_entrys_defaults_and_its_variant() -> None:
    matrix = build(
        optimizers=[{"name": "pkg.SGD", "defaults": {"lr": 0.5}}],
        kwargs={"plain": {}, "nesterov": {"nesterov": True}},
        include=[
            {"optimizer": "pkg.SGD", "device": "cuda", "dtype": "float16", "kwargs": "nesterov", "builder": "safe"}
        ],
    )

    new = expand_matrix(matrix, expand_optimizer=identity)[-1]

    assert new.id == "pkg.SGD-cuda-float16-nesterov-safe"
    assert new.kwargs == {"lr": 0.5, "nesterov": True}


def test_a_new_include_may_name_an_optimizer_the_axis_lacks_and_it_is_expanded() -> None:
    matrix = build(
        include=[{"optimizer": "AdamW", "device": "cpu", "dtype": "float32", "kwargs": "plain", "builder": "direct"}]
    )
    names = {"pkg.Opt": ["pkg.Opt"], "AdamW": ["torch.optim.AdamW"]}

    cells = expand_matrix(matrix, expand_optimizer=lambda name: names[name])

    assert [cell.optimizer for cell in cells] == ["pkg.Opt", "torch.optim.AdamW"]


# --- errors ------------------------------------------------------------------------------------------


def load_text(write_matrix, text: str) -> Matrix:
    return load_matrix(write_matrix(text))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            """
            optimizers: [pkg.A]
            devices: [cpu, cuda]
            exclude:
              - device: cdua
            """,
            4,
            "`exclude[0].device`: unknown device 'cdua' in `devices`: did you mean 'cuda'? Available: cpu, cuda.",
        ),
        (
            """
            optimizers: [pkg.A]
            dtypes: [float32, bfloat16]
            exclude:
              - dtype: bfloat16
                builder: singature
            """,
            5,
            "`exclude[0].builder`: unknown builder 'singature' in `builders`. Available: direct.",
        ),
        (
            """
            optimizers: [pkg.Adam, pkg.SGD]
            exclude:
              - optimizer: pkg.Adma
            """,
            3,
            "`exclude[0].optimizer`: unknown optimizer 'pkg.Adma' in the matrix: did you mean 'pkg.Adam'? "
            "Available: pkg.Adam, pkg.SGD (a concrete optimizer,",
        ),
        (
            """
            optimizers: [pkg.A]
            include:
              - kwargs: fsued
                note: x
            """,
            3,
            "`include[0].kwargs`: unknown variant 'fsued' in `kwargs`. Available: plain.",
        ),
        (
            """
            optimizers: [pkg.A]
            include:
              - {optimizer: pkg.A, device: cpu, dtype: flaot64, kwargs: plain, builder: direct}
            """,
            3,
            "`include[0].dtype`: unknown dtype 'flaot64': did you mean 'float64'?",
        ),
        (
            """
            optimizers: [pkg.A]
            include:
              - {optimizer: pkg.A, device: cdua, dtype: float32, kwargs: plain, builder: direct}
            """,
            3,
            "`include[0].device`: unknown device type 'cdua': did you mean 'cuda'?",
        ),
        (
            """
            optimizers: [pkg.A]
            include:
              - {optimizer: pkg.A, device: cpu, dtype: float32, kwargs: plain, builder: "pkg:"}
            """,
            3,
            "`include[0].builder`: unknown builder 'pkg:'.",
        ),
        (
            """
            optimizers: [pkg.A]
            devices: [cpu]

            include:
              - device: cuda
                note: fast
            """,
            5,
            "`include[0]` matches no combination, so it adds a new one, and a new combination must name every axis; "
            "it lacks optimizer, dtype, kwargs, builder. Its device: unknown device 'cuda' in `devices`. Available: cpu.",
        ),
    ],
)
def test_include_and_exclude_mistakes_name_their_line_and_a_close_match(
    write_matrix, text: str, line: int, fragment: str
) -> None:
    matrix = load_text(write_matrix, text)

    with pytest.raises(MatrixError) as caught:
        expand_matrix(matrix, expand_optimizer=identity)

    assert caught.value.line == line
    assert str(caught.value).startswith(f"{matrix.path}:{line}: ")
    assert fragment in str(caught.value)


def test_two_combinations_with_one_id_name_both_lines(write_matrix) -> None:
    matrix = load_text(
        write_matrix,
        """
        optimizers:
          - torch.optim.AdamW
          - AdamW
        """,
    )
    names = {"torch.optim.AdamW": ["torch.optim.AdamW"], "AdamW": ["torch.optim.AdamW"]}

    with pytest.raises(MatrixError) as caught:
        expand_matrix(matrix, expand_optimizer=lambda name: names[name])

    assert caught.value.line == 3
    assert "the cell 'torch.optim.AdamW-cpu-float32-plain-direct' comes from line 2 and again from line 3" in str(
        caught.value
    )


def test_an_unknown_optimizer_becomes_a_matrix_error_at_its_entry(write_matrix) -> None:
    matrix = load_text(write_matrix, "optimizers:\n  - pkg.A\n  - pkg.Nope\n")

    def expand(name: str) -> list[str]:
        if name == "pkg.Nope":
            raise UnknownOptimizerError("unknown optimizer 'pkg.Nope': did you mean 'pkg.Nop'?")
        return [name]

    with pytest.raises(MatrixError) as caught:
        expand_matrix(matrix, expand_optimizer=expand)

    assert caught.value.line == 3
    assert "unknown optimizer 'pkg.Nope': did you mean 'pkg.Nop'?" in str(caught.value)
    assert isinstance(caught.value.__cause__, UnknownOptimizerError)


def test_an_entry_that_expands_to_nothing_is_an_error() -> None:
    with pytest.raises(MatrixError, match="the optimizer 'pkg:\\*Zz' expands to no optimizer at all"):
        expand_matrix(build(optimizers=["pkg:*Zz"]), expand_optimizer=lambda name: [])


def test_default_expander_falls_back_to_identity_without_harness_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "harness.resolve", None)  # makes `import harness.resolve` fail

    cells = expand_matrix(build(optimizers=["AdamW"]))

    assert [cell.optimizer for cell in cells] == ["AdamW"]


def test_default_expander_is_harness_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("harness.resolve")
    fake.expand_optimizer = lambda name: [f"torch.optim.{name}"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "harness.resolve", fake)

    cells = expand_matrix(build(optimizers=["AdamW"]))

    assert [cell.optimizer for cell in cells] == ["torch.optim.AdamW"]


# --- shards ------------------------------------------------------------------------------------------


def test_parse_shard_reads_index_and_count() -> None:
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 1 / 1 ") == (1, 1)


@pytest.mark.parametrize("text", ["", "2", "2/", "/4", "0/4", "5/4", "1/0", "a/b", "-1/4", "2/4/8"])
def test_parse_shard_refuses_anything_else_with_a_sentence(text: str) -> None:
    with pytest.raises(HarnessError, match=r"--shard"):
        parse_shard(text)


@pytest.mark.parametrize(("index", "count"), [(0, 3), (4, 3), (1, 0)])
def test_shard_cells_refuses_a_shard_that_does_not_exist(index: int, count: int) -> None:
    with pytest.raises(HarnessError, match="does not exist"):
        shard_cells([], index, count)


def test_a_cell_keeps_its_shard_whatever_else_is_in_the_matrix() -> None:
    devices = ["cpu", "cuda"]
    small = expand_matrix(build(optimizers=["pkg.A"], devices=devices), expand_optimizer=identity)
    large = expand_matrix(build(optimizers=["pkg.A", "pkg.B", "pkg.C"], devices=devices), expand_optimizer=identity)

    for index in (1, 2, 3):
        small_ids = {cell.id for cell in shard_cells(small, index, 3)}
        large_ids = {cell.id for cell in shard_cells(large, index, 3)}
        assert small_ids <= large_ids


def test_shards_are_the_same_in_every_process() -> None:
    # Machines of a CI job matrix each pick their own shard, so the choice may not depend on the
    # interpreter's per-process string hash.
    ids = [f"pkg.Opt{i}-cpu-float32-plain-direct" for i in range(40)]
    cells = [Cell(*cell_id.split("-")[:4], builder="direct") for cell_id in ids]
    here = [[cell.id for cell in shard_cells(cells, index, 3)] for index in (1, 2, 3)]
    script = (
        "import json, sys; from harness.cells import Cell; from harness.expand import shard_cells; "
        "cells = [Cell(*i.split('-')[:4], builder='direct') for i in json.loads(sys.argv[1])]; "
        "print(json.dumps([[c.id for c in shard_cells(cells, k, 3)] for k in (1, 2, 3)]))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, json.dumps(ids)], capture_output=True, text=True, env=env)
        assert json.loads(out.stdout) == here, out.stderr
    assert all(here)


# --- properties --------------------------------------------------------------------------------------

_OPTIMIZERS = ["pkg.A", "pkg.B", "other.C", "other.D"]
_DEVICES = ["cpu", "cuda", "mps"]
_DTYPES = ["float32", "bfloat16", "float16"]
_VARIANTS = ["plain", "fused", "foreach", "lr.1"]
_BUILDERS = ["direct", "signature", "safe", "fw.optim:build"]


@st.composite
def matrices(draw: st.DrawFn) -> dict[str, Any]:
    """Matrix data whose includes and excludes name only valid values (some off the drawn axes)."""
    axes = {
        "optimizer": draw(st.lists(st.sampled_from(_OPTIMIZERS), min_size=1, max_size=3, unique=True)),
        "device": draw(st.lists(st.sampled_from(_DEVICES[:2]), min_size=1, max_size=2, unique=True)),
        "dtype": draw(st.lists(st.sampled_from(_DTYPES[:2]), min_size=1, max_size=2, unique=True)),
        "kwargs": draw(st.lists(st.sampled_from(_VARIANTS), min_size=1, max_size=3, unique=True)),
        "builder": draw(st.lists(st.sampled_from(_BUILDERS), min_size=1, max_size=2, unique=True)),
    }

    def partial(values: dict[str, list[str]]) -> st.SearchStrategy[dict[str, str]]:
        return st.fixed_dictionaries({}, optional={axis: st.sampled_from(choices) for axis, choices in values.items()})

    exclude = draw(st.lists(partial(axes).filter(bool), max_size=3))
    extending = st.builds(lambda rule, note: {**rule, "note": note}, partial(axes), st.integers(0, 3))
    wider = {**axes, "device": _DEVICES, "dtype": _DTYPES}  # a new combination may use values off the axes
    adding = st.fixed_dictionaries({axis: st.sampled_from(choices) for axis, choices in wider.items()})
    include = draw(
        st.lists(st.one_of(extending, adding), max_size=4, unique_by=lambda rule: tuple(rule.get(a) for a in AXES))
    )
    return {
        "optimizers": axes["optimizer"],
        "devices": axes["device"],
        "dtypes": axes["dtype"],
        "kwargs": {name: {"tag": name} for name in axes["kwargs"]},
        "builders": axes["builder"],
        "exclude": exclude,
        "include": include,
    }


_PLURALS = ("optimizers", "devices", "dtypes", "kwargs", "builders")


def _matches(rule: dict[str, Any], combination: dict[str, str]) -> bool:
    return all(rule[axis] == combination[axis] for axis in AXES if axis in rule)


def _expected(data: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]], bool]:
    """The product, the combinations left after excludes, and whether some include needs every axis but lacks one."""
    product = [dict(zip(AXES, values, strict=False)) for values in itertools.product(*(data[key] for key in _PLURALS))]
    kept = [c for c in product if not any(_matches(rule, c) for rule in data["exclude"])]
    incomplete = any(
        not any(_matches(rule, c) for c in kept) and not set(AXES) <= set(rule) for rule in data["include"]
    )
    return product, kept, incomplete


def _to_matrix(data: dict[str, Any]) -> Matrix:
    return matrix_from_data(data, path=Path("m.yaml"))


@settings(max_examples=120, deadline=None)
@given(matrices())
def test_ids_are_unique_and_the_same_on_every_expansion(data: dict[str, Any]) -> None:
    _, _, incomplete = _expected(data)
    matrix = _to_matrix(data)
    if incomplete:
        with pytest.raises(MatrixError, match="must name every axis"):
            expand_matrix(matrix, expand_optimizer=identity)
        return

    first = [cell.id for cell in expand_matrix(matrix, expand_optimizer=identity)]
    again = [cell.id for cell in expand_matrix(_to_matrix(data), expand_optimizer=identity)]

    assert len(set(first)) == len(first)
    assert first == again


@settings(max_examples=120, deadline=None)
@given(matrices())
def test_count_is_product_less_excluded_plus_new_includes(data: dict[str, Any]) -> None:
    product, kept, incomplete = _expected(data)
    if incomplete:
        return
    new = [rule for rule in data["include"] if not any(_matches(rule, c) for c in kept)]

    cells = expand_matrix(_to_matrix(data), expand_optimizer=identity)

    assert len(cells) == len(product) - (len(product) - len(kept)) + len(new)


@settings(max_examples=120, deadline=None)
@given(matrices())
def test_exclude_removes_only_what_it_matches_and_include_never_changes_an_axis(data: dict[str, Any]) -> None:
    _, kept, incomplete = _expected(data)
    if incomplete:
        return

    cells = expand_matrix(_to_matrix(data), expand_optimizer=identity)

    originals = [{axis: cell.axis(axis) for axis in AXES} for cell in cells[: len(kept)]]
    assert originals == kept  # every combination no exclude matches survives, in order, axes untouched
    for cell, combination in zip(cells, kept, strict=False):
        notes = [rule["note"] for rule in data["include"] if "note" in rule and _matches(rule, combination)]
        assert cell.extra.get("note") == (notes[-1] if notes else None)  # the last matching include wins
        assert cell.kwargs == {"tag": cell.variant}


@settings(max_examples=80, deadline=None)
@given(matrices(), st.integers(1, 6))
def test_shards_partition_the_cells(data: dict[str, Any], count: int) -> None:
    if _expected(data)[2]:
        return
    cells = expand_matrix(_to_matrix(data), expand_optimizer=identity)

    shards = [shard_cells(cells, index, count) for index in range(1, count + 1)]

    ids = [cell.id for shard in shards for cell in shard]
    assert sorted(ids) == sorted(cell.id for cell in cells)
    assert len(ids) == len(set(ids))
    for shard in shards:
        assert shard == [cell for cell in cells if cell in shard]  # each shard keeps the matrix order
