"""The `bench` part of a record, typed: a `BenchResult` and one `ImplResult` per implementation.

`to_dict` writes the JSON `harness.bench.run_bench` has always written, key for key; `from_dict` reads
it, and reads what other versions wrote too: a key missing reads as None or no entry, and an unknown
key is kept in `extra` and written back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from harness.measurements._read import MalformedResult, mapping, number, required_whole, text, whole

SpeedupKey = Literal["fused/foreach", "fused/forloop", "foreach/forloop"]
"""`fast/slow`: the slow implementation's median step time over the fast one's."""

SPEEDUP_KEYS: tuple[SpeedupKey, ...] = get_args(SpeedupKey)
"""Every speed-up a bench records (and the report charts), in this order."""
GATE_SPEEDUP_KEYS: tuple[SpeedupKey, ...] = ("fused/foreach", "fused/forloop")
"""The fused kernels' speed-ups the release gate watches."""
IMPLEMENTATION_ORDER = ("fused", "foreach", "forloop")
"""How a bench lists an optimizer's implementations; the last is the parity reference."""
REFERENCE = "forloop"
"""Parity is judged against the plain per-parameter loop, the implementation every other one mirrors."""


@dataclass(frozen=True)
class Spread:
    """Spread of an implementation's timed steps, in milliseconds."""

    p25: float | None
    p75: float | None
    min: float | None
    max: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"p25": self.p25, "p75": self.p75, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Spread:
        data = mapping(data, where)
        return cls(*(number(data.get(key), f"{where}.{key}") for key in ("p25", "p75", "min", "max")))


@dataclass(frozen=True)
class ImplTiming:
    """An implementation's timed steps: median, spread, the bytes a step moves and the bandwidth reached."""

    step_ms: float | None
    """Median step time."""
    spread_ms: Spread | None = None
    bytes_per_step: int | None = None
    achieved_gbs: float | None = None
    bandwidth_fraction: float | None = None
    """Achieved bandwidth over the device's bandwidth measured in the same run."""


@dataclass(frozen=True)
class ImplMemory:
    """What an implementation's parity run measured: state size and (CUDA only) peak memory."""

    state_bytes_per_param: float | None
    peak_memory_bytes: int | None = None
    step_extra_memory_bytes: int | None = None


@dataclass(frozen=True)
class ParityCheck:
    """An implementation's parameters after the parity steps against the reference's."""

    max_abs: float | None
    max_rel: float | None
    ok: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "ok": self.ok}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ParityCheck:
        data = mapping(data, where)
        ok = data.get("ok")
        if ok is not None and not isinstance(ok, bool):
            raise MalformedResult(f"{where}.ok must be true, false or null; got {ok!r}.")
        return cls(number(data.get("max_abs"), f"{where}.max_abs"), number(data.get("max_rel"), f"{where}.max_rel"), ok)


@dataclass(frozen=True)
class ParityTolerance:
    atol: float | None
    rtol: float | None


@dataclass(frozen=True)
class ImplResult:
    """One implementation of a benchmarked optimizer (`fused`, `foreach` or `forloop`) and all it measured.

    `timing` is None when it was not timed, `memory` when its parity run failed, `parity` for the
    reference itself; `unavailable` holds the error that stopped it, if any.
    """

    name: str
    kwargs: Mapping[str, Any] | None = None
    unavailable: str | None = None
    timing: ImplTiming | None = None
    memory: ImplMemory | None = None
    parity: ParityCheck | None = None

    @property
    def step_ms(self) -> float | None:
        return self.timing.step_ms if self.timing else None


# ------------------------------------------------------------------------------------ bench result

_TIMING_KEYS = ("step_ms", "spread_ms", "bytes_per_step", "achieved_gbs", "bandwidth_fraction")
_MEMORY_KEYS = ("state_bytes_per_param", "peak_memory_bytes", "step_extra_memory_bytes")
_PER_IMPL_KEYS = ("implementations", "unavailable", *_TIMING_KEYS, "parity", *_MEMORY_KEYS)
_STR_KEYS = (
    "device",
    "device_name",
    "dtype",
    "timer",
    "device_bandwidth_method",
    "parity_reference",
    "not_measured",
)
_INT_KEYS = ("threads", "params", "warmup", "repeats", "parity_steps")
_KNOWN_KEYS = frozenset(
    {
        *_PER_IMPL_KEYS,
        *_STR_KEYS,
        *_INT_KEYS,
        "model",
        "speedup",
        "device_bandwidth_gbs",
        "parity_ok",
        "parity_breach",
        "peak_memory_method",
    }
)


