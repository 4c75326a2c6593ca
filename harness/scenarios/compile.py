"""`compile`: the optimizer step under `torch.compile`, PyTorch's compiled-optimizer recipe.

Forward and backward run eagerly; `optimizer.step()` runs inside a `torch.compile`d function. The outcome
is judged as `train`'s; the first call's time (tracing and compiling) is recorded as `compile_s`, apart
from the other steps' time. The parameters' distance from an eager run of the same steps is recorded too.
"""

from __future__ import annotations

import math
import time
from typing import Any

from harness.scenarios.base import Context, Outcome, Scenario, conclude, final_loss, take_steps
from harness.scenarios.params import moved_by

INVARIANT = "as train, with optimizer.step() under torch.compile; compile time recorded apart"
"""What the scenario checks, in the words its judgements use."""


def run(ctx: Context) -> Outcome:
    import torch._dynamo

    torch._dynamo.reset()  # a runner process serves many cells: each compiles afresh, under no cache limit
    optimizer = ctx.optimizer

    @torch.compile(fullgraph=False)
    def step() -> None:
        optimizer.step()

    times: list[float] = []
    for _ in range(ctx.steps):
        optimizer.zero_grad()
        loss = ctx.model.loss(ctx.inputs, ctx.targets)
        ctx.losses.append(loss.item())
        if not math.isfinite(ctx.losses[-1]):
            break
        loss.backward()
        started = time.perf_counter()
        step()
        if ctx.device_type == "cuda":
            torch.cuda.synchronize(ctx.cell.device)
        times.append(time.perf_counter() - started)
    last = final_loss(ctx.model, ctx.inputs, ctx.targets)
    numbers: dict[str, Any] = {"compile_s": times[0] if times else None}
    eager = ctx.fresh_model()
    take_steps(eager, ctx.rebuild(eager.parameters(), None), ctx.inputs, ctx.targets, len(times), [])
    numbers["max_abs_diff_from_eager"] = moved_by(ctx.model.parameters(), list(eager.parameters()))
    steps_s = sum(times[1:])
    numbers["step_ms_compiled"] = 1000 * steps_s / max(1, len(times) - 1)
    held = f"compiled in {numbers['compile_s']:.1f} s" if times else ""
    return conclude(ctx, ctx.losses, last, ctx.model, [], held, numbers, steps_s=steps_s)


SCENARIO = Scenario("compile", INVARIANT, run)
