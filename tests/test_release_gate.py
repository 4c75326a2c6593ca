"""What breaks a release fails the gate (issue 15): a package that is installed but does not import, cells that
ran in the baseline and did not run now, `--strict`, pytest arguments after `--`, measurements that fail beside
a good step, Ctrl-C. In-process where it can be: `run_cell`, `cli.main`, with `pytest.main` observed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from harness import cli
from harness.baseline import BaselineEntry, accept, environment_key, write_baseline_file
from harness.cells import Cell, Record
from harness.execute import run_cell
from harness.measurements import Environment
from harness.records import append_record, read_records
from harness.resolve import BrokenImport, MissingDependency, expand_optimizer, resolve_optimizer
from harness.settings import Settings
from harness.verdict import judge, not_run_lines, vanished

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings(bench={"enabled": False}, train={"steps": 4})
KEY = environment_key(Environment(torch=torch.__version__), "cpu")


def cell(optimizer: str, builder: str = "direct", **kwargs) -> Cell:
    return Cell(optimizer, "cpu", "float32", "plain", {"lr": 0.01, **kwargs}, builder)


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """Write packages onto a folder on `sys.path`: `packages(name, source)` makes `name/__init__.py`."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, source: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "__init__.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)

    return make


# --- 1. absent versus broken -----------------------------------------------------------------------------

BROKEN_SOURCES = {
    "undefined_symbol": "raise ImportError('/site-packages/brk/_C.so: undefined symbol: _ZN3c104cuda9SetDevice')",
    "runtime_error": "raise RuntimeError('brk was built against another torch')",
    "gone_dependency": "import a_dependency_nobody_installed_xyz",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_SOURCES))
def test_an_installed_package_that_raises_on_import_is_an_import_error(packages, kind):
    name = f"brk_{kind}"
    packages(name, BROKEN_SOURCES[kind])
    record = run_cell(cell(f"{name}.Opt"), SETTINGS)
    assert (record.status, record.reason) == ("construct_error", "import_error")
    assert f"{name} is installed but" in record.error_message
    expected = {"undefined_symbol": "undefined symbol", "runtime_error": "built against", "gone_dependency": "xyz"}
    assert expected[kind] in record.error_message


def test_an_absent_package_stays_skipped():
    record = run_cell(cell("absent_pkg_xyz.optim.Opt"), SETTINGS)
    assert (record.status, record.reason) == ("skipped", "missing_dependency")
    assert record.error_message == "absent_pkg_xyz is not installed: pip install absent_pkg_xyz"


def test_a_family_of_an_absent_package_is_skipped_not_a_construct_error():
    assert expand_optimizer("absent_pkg_xyz.optim:*8bit") == ["absent_pkg_xyz.optim:*8bit"]
    record = run_cell(cell("absent_pkg_xyz.optim:*8bit"), SETTINGS)
    assert (record.status, record.reason) == ("skipped", "missing_dependency")


def test_a_family_of_a_broken_package_is_an_import_error(packages):
    packages("brk_family", BROKEN_SOURCES["undefined_symbol"])
    assert expand_optimizer("brk_family:*") == ["brk_family:*"]  # the cell stands, to fail at run time
    record = run_cell(cell("brk_family:*"), SETTINGS)
    assert (record.status, record.reason) == ("construct_error", "import_error")


def test_a_builder_module_that_raises_on_import_is_an_import_error(packages):
    packages("brk_builder", "raise ImportError('undefined symbol: at_cuda')")
    record = run_cell(cell("torch.optim.SGD", builder="brk_builder:make"), SETTINGS)
    assert (record.status, record.reason) == ("construct_error", "import_error")
    assert "brk_builder (of builder 'brk_builder:make') is installed but raises" in record.error_message


def test_a_builder_module_that_is_absent_is_skipped():
    record = run_cell(cell("torch.optim.SGD", builder="absent_framework_xyz.utils:make"), SETTINGS)
    assert (record.status, record.reason) == ("skipped", "missing_dependency")


def test_broken_and_missing_are_both_import_errors_for_callers_that_catch_those(packages):
    packages("brk_types", BROKEN_SOURCES["runtime_error"])
    with pytest.raises(BrokenImport) as caught:
        resolve_optimizer("brk_types.Opt")
    assert isinstance(caught.value, ImportError) and not isinstance(caught.value, MissingDependency)


# --- 2. cells that ran in the baseline and did not run now ------------------------------------------------


def skipped_family(optimizer: str = "bitsandbytes.optim:*8bit") -> Record:
    message = "bitsandbytes is not installed: pip install bitsandbytes"
    env = Environment(torch=torch.__version__)
    return Record.for_cell(cell(optimizer), "skipped", reason="missing_dependency", error_message=message, env=env)


