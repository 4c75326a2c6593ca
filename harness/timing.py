"""Timing an optimizer step fairly: CUDA events or the perf counter, a fixed CPU thread count, no GC pauses."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

_SETTLE_BYTES = 31 * 2**20


def timer_ms(device: torch.device) -> Callable[[Callable[[], Any], torch.device], float]:
    """How to time one step on `device`: CUDA events on CUDA, the perf counter elsewhere."""
    return cuda_event_ms if device.type == "cuda" else perf_counter_ms


def perf_counter_ms(step: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    began = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - began) * 1e3


def cuda_event_ms(step: Callable[[], Any], device: torch.device) -> float:
    # Synchronise first so the queue is empty: the events then span launch overhead too, which is
    # exactly what fused and foreach kernels exist to remove.
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


@contextlib.contextmanager
def bench_context(device: torch.device, threads: int) -> Iterator[None]:
    """A fixed CPU thread count (restored after), or the CUDA device made current for events and streams."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
        return
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
        _settle_cpu_allocator()
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _settle_cpu_allocator() -> None:
    """Free one block just under glibc's 32 MiB dynamic mmap-threshold ceiling.

    Until a process has freed a large block, glibc maps every big temporary afresh and returns it on
    free, so the first bench in a process would time page faults that a training process, long past
    its first large free, no longer pays (foreach steps ran ~1.7x slower). Elsewhere this costs nothing.
    """
    block = torch.empty(_SETTLE_BYTES, dtype=torch.uint8)
    del block


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
