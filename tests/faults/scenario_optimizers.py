"""Optimizers that learn in a plain loop but break what a framework does around them: one per scenario.

Each is momentum SGD done right except for one thing, so `train` judges it `ok` and only its scenario
can tell: `IgnoresGroupLr` (groups), `MomentsOutsideState` (resume; `unfreeze`'s state_dict round trip too),
`IgnoresFoundInf` (amp), `CachesLr` (schedule), `DecaysWithoutGrad` (frozen), `ForgetsOnAddGroup` (unfreeze).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class MomentumSGD(torch.optim.Optimizer):
    """Momentum SGD with coupled weight decay, reading every setting from its group at every step."""

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def lr_of(self, index: int, group: dict[str, Any]) -> float:
        return group["lr"]

    def buffers(self, p: torch.Tensor) -> dict[str, Any]:
        return self.state[p]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                self.update(p, index, group)
        return loss

    def update(self, p: torch.Tensor, index: int, group: dict[str, Any]) -> None:
        """One parameter's step: none without a gradient; weight decay coupled into the gradient."""
        if p.grad is None:
            return
        self.descend(p, p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad, index, group)

    def descend(self, p: torch.Tensor, grad: torch.Tensor, index: int, group: dict[str, Any]) -> None:
        state = self.buffers(p)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        p.add_(state["momentum_buffer"], alpha=-self.lr_of(index, group))


class IgnoresGroupLr(MomentumSGD):
    """Uses the constructor's lr for every group: a group's own lr (and lr 0) is ignored."""

    def lr_of(self, index: int, group: dict[str, Any]) -> float:
        return self.defaults["lr"]


class CachesLr(MomentumSGD):
    """Reads each group's lr once, when the group is added: a scheduler's changes never reach the step."""

    cached_lrs: list[float]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.__dict__.setdefault("cached_lrs", []).append(self.param_groups[-1]["lr"])

    def lr_of(self, index: int, group: dict[str, Any]) -> float:
        return self.cached_lrs[index]


class MomentsOutsideState(MomentumSGD):
    """Keeps its momentum in an attribute, not in `self.state`: `state_dict()` cannot carry it."""

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, lr, momentum, weight_decay)
        self.moments: dict[torch.Tensor, dict[str, Any]] = {}

    def buffers(self, p: torch.Tensor) -> dict[str, Any]:
        return self.moments.setdefault(p, {})


class IgnoresFoundInf(MomentumSGD):
    """Claims to handle GradScaler itself (`_step_supports_amp_scaling`), unscales, and ignores `found_inf`.

    GradScaler hands such an optimizer `self.grad_scale` and `self.found_inf` for the step, as torch's
    fused optimizers read them; a correct one skips the step when `found_inf` is set.
    """

    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(grad_scale.to(p.grad.dtype))
        return super().step(closure)


class DecaysWithoutGrad(MomentumSGD):
    """Decays every parameter (decoupled, AdamW's way) before it looks for a gradient: a frozen one decays too."""

    def update(self, p: torch.Tensor, index: int, group: dict[str, Any]) -> None:
        p.mul_(1 - self.lr_of(index, group) * group["weight_decay"])
        if p.grad is not None:
            self.descend(p, p.grad, index, group)


class ForgetsOnAddGroup(MomentumSGD):
    """Starts its state afresh whenever a group is added, as an optimizer that keeps one flat buffer over all its
    parameters and re-creates it: the momentum the existing groups gathered is lost."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.state.clear()
