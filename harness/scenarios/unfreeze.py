"""`unfreeze`: a param group joins mid-run, as fine-tuning callbacks add one (Lightning's BackboneFinetuning).

The GPT trains with a small head beside it: a linear layer from the GPT's final features, detached, to the
vocabulary, whose loss is added to the GPT's (the losses recorded are the sum). The head starts frozen and
outside the optimizer; before step `steps // 2 + 1` it is unfrozen and
`optimizer.add_param_group({"params": head.parameters()})` adds it with the optimizer's defaults, as the
callback does. The head sees detached features, so it never changes the GPT's gradients. Invariants:

- the existing group (the GPT's parameters) ends exactly where a run of the same steps with nothing added ends
  (bit-identical on CPU; elsewhere within 10x the distance between two such runs);
- the added group steps: the head's parameters move;
- a state_dict round trip after the add works: `state_dict()` after step `save_at` (half-way from the add to the
  end) -> `load_state_dict()` into a fresh optimizer with the same groups (built through the cell's builder,
  the head's group added), then both continue to the end and land on the same parameters (the same bound).

Every run is seeded the same just before its steps, so an optimizer that draws random numbers draws the same.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn.functional as F

from harness.gpt import GPT
from harness.scenarios.base import Context, Outcome, Scenario, conclude, fmt, take_steps
from harness.scenarios.params import moved_by, snapshot

INVARIANT = (
    "after add_param_group mid-run the existing group matches a run where nothing was added, the added group "
    "steps, and a state_dict round trip continues the same"
)
"""What the scenario checks, in the words its judgements use."""


class WithHead(torch.nn.Module):
    """The GPT and a head on its final features, detached: the loss is the GPT's plus the head's."""

    def __init__(self, gpt: GPT, head: torch.nn.Linear):
        super().__init__()
        self.gpt = gpt
        self.head = head
        self.features: torch.Tensor | None = None
        self.hook = gpt.ln_f.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        self.features = output.detach()

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        main = self.gpt.loss(inputs, targets)  # the GPT's gradients are exactly those of its own loss
        assert self.features is not None  # set by the hook during the GPT's forward pass
        logits = self.head(self.features)
        return main + F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def with_head(gpt: GPT, seed: int) -> WithHead:
    """`gpt` with a frozen head drawn from `seed` (the global random state untouched), on the GPT's device and dtype."""
    weight = gpt.wte.weight
    head: torch.nn.Linear = cast(Any, torch.nn.utils.skip_init)(  # untyped in torch; draws nothing
        torch.nn.Linear, gpt.settings.d_model, gpt.settings.vocab_size, device=weight.device, dtype=weight.dtype
    )
    drawn = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    with torch.no_grad():
        head.weight.copy_(drawn)
        head.bias.zero_()
    head.requires_grad_(False)
    return WithHead(gpt, head)


def unfreeze(optimizer: torch.optim.Optimizer, model: WithHead) -> None:
    """What BackboneFinetuning does: make the head trainable and add it as a new group, with the defaults."""
    model.head.requires_grad_(True)
    optimizer.add_param_group({"params": list(model.head.parameters())})


def _copy_of(ctx: Context, model: WithHead) -> WithHead:
    other = with_head(ctx.fresh_model(), ctx.settings.train.seed)
    other.load_state_dict(model.state_dict())
    other.head.requires_grad_(model.head.weight.requires_grad)
    return other


def _nothing_added(ctx: Context) -> list[torch.Tensor]:
    """The GPT's parameters after `steps` steps of a fresh optimizer over it, the head never added (nor trained)."""
    model = with_head(ctx.fresh_model(), ctx.settings.train.seed)
    optimizer = ctx.rebuild(model.gpt.parameters(), None)
    torch.manual_seed(ctx.settings.train.seed)
    try:
        take_steps(model, optimizer, ctx.inputs, ctx.targets, ctx.steps, [])
    finally:
        model.hook.remove()
    return snapshot(model.gpt.parameters())


