"""The `bench` part of a cell: fused / foreach / for-loop step time, speed-up, bandwidth, parity, memory.

Every implementation steps its own copy of the same seeded parameters with the same fixed gradients,
so only the optimizer step is timed. Timed steps of the implementations are interleaved round-robin,
so a machine that slows down mid-run slows all of them alike and their ratios stay fair.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from harness import measurements
from harness.cells import Cell
from harness.dtypes import parse_dtype
from harness.errors import HarnessError
from harness.memory import device_name, state_bytes_per_param
from harness.roofline import BANDWIDTH_METHOD, bytes_moved_per_step, measure_device_bandwidth
from harness.settings import BenchSettings, Settings, Tolerance
from harness.timing import bench_context, gc_paused, synchronize, timer_ms
from harness.vocabulary import IMPLEMENTATION_HINTS

_PARAM_SCALE = 0.02
_GRAD_SCALE = 0.01
_MAX_MESSAGE = 500


class Benchable(Protocol):
    """What the bench needs from a resolved optimizer (`harness.resolve.ResolvedOptimizer` has more)."""

    @property
    def name(self) -> str: ...

    @property
    def factory(self) -> Callable[..., torch.optim.Optimizer]: ...

    @property
    def cls(self) -> type: ...


def implementations(cls: type) -> dict[str, dict[str, bool]]:
    """The implementations a class offers, each with the flags that select it; {} when there is only one.

    A `fused` parameter gives "fused"; a `foreach` parameter gives "foreach"; either gives "forloop"
    (both flags off), the reference the others are compared with.
    """
    names = _signature_names(cls)
    has_fused, has_foreach = "fused" in names, "foreach" in names
    found: dict[str, dict[str, bool]] = {}
    if has_fused:
        found["fused"] = {"fused": True, **({"foreach": False} if has_foreach else {})}
    if has_foreach:
        found["foreach"] = {"foreach": True, **({"fused": False} if has_fused else {})}
    if found:
        found[measurements.REFERENCE] = {name: False for name in IMPLEMENTATION_HINTS if name in names}
    return found if len(found) >= 2 else {}


def bench_param_shapes(bench: BenchSettings) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2-like decoder (tied head) sized by the bench settings."""
    d, hidden = bench.d_model, 4 * bench.d_model
    shapes: list[tuple[int, ...]] = [(bench.vocab_size, d), (bench.seq_len, d)]
    for _ in range(bench.n_layers):
        shapes += [(d,), (d,)]  # ln_1
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,)]  # attention qkv, proj
        shapes += [(d,), (d,)]  # ln_2
        shapes += [(hidden, d), (hidden,), (d, hidden), (d,)]  # mlp fc, proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def run_bench(resolved: Benchable, cell: Cell, settings: Settings) -> measurements.BenchResult | None:
    """Time, compare and measure every implementation of `resolved` on the cell's device and dtype.

    Returns None when the class has only one implementation. An implementation that fails to build or
    step (fused on a device or dtype it does not support) is listed under `unavailable` with its error.
    """
    flags = implementations(resolved.cls)
    if not flags:
        return None
    bench = settings.bench.for_device(cell.device)
    device = _device(cell)
    dtype = _dtype(cell)
    tolerance = _tolerance(bench, cell.dtype)
    base = {key: value for key, value in cell.kwargs.items() if key not in IMPLEMENTATION_HINTS}
    kwargs = {name: {**base, **impl_flags} for name, impl_flags in flags.items()}
    target = _Target(resolved.factory, device, dtype)

    with bench_context(device, bench.threads):
        inputs = _make_inputs(bench, settings.train.seed, device)
        unavailable: dict[str, str] = {}
        parity_runs: dict[str, _ParityRun] = {}
        for name, impl_kwargs in kwargs.items():
            try:
                parity_runs[name] = _parity_run(target, impl_kwargs, inputs)
            except Exception as exc:
                unavailable[name] = _describe(exc)
        step_times, moved = _time_steps(target, kwargs, inputs, bench, unavailable)
        bandwidth = measure_device_bandwidth(device)

    medians = {name: statistics.median(times) for name, times in step_times.items()}
    reference = parity_runs.get(measurements.REFERENCE)
    parity = {
        name: _compare(run.final, reference.final, tolerance)
        for name, run in parity_runs.items()
        if reference is not None and name != measurements.REFERENCE
    }
    impls = tuple(
        measurements.ImplResult(
            name=name,
            kwargs=impl_kwargs,
            unavailable=unavailable.get(name),
            timing=_timing(step_times[name], moved[name], bandwidth) if name in step_times else None,
            memory=_memory(parity_runs[name]) if name in parity_runs else None,
            parity=parity.get(name),
        )
        for name, impl_kwargs in kwargs.items()
    )
    return measurements.BenchResult(
        device=str(device),
        device_name=device_name(device),
        dtype=cell.dtype,
        timer="cuda_event" if device.type == "cuda" else "perf_counter",
        threads=bench.threads if device.type == "cpu" else None,
        params=sum(math.prod(shape) for shape in bench_param_shapes(bench)),
        model={key: getattr(bench, key) for key in ("d_model", "n_layers", "vocab_size", "seq_len")},
        warmup=bench.warmup,
        repeats=bench.repeats,
        implementations=impls,
        speedup=_speedups(medians),
        device_bandwidth_gbs=bandwidth,
        device_bandwidth_method=BANDWIDTH_METHOD,
        parity_tolerance=measurements.ParityTolerance(atol=tolerance.atol, rtol=tolerance.rtol),
        parity_reference=measurements.REFERENCE,
        parity_steps=bench.parity_steps,
        parity_ok=all(check.ok for check in parity.values()) if parity else None,
        parity_breach=tuple(name for name, check in parity.items() if not check.ok),
        peak_memory_method="torch.cuda.max_memory_allocated" if device.type == "cuda" else None,
    )


