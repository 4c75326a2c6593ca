"""`groups`: parameter groups as LitGPT, nanoGPT and the HF Trainer build them, plus a frozen (lr 0) group.

Groups: `decay` (weight matrices, weight_decay 0.1), `no_decay` (biases, norms and the token embedding,
weight_decay 0) and `frozen` (the position embedding, lr 0). Invariants:

- the lr-0 group's parameters stay bit-identical through every step, while the model learns;
- each group's step uses that group's own lr and weight_decay. From the same start and the same
  gradients the first update is taken with one group's setting changed: that group must move
  differently, and every other group exactly as before (a replay of the unchanged update gives the
  noise floor, zero on CPU).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.gpt import GPT
from harness.scenarios.base import Context, Outcome, Scenario, conclude, fmt, learning_rate, take_steps
from harness.scenarios.params import identical, moved_by, snapshot

INVARIANT = "the lr-0 group stays bit-identical; each group's step uses its own lr and weight_decay"
"""What the scenario checks, in the words its judgements use."""

DECAY = 0.1
"""The weight decay of the `decay` group (LitGPT's and nanoGPT's default)."""

NAMES = ("decay", "no_decay", "frozen")


def split(model: GPT) -> dict[str, list[torch.nn.Parameter]]:
    """The model's parameters by group: matrices decay; biases, norms and embeddings do not; `wpe` is frozen."""
    found: dict[str, list[torch.nn.Parameter]] = {name: [] for name in NAMES}
    for name, param in model.named_parameters():
        if name.startswith("wpe."):
            found["frozen"].append(param)
        elif param.dim() >= 2 and not name.startswith("wte."):
            found["decay"].append(param)
        else:
            found["no_decay"].append(param)
    return found


def param_groups(model: GPT, *, decay: float = DECAY, no_decay_lr: float | None = None) -> list[dict[str, Any]]:
    """The three groups as a framework hands them to the optimizer; `no_decay_lr` overrides that group's lr."""
    parts = split(model)
    no_decay: dict[str, Any] = {"params": parts["no_decay"], "weight_decay": 0.0}
    if no_decay_lr is not None:
        no_decay["lr"] = no_decay_lr
    return [
        {"params": parts["decay"], "weight_decay": decay},
        no_decay,
        {"params": parts["frozen"], "lr": 0.0, "weight_decay": 0.0},
    ]


def _first_steps(ctx: Context, steps: int | None = None, **change: Any) -> tuple[int, dict[str, list[torch.Tensor]]]:
    """Each group's parameters after the first step that moves any, from the start, with `change` applied.

    Some optimizers only gather statistics on their first step (timm's ADOPT), so the probe steps until
    something moves (at most 3 steps), or exactly `steps` times when given.
    """
    model = ctx.fresh_model()
    start = snapshot(model.parameters())
    optimizer = ctx.rebuild(param_groups(model, **change), None)
    torch.manual_seed(ctx.settings.train.seed)
    taken = 0
    while taken < (steps or 3):
        take_steps(model, optimizer, ctx.inputs, ctx.targets, 1, [])
        taken += 1
        if steps is None and not identical(model.parameters(), start):
            break
    return taken, {name: [p.detach().clone() for p in params] for name, params in split(model).items()}


def _differences(a: dict[str, list[torch.Tensor]], b: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    return {name: moved_by(a[name], b[name]) for name in NAMES}


def run(ctx: Context) -> Outcome:
    frozen_start = [p.detach().clone() for p in split(ctx.model)["frozen"]]
    last = take_steps(ctx.model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses)
    broken: list[str] = []
    frozen_moved = moved_by(split(ctx.model)["frozen"], frozen_start)
    numbers: dict[str, Any] = {"frozen_moved": frozen_moved}
    if frozen_moved != 0.0:
        broken.append(f"group 'frozen' has lr 0 but its parameters moved by {fmt(frozen_moved)} over {ctx.steps} steps")

    first, reference = _first_steps(ctx)
    noise = max(_differences(_first_steps(ctx, first)[1], reference).values())
    floor = 10 * noise
    numbers.update(replay_noise=noise, probe_steps=first)
    probes: list[tuple[str, str, dict[str, Any]]] = []
    if "weight_decay" in ctx.optimizer.defaults:
        probes.append(("decay", f"weight_decay {DECAY} → 0", {"decay": 0.0}))
    else:
        numbers["weight_decay"] = "not an option of this optimizer: not checked"
    base_lr = learning_rate(ctx.optimizer.param_groups[0].get("lr"))
    if base_lr:
        probes.append(("no_decay", f"lr {fmt(base_lr)} → {fmt(base_lr / 2)}", {"no_decay_lr": base_lr / 2}))
    else:
        numbers["lr"] = "the default lr is not a positive number: not checked"
    for group, what, change in probes:
        diffs = _differences(_first_steps(ctx, first, **change)[1], reference)
        numbers[f"{group}: {what}"] = diffs
        if diffs[group] <= floor:
            broken.append(
                f"group '{group}' changed {what} but its first update moved it by {fmt(diffs[group])} "
                f"from the unchanged step (replay noise {fmt(noise)}): the step did not use the group's own value"
            )
        for other in NAMES:
            if other != group and diffs[other] > floor:
                broken.append(
                    f"only group '{group}' changed {what}, yet group '{other}' moved by {fmt(diffs[other])} "
                    f"from the unchanged step: its step used another group's value"
                )
    checked = " and ".join(what.split()[0] for _, what, _ in probes)
    held = "the lr-0 group stayed bit-identical" + (f"; each group's step used its own {checked}" if checked else "")
    return conclude(ctx, ctx.losses, last, ctx.model, broken, held, numbers)


SCENARIO = Scenario("groups", INVARIANT, run, params=param_groups)
