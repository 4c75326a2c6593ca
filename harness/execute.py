"""Run one cell in this process, from its optimizer name to its `Record`.

prepare (resolve, build the GPT) -> construct (the builder) -> train and judge (the cell's scenario,
`harness.scenarios`) -> measure -> (bench). Crashes, hangs and timeouts are the caller's: it runs each
cell in a child process.
"""

from __future__ import annotations

import math
import platform
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from harness import exclusive
from harness.build import Built, build
from harness.cells import DEFAULT_SCENARIO, Cell, Record
from harness.classify import classify_error
from harness.dtypes import parse_dtype
from harness.errors import HarnessError
from harness.frameworks import (
    FrameworkAdapter,
    class_path,
    default_conventions,
    framework_prefix,
    group_settings,
    is_framework,
)
from harness.gpt import GPT, build_gpt, synthetic_batch
from harness.measurements import BenchResult, Environment
from harness.memory import device_name, state_bytes
from harness.quiet import import_messages
from harness.resolve import (
    MissingDependency,
    ResolvedOptimizer,
    load_framework,
    optimizer_package_versions,
    package_version,
    resolve_optimizer,
)
from harness.scenarios import Context, Scenario, get_scenario
from harness.scenarios.base import judge_loss
from harness.settings import Settings
from harness.vocabulary import STEPPED, Status
from harness.wording import first_line

