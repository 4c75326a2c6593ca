"""What every scenario shares: the context it runs in, the outcome it returns, the training loop, the judging.

A scenario gets a `Context` (the cell, the small GPT, the optimizer the cell's builder made over the
scenario's parameters, and a way to build more through the same builder) and returns an `Outcome`:
`ok`, `no_learning` or `nonfinite` as the plain loop judges the loss, or `mismatch` when the run broke
the scenario's invariant, with a judgement that names the invariant and the numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

from harness.cells import Cell
from harness.frameworks import Conventions, default_conventions
from harness.gpt import GPT
from harness.settings import Settings
from harness.vocabulary import Reason, Status

Params = Any
"""What a builder gets as `params`: an iterable of tensors, or of param-group dicts."""

StepHook = Callable[[int], None]


class Trainable(Protocol):
    """What the loop trains: the GPT, or a module around it (`unfreeze`: the GPT and a head), by its loss."""

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Outcome:
    """A scenario's verdict on its cell: a status, a sentence, and the numbers behind them."""

    status: Status
    judgement: str
    final_loss: float | None
    numbers: dict[str, Any] = field(default_factory=dict)
    reason: Reason | None = None
    steps_s: float | None = None
    """Time of the steps when the scenario measures it itself (compile: without the compiling)."""


@dataclass(frozen=True)
class Context:
    """Everything one scenario run needs; `losses` collects the main run's losses as they come."""

    cell: Cell
    settings: Settings
    dtype: torch.dtype
    model: GPT
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    targets: torch.Tensor
    losses: list[float]
    rebuild: Callable[[Params, Mapping[str, Any] | None], torch.optim.Optimizer]
    """Another optimizer through the cell's own builder and kwargs (plus overrides) over other parameters."""
    fresh_model: Callable[[], GPT]
    """Another GPT with the cell's seed, device and dtype: the same weights as `model` had at the start."""
    conventions: Conventions | None = None
    """How the framework that built the optimizer trains it; None: as frameworks train one they did not build."""

    @property
    def steps(self) -> int:
        return self.settings.train.steps

    @property
    def device_type(self) -> str:
        return torch.device(self.cell.device).type


@dataclass(frozen=True)
class Scenario:
    """One way a framework drives the optimizer, and the invariant it checks."""

    name: str
    invariant: str
    run: Callable[[Context], Outcome]
    params: Callable[[GPT], Params] = lambda model: model.parameters()
    """What the cell's builder is given: plain parameters, or param groups."""


def take_steps(
    model: Trainable,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    losses: list[float],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    before_step: StepHook | None = None,
    after_step: StepHook | None = None,
    conventions: Conventions | None = None,
) -> float:
    """Take `steps` optimizer steps on one batch, appending each step's first loss to `losses`; the loss after.

    The loop follows `conventions` (by default those a framework follows with this optimizer,
    `harness.frameworks.default_conventions`): a closure only where the optimizer needs one (LBFGS evaluates it
    several times; only its first loss is recorded), `optimizer.train()` before the steps and `optimizer.eval()`
    before the loss after them where the optimizer has both, or the framework's own step function.
    A second-order optimizer (`optimizer.is_second_order`, e.g. timm's Adahessian) gets a graph of the
    gradients. `autocast` wraps each forward pass; `before_step(i)` / `after_step(i)` run around step i.
    Training stops early at the first loss that is not finite.
    """
    conventions = conventions or default_conventions(optimizer)
    create_graph = bool(getattr(optimizer, "is_second_order", False))
    forward = autocast or contextlib.nullcontext
    if conventions.train_eval:
        cast(Any, optimizer).train()  # schedule-free optimizers: torch's Optimizer has no train()
    for index in range(steps):
        evaluations = 0

        @torch.enable_grad()  # as torch's own optimizers do: some steps (timm's Adahessian) run under no_grad
        def closure() -> torch.Tensor:
            nonlocal evaluations
            optimizer.zero_grad()
            with forward():
                loss = model.loss(inputs, targets)
            if evaluations == 0:
                losses.append(loss.item())
            evaluations += 1
            if conventions.step is not None:
                conventions.step(optimizer, loss)  # the framework's own: the update happens in its backward
            else:
                loss.backward(create_graph=create_graph)
            return loss

        if before_step is not None:
            before_step(index)
        with second_order_context(create_graph):
            if conventions.closure:
                optimizer.step(cast(Callable[[], float], closure))  # torch's stub says float; a tensor is usual
                if evaluations == 0:
                    raise RuntimeError(f"{type(optimizer).__name__}.step(closure) never called the closure.")
            else:
                closure()  # zero_grad, forward, backward: a layerwise optimizer steps in its gradient hooks here
                if conventions.step is None:
                    optimizer.step()
        if after_step is not None:
            after_step(index)
        if not math.isfinite(losses[-1]):
            break  # judged `nonfinite` already; more steps on NaN only cost time (LBFGS: seconds)
    if conventions.train_eval:
        cast(Any, optimizer).eval()  # evaluation and checkpoints see the averaged weights
    return final_loss(model, inputs, targets, autocast=autocast)


