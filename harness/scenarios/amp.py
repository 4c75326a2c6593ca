"""`amp`: mixed precision as trainers run it, with one step whose gradient is infinite on purpose.

On CPU: a run under `torch.autocast("cpu", bfloat16)` (as bf16 trainers run it, no scaler), then a run
under float16 autocast with `torch.amp.GradScaler("cpu")` where this torch supports it. On CUDA: float16
autocast with `torch.amp.GradScaler("cuda")`. In the scaler run, step `steps // 2` gets an inf in one
gradient. Invariants: that step leaves every parameter bit-identical, the scale drops, and training
goes on and learns. An optimizer that takes `grad_scale` / `found_inf` itself
(`_step_supports_amp_scaling`, torch's fused ones) must skip the step on its own.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from harness.gpt import GPT
from harness.scenarios.base import (
    Context,
    Outcome,
    Scenario,
    conclude,
    final_loss,
    fmt,
    judge_loss,
    second_order_context,
    take_steps,
)
from harness.scenarios.params import identical, moved_by, snapshot

INVARIANT = "under autocast + GradScaler an inf-gradient step changes nothing, the scale drops, training learns"
"""What the scenario checks, in the words its judgements use."""

INIT_SCALE = 2.0**10
"""Low enough that a 233k-parameter GPT's float16 gradients do not overflow: the only skipped step is ours."""


def _autocast(device_type: str, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    return functools.partial(torch.autocast, device_type, dtype=dtype)


def float16_scaler_support(device_type: str) -> str | None:
    """None when float16 autocast and a GradScaler work on `device_type` in this torch; else why not."""
    try:
        torch.amp.GradScaler(device_type)
        with torch.autocast(device_type, dtype=torch.float16):
            probe = torch.ones(2, 2, device=device_type) @ torch.ones(2, 2, device=device_type)
        if probe.dtype != torch.float16:
            return f"torch {torch.__version__} does not autocast to float16 on {device_type}"
    except Exception as exc:  # the answer to "does this torch support it here", not a failure
        return f"torch {torch.__version__} cannot run float16 autocast with a GradScaler on {device_type}: {exc}"
    return None


def scaled_run(ctx: Context, model: GPT, optimizer: torch.optim.Optimizer, losses: list[float]) -> dict[str, Any]:
    """Train under float16 autocast with a GradScaler, an inf gradient at the middle step; what that step did."""
    device_type = ctx.device_type
    autocast = _autocast(device_type, torch.float16)
    scaler = torch.amp.GradScaler(device_type, init_scale=INIT_SCALE)
    params = [p for p in model.parameters() if p.requires_grad]
    inf_step = ctx.steps // 2
    found: dict[str, Any] = {"inf_step": inf_step}
    second_order = bool(getattr(optimizer, "is_second_order", False))
    for index in range(ctx.steps):
        optimizer.zero_grad()
        with second_order_context(second_order):  # timm's Adahessian differentiates the gradients, as in take_steps
            with autocast():
                loss = model.loss(ctx.inputs, ctx.targets)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            scaler.scale(loss).backward(create_graph=second_order)
        if index == inf_step:
            grad = next(p.grad for p in params if p.grad is not None)
            with torch.no_grad():
                grad.view(-1)[0] = math.inf
            before, scale_before = snapshot(params), scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if index == inf_step:
            found.update(
                unchanged=identical(params, before),
                moved_by=moved_by(params, before),
                scale_before=scale_before,
                scale_after=scaler.get_scale(),
            )
    found["final_scale"] = scaler.get_scale()
    found["final_loss"] = final_loss(model, ctx.inputs, ctx.targets, autocast=autocast)
    return found


def _judge_inf_step(found: dict[str, Any], losses: list[float]) -> list[str]:
    if "unchanged" not in found:
        return []  # training went nonfinite before the inf step: judged by the loss
    broken = []
    if not found["unchanged"]:
        broken.append(
            f"the step with an inf gradient (step {found['inf_step'] + 1}) moved the parameters by "
            f"{fmt(found['moved_by'])}; GradScaler's found_inf must make it a no-op"
        )
    if not found["scale_after"] < found["scale_before"]:
        broken.append(
            f"after the inf gradient the loss scale went {fmt(found['scale_before'])} → {fmt(found['scale_after'])}; "
            "it must drop"
        )
    return broken


def run(ctx: Context) -> Outcome:
    numbers: dict[str, Any] = {}
    if ctx.device_type == "cpu":
        bf16 = _autocast("cpu", torch.bfloat16)
        last = take_steps(ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses, autocast=bf16)
        numbers["bfloat16_autocast"] = {"initial_loss": ctx.losses[0], "final_loss": last}
        unsupported = float16_scaler_support("cpu")
        if unsupported:
            numbers["float16_scaler"] = unsupported
            return conclude(ctx, ctx.losses, last, ctx.model, [], f"bfloat16 autocast ran ({unsupported})", numbers)
        model = ctx.fresh_model()
        scaled_losses: list[float] = []
        found = scaled_run(ctx, model, ctx.rebuild(model.parameters(), None), scaled_losses)
        numbers["float16_scaler"] = found
        broken = _judge_inf_step(found, scaled_losses)
        status, about = judge_loss(
            [*scaled_losses, found["final_loss"]],
            ctx.settings.train.min_rel_drop,
            params_finite=all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        )
        if broken:
            return Outcome("mismatch", "; ".join(broken) + f" (float16 + GradScaler: {about})", last, numbers)
        if status != "ok":
            return Outcome(status, f"float16 + GradScaler: {about}", found["final_loss"], numbers)
        numbers["float16_scaler"]["judgement"] = about
    else:
        found = scaled_run(ctx, ctx.model, ctx.optimizer, ctx.losses)
        numbers["float16_scaler"] = found
        last = found["final_loss"]
        broken = _judge_inf_step(found, ctx.losses)
    held = (
        f"the inf-gradient step left the parameters bit-identical and the scale went "
        f"{fmt(found.get('scale_before', math.nan))} → {fmt(found.get('scale_after', math.nan))}"
    )
    return conclude(ctx, ctx.losses, last, ctx.model, broken, held, numbers)


SCENARIO = Scenario("amp", INVARIANT, run)
