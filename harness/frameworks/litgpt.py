"""LitGPT: `litgpt.utils.instantiate_torch_optimizer` over class paths, with LitGPT's own handling of `fused`.

LitGPT's pretraining script hands the optimizer over as its config writes it (`{class_path, init_args}`) and adds
`fused=(device is CUDA)` on top, to whatever class the user named: the call that broke
`bitsandbytes.optim.AdamW8bit` and `grokadamw.GrokAdamW` before LitGPT 0.4.13 filtered kwargs by signature. A
cell's kwargs are the optimizer's `init_args`; a `fused` among them replaces the device rule, as a CUDA run would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from harness.frameworks import Conventions, FrameworkBuild, default_conventions


class LitGPTAdapter:
    name = "litgpt"
    distribution = "litgpt"
    module = "litgpt.utils"

    def names(self) -> list[str]:
        return []  # LitGPT names optimizers by class path: it has no vocabulary of its own

    def accepts(self, optimizer: str) -> bool:
        return ":" not in optimizer  # a class path (`bitsandbytes.optim.AdamW8bit`) or a torch name (`AdamW`)

    def build(self, optimizer: str, model: torch.nn.Module, settings: Mapping[str, Any]) -> FrameworkBuild:
        from litgpt.utils import instantiate_torch_optimizer

        init_args = dict(settings)
        device = next(model.parameters()).device
        fused = init_args.pop("fused", device.type == "cuda")  # litgpt/pretrain.py: fused=(fabric.device is CUDA)
        class_path = optimizer if "." in optimizer else f"torch.optim.{optimizer}"
        config = {"class_path": class_path, "init_args": init_args}
        built = instantiate_torch_optimizer(config, model.parameters(), fused=fused)
        conventions: Conventions = default_conventions(built)
        return FrameworkBuild(built, conventions)


ADAPTER = LitGPTAdapter()
