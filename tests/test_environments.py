"""Named environments: pins from the matrix, built once into a layered venv, reused, and run in."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from harness import environments
from harness.cli import main
from harness.environments import (
    Environment,
    EnvironmentBuildError,
    ImportFailure,
    Installed,
    cache_key,
    checkout_root,
    conflict_sentence,
    ensure_environment,
    environments_of,
    find_environment,
    import_sentence,
    requirement,
    without_env_option,
)
from harness.errors import HarnessError, MatrixError
from harness.records import read_records
from harness.spec import load_matrix
from tests.releases import MATRIX, use_local_index


def _python_says(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_matrix_declares_environments_in_order(write_matrix) -> None:
    matrix = load_matrix(write_matrix(MATRIX))
    environments = environments_of(matrix)
    assert list(environments) == ["current", "tiny-old", "tiny-new", "tiny-missing"]
    assert environments["current"].is_current
    assert environments["tiny-old"].requirements() == ["tinyopt==1.0"]


def test_an_environment_written_empty_is_the_current_one(write_matrix) -> None:
    matrix = load_matrix(write_matrix("optimizers: [torch.optim.AdamW]\nenvironments:\n  now:\n"))
    assert environments_of(matrix)["now"].is_current


def test_a_version_written_as_a_number_is_refused_with_its_line(write_matrix) -> None:
    path = write_matrix("optimizers: [torch.optim.AdamW]\nenvironments:\n  old: {torch: 2.13}\n")
    with pytest.raises(MatrixError, match=r":3: `environments.old.torch` must be a string"):
        load_matrix(path)


def test_an_unknown_environment_names_the_close_one(write_matrix) -> None:
    matrix = load_matrix(write_matrix(MATRIX))
    with pytest.raises(HarnessError, match=r"no environment 'tiny-nwe'\. Did you mean 'tiny-new'\?"):
        find_environment(matrix, "tiny-nwe")


def test_requirements_keep_a_written_specifier() -> None:
    assert requirement("timm", "1.0.15") == "timm==1.0.15"
    assert requirement("timm", ">=1.0,<1.1") == "timm>=1.0,<1.1"


def test_the_env_option_is_dropped_from_the_command_it_reruns() -> None:
    argv = ["run", "m.yaml", "--env", "a", "-n", "0", "--env=b", "--", "--env", "kept"]
    assert without_env_option(argv) == ["run", "m.yaml", "-n", "0", "--", "--env", "kept"]


def test_pins_already_installed_need_no_build(tmp_path: Path) -> None:
    import torch

    version = torch.__version__.split("+")[0]
    built = ensure_environment(Environment("same", {"torch": version}), root=tmp_path)
    assert built.path is None and built.reused
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_an_environment_is_built_once_layered_and_reused(monkeypatch, tmp_path: Path) -> None:
    use_local_index(monkeypatch, tmp_path)
    environment = Environment("tiny-old", {"tinyopt": "1.2"})
    first = ensure_environment(environment, log=lambda _: None)
    assert first.path is not None and not first.reused
    assert _python_says(first.python, "import tinyopt; print(tinyopt.__version__)") == "1.2"
    # torch comes from the interpreter below: the layer holds tinyopt only
    torch_file = _python_says(first.python, "import torch; print(torch.__file__)")
    assert not torch_file.startswith(str(first.path))
    assert not list(first.path.glob("lib/python*/site-packages/torch"))

    again = ensure_environment(Environment("another-name", {"tinyopt": "1.2"}), log=lambda _: None)
    assert again.reused and again.path == first.path  # keyed by pins, not by name
    other = ensure_environment(Environment("tiny-new", {"tinyopt": "1.3"}), log=lambda _: None)
    assert other.path != first.path and not other.reused


@pytest.mark.slow
def test_a_pin_that_does_not_exist_is_one_clear_error(monkeypatch, tmp_path: Path) -> None:
    use_local_index(monkeypatch, tmp_path)
    with pytest.raises(EnvironmentBuildError) as caught:
        ensure_environment(Environment("tiny-missing", {"tinyopt": "9.9"}), log=lambda _: None)
    message = str(caught.value)
    assert "'tiny-missing'" in message and "tinyopt==9.9" in message and "\n" not in message
    assert not [p for p in (tmp_path / "envs").iterdir() if not p.name.endswith(".lock")]  # nothing half-built


@pytest.mark.slow
def test_run_env_with_a_bad_pin_exits_2_in_one_line(monkeypatch, tmp_path: Path, write_matrix, capsys) -> None:
    use_local_index(monkeypatch, tmp_path)
    code = main(["run", str(write_matrix(MATRIX)), "--env", "tiny-missing", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: environment 'tiny-missing': the pin tinyopt==9.9 cannot be installed")
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.slow
def test_two_environments_run_and_compare(monkeypatch, tmp_path: Path, write_matrix) -> None:
    use_local_index(monkeypatch, tmp_path)
    matrix = write_matrix(MATRIX)
    for name in ("tiny-old", "tiny-new"):
        code = main(["run", str(matrix), "--env", name, "-n", "0", "--out", str(tmp_path / name)])
        assert code == 0
    old = read_records(tmp_path / "tiny-old" / "results.jsonl")
    new = read_records(tmp_path / "tiny-new" / "results.jsonl")
    assert [(r.environment, r.status) for r in old] == [("tiny-old", "ok")]
    assert [(r.environment, r.status, r.reason) for r in new] == [("tiny-new", "step_error", "other")]

    out = tmp_path / "compare.html"
    assert main(["compare", str(tmp_path / "tiny-old"), str(tmp_path / "tiny-new"), "--out", str(out)]) == 0
    html = out.read_text()
    assert "tinyopt.TinyOpt-cpu-float32-plain-direct" in html
    assert (
        html.index('id="differing"') < html.index("tinyopt.TinyOpt-cpu-float32-plain-direct") < html.index('id="same"')
    )
    summary = (tmp_path / "compare.md").read_text()
    assert "| tinyopt.TinyOpt | plain | broken since tiny-new |" in summary


def test_old_records_without_an_environment_still_read(resources: Path) -> None:
    records_dir = resources / "records"
    files = sorted(records_dir.glob("*.jsonl"))
    assert files, "tests/resources/records holds results files written before environments existed"
    records = read_records(files[0])
    assert records and all(r.environment == "" for r in records)
    assert "environment" not in json.loads(files[0].read_text().splitlines()[0])


# --- isolated environments ------------------------------------------------------------------------------

ISOLATE = "or set isolated: true for a venv that does not see the base."


def test_isolated_is_read_from_the_matrix_and_keys_its_own_cache(write_matrix) -> None:
    matrix = load_matrix(
        write_matrix(
            'optimizers: [torch.optim.AdamW]\nenvironments:\n  lit: {litgpt: "0.5.13", isolated: true}\n'
            '  layered: {litgpt: "0.5.13"}\n  bare: {isolated: true}\n'
        )
    )
    found = environments_of(matrix)
    assert found["lit"] == Environment("lit", {"litgpt": "0.5.13"}, isolated=True)
    assert found["lit"].describe() == "litgpt==0.5.13, isolated"
    assert found["bare"].isolated and not found["bare"].is_current  # torch and the harness, nothing pinned
    assert cache_key(found["lit"]) != cache_key(found["layered"])
    assert cache_key(found["layered"]) == cache_key(Environment("other", {"litgpt": "0.5.13"}))


def test_isolated_must_be_true_or_false(write_matrix) -> None:
    path = write_matrix('optimizers: [torch.optim.AdamW]\nenvironments:\n  lit: {litgpt: "0.5", isolated: maybe}\n')
    with pytest.raises(
        MatrixError, match=r":3: `environments\.lit\.isolated` must be true or false, not the string 'maybe'"
    ):
        load_matrix(path)


def test_an_isolated_environment_installs_torch_the_harness_and_the_pins(monkeypatch, tmp_path: Path) -> None:
    installs: list[tuple[list[str], list[str]]] = []
    monkeypatch.setattr(
        environments, "_pip_install", lambda _e, _p, req, *, constraints: installs.append((req, constraints))
    )
    monkeypatch.setattr(environments, "check_environment", lambda _e, _p: [])
    pytest_version = metadata.version("pytest")
    # pins the current interpreter satisfies: a layered environment would be the current one; this one is built
    built = ensure_environment(
        Environment("iso", {"pytest": pytest_version}, isolated=True), root=tmp_path, log=lambda _: None
    )
    assert built.path is not None and not built.reused
    [(requirements, constraints)] = installs
    torch_version = metadata.version("torch")
    assert requirements[0] == f"pytest=={pytest_version}"
    assert f"torch{'==' if '+' in torch_version else '==='}{torch_version}" in requirements
    assert requirements[-2:] == ["-e", str(checkout_root())]
    assert constraints[0] == f"torch=={torch_version}"
    assert f"pydantic=={metadata.version('pydantic')}" in constraints  # the harness's own dependencies are held
    assert not any(c.startswith("pytest==") for c in constraints)  # a pin is not also held
    assert not list(built.path.glob("lib/python*/site-packages/*.pth"))  # nothing layers it over the base
    marker = json.loads((built.path / "harness-environment.json").read_text())
    assert marker["isolated"] is True and marker["layered_over"] is None


# --- the consistency check -----------------------------------------------------------------------------


def _fake_distribution(
    site: Path, name: str, version: str, *, requires: tuple[str, ...] = (), source: str | None = None
):
    """A distribution as pip leaves it in site-packages: metadata, and a module when `source` is given."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if source is not None:
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(source)
        (info / "top_level.txt").write_text(name + "\n")


