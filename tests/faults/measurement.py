"""Optimizers that train fine but whose state a measurement cannot read (issue 15: measuring never changes a status)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SparseStateSGD(torch.optim.SGD):
    """SGD that keeps a sparse tensor in its state, as an embedding optimizer may: `untyped_storage()` raises."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param]["touched"] = torch.zeros(2, 2, device=param.device).to_sparse()
        return loss