def final_loss(
    model: Trainable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> float:
    with torch.no_grad(), (autocast or contextlib.nullcontext)():
        return model.loss(inputs, targets).item()


@contextlib.contextmanager
def second_order_context(create_graph: bool) -> Iterator[None]:
    """Attention that second-order steps can differentiate twice (the fused CPU kernels cannot)."""
    if not create_graph:
        yield
        return
    import warnings

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with warnings.catch_warnings(), sdpa_kernel([SDPBackend.MATH]):
        # create_graph=True warns of a reference cycle on every step; it is what a second-order step needs.
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        yield


def judge_loss(losses: Sequence[float], min_rel_drop: float, *, params_finite: bool = True) -> tuple[Status, str]:
    """`(status, sentence)`: `nonfinite`, `ok` (the last loss under the first by `min_rel_drop`) or `no_learning`.

    `losses` runs from the first step's loss to the loss after the last step.
    """
    if not losses:
        return "no_learning", "no loss was recorded"
    bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        return "nonfinite", f"loss became {losses[bad[0]]} at evaluation {bad[0] + 1} of {len(losses)}"
    if not params_finite:
        return "nonfinite", "the parameters hold NaN or infinity after the steps"
    initial, final = losses[0], losses[-1]
    change = (final - initial) / abs(initial) if initial else 0.0
    required = f"{min_rel_drop:.0%}"
    move = "fell" if final < initial else "rose" if final > initial else "stayed"
    summary = f"loss {move} {initial:.4g} → {final:.4g} ({change:+.0%})"
    if final < initial * (1 - min_rel_drop):
        return "ok", f"{summary}, more than the {required} required"
    return "no_learning", f"{summary}, not the {required} drop required"


def conclude(
    ctx: Context,
    losses: Sequence[float],
    last_loss: float,
    model: torch.nn.Module,
    broken: Sequence[str],
    held: str,
    numbers: dict[str, Any],
    **fields: Any,
) -> Outcome:
    """The outcome of a run: `mismatch` when an invariant broke (`broken` says how), else the loss's verdict.

    `held` is the sentence for an invariant that held; it leads an `ok` or `no_learning` judgement.
    """
    params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    status, about_loss = judge_loss([*losses, last_loss], ctx.settings.train.min_rel_drop, params_finite=params_finite)
    if broken:
        return Outcome("mismatch", "; ".join(broken) + f" ({about_loss})", last_loss, numbers, **fields)
    return Outcome(status, f"{held}; {about_loss}" if held else about_loss, last_loss, numbers, **fields)


def learning_rate(value: Any) -> float | None:
    """A group's `lr` as a float (torch allows a tensor), or None when it is not a number (e.g. adaptive None)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def fmt(value: float) -> str:
    return f"{value:.3g}"
