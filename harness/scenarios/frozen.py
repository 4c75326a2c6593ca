"""`frozen`: parameters with `requires_grad=False` inside the optimizer's groups, as fine-tuning hands them over.

Frameworks that build the optimizer from `model.parameters()` (a Lightning module's `configure_optimizers`, many
LoRA and fine-tuning scripts) give it every parameter, the frozen ones too: their `.grad` stays None. Here each
block's attention (its weight matrices and biases) and first LayerNorm, and the position embedding, are frozen
before the optimizer is built, and every parameter sits in one group with weight_decay 0.1 at the cell's lr.
Invariant: the frozen parameters stay bit-identical through every step, weight decay included, while the rest
learns. (The `groups` scenario's lr-0 group cannot catch a decayed frozen parameter: lr 0 x decay is 0.)
"""

from __future__ import annotations

from typing import Any

import torch

from harness.gpt import GPT
from harness.scenarios.base import Context, Outcome, Scenario, conclude, fmt, take_steps
from harness.scenarios.params import identical, moved_by, snapshot

INVARIANT = "parameters with requires_grad=False (grad None) in the groups stay bit-identical, weight decay included"
"""What the scenario checks, in the words its judgements use."""

DECAY = 0.1
"""The weight decay of the one group (LitGPT's and nanoGPT's default): nonzero, so a decayed frozen param moves."""


def frozen(model: GPT) -> list[torch.nn.Parameter]:
    """The parameters this scenario freezes: every block's attention and first LayerNorm, the position embedding."""
    return [
        param
        for name, param in model.named_parameters()
        if name.startswith("wpe.") or ".attn." in name or ".ln_1." in name
    ]


def freeze(model: GPT) -> list[dict[str, Any]]:
    """Freeze `frozen(model)` and hand every parameter over in one group with weight_decay `DECAY`."""
    for param in frozen(model):
        param.requires_grad_(False)
    return [{"params": list(model.parameters()), "weight_decay": DECAY}]


def run(ctx: Context) -> Outcome:
    held = frozen(ctx.model)
    trainable = [p for p in ctx.model.parameters() if p.requires_grad]
    start, trainable_start = snapshot(held), snapshot(trainable)
    last = take_steps(
        ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses, conventions=ctx.conventions
    )
    unchanged = identical(held, start)
    moved = 0.0 if unchanged else moved_by(held, start)
    numbers: dict[str, Any] = {
        "frozen_tensors": len(held),
        "frozen_elements": sum(p.numel() for p in held),
        "frozen_moved": moved,
        "frozen_with_state": sum(1 for p in held if ctx.optimizer.state.get(p)),  # memory spent on them
        "frozen_with_grad": sum(1 for p in held if p.grad is not None),
        "trainable_moved": moved_by(trainable, trainable_start),
    }
    decay = f"weight_decay {DECAY} in their group"
    if "weight_decay" not in ctx.optimizer.defaults:
        numbers["weight_decay"] = "not an option of this optimizer: the group carries it unused"
        decay = "their group's weight_decay is not an option of this optimizer"
    broken: list[str] = []
    if not unchanged:
        broken.append(
            f"{len(held)} parameters with requires_grad=False (grad None; {decay}) moved by {fmt(moved)} over "
            f"{ctx.steps} steps; a parameter without a gradient must stay bit-identical"
        )
    sentence = f"the {len(held)} parameters with requires_grad=False (grad None; {decay}) stayed bit-identical"
    return conclude(ctx, ctx.losses, last, ctx.model, broken, sentence, numbers)


SCENARIO = Scenario("frozen", INVARIANT, run, params=freeze)
