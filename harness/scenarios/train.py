"""`train`: the plain loop, the matrix's original question: does the optimizer build, step and learn?"""

from __future__ import annotations

from harness.scenarios.base import Context, Outcome, Scenario, conclude, take_steps

INVARIANT = "the loss falls by train.min_rel_drop over train.steps steps, and stays finite"
"""What the scenario checks, in the words its judgements use."""


def run(ctx: Context) -> Outcome:
    last = take_steps(
        ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses, conventions=ctx.conventions
    )
    return conclude(ctx, ctx.losses, last, ctx.model, [], "", {})


SCENARIO = Scenario("train", INVARIANT, run)