def test_the_cells_a_family_stood_for_in_the_baseline_are_not_run_and_grouped_by_cause():
    placeholder = skipped_family()
    concrete = [f"bitsandbytes.optim.{name}-cpu-float32-plain-direct" for name in ("AdamW8bit", "Lion8bit", "SGD8bit")]
    files = {
        KEY: {
            **{cell_id: BaselineEntry("ok") for cell_id in concrete},
            "bitsandbytes.optim.PagedAdamW8bit-cpu-float32-plain-direct": BaselineEntry("skipped"),  # never ran
            "bitsandbytes.optim.AdamW8bit-cpu-float32-plain-direct-resume": BaselineEntry("ok"),  # other scenario
            "bitsandbytes.optim.Adam-cpu-float32-plain-direct": BaselineEntry("ok"),  # not matched by *8bit
        }
    }
    verdicts = vanished([placeholder], files)
    assert sorted(v.id for v in verdicts) == concrete
    assert all(v.verdict == "not_run" and v.fails_gate for v in verdicts)
    assert not_run_lines(verdicts) == ["3 cells that ran in the baseline did not run: bitsandbytes is not installed"]


def test_a_timm_registry_family_finds_its_baseline_cells():
    placeholder = skipped_family("timm:*adam*")
    files = {KEY: {"timm:adamw-cpu-float32-plain-direct": BaselineEntry("ok")}}
    assert [v.id for v in vanished([placeholder], files)] == ["timm:adamw-cpu-float32-plain-direct"]


def test_accepting_a_run_whose_package_is_gone_accepts_that_it_is_gone(tmp_path):
    ran = Record.for_cell(cell("pkg.Opt"), "ok", env=Environment(torch=torch.__version__))
    gone = ran.replace(status="skipped", reason="missing_dependency", error_message="pkg is not installed")
    accept([ran], tmp_path)
    from harness.baseline import load_baselines

    [before] = judge([gone], load_baselines([gone], tmp_path), speedup_tolerance=0.2)
    accept([gone], tmp_path)
    [after] = judge([gone], load_baselines([gone], tmp_path), speedup_tolerance=0.2)
    assert (before.verdict, before.fails_gate) == ("not_run", True)
    assert (after.verdict, after.fails_gate) == ("as_expected", False)


def write_matrix(folder: Path, optimizers: list[str], *, devices: str = "[cpu]") -> Path:
    names = "\n".join(f"  - {json.dumps(name)}" for name in optimizers)
    path = folder / "m.yaml"
    path.write_text(
        f"optimizers:\n{names}\ndevices: {devices}\ndtypes: [float32]\nkwargs: {{plain: {{lr: 0.01}}}}\n"
        "builders: [direct]\ntrain: {steps: 3}\nbench: {enabled: false}\n"
    )
    return path


def test_run_fails_the_gate_when_a_package_that_ran_in_the_baseline_is_gone(tmp_path, capsys):
    matrix = write_matrix(tmp_path, ["absent_pkg_xyz.optim:*8bit"])
    baselines = tmp_path / "base"
    concrete = [f"absent_pkg_xyz.optim.{n}-cpu-float32-plain-direct" for n in ("AdamW8bit", "Lion8bit")]
    write_baseline_file(baselines / "baselines" / f"{KEY}.json", KEY, {c: BaselineEntry("ok") for c in concrete})
    code = cli.main(["run", str(matrix), "-n", "0", "--out", str(tmp_path / "out"), "--baselines", str(baselines)])
    out = capsys.readouterr().out
    assert code == 1
    assert "not run: 2 cells that ran in the baseline did not run: absent_pkg_xyz is not installed" in out
    assert "gate: FAILED" in out
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "2 cells that ran in the baseline did not run: absent\\_pkg\\_xyz is not installed" in summary


# --- 3. --strict -------------------------------------------------------------------------------------------


