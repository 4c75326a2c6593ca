"""Benchmarks time alone: a bench holds the machine while the training of other cells waits.

Parallel workers train cells under a shared lock; a benchmark takes the lock exclusively, so its
timings and its bandwidth measurement are not disturbed by cells on the other cores (or the same
GPU). A turnstile gives the benchmark priority, so a stream of short cells cannot starve it.
The locks live in the directory named by `HARNESS_LOCK_DIR`; without it both are no-ops.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR_ENV = "HARNESS_LOCK_DIR"


@contextmanager
def shared() -> Iterator[None]:
    """Held while a cell trains; many cells hold it at once."""
    with _hold(fcntl.LOCK_SH):
        yield


@contextmanager
def exclusive() -> Iterator[None]:
    """Held while a cell benchmarks; no cell trains meanwhile."""
    with _hold(fcntl.LOCK_EX):
        yield


@contextmanager
def _hold(mode: int) -> Iterator[None]:
    with _locks() as (turnstile, machine):
        if turnstile is None or machine is None:
            yield
            return
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # a waiting benchmark holds this, so new cells queue behind it
        fcntl.flock(machine, mode)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield


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
