"""timm: `timm.optim.create_optimizer_v2` over timm's registry names (`timm:adamw`, `timm:*`).

timm's factory builds from the model: with weight decay it puts biases and norms in a group without it, and it
binds each optimizer's registered defaults. A cell's kwargs are the factory's keywords (`lr`, `weight_decay`,
`momentum`, ... and any the optimizer class takes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from harness.frameworks import FrameworkBuild, default_conventions

PREFIX = "timm:"


class TimmAdapter:
    name = "timm"
    distribution = "timm"
    module = "timm.optim"

    def names(self) -> list[str]:
        from timm.optim import list_optimizers

        return [name for name in list_optimizers() if isinstance(name, str)]

    def accepts(self, optimizer: str) -> bool:
        return optimizer.startswith(PREFIX)

    def build(self, optimizer: str, model: torch.nn.Module, settings: Mapping[str, Any]) -> FrameworkBuild:
        from timm.optim import create_optimizer_v2

        built = create_optimizer_v2(model, opt=optimizer.removeprefix(PREFIX), **dict(settings))
        return FrameworkBuild(built, default_conventions(built))


ADAPTER = TimmAdapter()