@pytest.fixture
def one_result(tmp_path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    record = Record.for_cell(cell("torch.optim.SGD"), "ok", env=Environment(torch=torch.__version__))
    append_record(out / "results.jsonl", record)
    return out


def test_strict_report_fails_a_new_cell_and_names_the_baselines_that_are_there(one_result, tmp_path, capsys):
    baselines = tmp_path / "base"
    write_baseline_file(baselines / "baselines" / "torch-2.13.0-cpu.json", "torch-2.13.0-cpu", {})
    assert cli.main(["report", str(one_result), "--baselines", str(baselines)]) == 0
    capsys.readouterr()
    assert cli.main(["report", str(one_result), "--baselines", str(baselines), "--strict"]) == 1
    out = capsys.readouterr().out
    assert f"has no baseline for {KEY}: it holds baselines for torch-2.13.0-cpu only" in out
    assert "gate: FAILED (--strict)" in out
    assert "**Gate: FAILED** under --strict" in (one_result / "summary.md").read_text()


def test_strict_merge_fails_a_new_cell_and_passes_once_accepted(one_result, tmp_path, capsys):
    merged = tmp_path / "merged"
    argv = ["merge", str(one_result), "--out", str(merged), "--baselines", str(tmp_path / "base"), "--strict"]
    assert cli.main(argv) == 1
    assert cli.main(["baseline", "accept", str(one_result), "--baselines", str(tmp_path / "base")]) == 0
    assert cli.main(argv) == 0
    assert "gate: passed (--strict)" in capsys.readouterr().out


# --- 4. arguments after `--` reach pytest ------------------------------------------------------------------


def test_arguments_after_double_dash_and_strict_reach_pytest(tmp_path, monkeypatch):
    seen: list[list[str]] = []

    def fake_main(args, *rest, **kwargs):
        seen.append(list(args))
        return pytest.ExitCode.OK

    monkeypatch.setattr(pytest, "main", fake_main)
    matrix = write_matrix(tmp_path, ["torch.optim.SGD"])
    argv = ["run", str(matrix), "-n", "0", "--out", str(tmp_path / "out"), "--strict", "--", "--collect-only", "-x"]
    assert cli.main(argv) == 0
    [args] = seen
    assert args[-2:] == ["--collect-only", "-x"]
    assert "--matrix-strict" in args and args.count("--collect-only") == 1


def test_collect_only_after_double_dash_runs_no_cell(tmp_path, capsys):
    matrix = write_matrix(tmp_path, ["torch.optim.SGD"])
    out = tmp_path / "out"
    assert cli.main(["run", str(matrix), "-n", "0", "--out", str(out), "--", "--collect-only"]) == 0
    assert "torch.optim.SGD-cpu-float32-plain-direct" in capsys.readouterr().out
    assert not (out / "results.jsonl").exists()


# --- 5. measurements never change an outcome ---------------------------------------------------------------


def test_state_that_cannot_be_measured_keeps_the_training_outcome():
    record = run_cell(cell("tests.faults.measurement.SparseStateSGD"), SETTINGS)
    assert record.status == "ok" and len(record.losses) == SETTINGS.train.steps
    assert record.state_bytes is None and record.state_bytes_per_param is None
    assert "state_bytes" in record.measurement_errors


def test_a_benchmark_that_raises_keeps_the_training_outcome(monkeypatch):
    import harness.bench

    def broken_bench(*args, **kwargs):
        raise RuntimeError("the timer broke")

    monkeypatch.setattr(harness.bench, "run_bench", broken_bench)
    settings = Settings(train={"steps": 4}, bench={"cells": [{"optimizer": "torch.optim.SGD"}]})
    record = run_cell(cell("torch.optim.SGD"), settings)
    assert record.status == "ok"
    assert record.measurement_errors == {"bench": "RuntimeError: the timer broke"}
    assert record.bench is not None and "the timer broke" in (record.bench.not_measured or "")
    assert Record.from_dict(json.loads(record.to_json())).measurement_errors == record.measurement_errors


# --- 8. Ctrl-C -----------------------------------------------------------------------------------------------


def test_an_interrupted_run_exits_130_and_says_what_it_kept(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def interrupted_main(args, *rest, **kwargs):
        record = Record.for_cell(cell("torch.optim.SGD"), "ok", env=Environment(torch=torch.__version__))
        append_record(out / "results.jsonl", record)
        return pytest.ExitCode.INTERRUPTED

    monkeypatch.setattr(pytest, "main", interrupted_main)
    matrix = write_matrix(tmp_path, ["torch.optim.SGD", "torch.optim.Adam"])
    assert cli.main(["run", str(matrix), "-n", "0", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: 1 records kept in {out / 'results.jsonl'}" in err and "--resume" in err


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id
            members.append(int(entry))
    return members


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_on_a_real_run_exits_130_and_leaves_no_process(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "optimizers: [torch.optim.SGD, tests.faults.optimizers.Hang]\ndevices: [cpu]\ndtypes: [float32]\n"
        "kwargs: {plain: {lr: 0.01}}\nbuilders: [direct]\ntrain: {steps: 3, timeout_s: 120}\nbench: {enabled: false}\n"
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(matrix), "-n", "2", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own session, as a terminal's foreground job: Ctrl-C reaches the group
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "results.jsonl").exists():
        time.sleep(0.2)
    assert (out / "results.jsonl").exists(), "the SGD cell never finished"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: 1 records kept" in err and "--resume" in err
    assert "Traceback" not in err
    time.sleep(1)
    assert _session_members(proc.pid) == []
    assert [r.optimizer for r in read_records(out / "results.jsonl")] == ["torch.optim.SGD"]