def _timing(times: list[float], moved: int, bandwidth: float) -> measurements.ImplTiming:
    median = statistics.median(times)
    achieved = moved / (median / 1e3) / 1e9
    return measurements.ImplTiming(
        step_ms=median,
        spread_ms=_spread(times),
        bytes_per_step=moved,
        achieved_gbs=achieved,
        bandwidth_fraction=achieved / bandwidth,
    )


def _memory(run: _ParityRun) -> measurements.ImplMemory:
    return measurements.ImplMemory(
        state_bytes_per_param=run.state_bytes_per_param,
        peak_memory_bytes=run.peak_bytes,
        step_extra_memory_bytes=run.step_extra_bytes,
    )


@dataclass(frozen=True)
class _Target:
    factory: Callable[..., torch.optim.Optimizer]
    device: torch.device
    dtype: torch.dtype

    def params(self, masters: list[torch.Tensor], grads: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """Fresh device copies of the seeded masters (never aliasing them), with grads attached."""
        params = [m.to(device=self.device, dtype=self.dtype, copy=True).requires_grad_(True) for m in masters]
        if grads is not None:
            self.attach(params, grads)
        return params

    def attach(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for param, grad in zip(params, grads, strict=False):
            param.grad = grad.to(device=self.device, dtype=self.dtype, copy=True)


@dataclass(frozen=True)
class _Inputs:
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    parity_grads: list[list[torch.Tensor]]


@dataclass(frozen=True)
class _ParityRun:
    final: torch.Tensor
    state_bytes_per_param: float
    peak_bytes: int | None
    step_extra_bytes: int | None


def _make_inputs(bench: BenchSettings, seed: int, device: torch.device) -> _Inputs:
    # Built once in float32 and copied per implementation, so every copy starts bit-identical. They are
    # drawn on the benchmark's device: drawing GPT-2-size tensors on the CPU cost 10-15 s a CUDA benchmark.
    shapes = bench_param_shapes(bench)
    generator = torch.Generator(device=device).manual_seed(seed)

    def draw(scale: float) -> list[torch.Tensor]:
        return [torch.randn(shape, generator=generator, device=device) * scale for shape in shapes]

    return _Inputs(
        params=draw(_PARAM_SCALE),
        grads=draw(_GRAD_SCALE),
        parity_grads=[draw(_GRAD_SCALE) for _ in range(bench.parity_steps)],
    )


def _parity_run(target: _Target, kwargs: Mapping[str, Any], inputs: _Inputs) -> _ParityRun:
    """Run the parity steps alone on the device, measuring the state and the peak memory of the last step."""
    device = target.device
    on_cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if on_cuda else 0
    params = target.params(inputs.params, None)
    optimizer = target.factory(params, **kwargs)
    before = 0
    for index, grads in enumerate(inputs.parity_grads):
        target.attach(params, grads)
        if on_cuda and index == len(inputs.parity_grads) - 1:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        optimizer.step()
    peak = None
    if on_cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    final = _flat_copy(params)
    return _ParityRun(
        final=final,
        state_bytes_per_param=state_bytes_per_param(optimizer),
        peak_bytes=None if peak is None else peak - base,
        step_extra_bytes=None if peak is None else peak - before,
    )


def _time_steps(
    target: _Target,
    kwargs: Mapping[str, Mapping[str, Any]],
    inputs: _Inputs,
    bench: BenchSettings,
    unavailable: dict[str, str],
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Milliseconds of each timed step per implementation, and the bytes each step must move."""
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name, impl_kwargs in kwargs.items():
        if name in unavailable:
            continue
        try:
            optimizer = target.factory(target.params(inputs.params, inputs.grads), **impl_kwargs)
            for _ in range(bench.warmup):
                optimizer.step()
            synchronize(target.device)
        except Exception as exc:
            unavailable[name] = _describe(exc)
            continue
        optimizers[name] = optimizer

    times: dict[str, list[float]] = {name: [] for name in optimizers}
    timer = timer_ms(target.device)
    with gc_paused():
        for repeat in range(bench.repeats):
            names = list(optimizers)
            shift = repeat % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                try:
                    times[name].append(timer(optimizers[name].step, target.device))
                except Exception as exc:
                    unavailable[name] = _describe(exc)
                    del optimizers[name], times[name]
    moved = {name: bytes_moved_per_step(optimizer) for name, optimizer in optimizers.items()}
    return times, moved


def _compare(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance) -> measurements.ParityCheck:
    """Largest differences, and whether |a - b| <= atol + rtol * |b| holds everywhere (NaN only matches NaN).

    Works in place on `candidate`, which it consumes: fresh memory is slow to fault in on some hosts.
    """
    if candidate.numel() == 0:
        return measurements.ParityCheck(max_abs=0.0, max_rel=0.0, ok=True)
    same = (candidate == reference).logical_or_(candidate.isnan().logical_and_(reference.isnan()))
    diff = candidate.sub_(reference).abs_().masked_fill_(same, 0.0).nan_to_num_(nan=math.inf)
    magnitude = reference.abs()
    rel = (diff / magnitude).masked_fill_(same.logical_or(reference == 0), 0.0).nan_to_num_(nan=math.inf)
    within = diff.le(magnitude.mul_(tol.rtol).add_(tol.atol)).logical_or_(same)
    return measurements.ParityCheck(max_abs=diff.max().item(), max_rel=rel.max().item(), ok=bool(within.all()))


def _flat_copy(params: list[torch.Tensor]) -> torch.Tensor:
    """All values in one new CPU vector, widened to float32 (float64 stays) so differences are exact enough."""
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    if not params:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([param.detach().reshape(-1).to("cpu", dtype) for param in params])


def _speedups(medians: Mapping[str, float]) -> dict[str, float]:
    pairs = (("fused", "foreach"), ("fused", "forloop"), ("foreach", "forloop"))
    return {
        f"{fast}/{slow}": medians[slow] / medians[fast] for fast, slow in pairs if fast in medians and slow in medians
    }


def _spread(times: list[float]) -> measurements.Spread:
    p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    return measurements.Spread(p25=p25, p75=p75, min=min(times), max=max(times))


def _tolerance(bench: BenchSettings, dtype: str) -> Tolerance:
    try:
        return bench.tolerances[dtype]
    except KeyError:
        known = ", ".join(sorted(bench.tolerances))
        raise HarnessError(
            f"No parity tolerance for dtype '{dtype}' in bench.tolerances; add one (known: {known})."
        ) from None


def _device(cell: Cell) -> torch.device:
    try:
        device = torch.device(cell.device)
    except RuntimeError as exc:
        raise HarnessError(
            f"Cell {cell.id}: '{cell.device}' is not a torch device; use one such as 'cpu' or 'cuda'."
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"Cell {cell.id}: cannot benchmark on '{cell.device}': CUDA is not available here.")
    return device


def _dtype(cell: Cell) -> torch.dtype:
    return parse_dtype(cell.dtype)


def _signature_names(cls: type) -> set[str]:
    try:
        return set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return set()


def _describe(exc: BaseException) -> str:
    message = f"{type(exc).__name__}: {exc}"
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
