"""Named environments: pins from the matrix, built once into a layered venv, reused, and run in."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.environments import (
    Environment,
    EnvironmentBuildError,
    ensure_environment,
    environments_of,
    find_environment,
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
