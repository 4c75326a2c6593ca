"""How much memory an optimizer's state takes, and the names of the devices it runs on."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from typing import Any

import torch


def unique_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter the optimizer updates, once, even if two groups name it."""
    seen: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            seen.setdefault(id(param), param)
    return list(seen.values())


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps, each storage counted once.

    That is `optimizer.state` and whatever its param groups hold besides `params` (GrokAdamW keeps its
    moments in `group["state"]`); a storage shared by many parameters (bitsandbytes' quantisation
    maps) counts once.
    """
    groups = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in _tensors([optimizer.state, groups]):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def state_bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    """State bytes per parameter element (AdamW in float32: 8; an 8-bit Adam: about 2)."""
    elements = sum(param.numel() for param in unique_params(optimizer))
    return state_bytes(optimizer) / elements if elements else 0.0


def device_name(device: str | torch.device) -> str:
    """`NVIDIA H100 80GB HBM3`, `AMD EPYC 7B13`, ...: what a reader of a report needs to know."""
    try:
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):  # a device torch does not know, or cannot reach
        return str(device)
    if device.type == "cpu":
        return _cpu_model() or platform.processor() or platform.machine() or "cpu"
    return str(device)


def _cpu_model() -> str | None:
    """The CPU's marketing name on Linux (`platform.processor()` only says `x86_64` there)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
