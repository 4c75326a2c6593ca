"""A framework helper with LitGPT's bug: it builds the optimizer from its name and always adds `fused=True`.

LitGPT's pretraining script passed `fused=True` on CUDA to whatever optimizer class the user named, which
broke `bitsandbytes.optim.AdamW8bit` and `grokadamw.GrokAdamW`. Here there is no CUDA, so the flag is
added unconditionally to take that path on any device.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import torch


def instantiate_optimizer(optimizer: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Import `optimizer` ("package.module.Class", or a torch.optim class name) and build it with `fused=True`."""
    module_name, class_name = optimizer.rsplit(".", 1) if "." in optimizer else ("torch.optim", optimizer)
    optimizer_cls = getattr(importlib.import_module(module_name), class_name)
    return optimizer_cls(params, **{**kwargs, "fused": True})
