"""`resume`: save the optimizer's state as every trainer does, load it safely, and continue.

N = steps // 2 steps, then `torch.save(optimizer.state_dict())` to bytes, `torch.load(weights_only=True)`
(torch's default since 2.6), a fresh optimizer built through the same builder over the same parameters,
`load_state_dict`, and M = steps - N more steps. Invariant: the parameters match an uninterrupted run of
N + M steps within `TOLERANCE[dtype]` (exactly, on CPU, for a correct optimizer). A state dict that
loads only with `weights_only=False` is a `mismatch` with reason `weights_only_load`.

Recorded beside it: how far a resume *without* the state would land (what the state carries), and, for
an optimizer with several implementations, whether state saved under `fused=True` takes the same next
step under the for-loop implementation (within the bench's parity tolerance).
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Mapping
from typing import Any

import torch

from harness.gpt import GPT
from harness.scenarios.base import Context, Outcome, Scenario, conclude, fmt, take_steps
from harness.scenarios.params import moved_by, snapshot

INVARIANT = "save, weights_only load and resume match the uninterrupted run within a per-dtype tolerance"
"""What the scenario checks, in the words its judgements use."""

TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 1e-6,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}
"""Largest absolute parameter difference a resumed run may show against the uninterrupted one, per dtype."""


class NotWeightsOnly(Exception):
    """The state dict loads only with `torch.load(weights_only=False)`."""


def save_and_load(state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` through `torch.save` to bytes and back through `torch.load(weights_only=True)`.

    Raises `NotWeightsOnly` when the safe load refuses it but an unsafe load would not.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    try:
        return torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as exc:
        try:
            torch.load(io.BytesIO(blob), weights_only=False)
        except Exception:
            raise exc from None  # it does not load at all: an ordinary step error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotWeightsOnly(first[:300]) from exc


def _implementations(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, bool]]:
    """`fused` and `forloop` flags when the class takes both `fused` and `foreach`; else {}."""
    try:
        names = set(inspect.signature(type(optimizer)).parameters)
    except (TypeError, ValueError):
        return {}
    if not {"fused", "foreach"} <= names:
        return {}
    return {"fused": {"fused": True, "foreach": False}, "forloop": {"fused": False, "foreach": False}}


def _copy_of(ctx: Context, model: GPT) -> GPT:
    other = ctx.fresh_model()
    other.load_state_dict(model.state_dict())
    return other


def _continue(ctx: Context, model: GPT, state: Mapping[str, Any] | None, steps: int, flags: Any = None) -> GPT:
    """A copy of `model` stepped `steps` more times by a fresh optimizer given `state` (none: a cold restart).

    `flags` (implementation hints) are set on the new optimizer's groups after the load too, since
    `load_state_dict` restores the saved ones.
    """
    model = _copy_of(ctx, model)
    optimizer = ctx.rebuild(model.parameters(), flags)
    if state is not None:
        optimizer.load_state_dict(dict(state))
        for group in optimizer.param_groups:  # load_state_dict brings back the saved flags: the new ones win
            group.update(flags or {})
    take_steps(model, optimizer, ctx.inputs, ctx.targets, steps, [])
    return model


def _fused_under_forloop(ctx: Context, first: int) -> dict[str, Any]:
    """Save under fused, take one step under fused and one under for-loop: how far apart do they end?"""
    flags = _implementations(ctx.optimizer)
    if not flags:
        return {}
    try:
        model = ctx.fresh_model()
        optimizer = ctx.rebuild(model.parameters(), flags["fused"])
        take_steps(model, optimizer, ctx.inputs, ctx.targets, first, [])
        # Each continuation loads its own copy: load_state_dict may adopt the loaded tensors, which then move.
        # One step after the load: longer, and the two implementations' own rounding grows through Adam's moments.
        fused = _continue(ctx, model, save_and_load(optimizer.state_dict()), 1, flags["fused"])
        forloop = _continue(ctx, model, save_and_load(optimizer.state_dict()), 1, flags["forloop"])
    except Exception as exc:  # recorded, not judged: fused may not exist on this device and dtype
        return {"fused_state_under_forloop": f"{type(exc).__name__}: {str(exc)[:200]}"}
    diff = moved_by(forloop.parameters(), list(fused.parameters()))
    tolerance = ctx.settings.bench.tolerances.get(str(ctx.dtype).removeprefix("torch."))
    atol = tolerance.atol if tolerance is not None else None
    return {
        "fused_state_under_forloop": {
            "max_abs_diff": diff,
            "atol": atol,
            "same": atol is not None and diff <= atol,
        }
    }


def run(ctx: Context) -> Outcome:
    first = ctx.steps // 2
    then = ctx.steps - first
    last = take_steps(ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses)
    uninterrupted = snapshot(ctx.model.parameters())

    model = ctx.fresh_model()
    optimizer = ctx.rebuild(model.parameters(), None)
    take_steps(model, optimizer, ctx.inputs, ctx.targets, first, [])
    numbers: dict[str, Any] = {"steps_before_save": first, "steps_after_load": then}
    try:
        state = save_and_load(optimizer.state_dict())
    except NotWeightsOnly as exc:
        numbers["weights_only_error"] = str(exc)
        judgement = (
            f"the optimizer's state_dict() loads only with torch.load(weights_only=False), which torch no longer "
            f"does by default: {exc}"
        )
        return Outcome("mismatch", judgement, last, numbers, reason="weights_only_load")
    resumed = _continue(ctx, model, state, then)
    cold = _continue(ctx, model, None, then)
    diff = moved_by(resumed.parameters(), uninterrupted)
    without_state = moved_by(cold.parameters(), uninterrupted)
    tolerance = TOLERANCE.get(ctx.dtype, 1e-2)
    if ctx.device_type != "cpu":  # a GPU's kernels may not repeat bit for bit: measure how far a replay lands
        replay = _continue(ctx, ctx.fresh_model(), None, ctx.steps)
        numbers["replay_noise"] = noise = moved_by(replay.parameters(), uninterrupted)
        tolerance = max(tolerance, 10 * noise)
    numbers.update(max_abs_diff=diff, tolerance=tolerance, max_abs_diff_without_state=without_state)
    numbers.update(_fused_under_forloop(ctx, first))
    broken = []
    if not diff <= tolerance:
        carried = (
            f"; a restart with no state at all lands {fmt(without_state)} away"
            if without_state
            else "; the state carries nothing (a cold restart lands on the same parameters)"
        )
        broken.append(
            f"resumed after {first} of {ctx.steps} steps, the parameters differ from the uninterrupted run by "
            f"{fmt(diff)}, over the {fmt(tolerance)} allowed{carried}"
        )
    held = f"resumed after {first} steps it matches the uninterrupted run to {fmt(diff)} (≤ {fmt(tolerance)})"
    return conclude(ctx, ctx.losses, last, ctx.model, broken, held, numbers)


SCENARIO = Scenario("resume", INVARIANT, run)
