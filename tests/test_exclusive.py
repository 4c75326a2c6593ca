"""harness.exclusive: a benchmark waits for training cells, and training cells wait for a benchmark."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness import exclusive


def test_without_a_lock_directory_both_locks_are_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(exclusive.LOCK_DIR_ENV, raising=False)
    with exclusive.exclusive(), exclusive.shared():
        pass  # no deadlock: nothing is locked


def test_a_benchmark_never_overlaps_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(exclusive.LOCK_DIR_ENV, str(tmp_path))
    events: list[str] = []

    def train(name: str) -> None:
        with exclusive.shared():
            events.append(f"{name}+")
            time.sleep(0.2)
            events.append(f"{name}-")

    def bench() -> None:
        with exclusive.exclusive():
            events.append("bench+")
            time.sleep(0.2)
            events.append("bench-")

    first = threading.Thread(target=train, args=("a",))
    first.start()
    time.sleep(0.05)
    benchmark = threading.Thread(target=bench)
    benchmark.start()
    time.sleep(0.05)
    late = threading.Thread(target=train, args=("b",))  # arrives while the benchmark waits: it must queue behind
    late.start()
    for thread in (first, benchmark, late):
        thread.join(5)

    assert events == ["a+", "a-", "bench+", "bench-", "b+", "b-"]


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
