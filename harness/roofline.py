"""Bytes an optimizer step must move, and the device bandwidth to hold them against.

An element-wise optimizer step is memory bound: its floor is the time to stream the parameters,
gradients and per-parameter state through memory once. The ratio of that floor to the measured
step time says how close an implementation comes to the hardware.
"""

from __future__ import annotations

import statistics

import torch

from harness.memory import unique_params
from harness.timing import timer_ms

STREAM_MIB = {"cpu": 64, "cuda": 256}
"""Size of each tensor of the bandwidth probe: past the last-level cache, yet quick to run."""
_DEFAULT_STREAM_MIB = 64
BANDWIDTH_METHOD = "median of in-place dst.add_(src) on float32 tensors, counting 2 reads + 1 write"


def bytes_moved_per_step(optimizer: torch.optim.Optimizer) -> int:
    """Least bytes one step must move: read+write each parameter and its same-shaped state, read its grad.

    Call it after at least one step, once the optimizer has created its lazy state.
    """
    total = 0
    for param in unique_params(optimizer):
        if param.grad is None:
            continue
        total += 2 * _nbytes(param) + _nbytes(param.grad)
        for value in optimizer.state.get(param, {}).values():
            # Scalars such as `step` are read too, but a few bytes per tensor do not move the floor.
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                total += 2 * _nbytes(value)
    return total


def measure_device_bandwidth(device: torch.device, *, mib: int | None = None, repeats: int = 5) -> float:
    """Attainable streaming bandwidth of `device` in GB/s (1e9 bytes), by `BANDWIDTH_METHOD`.

    An in-place update, not a copy: optimizer steps update in place, while a copy's write stream
    also pays a read-for-ownership on CPUs, which understates what a step can reach by up to a third.
    On CPU it runs with the caller's current `torch.get_num_threads()`.
    """
    size = mib if mib is not None else STREAM_MIB.get(device.type, _DEFAULT_STREAM_MIB)
    numel = size * 2**20 // 4
    src = torch.full((numel,), 1e-7, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    dst.add_(src)  # warm-up: first touch of the pages, kernel load
    seconds = [_time_update(dst, src) for _ in range(repeats)]
    return 3 * src.nbytes / statistics.median(seconds) / 1e9


def _time_update(dst: torch.Tensor, src: torch.Tensor) -> float:
    return timer_ms(dst.device)(lambda: dst.add_(src), dst.device) / 1e3


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