@dataclass(frozen=True)
class BenchResult:
    """The `bench` part of a record: how an optimizer's implementations compare on one device and dtype.

    Written by `harness.bench.run_bench`; every field is optional on reading, for records written by
    other versions of the harness.
    """

    device: str | None = None
    device_name: str | None = None
    """What the device reports itself as (`torch.cuda.get_device_name`, or the CPU's model)."""
    dtype: str | None = None
    implementations: tuple[ImplResult, ...] = ()
    speedup: Mapping[str, float | None] = field(default_factory=dict)
    """`fast/slow` keys (`SPEEDUP_KEYS`): the slow implementation's median over the fast one's."""
    timer: str | None = None
    """`cuda_event` or `perf_counter`."""
    threads: int | None = None
    """CPU threads the steps ran on (None on an accelerator)."""
    params: int | None = None
    """Parameters of the benchmark GPT (its shapes are `model`)."""
    model: Mapping[str, int] | None = None
    warmup: int | None = None
    repeats: int | None = None
    device_bandwidth_gbs: float | None = None
    """The copy bandwidth measured in the same run, which `bandwidth_fraction` is a share of."""
    device_bandwidth_method: str | None = None
    parity_tolerance: ParityTolerance | None = None
    parity_reference: str | None = None
    """The implementation the others are compared against (the for-loop one)."""
    parity_steps: int | None = None
    parity_ok: bool | None = None
    """True when every compared implementation is within tolerance; None when none was compared."""
    parity_breach: tuple[str, ...] = ()
    peak_memory_method: str | None = None
    not_measured: str | None = None
    """Why there is no clean figure (the machine could not be had alone within `bench.timeout_s`)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys of the JSON this version does not know, kept as read."""

    def implementation(self, name: str) -> ImplResult | None:
        return next((impl for impl in self.implementations if impl.name == name), None)

    def step_ms(self, name: str) -> float | None:
        impl = self.implementation(name)
        return impl.step_ms if impl else None

    def speedups(self, keys: Iterable[str] = SPEEDUP_KEYS) -> dict[str, float]:
        """The finite, positive speed-ups among `keys`, in that order; a missing or broken one is left out."""
        found: dict[str, float] = {}
        for key in keys:
            value = self.speedup.get(key)
            if value is not None and math.isfinite(value) and value > 0:
                found[key] = value
        return found

    def gate_speedups(self) -> dict[str, float]:
        """The fused speed-ups the release gate compares with the baseline (`GATE_SPEEDUP_KEYS`)."""
        return self.speedups(GATE_SPEEDUP_KEYS)

    def to_dict(self) -> dict[str, Any]:
        impls = self.implementations

        def section(pick: Any) -> dict[str, Any]:
            return {impl.name: value for impl in impls for value in pick(impl)}

        parity: dict[str, Any] = section(lambda i: [i.parity.to_dict()] if i.parity else [])
        if self.parity_tolerance is not None:
            parity["tolerance"] = {"atol": self.parity_tolerance.atol, "rtol": self.parity_tolerance.rtol}
        timed = [impl for impl in impls if impl.timing is not None]
        measured = [impl for impl in impls if impl.memory is not None]

        def timing(key: str) -> dict[str, Any]:
            values = {impl.name: getattr(impl.timing, key) for impl in timed}
            return {name: value for name, value in values.items() if value is not None or key == "step_ms"}

        def memory(key: str) -> dict[str, Any]:
            return {impl.name: getattr(impl.memory, key) for impl in measured}

        spreads = {impl.name: impl.timing.spread_ms for impl in timed if impl.timing and impl.timing.spread_ms}
        return {
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "timer": self.timer,
            "threads": self.threads,
            "params": self.params,
            "model": None if self.model is None else dict(self.model),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "implementations": {i.name: dict(i.kwargs) for i in impls if i.kwargs is not None},
            "unavailable": {i.name: i.unavailable for i in impls if i.unavailable is not None},
            "step_ms": timing("step_ms"),
            "spread_ms": {name: spread.to_dict() for name, spread in spreads.items()},
            "speedup": dict(self.speedup),
            "bytes_per_step": timing("bytes_per_step"),
            "achieved_gbs": timing("achieved_gbs"),
            "device_bandwidth_gbs": self.device_bandwidth_gbs,
            "device_bandwidth_method": self.device_bandwidth_method,
            "bandwidth_fraction": timing("bandwidth_fraction"),
            "parity": parity,
            "parity_reference": self.parity_reference,
            "parity_steps": self.parity_steps,
            "parity_ok": self.parity_ok,
            "parity_breach": list(self.parity_breach),
            "state_bytes_per_param": memory("state_bytes_per_param"),
            "peak_memory_bytes": memory("peak_memory_bytes"),
            "step_extra_memory_bytes": memory("step_extra_memory_bytes"),
            "peak_memory_method": self.peak_memory_method,
            **({"not_measured": self.not_measured} if self.not_measured is not None else {}),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        data = mapping(data, "bench")
        sections = {key: mapping(data.get(key), f"bench.{key}") for key in _PER_IMPL_KEYS}
        tolerance = sections["parity"].get("tolerance")
        names = [
            name for key in _PER_IMPL_KEYS for name in sections[key] if not (key == "parity" and name == "tolerance")
        ]
        ordered = sorted(dict.fromkeys(names), key=lambda n: (_rank(n, IMPLEMENTATION_ORDER), names.index(n)))
        model = data.get("model")
        breach = data.get("parity_breach") or []
        if not isinstance(breach, list) or not all(isinstance(name, str) for name in breach):
            raise MalformedResult(f"bench.parity_breach must be a list of implementation names; got {breach!r}.")
        parity_ok = data.get("parity_ok")
        if parity_ok is not None and not isinstance(parity_ok, bool):
            raise MalformedResult(f"bench.parity_ok must be true, false or null; got {parity_ok!r}.")
        texts = {key: text(data.get(key), f"bench.{key}") for key in _STR_KEYS}
        wholes = {key: whole(data.get(key), f"bench.{key}") for key in _INT_KEYS}
        return cls(
            device=texts["device"],
            device_name=texts["device_name"],
            dtype=texts["dtype"],
            timer=texts["timer"],
            threads=wholes["threads"],
            params=wholes["params"],
            model=None
            if model is None
            else {k: required_whole(v, f"bench.model.{k}") for k, v in mapping(model, "bench.model").items()},
            warmup=wholes["warmup"],
            repeats=wholes["repeats"],
            implementations=tuple(_impl_from_sections(name, sections) for name in ordered),
            speedup={
                key: number(value, f"bench.speedup.{key}")
                for key, value in mapping(data.get("speedup"), "bench.speedup").items()
            },
            device_bandwidth_gbs=number(data.get("device_bandwidth_gbs"), "bench.device_bandwidth_gbs"),
            device_bandwidth_method=texts["device_bandwidth_method"],
            parity_tolerance=None
            if tolerance is None
            else ParityTolerance(
                number(mapping(tolerance, "bench.parity.tolerance").get("atol"), "bench.parity.tolerance.atol"),
                number(tolerance.get("rtol"), "bench.parity.tolerance.rtol"),
            ),
            parity_reference=texts["parity_reference"],
            parity_steps=wholes["parity_steps"],
            parity_ok=parity_ok,
            parity_breach=tuple(breach),
            peak_memory_method=text(data.get("peak_memory_method"), "bench.peak_memory_method"),
            not_measured=texts["not_measured"],
            extra={key: value for key, value in data.items() if key not in _KNOWN_KEYS},
        )


def _impl_from_sections(name: str, sections: Mapping[str, Mapping[str, Any]]) -> ImplResult:
    def has(keys: Iterable[str]) -> bool:
        return any(name in sections[key] for key in keys)

    def value(key: str) -> Any:
        return sections[key].get(name)

    where = f"bench.{{}}.{name}"
    timing = memory = None
    if has(_TIMING_KEYS):
        spread = value("spread_ms")
        timing = ImplTiming(
            step_ms=number(value("step_ms"), where.format("step_ms")),
            spread_ms=None if spread is None else Spread.from_dict(spread, where.format("spread_ms")),
            bytes_per_step=whole(value("bytes_per_step"), where.format("bytes_per_step")),
            achieved_gbs=number(value("achieved_gbs"), where.format("achieved_gbs")),
            bandwidth_fraction=number(value("bandwidth_fraction"), where.format("bandwidth_fraction")),
        )
    if has(_MEMORY_KEYS):
        memory = ImplMemory(
            state_bytes_per_param=number(value("state_bytes_per_param"), where.format("state_bytes_per_param")),
            peak_memory_bytes=whole(value("peak_memory_bytes"), where.format("peak_memory_bytes")),
            step_extra_memory_bytes=whole(value("step_extra_memory_bytes"), where.format("step_extra_memory_bytes")),
        )
    kwargs = value("implementations")
    unavailable = value("unavailable")
    parity = value("parity")
    return ImplResult(
        name=name,
        kwargs=None if kwargs is None else dict(mapping(kwargs, where.format("implementations"))),
        unavailable=None if unavailable is None else str(unavailable),
        timing=timing,
        memory=memory,
        parity=None if parity is None else ParityCheck.from_dict(parity, where.format("parity")),
    )


def _rank(value: str, known: tuple[str, ...]) -> int:
    return known.index(value) if value in known else len(known)
