"""harness.plugin, in-process with `pytester`: a matrix file named on the command line is a test file.

Collection, `-k`, the verdict as the pytest outcome (a known incompatibility is an xfail, a regression a
failure), `--matrix-resume`, `--matrix-shard`, and that the plugin stays out of a session that names no
matrix file. Cells still run in the plugin's runner process; only pytest itself runs in this process.
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from harness.baseline import BaselineEntry, baseline_path, environment_key, write_baseline_file
from harness.cells import Record
from harness.exclusive import LOCK_DIR_ENV
from harness.expand import expand_matrix, shard_cells
from harness.isolate import CellRunner
from harness.measurements import Environment
from harness.plugin import strip_control
from harness.records import read_records, results_path
from harness.spec import load_matrix

ROOT = Path(__file__).resolve().parents[1]
MATRICES = Path(__file__).parent / "resources" / "matrices"
SMALL_IDS = [cell.id for cell in expand_matrix(load_matrix(MATRICES / "small.yaml"))]
GROK_FUSED = "grokadamw.GrokAdamW-cpu-float32-fused-direct"


@pytest.fixture
def matrix(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """small.yaml copied into pytester's folder; the runner process can import `harness` and `tests.faults`."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(LOCK_DIR_ENV, str(pytester.path / "locks"))  # the plugin must not set it for later tests
    return Path(shutil.copy(MATRICES / "small.yaml", pytester.path / "matrix.yaml"))


@pytest.fixture
def no_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Collection alone runs no cell: skip the runner's eager start (it imports torch) to save seconds."""
    monkeypatch.setattr(CellRunner, "start", lambda self: None)


def run(pytester: pytest.Pytester, matrix: Path, *args: str) -> pytest.RunResult:
    out = pytester.path / "out"
    return pytester.runpytest(str(matrix), f"--matrix-out={out}", f"--matrix-baselines={out}", *args)


def collected(result: pytest.RunResult) -> list[str]:
    """The item names `--collect-only -q` printed (`path::name` lines)."""
    return [line.split("::", 1)[1] for line in result.outlines if "::" in line]


def results(pytester: pytest.Pytester) -> dict[str, Record]:
    return {record.id: record for record in read_records(results_path(pytester.path / "out"))}


@pytest.mark.usefixtures("no_warm_up")
def test_a_matrix_file_collects_one_item_per_cell(pytester: pytest.Pytester, matrix: Path) -> None:
    result = run(pytester, matrix, "--collect-only", "-q")

    assert result.ret == pytest.ExitCode.OK
    assert collected(result) == SMALL_IDS
    assert len(SMALL_IDS) == 12


def test_k_selects_cells_by_id_and_each_ok_cell_passes(pytester: pytest.Pytester, matrix: Path) -> None:
    result = run(pytester, matrix, "-k", "optim.AdamW and safe", f"--junitxml={pytester.path / 'junit.xml'}")

    result.assert_outcomes(passed=2, deselected=10)
    assert {cell: record.status for cell, record in results(pytester).items()} == {
        "torch.optim.AdamW-cpu-float32-plain-safe": "ok",
        "torch.optim.AdamW-cpu-float32-fused-safe": "ok",
    }
    assert 'name="torch.optim.AdamW-cpu-float32-fused-safe"' in (pytester.path / "junit.xml").read_text()


def test_a_known_incompatibility_is_an_xfail_and_a_regression_a_failure(
    pytester: pytest.Pytester, matrix: Path
) -> None:
    first = run(pytester, matrix, "-k", GROK_FUSED, "-rx")

    first.assert_outcomes(xfailed=1, deselected=11)  # no baseline: `new`, which does not fail the gate
    first.stdout.fnmatch_lines(["*new: construct_error (unexpected_kwarg):*unexpected keyword argument 'fused'*"])
    record = results(pytester)[GROK_FUSED]
    assert (record.status, record.reason) == ("construct_error", "unexpected_kwarg")

    key = environment_key(Environment(torch=metadata.version("torch")), "cpu")
    write_baseline_file(baseline_path(pytester.path / "out", key), key, {GROK_FUSED: BaselineEntry(status="ok")})
    second = run(pytester, matrix, "-k", GROK_FUSED)

    second.assert_outcomes(failed=1, deselected=11)
    second.stdout.fnmatch_lines([f"*regression: {GROK_FUSED} is now construct_error (unexpected_kwarg)*"])
    assert second.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.usefixtures("no_warm_up")
def test_resume_collects_only_the_cells_without_a_record(pytester: pytest.Pytester, matrix: Path) -> None:
    cells = expand_matrix(load_matrix(matrix))
    finished = [cell for cell in cells if "SGD" in cell.id]
    out = results_path(pytester.path / "out")
    out.parent.mkdir()
    out.write_text("".join(Record.for_cell(cell, "ok").to_json() + "\n" for cell in finished))

    resumed = run(pytester, matrix, "--matrix-resume", "--collect-only", "-q")

    assert collected(resumed) == [cell.id for cell in cells if cell not in finished]
    assert len(read_records(out)) == len(finished)  # --resume keeps the results file
    fresh = run(pytester, matrix, "--collect-only", "-q")
    assert collected(fresh) == SMALL_IDS
    assert not out.exists()  # a run without --resume starts a fresh results file


@pytest.mark.usefixtures("no_warm_up")
def test_shards_split_the_cells_without_overlap(pytester: pytest.Pytester, matrix: Path) -> None:
    shards = [collected(run(pytester, matrix, "--matrix-shard", f"{i}/3", "--collect-only", "-q")) for i in (1, 2, 3)]

    assert sorted(cell for shard in shards for cell in shard) == sorted(SMALL_IDS)
    cells = expand_matrix(load_matrix(matrix))
    assert shards == [[cell.id for cell in shard_cells(cells, i, 3)] for i in (1, 2, 3)]
    assert all(shards), "each of the three shards of twelve cells holds some"


def test_every_fault_costs_one_cell_and_the_session_goes_on(pytester: pytest.Pytester, matrix: Path) -> None:
    faults = Path(shutil.copy(MATRICES / "faults.yaml", pytester.path / "faults.yaml"))

    result = run(pytester, faults, "-k", "cpu and (Segfault or RaiseInStep or torch.optim.AdamW)", "-rx")

    result.assert_outcomes(passed=1, xfailed=2, deselected=19)
    got = {cell: record.status for cell, record in results(pytester).items()}
    assert got == {
        "tests.faults.optimizers.Segfault-cpu-float32-plain-direct": "crashed",
        "tests.faults.optimizers.RaiseInStep-cpu-float32-plain-direct": "step_error",
        "torch.optim.AdamW-cpu-float32-plain-direct": "ok",
    }


@pytest.mark.usefixtures("no_warm_up")
def test_the_plugin_stays_out_unless_a_matrix_file_is_named(
    pytester: pytest.Pytester, matrix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOCK_DIR_ENV)
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")

    result = pytester.runpytest("-p", "harness.plugin")  # matrix.yaml lies in the folder pytest collects

    result.assert_outcomes(passed=1)
    assert LOCK_DIR_ENV not in os.environ  # pytest_configure did not set itself up
    assert not (pytester.path / "reports").exists()
    named = pytester.runpytest("-p", "harness.plugin", str(matrix), "--collect-only", "-q")
    assert collected(named) == SMALL_IDS


def test_control_sequences_leave_no_trace_in_terminal_or_markdown_text() -> None:
    text = "a\x1b]0;window title\x07b \x1b[31mred\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ bell\x07\r\n"

    assert strip_control(text) == "ab red link bell\n"
