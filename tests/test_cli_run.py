"""End to end: the real CLI (and through it the pytest plugin) in subprocesses, on small matrices of real files.

Faults (segfault, abort, os._exit, a hang, exceptions, NaN) each cost one cell under `-n 2`; records
stream to results.jsonl and survive `kill -9`; `--resume`, shards, merge, the baseline gate and
compare work as the README says. The plugin's own behaviour (collection, `-k`, xfail and failure,
resume and shard selection) is tested in-process in tests/test_plugin.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.expand import expand_matrix
from harness.records import read_records
from harness.spec import load_matrix

ROOT = Path(__file__).resolve().parents[1]
MATRICES = Path(__file__).parent / "resources" / "matrices"

pytestmark = pytest.mark.slow


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def cell_ids(matrix: Path) -> list[str]:
    return [cell.id for cell in expand_matrix(load_matrix(matrix))]


def statuses(out: Path) -> dict[str, str]:
    return {record.id: record.status for record in read_records(out / "results.jsonl")}


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_fault_costs_one_cell_and_the_run_goes_on(tmp_path: Path) -> None:
    done = harness(
        "run", str(MATRICES / "faults.yaml"), "-n", "2", "--out", str(tmp_path), "--baselines", str(tmp_path)
    )

    assert done.returncode == 0, done.stdout + done.stderr  # no baseline: every cell is new, the gate passes
    assert "Traceback" not in done.stderr
    got = statuses(tmp_path)
    fault = "tests.faults.optimizers.{}-cpu-float32-plain-direct"
    assert got[fault.format("Segfault")] == "crashed"
    assert got[fault.format("Abort")] == "crashed"
    assert got[fault.format("ExitNow")] == "crashed"
    assert got[fault.format("Hang")] == "timeout"
    assert got[fault.format("RaiseInInit")] == "construct_error"
    assert got[fault.format("RaiseInStep")] == "step_error"
    assert got[fault.format("SysExitInStep")] == "step_error"
    assert got[fault.format("NaNWriter")] == "nonfinite"
    assert got[fault.format("DoesNothing")] == "no_learning"
    assert got["torch.optim.AdamW-cpu-float32-plain-direct"] == "ok"
    assert got["torch.optim.SGD-cpu-float32-plain-direct"] == "no_learning"  # lr 0.0
    assert {status for cell, status in got.items() if "-cuda-" in cell} == {"skipped"}
    assert len(got) == 22
    records = {r.id: r for r in read_records(tmp_path / "results.jsonl")}
    assert "SIGSEGV" in (records[fault.format("Segfault")].error_message or "")
    assert "SIGABRT" in (records[fault.format("Abort")].error_message or "")
    assert "exit status 3" in (records[fault.format("ExitNow")].error_message or "")
    for name in ("report.html", "summary.md", "junit.xml"):
        assert (tmp_path / name).stat().st_size > 0


def test_results_survive_kill_9_and_resume_runs_only_the_rest(tmp_path: Path) -> None:
    matrix = str(MATRICES / "small.yaml")
    command = [
        sys.executable,
        "-m",
        "harness",
        "run",
        matrix,
        "-n",
        "2",
        "--out",
        str(tmp_path),
        "--baselines",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    finished = lines_of(results)  # every line parses: no torn record
    assert 3 <= len(finished) < 16, "the run must be killed part-way for this test to mean anything"
    done = harness("run", matrix, "-n", "2", "--out", str(tmp_path), "--baselines", str(tmp_path), "--resume")

    assert done.returncode == 0, done.stdout + done.stderr
    after = lines_of(results)
    assert after[: len(finished)] == finished  # the finished records are kept as they were
    assert sorted(r["id"] for r in after) == sorted(set(r["id"] for r in after))  # nothing ran twice
    assert sorted(r["id"] for r in after) == sorted(cell_ids(MATRICES / "small.yaml"))


def test_baseline_gate_passes_as_expected_and_fails_a_regression(tmp_path: Path) -> None:
    matrix = str(MATRICES / "small.yaml")
    # GrokAdamW has no fused kernel, so no benchmark: a busy machine cannot make it `slower`.
    first = harness("run", matrix, "-n", "0", "--out", str(tmp_path), "--baselines", str(tmp_path), "-k", "Grok")
    assert first.returncode == 0, first.stdout + first.stderr
    accepted = harness("baseline", "accept", str(tmp_path), "--baselines", str(tmp_path))
    assert accepted.returncode == 0 and "accepted" in accepted.stdout
    baseline_file = next((tmp_path / "baselines").glob("torch-*-cpu.json"))

    again = harness("run", matrix, "-n", "0", "--out", str(tmp_path), "--baselines", str(tmp_path), "-k", "Grok")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "gate: passed" in again.stdout

    # Pretend GrokAdamW with fused=True once built fine: today's construct_error is then a regression.
    data = json.loads(baseline_file.read_text())
    data["cells"]["grokadamw.GrokAdamW-cpu-float32-fused-direct"] = {"status": "ok"}
    baseline_file.write_text(json.dumps(data))
    regressed = harness("report", str(tmp_path), "--baselines", str(tmp_path))
    assert regressed.returncode == 1
    assert "gate: FAILED" in regressed.stdout
    assert "regression" in (tmp_path / "summary.md").read_text()


def test_shards_cover_every_cell_once_and_merge_joins_them(tmp_path: Path) -> None:
    matrix = str(MATRICES / "small.yaml")
    listed = set(cell_ids(MATRICES / "small.yaml"))
    for i in (1, 2):
        done = harness(
            "run",
            matrix,
            "-n",
            "0",
            "--shard",
            f"{i}/2",
            "--out",
            str(tmp_path / f"s{i}"),
            "--baselines",
            str(tmp_path),
        )
        assert done.returncode == 0, done.stdout + done.stderr
    merged = harness(
        "merge",
        str(tmp_path / "s1"),
        str(tmp_path / "s2"),
        "--out",
        str(tmp_path / "all"),
        "--baselines",
        str(tmp_path),
    )

    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert set(statuses(tmp_path / "all")) == listed
    assert (tmp_path / "all" / "report.html").exists()
    compared = harness("compare", str(tmp_path / "s1"), str(tmp_path / "all"), "--out", str(tmp_path / "compare.html"))
    assert compared.returncode == 0, compared.stderr
    assert "<html" in (tmp_path / "compare.html").read_text().lower()


def test_a_bad_matrix_stops_run_with_a_sentence_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "matrix.yaml"
    bad.write_text("optimizers: [torch.optim.AdamW]\ndevices: [cdua]\n")
    done = harness("run", str(bad), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cuda" in done.stderr and "matrix.yaml:2" in done.stderr
