"""`repro`: a standalone script per cell that runs what the matrix ran and lands on the record's numbers."""

from __future__ import annotations

import ast
import contextlib
import io
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from harness import cli
from harness.cells import Cell, Record
from harness.execute import run_cell
from harness.records import write_records
from harness.repro import CANNOT_REPRODUCE, SETTINGS_NAME, repro_script, save_settings
from harness.settings import Settings

SMALL = Settings(
    bench={"enabled": False},
    train={"steps": 6},
    model={"d_model": 32, "n_layers": 1, "vocab_size": 32, "seq_len": 16},
)
FAULTS = "tests.faults.scenario_optimizers"
ROOT = Path(__file__).resolve().parent.parent


def run(
    optimizer: str, scenario: str = "train", kwargs: dict | None = None, *, builder: str = "safe", **cell
) -> Record:
    kwargs = {"lr": 0.1} if kwargs is None else kwargs
    return run_cell(
        Cell(optimizer, "cpu", cell.pop("dtype", "float32"), "plain", kwargs, builder, scenario=scenario), SMALL
    )


def execute(script: str) -> tuple[int, str]:
    """Run a script in this process, as `python repro.py` would; (its exit status, what it printed)."""
    module = types.ModuleType("repro_under_test")  # a module of its own: dataclasses look their module up
    printed = io.StringIO()
    threads = torch.get_num_threads()
    sys.modules[module.__name__] = module
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(script, "repro.py", "exec"), module.__dict__)
            status = module.main()
    finally:
        torch.set_num_threads(threads)
        del sys.modules[module.__name__]
    return status, printed.getvalue()


