"""harness.exclusive: a benchmark waits for training cells, and training cells wait for a benchmark.

The holders are separate processes, as pytest-xdist workers are; they report through events, and the
test waits on those events with deadlines, never on sleeps.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import pytest

from harness import exclusive

_CONTEXT = multiprocessing.get_context("spawn")  # a fresh interpreter, like a worker; no forked threads
_DEADLINE_S = 60.0
_BLOCKED_S = 1.0
"""How long a lock request must stay unanswered to count as blocked."""


def _hold(lock_dir: str, kind: str, held: ProcessEvent, release: ProcessEvent) -> None:
    os.environ[exclusive.LOCK_DIR_ENV] = lock_dir
    with exclusive.exclusive() if kind == "exclusive" else exclusive.shared():
        held.set()
        release.wait(_DEADLINE_S)


def _start_holder(lock_dir: Path, kind: str) -> tuple[BaseProcess, ProcessEvent]:
    """A process holding the `kind` lock until the returned event is set."""
    held, release = _CONTEXT.Event(), _CONTEXT.Event()
    process = _CONTEXT.Process(target=_hold, args=(str(lock_dir), kind, held, release), daemon=True)
    process.start()
    assert held.wait(_DEADLINE_S), f"the {kind} holder never took its lock"
    return process, release


def _request_in_thread(kind: str) -> tuple[threading.Event, threading.Event]:
    """Ask for a lock in a thread of this process; (entered, leave) events."""
    entered, leave = threading.Event(), threading.Event()

    def request() -> None:
        with exclusive.exclusive() if kind == "exclusive" else exclusive.shared():
            entered.set()
            leave.wait(_DEADLINE_S)

    threading.Thread(target=request, daemon=True).start()
    return entered, leave


def test_without_a_lock_directory_the_locks_take_nothing_and_never_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(exclusive.LOCK_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    done = threading.Event()

    def nest() -> None:
        with exclusive.exclusive(), exclusive.shared():  # with real locks this would wait for itself forever
            done.set()

    threading.Thread(target=nest, daemon=True).start()

    assert done.wait(_DEADLINE_S)
    assert list(tmp_path.iterdir()) == []  # no lock file anywhere


def test_a_benchmark_in_another_process_keeps_training_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(exclusive.LOCK_DIR_ENV, str(tmp_path))
    process, release = _start_holder(tmp_path, "exclusive")
    entered, leave = _request_in_thread("shared")

    assert not entered.wait(_BLOCKED_S), "a cell trained while another process benchmarked"
    release.set()
    assert entered.wait(_DEADLINE_S), "the cell never trained after the benchmark ended"
    leave.set()
    process.join(_DEADLINE_S)
    assert process.exitcode == 0


def test_training_cells_share_and_a_benchmark_waits_for_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(exclusive.LOCK_DIR_ENV, str(tmp_path))
    process, release = _start_holder(tmp_path, "shared")
    other_cell, other_leaves = _request_in_thread("shared")
    assert other_cell.wait(_DEADLINE_S), "two training cells could not run at once"
    other_leaves.set()

    bench, bench_leaves = _request_in_thread("exclusive")
    assert not bench.wait(_BLOCKED_S), "a benchmark started while another process trained"
    release.set()
    assert bench.wait(_DEADLINE_S), "the benchmark never started after the training ended"
    bench_leaves.set()
    process.join(_DEADLINE_S)
    assert process.exitcode == 0


def test_a_waiting_benchmark_goes_before_cells_that_come_after_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(exclusive.LOCK_DIR_ENV, str(tmp_path))
    process, release = _start_holder(tmp_path, "shared")
    bench, bench_leaves = _request_in_thread("exclusive")
    assert not bench.wait(_BLOCKED_S)  # waiting for the training cell

    late, late_leaves = _request_in_thread("shared")
    assert not late.wait(_BLOCKED_S), "a cell that came after a waiting benchmark went first"
    release.set()
    assert bench.wait(_DEADLINE_S)
    assert not late.is_set()
    bench_leaves.set()
    assert late.wait(_DEADLINE_S), "the cell never trained after the benchmark"
    late_leaves.set()
    process.join(_DEADLINE_S)
    assert process.exitcode == 0


def test_a_benchmark_that_cannot_have_the_machine_gives_up_after_its_bound(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(exclusive.LOCK_DIR_ENV, str(tmp_path))
    phases: list[str] = []
    exclusive.set_phase_listener(phases.append)
    try:
        with exclusive.shared():  # a hung training cell holds the machine
            started = time.monotonic()
            with pytest.raises(exclusive.MachineBusy, match=r"within 0\.2 s"), exclusive.exclusive(bound=0.2):
                pass
            waited = time.monotonic() - started
        with exclusive.exclusive(bound=1):  # once it is free, the next benchmark has it
            pass
    finally:
        exclusive.set_phase_listener(None)
    assert 0.2 <= waited < 2
    assert phases == ["wait", "train", "wait", "train", "wait", "bench", "train"]