def run(ctx: Context) -> Outcome:
    add_at = ctx.steps // 2
    save_at = add_at + (ctx.steps - add_at) // 2
    model = with_head(ctx.model, ctx.settings.train.seed)
    head_start = snapshot(model.head.parameters())
    saved: dict[str, Any] = {}

    def before_step(index: int) -> None:
        if index == add_at:
            unfreeze(ctx.optimizer, model)

    def after_step(index: int) -> None:
        if index + 1 == save_at:
            try:
                saved["state"] = copy.deepcopy(ctx.optimizer.state_dict())
            except Exception as exc:  # judged below: the round trip failed
                saved["error"] = f"state_dict() raised {type(exc).__name__}: {exc}"
            saved["model"] = _copy_of(ctx, model)
            saved["random_state"] = torch.get_rng_state()  # the copy continues with the draws the original makes

    torch.manual_seed(ctx.settings.train.seed)
    try:
        last = take_steps(
            model, ctx.optimizer, ctx.inputs, ctx.targets, ctx.steps, ctx.losses,
            before_step=before_step, after_step=after_step, conventions=ctx.conventions,
        )  # fmt: skip
    finally:
        model.hook.remove()
    numbers: dict[str, Any] = {"added_before_step": add_at + 1, "round_trip_after_step": save_at}
    if len(ctx.losses) < ctx.steps:  # the loss went nonfinite: the loss's verdict says so
        return conclude(ctx, ctx.losses, last, ctx.model, [], "", numbers)

    reference = _nothing_added(ctx)
    tolerance = 0.0
    if ctx.device_type != "cpu":  # a GPU's kernels may not repeat bit for bit: measure how far a replay lands
        noise = moved_by(_nothing_added(ctx), reference)
        numbers["replay_noise"] = noise
        tolerance = 10 * noise
    existing = moved_by(ctx.model.parameters(), reference)
    added = moved_by(model.head.parameters(), head_start)
    numbers.update(existing_max_abs_diff=existing, added_moved=added, tolerance=tolerance)
    round_trip = _round_trip(ctx, model, saved, numbers)

    broken: list[str] = []
    where = f"after add_param_group before step {add_at + 1} of {ctx.steps}"
    if not existing <= tolerance:
        broken.append(
            f"{where}, the existing group's parameters differ from a run where nothing was added by {fmt(existing)}, "
            f"over the {fmt(tolerance)} allowed: adding a group changed the existing group's steps"
        )
    if not added > 0.0:
        broken.append(
            f"the group added before step {add_at + 1} never stepped: its parameters moved by {fmt(added)} in the "
            f"{ctx.steps - add_at} steps after add_param_group"
        )
    if isinstance(round_trip, str):
        broken.append(round_trip)
    elif not round_trip <= tolerance:
        broken.append(
            f"state_dict() -> load_state_dict() into a fresh optimizer with the same groups after step {save_at}, "
            f"the two runs continued to step {ctx.steps} differ by {fmt(round_trip)}, over the {fmt(tolerance)} allowed"
        )
    held = (
        f"{where} the existing group stayed {_within(existing, tolerance)} a run where nothing was added, the added "
        f"group moved by {fmt(added)}, and a state_dict round trip after step {save_at} continued "
        f"{_within(round_trip, tolerance) if isinstance(round_trip, float) else round_trip} the run that kept its state"
    )
    return conclude(ctx, ctx.losses, last, ctx.model, broken, held, numbers)


def _within(diff: float, tolerance: float) -> str:
    return "bit-identical to" if diff == 0.0 else f"within {fmt(diff)} (≤ {fmt(tolerance)}) of"


def _round_trip(ctx: Context, model: WithHead, saved: dict[str, Any], numbers: dict[str, Any]) -> float | str:
    """How far the run that loaded the saved state lands from the one that kept it; a sentence when it failed."""
    if "error" in saved:
        numbers["round_trip_error"] = saved["error"]
        return f"the state_dict round trip after add_param_group failed: {saved['error']}"
    copied: WithHead = saved["model"]
    optimizer = ctx.rebuild(copied.gpt.parameters(), None)
    optimizer.add_param_group({"params": list(copied.head.parameters())})
    try:
        optimizer.load_state_dict(saved["state"])
    except Exception as exc:
        numbers["round_trip_error"] = error = f"load_state_dict() raised {type(exc).__name__}: {exc}"
        return f"the state_dict round trip after add_param_group failed: {error}"
    torch.set_rng_state(saved["random_state"])
    try:
        take_steps(copied, optimizer, ctx.inputs, ctx.targets, ctx.steps - numbers["round_trip_after_step"], [])
    finally:
        copied.hook.remove()
    diff = moved_by(copied.parameters(), snapshot(model.parameters()))
    numbers["round_trip_max_abs_diff"] = diff
    return diff


SCENARIO = Scenario("unfreeze", INVARIANT, run)