def imported_modules(script: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


CASES = [
    # (optimizer, scenario, kwargs, builder, status): every scenario, an error of each kind, the builders
    ("torch.optim.SGD", "train", None, "direct", "ok"),
    (f"{FAULTS}.IgnoresGroupLr", "groups", None, "safe", "mismatch"),
    (f"{FAULTS}.MomentsOutsideState", "resume", None, "safe", "mismatch"),
    (f"{FAULTS}.CachesLr", "schedule", None, "safe", "mismatch"),
    (f"{FAULTS}.IgnoresFoundInf", "amp", None, "safe", "mismatch"),
    (f"{FAULTS}.DecaysWithoutGrad", "frozen", None, "safe", "mismatch"),
    (f"{FAULTS}.ForgetsOnAddGroup", "unfreeze", None, "safe", "mismatch"),
    ("torch.optim.AdamW", "unfreeze", {"lr": 0.01}, "safe", "ok"),
    ("torch.optim.Rprop", "groups", {"lr": 0.01}, "safe", "mismatch"),
    ("torch.optim.AdamW", "resume", {"lr": 0.01}, "safe", "ok"),
    ("torch.optim.SGD", "train", {"lr": 1e6}, "direct", "nonfinite"),
    ("torch.optim.SparseAdam", "train", {"lr": 0.01}, "direct", "step_error"),
    ("torch.optim.AdamW", "train", {"lr": 0.01, "fused": True, "foreach": True}, "direct", "construct_error"),
    ("torch.optim.AdamW", "train", {"lr": 0.01, "fused": True, "lrr": 1}, "signature", "ok"),
    ("timm:madgrad", "groups", {"lr": 0.01}, "safe", "mismatch"),
    ("timm:adamw", "train", {"lr": 0.01}, "timm", "ok"),
]


@pytest.mark.parametrize(("optimizer", "scenario", "kwargs", "builder", "status"), CASES)
def test_the_script_reproduces_the_record_number_for_number(optimizer, scenario, kwargs, builder, status):
    if optimizer.startswith("timm") or builder == "timm":
        pytest.importorskip("timm")
    record = run(optimizer, scenario, kwargs, builder=builder)
    assert record.status == status, record.judgement or record.error_message

    script = repro_script(record, SMALL)
    exit_status, printed = execute(script)

    assert exit_status == (0 if status == "ok" else 1), printed
    assert f"outcome: {status}\n" in printed
    assert "against the record: status the same; all " in printed and " numbers identical" in printed, printed
    package = optimizer.split(":")[0].split(".")[0]
    allowed = {"__future__", "torch", package} | set(sys.stdlib_module_names)
    assert imported_modules(script) <= allowed


def test_a_script_never_imports_the_harness_and_runs_alone_in_another_process(tmp_path):
    record = run("torch.optim.Rprop", "groups", {"lr": 0.01})
    path = tmp_path / "repro.py"
    path.write_text(repro_script(record, SMALL))
    blocked = "import runpy, sys; sys.modules['harness'] = None; runpy.run_path(sys.argv[1], run_name='__main__')"

    done = subprocess.run(
        [sys.executable, "-c", blocked, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )

    assert done.returncode == 1, done.stderr
    assert "outcome: mismatch" in done.stdout and "group 'frozen' has lr 0 but its parameters moved by" in done.stdout
    assert "all " in done.stdout and "numbers identical" in done.stdout
    assert "environment:\n  python " in done.stdout and "  torch " in done.stdout


def test_a_framework_builder_in_another_scenario_and_an_absent_device_say_so_and_exit_3():
    skipped = Record.for_cell(Cell("timm:adamw", "cpu", "float32", "plain", {}, "timm", scenario="resume"), "skipped")
    cuda = Record.for_cell(Cell("torch.optim.SGD", "cuda", "float32", "plain", {"lr": 0.1}, "direct"), "skipped")
    third_party = Record.for_cell(Cell("torch.optim.SGD", "cpu", "float32", "plain", {}, "myframework"), "ok")

    for record, words in [
        (skipped, "runs the train scenario only"),
        (third_party, "third-party framework adapter"),
        *([] if torch.cuda.is_available() else [(cuda, "device cuda is not present")]),
    ]:
        status, printed = execute(repro_script(record, SMALL))
        assert status == CANNOT_REPRODUCE and "cannot reproduce: " in printed and words in printed


def test_a_package_that_raises_on_import_is_the_scripts_outcome_too():
    broken = Record.for_cell(
        Cell("tests.faults.import_raise.Broken", "cpu", "float32", "plain", {}, "direct"),
        "construct_error",
        reason="import_error",
        error_type="BrokenImport",
        error_message="tests is installed but raises while importing",
    )

    status, printed = execute(repro_script(broken, SMALL))

    assert (
        status == 1 and "outcome: construct_error" in printed and "importing the optimizer's package raised" in printed
    )


@pytest.fixture
def results(tmp_path) -> Path:
    records = [run("torch.optim.SGD"), run("torch.optim.Rprop", "groups", {"lr": 0.01})]
    write_records(tmp_path / "results.jsonl", records)
    save_settings(tmp_path, SMALL)
    return tmp_path


def test_repro_writes_the_script_from_the_results_and_their_settings(results, capsys):
    out = results / "repro.py"

    code = cli.main(
        ["repro", "torch.optim.Rprop-cpu-float32-plain-safe-groups", "--results", str(results), "-o", str(out)]
    )

    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    status, printed = execute(out.read_text())
    assert status == 1 and "numbers identical" in printed


def test_an_unknown_id_is_one_sentence_naming_close_matches_with_exit_2(results, capsys):
    code = cli.main(["repro", "torch.optim.Rprop-cpu-float32-plain-safe-group", "--results", str(results)])

    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: unknown cell 'torch.optim.Rprop-cpu-float32-plain-safe-group' in ")
    assert "did you mean 'torch.optim.Rprop-cpu-float32-plain-safe-groups'" in err


def test_a_folder_without_results_is_one_sentence_with_exit_2(tmp_path, capsys):
    code = cli.main(["repro", "torch.optim.SGD-cpu-float32-plain-direct", "--results", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2 and "results.jsonl does not exist" in err and len(err.strip().splitlines()) == 1


def test_settings_that_do_not_match_the_record_are_refused(results, write_matrix, capsys):
    (results / SETTINGS_NAME).unlink()
    matrix = write_matrix("optimizers: [torch.optim.SGD]\ntrain: {steps: 6}\n")  # the default model: 233k parameters

    code = cli.main(
        ["repro", "torch.optim.SGD-cpu-float32-plain-safe", "--results", str(results), "--matrix", str(matrix)]
    )

    err = capsys.readouterr().err
    assert code == 2 and "their GPT has 233088 parameters, the record's" in err and "--matrix" in err
