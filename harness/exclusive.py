"""Benchmarks time alone: a bench holds the machine while the training of other cells waits.

Parallel workers train cells under a shared lock; a benchmark takes the lock exclusively, so its
timings and its bandwidth measurement are not disturbed by cells on the other cores (or the same
GPU). A turnstile gives the benchmark priority, so a stream of short cells cannot starve it.
The locks live in the directory named by `HARNESS_LOCK_DIR`; without it both are no-ops.

Time spent waiting for a lock is nobody's fault, so it is charged to no cell's deadline: each change
of phase (`wait`, `train`, `bench`) is told to the listener `harness.isolate` installs, and the
runner pauses the cell's clock while it waits. A training cell waits at most as long as a benchmark
may run (its own runner kills it at `bench.timeout_s`); a benchmark waits at most the `bound` it is
given (`bench.timeout_s`) and then raises `MachineBusy`, so its cell keeps its outcome without a figure.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

LOCK_DIR_ENV = "HARNESS_LOCK_DIR"

Phase = Literal["train", "wait", "bench"]
_listener: Callable[[Phase], None] | None = None
_POLL_S = 0.02


class MachineBusy(Exception):
    """A benchmark could not have the machine to itself within its bound."""


def set_phase_listener(listener: Callable[[Phase], None] | None) -> None:
    """Call `listener` at every change of phase (the runner's clock uses it); None to stop."""
    global _listener
    _listener = listener


def _tell(phase: Phase) -> None:
    if _listener is not None:
        _listener(phase)


@contextmanager
def shared() -> Iterator[None]:
    """Held while a cell trains; many cells hold it at once."""
    with _hold(fcntl.LOCK_SH, None):
        _tell("train")
        yield


@contextmanager
def exclusive(bound: float | None = None) -> Iterator[None]:
    """Held while a cell benchmarks; no cell trains meanwhile. Raises `MachineBusy` after `bound` seconds."""
    with _hold(fcntl.LOCK_EX, bound):
        _tell("bench")
        try:
            yield
        finally:
            _tell("train")


@contextmanager
def _hold(mode: int, bound: float | None) -> Iterator[None]:
    with _locks() as (turnstile, machine):
        if turnstile is None or machine is None:
            yield
            return
        _tell("wait")
        if bound is None:
            fcntl.flock(turnstile, fcntl.LOCK_EX)  # a waiting benchmark holds this, so new cells queue behind it
            fcntl.flock(machine, mode)
        else:
            _flock_within(turnstile, machine, mode, bound)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        except BaseException:
            _tell("train")
            raise


def _flock_within(turnstile: int, machine: int, mode: int, bound: float) -> None:
    deadline = time.monotonic() + bound
    for fd, lock in ((turnstile, fcntl.LOCK_EX), (machine, mode)):
        while True:
            try:
                fcntl.flock(fd, lock | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fcntl.flock(turnstile, fcntl.LOCK_UN)
                    _tell("train")
                    raise MachineBusy(
                        f"the machine was not free for a benchmark within {bound:g} s (bench.timeout_s): other "
                        "cells, of this run or another on the same machine, held it; no clean figure was taken."
                    ) from None
                time.sleep(_POLL_S)


@contextmanager
def _locks() -> Iterator[tuple[int | None, int | None]]:
    directory = os.environ.get(LOCK_DIR_ENV)
    if not directory:
        yield None, None
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    turnstile = os.open(Path(directory) / ".turnstile.lock", os.O_RDWR | os.O_CREAT, 0o644)
    machine = os.open(Path(directory) / ".machine.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield turnstile, machine
    finally:
        os.close(machine)  # closing releases any lock still held
        os.close(turnstile)