__all__ = ["construct", "judge_loss", "measure", "prepare", "run_cell", "train_and_judge"]

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """A cell ready to construct: its optimizer resolved, its GPT and batch built, its scenario chosen."""

    cell: Cell
    settings: Settings
    resolved: ResolvedOptimizer | None
    """None for a framework's own name (`transformers:adamw_torch`): only the framework knows what it builds."""
    dtype: torch.dtype
    scenario: Scenario
    model: GPT
    inputs: torch.Tensor
    targets: torch.Tensor
    env: Environment
    adapter: FrameworkAdapter | None = None
    """The framework adapter the cell's builder names, which builds from the model itself."""

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def fresh_model(self) -> GPT:
        return build_gpt(self.settings.model, seed=self.settings.train.seed, device=self.cell.device, dtype=self.dtype)

    def rebuild(self, params: Any, overrides: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
        """Another optimizer through the cell's builder and kwargs (plus `overrides`) over `params`."""
        if self.adapter is not None or self.resolved is None:
            raise HarnessError(f"The {self.cell.builder} builder builds from the model, not from parameters.")
        kwargs = {**self.cell.kwargs, **(overrides or {})}
        return build(self.cell.builder, self.resolved, params, kwargs, device=self.cell.device).optimizer


@dataclass
class _Finisher:
    """Makes the cell's record, with its wall time so far and its environment."""

    cell: Cell
    started: float = field(default_factory=time.perf_counter)
    env: Environment | None = None

    def __call__(self, status: Status, **fields: Any) -> Record:
        env = self.env or environment(self.cell.device, None)
        return Record.for_cell(self.cell, status, duration_s=time.perf_counter() - self.started, env=env, **fields)


def run_cell(cell: Cell, settings: Settings) -> Record:
    """Run `cell` under `settings` and return what happened; every outcome but a dead process is a record.

    prepare (resolve, GPT, batch) -> construct (the builder) -> the scenario (train and judge) -> bench.
    """
    finish = _Finisher(cell)
    with exclusive.shared():  # other cells train alongside; a benchmark waits for the machine
        prepared = prepare(cell, settings, finish)
        if isinstance(prepared, Record):
            return prepared
        constructed = construct(prepared, finish)
        if isinstance(constructed, Record):
            return constructed
        record = train_and_judge(prepared, constructed, finish)
    # step speed does not depend on the loss verdict: every cell whose steps ran is benchmarked
    benchable = prepared.adapter is None and prepared.resolved is not None
    if record.status in STEPPED and cell.scenario == DEFAULT_SCENARIO and benchable and settings.bench.selects(cell):
        from harness.bench import run_bench

        errors = dict(record.measurement_errors)
        try:
            with exclusive.exclusive(bound=settings.bench.timeout_s):  # timed alone, no other cell training
                bench = run_bench(prepared.resolved, cell, settings)  # type: ignore[arg-type]  # benchable
        except exclusive.MachineBusy as exc:
            bench = BenchResult(not_measured=str(exc))
        except Exception as exc:  # the benchmark's own failure never changes what training showed
            errors["bench"] = _describe(exc)
            bench = BenchResult(not_measured=f"the benchmark failed: {errors['bench']}")
        record = record.replace(bench=bench, measurement_errors=errors, duration_s=time.perf_counter() - finish.started)
    return record


def measure(name: str, errors: dict[str, str], function: Callable[[], T]) -> T | None:
    """`function()`, or None with its failure kept in `errors[name]`: measuring never changes a cell's status."""
    try:
        return function()
    except Exception as exc:
        errors[name] = _describe(exc)
        return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def prepare(cell: Cell, settings: Settings, finish: _Finisher) -> Prepared | Record:
    """Resolve the optimizer and build the seeded GPT and batch; a `skipped` or failed record when that fails."""
    absent = device_absence(cell.device)
    if absent is not None:
        reason, message = absent
        return finish("skipped", reason=reason, error_message=message)
    try:
        dtype = parse_dtype(cell.dtype)
        scenario = get_scenario(cell.scenario)
        adapter = load_framework(cell.builder) if is_framework(cell.builder) else None
        resolved = None if framework_prefix(cell.optimizer) else resolve_optimizer(cell.optimizer)
    except MissingDependency as exc:
        return finish("skipped", reason="missing_dependency", error_type=type(exc).__name__, error_message=str(exc))
    except HarnessError as exc:  # a name the matrix should not have let through, or a broken import: recorded
        return finish("construct_error", **_error_fields(exc, cell))
    finish.env = environment(cell.device, resolved, adapter)
    if adapter is not None and cell.scenario != DEFAULT_SCENARIO:
        why = f"the {adapter.name} builder builds from the model and runs the {DEFAULT_SCENARIO} scenario only"
        return finish("skipped", error_message=why)
    torch.manual_seed(settings.train.seed)
    torch.set_num_threads(settings.train.threads)
    if cell.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(cell.device)
    try:
        model = build_gpt(settings.model, seed=settings.train.seed, device=cell.device, dtype=dtype)
        inputs, targets = synthetic_batch(settings.model, settings.train.batch_size, settings.train.seed, cell.device)
    except Exception as exc:  # the device cannot hold the model in this dtype: no optimizer is at fault
        return finish("skipped", **_error_fields(exc, cell))
    return Prepared(cell, settings, resolved, dtype, scenario, model, inputs, targets, finish.env, adapter)


def construct(prepared: Prepared, finish: _Finisher) -> tuple[Built, float] | Record:
    """Build the optimizer through the cell's builder over the scenario's parameters; (built, seconds)."""
    cell = prepared.cell
    started = time.perf_counter()
    try:
        if prepared.adapter is not None:
            built = build_with_framework(prepared.adapter, cell, prepared.model)
        else:
            params = prepared.scenario.params(prepared.model)
            built = build(cell.builder, prepared.resolved, params, cell.kwargs, device=cell.device)  # type: ignore[arg-type]
    except MissingDependency as exc:
        return finish("skipped", reason="missing_dependency", error_type=type(exc).__name__, error_message=str(exc))
    except BaseException as exc:  # an optimizer raising SystemExit in __init__ is a result too
        return finish("construct_error", **_error_fields(exc, cell), num_params=prepared.num_params)
    return built, time.perf_counter() - started


_MISSING = re.compile(r"ModuleNotFoundError|failed to import|(please|need to) install|is not installed", re.I)
"""How frameworks say that an optional package an optimizer name needs is absent (Hugging Face: "You need to
install `schedulefree`", "Trainer failed to import syncfree AdamW from torch_xla")."""


def build_with_framework(adapter: FrameworkAdapter, cell: Cell, model: GPT) -> Built:
    """The framework builds the optimizer from the model; an optional package it says to install skips the cell."""
    try:
        made = adapter.build(cell.optimizer, model, cell.kwargs)
    except Exception as exc:
        if isinstance(exc, HarnessError) or not _MISSING.search(f"{type(exc).__name__}: {exc}"):
            raise
        package = getattr(exc, "name", None) or adapter.distribution
        raise MissingDependency(f"{adapter.name}: {first_line(str(exc))}", package=package) from exc
    return Built(made.optimizer, made.dropped_kwargs, made.absorbed_kwargs, conventions=made.conventions)


def train_and_judge(prepared: Prepared, constructed: tuple[Built, float], finish: _Finisher) -> Record:
    """Run the cell's scenario with the built optimizer and record its outcome (a step error, or its judgement)."""
    cell, (built, construct_s) = prepared.cell, constructed
    common: dict[str, Any] = dict(
        dropped_kwargs=built.dropped_kwargs,
        absorbed_kwargs=built.absorbed_kwargs,
        construct_s=construct_s,
        num_params=prepared.num_params,
    )
    losses: list[float] = []
    context = Context(
        cell=cell,
        settings=prepared.settings,
        dtype=prepared.dtype,
        model=prepared.model,
        optimizer=built.optimizer,
        inputs=prepared.inputs,
        targets=prepared.targets,
        losses=losses,
        rebuild=prepared.rebuild,
        fresh_model=prepared.fresh_model,
        conventions=built.conventions,
    )
    started = time.perf_counter()
    try:
        outcome = prepared.scenario.run(context)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt raised by an optimizer's step, too
        return finish(
            "step_error",
            **_error_fields(exc, cell),
            **common,
            steps_s=time.perf_counter() - started,
            losses=losses,
            initial_loss=losses[0] if losses else None,
        )
    steps_s = outcome.steps_s if outcome.steps_s is not None else time.perf_counter() - started
    errors: dict[str, str] = {}
    what = measure("built", errors, lambda: built_description(built))
    state = measure("state_bytes", errors, lambda: state_bytes(built.optimizer))
    peak = None
    if cell.device.startswith("cuda"):
        peak = measure("peak_memory_bytes", errors, lambda: torch.cuda.max_memory_allocated(cell.device))
    return finish(
        outcome.status,
        **common,
        reason=outcome.reason,
        losses=losses,
        initial_loss=losses[0] if losses else None,
        final_loss=outcome.final_loss,
        judgement=outcome.judgement,
        scenario_numbers=_finite_numbers(outcome.numbers),
        steps_s=steps_s,
        state_bytes=state,
        state_bytes_per_param=state / prepared.num_params if state is not None and prepared.num_params else None,
        peak_memory_bytes=peak,
        built=what,
        measurement_errors=errors,
    )


def built_description(built: Built) -> dict[str, Any]:
    """The record's `built`: the class the builder returned, its groups' settings, the loop's conventions."""
    conventions = built.conventions or default_conventions(built.optimizer)
    return {
        "class": class_path(built.optimizer),
        "kwargs": group_settings(built.optimizer),
        "conventions": conventions.describe(),
    }


def _finite_numbers(value: Any) -> Any:
    """Scenario numbers as JSON can hold them: non-finite floats as strings ('inf', 'nan')."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_numbers(v) for v in value]
    return value


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


def environment(
    device: str, resolved: ResolvedOptimizer | None, adapter: FrameworkAdapter | None = None
) -> Environment:
    """Where a record came from: python, torch, the optimizer packages' and the framework's versions, the device."""
    return Environment(
        framework=None if adapter is None else adapter.distribution,
        framework_version=None if adapter is None else package_version(adapter.distribution),
        python=platform.python_version(),
        torch=torch.__version__,
        packages=optimizer_package_versions(),
        device_name=device_name(device),
        optimizer_package=None if resolved is None else resolved.package,
        optimizer_package_version=None if resolved is None else resolved.version,
        import_messages=import_messages() or None,  # what packages printed as they loaded
    )


def _error_fields(exc: BaseException, cell: Cell) -> dict[str, Any]:
    return {
        "reason": classify_error(exc, device=cell.device, dtype=cell.dtype),
        "error_type": type(exc).__name__,
        "error_message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
