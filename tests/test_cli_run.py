"""End to end: the real CLI (and through it the pytest plugin) in subprocesses, on small matrices of real files.

Faults (segfault, abort, os._exit, a hang, exceptions, NaN) each cost one cell under `-n 2`; records
stream to results.jsonl and survive `kill -9`; `--resume`, shards, merge, the baseline gate and
compare work as the README says. The plugin's own behaviour (collection, `-k`, xfail and failure,
resume and shard selection) is tested in-process in tests/test_plugin.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.expand import expand_matrix
from harness.records import read_records
from harness.spec import load_matrix
from harness.vocabulary import STEPPED

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


def _records(out: Path) -> dict[str, Any]:
    return {record.id: record for record in read_records(out / "results.jsonl")}


def test_modules_that_exit_hang_crash_raise_or_print_on_import_cost_only_their_cells(tmp_path: Path) -> None:
    env = {**os.environ, "HARNESS_PROBE_TIMEOUT_S": "8"}
    matrix = str(MATRICES / "import_faults.yaml")
    listed = subprocess.run(
        [sys.executable, "-m", "harness", "list", "--json", matrix], cwd=ROOT, capture_output=True, text=True, env=env
    )
    done = subprocess.run(
        [
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
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 6  # stdout stays clean JSON though a module printed on import
    assert done.returncode == 0, done.stdout + done.stderr
    got = statuses(tmp_path)
    assert got["tests.faults.import_exit:*-cpu-float32-plain-direct"] == "crashed"
    assert got["tests.faults.import_hang:*-cpu-float32-plain-direct"] == "timeout"
    assert got["tests.faults.import_segfault:*-cpu-float32-plain-direct"] == "crashed"
    raised = _records(tmp_path)["tests.faults.import_raise:*-cpu-float32-plain-direct"]
    # installed (it is on the path) and raising while importing: a broken package, not a skip (issue 15)
    assert (raised.status, raised.reason) == ("construct_error", "import_error")
    assert "is installed but raises while importing: RuntimeError" in (raised.error_message or "")
    assert got["tests.faults.import_print.Chatty-cpu-float32-plain-direct"] in STEPPED
    assert got["torch.optim.AdamW-cpu-float32-plain-direct"] == "ok"


def test_a_hang_beside_benchmarks_and_a_second_run_cost_no_healthy_cell(tmp_path: Path) -> None:
    matrix = str(MATRICES / "stuck_cell_beside_benchmarks.yaml")
    first_out, second_out = tmp_path / "first", tmp_path / "second"

    def start(out: Path, *extra: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "harness", "run", matrix, "--out", str(out), "--baselines", str(out), *extra]
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start(first_out, "-n", "2")
    deadline = time.monotonic() + 120
    while not (first_out / ".harness.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    clash = harness("run", matrix, "-n", "0", "--out", str(first_out), "--baselines", str(first_out))
    second = start(second_out, "-n", "0", "-k", "not Hang")  # another run on the machine, benchmarking meanwhile
    first_output, second_output = first.communicate(timeout=400), second.communicate(timeout=400)

    assert clash.returncode == 2 and "Another run is writing to" in clash.stderr, clash.stdout + clash.stderr
    assert first.returncode == 0 and second.returncode == 0, (first_output, second_output)
    for out, expected in ((first_out, 4), (second_out, 3)):
        records = _records(out)
        assert len(records) == expected
        for record in records.values():
            if "Hang" in record.id:
                message = record.error_message or ""
                assert record.status == "timeout" and "train phase ran past train.timeout_s = 6 s" in message
                waited = float(re.search(r"\(([\d.]+) s spent waiting", message)[1])  # type: ignore[index]
                assert record.duration_s - waited < 6 + 10  # its own train.timeout_s; waits are nobody's fault
            else:
                assert record.status in STEPPED  # SGD at lr 0 is no_learning, and benchmarked all the same
                assert record.bench is not None and record.bench.not_measured is None, record.bench
                assert any(impl.step_ms is not None for impl in record.bench.implementations), record.bench


def test_a_dead_worker_loses_its_cell_and_the_gate_fails_naming_it(tmp_path: Path) -> None:
    done = harness(
        "run", str(MATRICES / "kill_worker.yaml"), "-n", "2", "--out", str(tmp_path), "--baselines", str(tmp_path)
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "lost: tests.faults.hostile.KillWorker-cpu-float32-plain-direct" in done.stdout
    assert "gate: FAILED" in done.stdout and "1 lost" in done.stdout
    lost = json.loads((tmp_path / "lost.json").read_text())
    assert [entry["id"] for entry in lost] == ["tests.faults.hostile.KillWorker-cpu-float32-plain-direct"]
    assert "crashed" in lost[0]["error"]  # xdist's own words for the worker it lost
    assert statuses(tmp_path) == {"torch.optim.AdamW-cpu-float32-plain-direct": "ok"}
    summary = (tmp_path / "summary.md").read_text()
    assert "Gate: FAILED" in summary and "KillWorker" in summary  # the job page says what the exit status says
    assert "KillWorker" in (tmp_path / "report.html").read_text()

    again = harness("report", str(tmp_path), "--baselines", str(tmp_path))  # re-rendered from lost.json
    merged = harness("merge", str(tmp_path), "--out", str(tmp_path / "merged"), "--baselines", str(tmp_path))

    assert again.returncode == 1 and "1 lost" in again.stdout, again.stdout + again.stderr
    assert merged.returncode == 1 and "1 lost" in merged.stdout, merged.stdout + merged.stderr
    assert "KillWorker" in (tmp_path / "merged" / "summary.md").read_text()


def test_report_on_a_results_file_with_no_readable_record_is_one_sentence_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_bytes(b"\xff\xfe not text\n[1, 2]\n")
    done = harness("report", str(tmp_path), "--baselines", str(tmp_path))

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "holds no readable record (line 1: 'utf-8' codec" in done.stderr and "2 unreadable lines" in done.stderr
    assert not (tmp_path / "report.html").exists()
    for args in (
        ["baseline", "accept", str(tmp_path), "--baselines", str(tmp_path)],
        ["merge", str(tmp_path), "--out", str(tmp_path / "merged")],
        ["compare", str(tmp_path), "--out", str(tmp_path / "compare.html")],
    ):
        refused = harness(*args)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, (args, refused.stderr)
        assert "holds no readable record" in refused.stderr


def test_steps_that_signal_the_parent_pollute_pipes_or_delete_results_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    matrix = tmp_path / "hostile.yaml"
    text = (MATRICES / "hostile.yaml").read_text()
    matrix.write_text(text.replace("RESULTS", str(out / "results.jsonl")))
    done = harness("run", str(matrix), "-n", "0", "--out", str(out), "--baselines", str(out), "--", "-x")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "were written again" in done.stderr  # DeleteResults removed the records before it
    got = statuses(out)
    assert len(got) == 5 and set(got.values()) <= STEPPED


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "-n", "-1"], "-n takes a number of workers"),
        (["run", "--out", "README.md"], "is a file; name a directory"),
        (["baseline", "accept", "EMPTY"], "holds no readable record"),
        (["list", "--", "-x"], "only `run` passes arguments after `--`"),
    ],
)
def test_run_argument_mistakes_exit_2_with_a_sentence_before_any_cell(
    tmp_path: Path, args: list[str], words: str
) -> None:
    (tmp_path / "results.jsonl").write_text("not json\n")
    args = [str(tmp_path) if arg == "EMPTY" else arg for arg in args]
    done = harness(*args[:1], str(MATRICES / "small.yaml"), *args[1:]) if args[0] == "run" else harness(*args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr


def test_terminal_text_is_capped_and_control_characters_leave_terminal_and_markdown(tmp_path: Path) -> None:
    from harness.cells import Cell, Record
    from harness.cli import main
    from harness.plugin import terminal_text
    from harness.records import write_records

    shouting = "\x1b[31mred\x1b[0m \x07bell\r\n" + "\n".join(f"line {i}" for i in range(100))
    capped = terminal_text(shouting)
    assert "\x1b" not in capped and "\x07" not in capped and "\r" not in capped
    assert len(capped.splitlines()) == 6 and capped.splitlines()[0] == "red bell"

    cell = Cell("torch.optim.AdamW", "cpu", "float32", "plain", {}, "direct")
    write_records(tmp_path / "results.jsonl", [Record.for_cell(cell, "step_error", error_message=shouting)])
    assert main(["report", str(tmp_path), "--baselines", str(tmp_path)]) == 0
    for name in ("summary.md", "report.html"):
        assert "\x1b" not in (tmp_path / name).read_text()
