"""`schedule`: an LR scheduler stepped every step, LitGPT's linear warm-up then cosine, through lr 0.

Warm-up: `LambdaLR(step / warmup)` for `warmup = max(1, steps // 5)` steps, so the first step's lr is 0;
then `CosineAnnealingLR` down to 0 at the last step; joined by `SequentialLR`, as LitGPT does.
Invariants: the steps whose lr is 0 (the first and the last) leave every parameter bit-identical, and the
lr in each group at each step is the schedule's. An optimizer that cached its lr at construction moves
at those steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, SequentialLR

from harness.scenarios.base import Context, Outcome, Scenario, conclude, fmt, learning_rate, take_steps
from harness.scenarios.params import identical, moved_by, snapshot

INVARIANT = "with warm-up + cosine through lr 0, the lr-0 steps change nothing and each step's lr is the schedule's"
"""What the scenario checks, in the words its judgements use."""


def warmup_steps(steps: int) -> int:
    return max(1, steps // 5)


def expected_factor(step: int, steps: int) -> float:
    """The schedule's lr at `step` (0-based) as a fraction of the base lr."""
    warmup = warmup_steps(steps)
    if step < warmup:
        return step / warmup
    span = max(1, steps - warmup - 1)
    return (1 + math.cos(math.pi * (step - warmup) / span)) / 2


def scheduler(optimizer: torch.optim.Optimizer, steps: int) -> SequentialLR:
    warmup = warmup_steps(steps)
    return SequentialLR(
        optimizer,
        [
            LambdaLR(optimizer, lambda step: step / warmup),
            CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup - 1), eta_min=0.0),
        ],
        milestones=[warmup],
    )


def run(ctx: Context) -> Outcome:
    optimizer = ctx.optimizer
    base = [learning_rate(group.get("lr")) for group in optimizer.param_groups]
    schedule = scheduler(optimizer, ctx.steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    used: list[list[float | None]] = []
    zero_steps: dict[int, float] = {}
    before: list[torch.Tensor] = []

    def before_step(index: int) -> None:
        nonlocal before
        used.append([learning_rate(group.get("lr")) for group in optimizer.param_groups])
        if expected_factor(index, ctx.steps) == 0.0:
            before = snapshot(params)

    def after_step(index: int) -> None:
        if expected_factor(index, ctx.steps) == 0.0:
            zero_steps[index] = 0.0 if identical(params, before) else moved_by(params, before)
        schedule.step()

    last = take_steps(
        ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses,
        before_step=before_step, after_step=after_step,
    )  # fmt: skip
    broken: list[str] = []
    for index, moved in zero_steps.items():
        if moved != 0.0:
            broken.append(f"step {index + 1} has lr 0 but moved the parameters by {fmt(moved)}")
    off: list[str] = []
    for index, lrs in enumerate(used):
        factor = expected_factor(index, ctx.steps)
        for group, (lr, start) in enumerate(zip(lrs, base, strict=True)):
            if lr is None or start is None:
                continue
            if not math.isclose(lr, start * factor, rel_tol=1e-6, abs_tol=1e-12):
                off.append(f"step {index + 1} group {group}: lr {fmt(lr)}, schedule {fmt(start * factor)}")
    if off:
        broken.append(f"the lr at {len(off)} step(s) is not the schedule's ({'; '.join(off[:3])})")
    numbers: dict[str, Any] = {
        "warmup_steps": warmup_steps(ctx.steps),
        "lr_used": [lrs[0] for lrs in used],
        "moved_at_lr_0": {str(index + 1): moved for index, moved in zero_steps.items()},
    }
    zeros = ", ".join(str(index + 1) for index in zero_steps)
    held = (
        f"the lr followed the warm-up + cosine schedule and the lr-0 steps ({zeros}) left the parameters bit-identical"
    )
    return conclude(ctx, ctx.losses, last, ctx.model, broken, held, numbers)


SCENARIO = Scenario("schedule", INVARIANT, run)
