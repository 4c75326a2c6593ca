"""Hugging Face's Trainer: every name `TrainingArguments(optim=...)` accepts, built by `Trainer.create_optimizer()`.

A cell's kwargs are `TrainingArguments` fields (`learning_rate`, `weight_decay`, `optim_args`,
`optim_target_modules`, ...); the Trainer groups the cell's model itself (no decay on biases and norms) and
targets GaLore's and APOLLO's modules by name. The loop then trains as the Trainer does: no closure,
`optimizer.train()` where the optimizer has it (schedule-free), hooks for the layerwise variants (the Trainer's
`step()` is a no-op there), and LOMO's `fused_backward(loss, lr)` in place of `backward()`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import Any, cast

import torch

from harness.frameworks import Conventions, FrameworkBuild, has_train_eval

PREFIX = "transformers:"
_LOMO = ("lomo", "adalomo")


class TransformersAdapter:
    name = "transformers"
    distribution = "transformers"
    module = "transformers.trainer"  # what building imports (13 s on a busy 2-core machine): once per runner

    def names(self) -> list[str]:
        from transformers.training_args import OptimizerNames

        return [member.value for member in OptimizerNames]

    def accepts(self, optimizer: str) -> bool:
        return optimizer.startswith(PREFIX)

    def build(self, optimizer: str, model: torch.nn.Module, settings: Mapping[str, Any]) -> FrameworkBuild:
        from transformers import Trainer, TrainingArguments

        name = optimizer.removeprefix(PREFIX)
        device = next(model.parameters()).device
        with tempfile.TemporaryDirectory(prefix="harness-hf-") as output_dir:
            args = TrainingArguments(
                output_dir=output_dir,
                optim=name,
                report_to="none",
                use_cpu=device.type == "cpu",
                **dict(settings),
            )
            trainer = Trainer(model=model, args=args)
            built = trainer.create_optimizer()
        conventions = Conventions(
            train_eval=has_train_eval(built),
            closure=False,  # the Trainer calls `optimizer.step()` with no closure
            layerwise=name.endswith("_layerwise"),
            step=_lomo_step(args.learning_rate) if name in _LOMO else None,
        )
        return FrameworkBuild(built, conventions)


def _lomo_step(learning_rate: float) -> Any:
    def fused_backward(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """What the Trainer (through accelerate's `lomo_backward`) does with a LOMO optimizer: the update happens
        inside the backward pass."""
        cast(Any, optimizer).fused_backward(loss, learning_rate)

    return fused_backward


ADAPTER = TransformersAdapter()
