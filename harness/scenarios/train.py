"""`train`: the plain loop, the matrix's original question: does the optimizer build, step and learn?"""

from __future__ import annotations

from harness.scenarios.base import Context, Outcome, Scenario, conclude, take_steps


def run(ctx: Context) -> Outcome:
    last = take_steps(ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses)
    return conclude(ctx, ctx.losses, last, ctx.model, [], "", {})


SCENARIO = Scenario(
    name="train",
    invariant="the loss falls by train.min_rel_drop over train.steps steps, and stays finite",
    run=run,
)
