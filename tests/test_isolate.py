"""harness.isolate: the runner process survives what a cell does to it, and blames the right cell."""

from __future__ import annotations

import pytest

from harness.cells import Cell, Record
from harness.isolate import CellRunner, _blame, _describe_exit
from harness.settings import Settings

TINY = Settings(
    train={"steps": 4, "timeout_s": 3},
    model={"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 8},
    bench={"enabled": False},
)


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
