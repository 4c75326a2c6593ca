"""A third-party framework adapter, registered by entry point in tests (`harness.frameworks` group).

Its vocabulary holds one name per training convention an adapter can declare, each built over the cell's model:
`sgd` (plain), `averaged` (train()/eval() modes, like schedule-free optimizers), `hooked` (updates in gradient
hooks, `step()` a no-op, like GaLore's layerwise variants) and `fused_backward` (a step function of the
framework's own, like LOMO). Each optimizer records what the loop did to it, so tests can see the conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from harness.frameworks import Conventions, FrameworkBuild

PREFIX = "toyfw:"


class Averaged(torch.optim.SGD):
    """SGD with train()/eval(): it refuses to step in eval mode, as a schedule-free optimizer would misbehave."""

    def __init__(self, params: Any, lr: float = 0.1):
        super().__init__(params, lr=lr)
        self.modes: list[str] = []
        self.training = False

    def train(self) -> None:
        self.modes.append("train")
        self.training = True

    def eval(self) -> None:
        self.modes.append("eval")
        self.training = False

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if not self.training:
            raise RuntimeError("Averaged.step() called in eval mode: call optimizer.train() first")
        return super().step(closure)


class Hooked(torch.optim.Optimizer):
    """Updates each parameter in its post-accumulate-grad hook; `step()` does nothing and never calls a closure."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.1):
        params = list(model.parameters())
        super().__init__(params, {"lr": lr})
        self.hook_updates = 0
        for param in params:
            param.register_post_accumulate_grad_hook(self._update)

    @torch.no_grad()
    def _update(self, param: torch.Tensor) -> None:
        param.add_(param.grad, alpha=-self.param_groups[0]["lr"])
        param.grad = None
        self.hook_updates += 1

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        return None


class FusedBackward(torch.optim.Optimizer):
    """Updates inside its own `fused_backward(loss, lr)`; `step()` raises, as LOMO's does."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.1):
        super().__init__(list(model.parameters()), {"lr": lr})
        self.fused_calls = 0

    @torch.no_grad()
    def fused_backward(self, loss: torch.Tensor, lr: float) -> None:
        with torch.enable_grad():
            loss.backward()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-lr)
                    param.grad = None
        self.fused_calls += 1

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        raise NotImplementedError("FusedBackward updates in fused_backward(); step() is not for it")


def _fused_backward(optimizer: Any, loss: torch.Tensor) -> None:
    optimizer.fused_backward(loss, optimizer.param_groups[0]["lr"])


class ToyAdapter:
    name = "toyfw"
    distribution = "toyfw"
    module = "torch"  # nothing of its own to import

    def names(self) -> list[str]:
        return ["sgd", "averaged", "hooked", "fused_backward"]

    def accepts(self, optimizer: str) -> bool:
        return optimizer.startswith(PREFIX)

    def build(self, optimizer: str, model: torch.nn.Module, settings: Mapping[str, Any]) -> FrameworkBuild:
        name = optimizer.removeprefix(PREFIX)
        lr = float(settings.get("learning_rate", 0.1))
        if name == "sgd":
            return FrameworkBuild(torch.optim.SGD(model.parameters(), lr=lr))
        if name == "averaged":
            return FrameworkBuild(Averaged(model.parameters(), lr=lr), Conventions(train_eval=True))
        if name == "hooked":
            return FrameworkBuild(Hooked(model, lr=lr), Conventions(layerwise=True))
        if name == "fused_backward":
            return FrameworkBuild(FusedBackward(model, lr=lr), Conventions(step=_fused_backward))
        raise ValueError(f"toyfw knows no optimizer {name!r}")


ADAPTER = ToyAdapter()