def _fake_pip(monkeypatch, *layer: tuple[str, str, tuple[str, ...], str | None], says: list[str] | None = None) -> dict:
    """Replace pip: installing writes `layer` into the venv; `pip check` says `says` there, nothing of the base."""
    calls = {"install": 0, "check": 0}

    def install(_environment, python: Path, _requirements, *, constraints) -> None:
        calls["install"] += 1
        for name, version, requires, source in layer:
            _fake_distribution(
                environments._venv_site_packages(python.parent.parent), name, version, requires=requires, source=source
            )

    def check(python: Path) -> list[str]:
        if python == Path(sys.executable):
            return []
        calls["check"] += 1
        return list(says or [])

    monkeypatch.setattr(environments, "_pip_install", install)
    monkeypatch.setattr(environments, "_pip_check", check)
    return calls


def test_a_package_the_layer_shadows_is_one_sentence_and_exit_2(
    monkeypatch, tmp_path: Path, write_matrix, capsys
) -> None:
    monkeypatch.setenv("HARNESS_ENV_CACHE", str(tmp_path / "envs"))
    pytest_version, packaging_version = metadata.version("pytest"), metadata.version("packaging")
    calls = _fake_pip(
        monkeypatch,
        ("fakelit", "1.0", ("packaging<20",), ""),
        ("packaging", "19.0", (), None),
        says=[f"pytest {pytest_version} has requirement packaging>=22, but you have packaging 19.0."],
    )
    matrix = write_matrix('optimizers: [torch.optim.AdamW]\nenvironments:\n  lit: {fakelit: "1.0"}\n')
    sentence = (
        f"error: environment 'lit': fakelit 1.0 needs packaging<20, so this environment holds packaging 19.0 over "
        f"the base's {packaging_version}, but the base's pytest {pytest_version} needs packaging>=22; pin pytest in "
        f"this environment too, to a release that accepts packaging 19.0, {ISOLATE}"
    )
    assert main(["environments", str(matrix), "--build"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == sentence
    # `run --env` refuses the same way before any cell runs; the built venv is checked again, not rebuilt
    assert main(["run", str(matrix), "--env", "lit", "-n", "0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == sentence and "Traceback" not in err
    assert not (tmp_path / "out" / "results.jsonl").exists()
    assert calls == {"install": 1, "check": 2}


def test_a_pin_that_does_not_import_names_the_error_and_what_shadows_what(monkeypatch, tmp_path: Path) -> None:
    packaging_version = metadata.version("packaging")
    _fake_pip(
        monkeypatch,
        ("brokenpin", "1.0", ("packaging<20",), "from packaging import does_not_exist\n"),
        ("packaging", "19.0", (), None),
    )
    with pytest.raises(EnvironmentBuildError) as caught:
        ensure_environment(Environment("broken", {"brokenpin": "1.0"}), root=tmp_path, log=lambda _: None)
    message = str(caught.value)
    assert message.startswith(
        "environment 'broken': brokenpin 1.0 is installed but `import brokenpin` fails "
        "(ImportError: cannot import name 'does_not_exist' from 'packaging' ("
    )
    assert message.endswith(
        f"), where this environment's packaging 19.0 shadows the base's {packaging_version}; "
        f"pin the package it names in this environment too, {ISOLATE}"
    )
    assert "\n" not in message


def test_a_passing_check_is_remembered_until_the_packages_seen_change(monkeypatch, tmp_path: Path) -> None:
    calls = _fake_pip(monkeypatch, ("finepin", "1.0", (), "VALUE = 1\n"))
    said: list[str] = []
    environment = Environment("fine", {"finepin": "1.0"})
    first = ensure_environment(environment, root=tmp_path, log=said.append)
    assert first.path is not None and not first.reused
    assert said[-1].startswith("[env] checked fine in ") and said[-1].endswith(": pip check clean, imported finepin")
    assert ensure_environment(environment, root=tmp_path, log=said.append).reused
    assert calls == {"install": 1, "check": 1}  # reused and unchanged: not checked again
    _fake_distribution(environments._venv_site_packages(first.path), "newcomer", "2.0")
    ensure_environment(environment, root=tmp_path, log=said.append)
    assert calls == {"install": 1, "check": 2}


LAYER = {
    "litgpt": Installed("litgpt", "0.5.13", ("huggingface-hub<1.4,>=0.30", "tqdm>4.66", 'pytest; extra == "test"')),
    "huggingface-hub": Installed("huggingface_hub", "1.3.7"),
}
BASE = {"huggingface-hub": "2.4.0", "transformers": "5.24.0", "numpy": "2.4.6"}.get
LITGPT = Environment("litgpt-0.5", {"litgpt": "0.5.13"})


def _base(name: str) -> str | None:
    return BASE(environments.canonical(name))


def test_the_shadowed_dependency_of_a_base_package_names_both_sides() -> None:
    line = "transformers 5.24.0 has requirement huggingface-hub<3.0,>=1.31.0, but you have huggingface-hub 1.3.7."
    assert conflict_sentence(LITGPT, [line], LAYER, _base) == (
        "environment 'litgpt-0.5': litgpt 0.5.13 needs huggingface-hub<1.4,>=0.30, so this environment holds "
        "huggingface-hub 1.3.7 over the base's 2.4.0, but the base's transformers 5.24.0 needs "
        "huggingface-hub<3.0,>=1.31.0; pin transformers in this environment too, to a release that accepts "
        f"huggingface-hub 1.3.7, {ISOLATE}"
    )


@pytest.mark.parametrize(
    ("environment", "line", "expected"),
    [
        (  # a pinned package needs what the base has in another version
            LITGPT,
            "litgpt 0.5.13 has requirement numpy<2, but you have numpy 2.4.6.",
            f"litgpt 0.5.13 needs numpy<2 but the base has numpy 2.4.6; pin numpy in this environment too, to a "
            f"release matching numpy<2, {ISOLATE}",
        ),
        (  # isolated: both sides are in the environment, and isolating cannot be the fix
            Environment("iso", {"litgpt": "0.5.13"}, isolated=True),
            "litgpt 0.5.13 has requirement numpy<2, but you have numpy 2.4.6.",
            "litgpt 0.5.13 needs numpy<2 but this environment has numpy 2.4.6; pin numpy in this environment to a "
            "release matching numpy<2.",
        ),
        (
            LITGPT,
            "litgpt 0.5.13 requires psutil, which is not installed.",
            "litgpt 0.5.13 needs psutil, which is not installed in this environment or the base; pin psutil in "
            "this environment too.",
        ),
        (
            LITGPT,
            "litgpt 0.5.13 is not supported on this platform",
            f"`pip check` inside it says: litgpt 0.5.13 is not supported on this platform; pin the packages it names "
            f"in this environment too, {ISOLATE}",
        ),
    ],
)
def test_each_kind_of_conflict_is_one_sentence_with_its_fix(environment: Environment, line: str, expected: str) -> None:
    assert conflict_sentence(environment, [line], LAYER, _base) == f"environment {environment.name!r}: {expected}"


def test_further_conflicts_are_counted_not_listed() -> None:
    lines = ["litgpt 0.5.13 requires psutil, which is not installed."] * 3
    sentence = conflict_sentence(LITGPT, lines, LAYER, _base, python=Path("/envs/x/bin/python"))
    assert "(2 more conflicts: `pip --python /envs/x/bin/python check` lists them); pin psutil" in sentence


def test_a_torch_pin_that_does_not_import_asks_for_matching_builds() -> None:
    failure = ImportFailure(
        "torchvision", "0.28.0", "torchvision", "RuntimeError: operator torchvision::nms does not exist"
    )
    sentence = import_sentence(Environment("torch-old", {"torch": "2.13.0"}), failure, {}, _base)
    assert sentence == (
        "environment 'torch-old': torchvision 0.28.0 is installed but `import torchvision` fails (RuntimeError: "
        "operator torchvision::nms does not exist); pin versions built for one another (e.g. the torchvision "
        "released with that torch)."
    )


def _wheel(folder: Path, name: str, version: str, *, requires: tuple[str, ...] = (), source: str = "") -> None:
    """A pure-Python wheel with dependencies, written by hand (no build backend, no network)."""
    info = f"{name}-{version}.dist-info"
    contents = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": "\n".join(
            [
                "Metadata-Version: 2.1",
                f"Name: {name}",
                f"Version: {version}",
                *(f"Requires-Dist: {r}" for r in requires),
            ]
        ).encode()
        + b"\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")


@pytest.mark.slow
def test_a_real_layer_that_breaks_the_base_is_refused(monkeypatch, tmp_path: Path) -> None:
    """Real pip: a pin that wants an old `packaging` shadows the base's, which pytest and the harness need."""
    wheels = use_local_index(monkeypatch, tmp_path)
    _wheel(wheels, "tinylit", "1.0", requires=("packaging<20",))
    _wheel(wheels, "packaging", "19.0")
    with pytest.raises(EnvironmentBuildError) as caught:
        ensure_environment(Environment("tiny-conflict", {"tinylit": "1.0"}), log=lambda _: None)
    message = str(caught.value)
    assert message.startswith(
        "environment 'tiny-conflict': tinylit 1.0 needs packaging<20, so this environment holds packaging 19.0 over "
        f"the base's {metadata.version('packaging')}, but the base's "
    )
    assert message.endswith(f"to a release that accepts packaging 19.0, {ISOLATE}") and "\n" not in message
