"""Run one cell in this process, from its optimizer name to its `Record`.

resolve -> build the GPT -> build the optimizer -> train -> judge -> measure -> (bench). Crashes, hangs
and timeouts are the caller's: it runs each cell in a child process.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness import exclusive
from harness.build import build
from harness.cells import Cell, Record
from harness.classify import classify_error
from harness.dtypes import parse_dtype
from harness.errors import HarnessError
from harness.gpt import GPT, build_gpt, synthetic_batch
from harness.memory import device_name, state_bytes
from harness.resolve import MissingDependency, ResolvedOptimizer, optimizer_package_versions, resolve_optimizer
from harness.settings import Settings
from harness.vocabulary import STEPPED


def run_cell(cell: Cell, settings: Settings) -> Record:
    """Run `cell` under `settings` and return what happened; every outcome but a dead process is a record."""
    started = time.perf_counter()

    def finish(status: str, **fields: Any) -> Record:
        env = fields.pop("env", None) or environment(cell.device, None)
        return Record.for_cell(cell, status, duration_s=time.perf_counter() - started, env=env, **fields)

    absent = device_absence(cell.device)
    if absent is not None:
        reason, message = absent
        return finish("skipped", reason=reason, error_message=message)
    try:
        dtype = parse_dtype(cell.dtype)
        resolved = resolve_optimizer(cell.optimizer)
    except MissingDependency as exc:
        return finish("skipped", reason="missing_dependency", error_type=type(exc).__name__, error_message=str(exc))
    except HarnessError as exc:  # a name the matrix should not have let through: recorded, not lost
        return finish("construct_error", **_error_fields(exc, cell))
    env = environment(cell.device, resolved)

    with exclusive.shared():  # other cells train alongside; a benchmark waits for the machine
        torch.manual_seed(settings.train.seed)
        torch.set_num_threads(settings.train.threads)
        if cell.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(cell.device)
        try:
            model = build_gpt(settings.model, seed=settings.train.seed, device=cell.device, dtype=dtype)
            inputs, targets = synthetic_batch(
                settings.model, settings.train.batch_size, settings.train.seed, cell.device
            )
        except Exception as exc:  # the device cannot hold the model in this dtype: no optimizer is at fault
            return finish("skipped", **_error_fields(exc, cell), env=env)
        num_params = sum(p.numel() for p in model.parameters())

        construct_started = time.perf_counter()
        try:
            built = build(cell.builder, resolved, model.parameters(), cell.kwargs, device=cell.device)
        except MissingDependency as exc:
            return finish(
                "skipped", reason="missing_dependency", error_type=type(exc).__name__, error_message=str(exc), env=env
            )
        except BaseException as exc:  # an optimizer raising SystemExit in __init__ is a result too
            return finish("construct_error", **_error_fields(exc, cell), num_params=num_params, env=env)
        construct_s = time.perf_counter() - construct_started
        optimizer = built.optimizer
        common = dict(
            dropped_kwargs=built.dropped_kwargs,
            absorbed_kwargs=built.absorbed_kwargs,
            construct_s=construct_s,
            num_params=num_params,
            env=env,
        )

        losses: list[float] = []
        steps_started = time.perf_counter()
        try:
            final_loss = train(model, optimizer, inputs, targets, settings.train.steps, losses)
        except BaseException as exc:  # SystemExit or KeyboardInterrupt raised by an optimizer's step, too
            return finish(
                "step_error",
                **_error_fields(exc, cell),
                **common,
                steps_s=time.perf_counter() - steps_started,
                losses=losses,
                initial_loss=losses[0] if losses else None,
            )
        steps_s = time.perf_counter() - steps_started

        params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        status, judgement = judge_loss([*losses, final_loss], settings.train.min_rel_drop, params_finite=params_finite)
        state = state_bytes(optimizer)
        peak = torch.cuda.max_memory_allocated(cell.device) if cell.device.startswith("cuda") else None
    bench = None
    if status in STEPPED and settings.bench.selects(cell):  # step speed does not depend on the loss verdict
        from harness.bench import run_bench

        try:
            with exclusive.exclusive(bound=settings.bench.timeout_s):  # timed alone, no other cell training
                bench = run_bench(resolved, cell, settings)
        except exclusive.MachineBusy as exc:
            bench = {"not_measured": str(exc)}
    return finish(
        status,
        **common,
        losses=losses,
        initial_loss=losses[0],
        final_loss=final_loss,
        judgement=judgement,
        steps_s=steps_s,
        state_bytes=state,
        state_bytes_per_param=state / num_params if num_params else None,
        peak_memory_bytes=peak,
        bench=bench,
    )


def train(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    losses: list[float],
) -> float:
    """Take `steps` optimizer steps on one batch, appending each step's first loss to `losses`; the loss after.

    Every step goes through a closure (LBFGS evaluates it several times; only its first loss is recorded).
    A second-order optimizer (`optimizer.is_second_order`, e.g. timm's Adahessian) gets a graph of the gradients.
    Training stops early at the first loss that is not finite.
    """
    create_graph = bool(getattr(optimizer, "is_second_order", False))
    for _ in range(steps):
        evaluations = 0

        @torch.enable_grad()  # as torch's own optimizers do: some steps (timm's Adahessian) run under no_grad
        def closure() -> torch.Tensor:
            nonlocal evaluations
            optimizer.zero_grad()
            loss = model.loss(inputs, targets)
            loss.backward(create_graph=create_graph)
            if evaluations == 0:
                losses.append(loss.item())
            evaluations += 1
            return loss

        with warnings.catch_warnings(), _double_backward_attention(create_graph):
            # create_graph=True warns of a reference cycle on every step; it is what a second-order step needs.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            optimizer.step(closure)
        if evaluations == 0:
            raise RuntimeError(f"{type(optimizer).__name__}.step(closure) never called the closure.")
        if not math.isfinite(losses[-1]):
            break  # judged `nonfinite` already; more steps on NaN only cost time (LBFGS: seconds)
    with torch.no_grad():
        return model.loss(inputs, targets).item()


def _double_backward_attention(create_graph: bool) -> contextlib.AbstractContextManager[None]:
    """Attention that second-order steps can differentiate twice: the fused CPU kernels cannot."""
    if not create_graph:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def judge_loss(losses: Sequence[float], min_rel_drop: float, *, params_finite: bool = True) -> tuple[str, str]:
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


def device_absence(device: str) -> tuple[str | None, str] | None:
    """None when `device` is present here; else (reason, sentence) for a `skipped` record."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        return "unsupported_device", f"torch does not know device {device!r}: {exc}"
    kind = parsed.type
    if kind == "cpu":
        return None
    if kind == "mps":
        present = torch.backends.mps.is_available()
    else:
        module = getattr(torch, kind, None)
        is_available: Callable[[], bool] | None = getattr(module, "is_available", None)
        if is_available is None:
            return "unsupported_device", f"this harness cannot tell whether device {device!r} is present."
        device_count: Callable[[], int] | None = getattr(module, "device_count", None)
        present = is_available() and (parsed.index is None or device_count is None or parsed.index < device_count())
    return None if present else (None, f"device {device!r} is not present on this machine.")


def environment(device: str, resolved: ResolvedOptimizer | None) -> dict[str, Any]:
    """Where a record came from: python, torch, the optimizer packages' versions and the device's name."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "packages": optimizer_package_versions(),
        "device_name": device_name(device),
    }
    if resolved is not None:
        env["optimizer_package"] = resolved.package
        env["optimizer_package_version"] = resolved.version
    return env


def _error_fields(exc: BaseException, cell: Cell) -> dict[str, Any]:
    return {
        "reason": classify_error(exc, device=cell.device, dtype=cell.dtype),
        "error_type": type(exc).__name__,
        "error_message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
