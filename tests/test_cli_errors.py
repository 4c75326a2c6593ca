"""`python -m harness list` on malformed matrix files: exit status 2 and one sentence, never a traceback.

Each file under tests/resources/bad/ holds one mistake; its first line `# expect: ...` is the text that must
follow `error: <path>` on stderr (so `:LINE: message` checks the line too), and any `# also: ...` line is
more text the message must hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.cells import Cell

RESOURCES = Path(__file__).parent / "resources"
BAD = sorted((RESOURCES / "bad").glob("*.yaml"))
JSON = [RESOURCES / "good" / "full.yaml", RESOURCES / "good" / "anchors.yaml"]
MISSING = RESOURCES / "bad" / "no-such-matrix.yaml"
PLAIN = RESOURCES / "good" / "full.yaml"
REPO = Path(__file__).resolve().parents[1]

# The CLI runs happen once per process that holds this module; `--dist loadgroup` keeps that to one.
pytestmark = pytest.mark.xdist_group("cli_errors")


def harness_list(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "harness", "list", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Every CLI call this module checks, run at once (each is its own interpreter; several import torch)."""
    cwd = tmp_path_factory.mktemp("cwd")
    calls = [(str(path),) for path in [*BAD, MISSING, PLAIN]] + [(str(path), "--json") for path in JSON]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(calls, pool.map(lambda call: harness_list(*call, cwd=cwd), calls), strict=False))
    results[("cwd",)] = subprocess.CompletedProcess(args=[], returncode=0, stdout=str(cwd))
    return results


def expectations(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    expect = lines[0].removeprefix("# expect: ") if lines and lines[0].startswith("# expect: ") else ""
    also = [line.removeprefix("# also: ") for line in lines[1:] if line.startswith("# also: ")]
    return expect, also


def test_there_is_a_bad_file_for_every_kind_of_mistake() -> None:
    assert len(BAD) >= 15
    assert all(expectations(path)[0] for path in BAD), "every bad file starts with '# expect: ...'"


@pytest.mark.parametrize("path", BAD, ids=[path.stem for path in BAD])
def test_bad_matrix_exits_2_with_its_sentence(runs, path: Path) -> None:
    result = runs[(str(path),)]
    expect, also = expectations(path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, "one line: the error sentence"
    assert f"error: {path}{expect}" in result.stderr
    for fragment in also:
        assert fragment in result.stderr


def test_python_tag_never_runs(runs) -> None:
    cwd = Path(runs[("cwd",)].stdout)

    assert runs[(str(RESOURCES / "bad" / "python_tag.yaml"),)].returncode == 2
    assert not (cwd / "pwned.txt").exists()


def test_missing_file_exits_2_and_says_where_it_looked(runs) -> None:
    result = runs[(str(MISSING),)]

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {MISSING}: no matrix file here (looked for {MISSING.resolve()})" in result.stderr


def test_good_matrix_lists_one_id_per_line(runs) -> None:
    result = runs[(str(PLAIN),)]

    assert result.returncode == 0, result.stderr
    ids = result.stdout.splitlines()
    assert len(ids) == len(set(ids)) == 120
    assert ids[0] == "torch.optim.AdamW-cpu-float32-plain-direct"
    assert [cell["id"] for cell in json.loads(runs[(str(PLAIN), "--json")].stdout)] == ids


@pytest.mark.parametrize("path", JSON, ids=[path.stem for path in JSON])
def test_list_json_gives_every_cell_with_its_axes(runs, path: Path) -> None:
    result = runs[(str(path), "--json")]

    assert result.returncode == 0, result.stderr
    cells = json.loads(result.stdout)
    assert cells and len({cell["id"] for cell in cells}) == len(cells)
    for data in cells:
        assert (
            {"id", "optimizer", "device", "dtype", "kwargs", "variant", "builder"}
            <= set(data)
            <= {"id", "optimizer", "device", "dtype", "kwargs", "variant", "builder", "scenario", "extra"}
        )
        assert isinstance(data["kwargs"], dict)
        assert Cell.from_dict(data).id == data["id"]


def test_list_json_carries_defaults_variants_and_include_extras(runs) -> None:
    cells = json.loads(runs[(str(RESOURCES / "good" / "full.yaml"), "--json")].stdout)
    by_id = {cell["id"]: cell for cell in cells}

    sgd = by_id["torch.optim.SGD-cuda-bfloat16-foreach+lr.2-safe"]
    assert sgd["kwargs"] == {"lr": 0.2, "momentum": 0.9, "foreach": True}
    assert sgd["extra"] == {"note": "classic"}
    assert "extra" not in by_id["torch.optim.AdamW-cuda-float32-fused-direct"]
    assert not any(cell["device"] == "cpu" and cell["variant"] == "fused" for cell in cells)  # the exclude
    assert len(cells) == 3 * 2 * 2 * 3 * 4 - 3 * 2 * 4
