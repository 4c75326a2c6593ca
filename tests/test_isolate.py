"""harness.isolate: the runner process survives what a cell does to it, and blames the right cell."""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path

import pytest

from harness import exclusive, isolate
from harness.cells import Cell, Record
from harness.forkserver import blame as _blame
from harness.isolate import CellRunner, _describe_exit
from harness.settings import Settings
from harness.vocabulary import STEPPED

TINY = Settings(
    train={"steps": 4, "timeout_s": 3},
    model={"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 8},
    bench={"enabled": False},
)


ROOMY = TINY.model_copy(update={"train": TINY.train.model_copy(update={"timeout_s": 60.0})})
"""For cells that must finish on a loaded machine: a timeout here would be the machine's, not the cell's."""


def cell(optimizer: str, **kwargs: object) -> Cell:
    return Cell(optimizer, "cpu", "float32", "plain", {"lr": 0.02, **kwargs}, "direct")


def test_a_dead_or_hung_runner_costs_its_cell_and_the_next_cell_gets_a_fresh_one() -> None:
    with CellRunner() as runner:
        first = runner.run(cell("torch.optim.AdamW"), TINY)
        killed = runner.run(cell("tests.faults.optimizers.Segfault"), TINY)
        hung = runner.run(cell("tests.faults.optimizers.Hang"), TINY)
        after = runner.run(cell("torch.optim.AdamW"), TINY)

    assert first.status == "ok"
    assert killed.status == "crashed" and "SIGSEGV" in (killed.error_message or "")
    assert hung.status == "timeout" and "train.timeout_s = 3 s" in (hung.error_message or "")
    assert after.status == "ok" and after.losses == first.losses  # same seed, same curve, fresh process


def test_what_a_cell_prints_never_corrupts_the_protocol(capfd: pytest.CaptureFixture[str]) -> None:
    # grokadamw and bitsandbytes print and log on import and use; records must still arrive whole
    with CellRunner() as runner:
        records = [runner.run(cell(name), TINY) for name in ("grokadamw.GrokAdamW", "bitsandbytes.optim.AdamW8bit")]
    assert [r.status for r in records] == ["ok", "ok"]


def test_a_device_error_left_behind_fails_the_cell_that_left_it() -> None:
    ok = Record.for_cell(cell("x.Y"), "ok")
    failing = Record.for_cell(cell("x.Y"), "construct_error", error_message="bad kwarg")
    error = RuntimeError("CUDA error: an illegal instruction was encountered\nmore")

    blamed = _blame(ok, error)
    kept = _blame(failing, error)

    assert blamed.status == "step_error" and blamed.error_type == "RuntimeError"
    assert "illegal instruction" in (blamed.error_message or "") and "more" not in (blamed.error_message or "")
    assert kept.status == "construct_error" and (kept.error_message or "").startswith("bad kwarg\n")


@pytest.mark.parametrize(
    ("code", "words"),
    [(-11, "signal SIGSEGV (-11)"), (-6, "signal SIGABRT (-6)"), (3, "exit status 3"), (None, "unknown")],
)
def test_exits_are_described_in_words(code: int | None, words: str) -> None:
    assert words in _describe_exit(code)


def test_nothing_a_cell_changes_process_wide_reaches_the_next_cell(tmp_path: Path) -> None:
    before, after, pidfile = tmp_path / "before.json", tmp_path / "after.json", tmp_path / "sleeper.pid"
    with CellRunner() as runner:
        clean = runner.run(cell("tests.faults.hostile.Inspector", path=str(before)), ROOMY)
        polluting = runner.run(cell("tests.faults.hostile.Polluter", pidfile=str(pidfile)), ROOMY)
        inspected = runner.run(cell("tests.faults.hostile.Inspector", path=str(after)), ROOMY)
        adamw = runner.run(cell("torch.optim.AdamW"), ROOMY)
    assert {clean.status, polluting.status, inspected.status} <= STEPPED and adamw.status == "ok"
    assert json.loads(after.read_text()) == json.loads(before.read_text())  # AdamW, dtype, threads, grad, cwd, env
    assert not Path(f"/proc/{pidfile.read_text()}").exists()  # the `sleep 600` it left died with its group


def test_a_step_that_signals_its_parent_or_writes_into_every_pipe_keeps_its_record() -> None:
    with CellRunner() as runner:
        records = [runner.run(cell(f"tests.faults.hostile.{name}"), ROOMY) for name in ("KillParent", "WriteEveryFd")]
        after = runner.run(cell("torch.optim.AdamW"), ROOMY)
    assert {r.status for r in records} <= STEPPED
    assert after.status == "ok"


def test_a_date_in_kwargs_or_an_infinite_timeout_costs_no_cell() -> None:
    # A matrix file cannot say `timeout_s: .inf` (tests/resources/bad/timeout_infinite.yaml); settings made
    # in code that bypass validation still cost only their own cell, which keeps a record.
    endless = TINY.model_copy(update={"train": TINY.train.model_copy(update={"timeout_s": math.inf})})
    with CellRunner() as runner:
        dated = runner.run(cell("torch.optim.AdamW", lr=datetime.date(2001, 12, 14)), ROOMY)
        unbounded = runner.run(cell("torch.optim.AdamW"), endless)
        after = runner.run(cell("torch.optim.AdamW"), ROOMY)
    assert dated.status == "construct_error" and dated.reason == "invalid_value"
    assert "cannot be passed" in (dated.error_message or "")
    assert unbounded.status == "crashed" and unbounded.id == after.id
    assert after.status == "ok"


def test_a_runner_that_cannot_start_says_why_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no torch in this environment' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(isolate.sys, "executable", str(fake))
    started = time.monotonic()
    with CellRunner() as runner, pytest.raises(isolate.RunnerError) as caught:
        runner.run(cell("torch.optim.AdamW"), TINY)
    assert time.monotonic() - started < 30
    assert "exit status 3" in str(caught.value) and "no torch in this environment" in str(caught.value)


def test_the_clock_charges_waits_to_no_phase_and_names_the_phase_that_ran_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(isolate.time, "monotonic", lambda: now[0])
    clock = isolate._Clock(train_s=10, bench_s=5)
    now[0] = 4  # trained 4 s
    clock.enter("wait")
    now[0] = 1000  # waited long for the machine: free
    clock.enter("bench")
    now[0] = 1004
    assert not clock.expired() and clock.left() == pytest.approx(1)
    now[0] = 1006
    assert clock.expired()
    record = isolate._timeout(cell("torch.optim.AdamW"), clock, 1006)
    assert "bench phase ran past bench.timeout_s = 5 s" in (record.error_message or "")
    assert "996.0 s spent waiting" in (record.error_message or "")


def test_a_benchmark_that_cannot_have_the_machine_keeps_its_cells_outcome(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(exclusive.LOCK_DIR_ENV, str(tmp_path))
    benching = ROOMY.model_copy(
        update={
            "bench": ROOMY.bench.model_validate(
                {
                    "cells": [{"optimizer": "torch.optim.*"}],
                    "d_model": 16,
                    "n_layers": 1,
                    "vocab_size": 64,
                    "seq_len": 8,
                    "warmup": 1,
                    "repeats": 3,
                    "timeout_s": 1,
                }
            )
        }
    )
    with CellRunner() as runner:
        runner.start()
        with exclusive.shared():  # another run's cell trains, and does not stop
            record = runner.run(cell("torch.optim.AdamW"), benching)
    assert record.status == "ok"
    assert record.bench is not None and "not free for a benchmark within 1 s" in (record.bench.not_measured or "")
