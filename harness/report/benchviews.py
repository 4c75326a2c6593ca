"""The report's speed-up section: per device, a summary table, a table per implementation, a bar chart
and how the figures were taken."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.cells import Record
from harness.measurements import IMPLEMENTATION_ORDER, REFERENCE, SPEEDUP_KEYS, BenchResult, ImplResult
from harness.report.formatting import finite, fmt, ordered, rank, short
from harness.report.layout import axis_sort_key, row_sort_key, sorted_axis

CHART_KEYS = SPEEDUP_KEYS
"""The speed-ups charted per benchmarked cell: the gate's two fused ones, then foreach over the for-loop."""
IMPL_ORDER = IMPLEMENTATION_ORDER

# (label, how to read it off a bench): how every benchmark of a device was taken, shown once per device.
_SETUP: tuple[tuple[str, str], ...] = (
    ("device_name", "device name"),
    ("timer", "timer"),
    ("threads", "CPU threads"),
    ("params", "parameters benchmarked"),
    ("model", "model"),
    ("warmup", "warm-up steps"),
    ("repeats", "timed steps"),
    ("device_bandwidth_gbs", "device bandwidth (GB/s)"),
    ("device_bandwidth_method", "bandwidth measured by"),
    ("parity_reference", "parity reference"),
    ("parity_steps", "parity steps"),
    ("peak_memory_method", "peak memory measured by"),
)


def _summary(value: Any) -> str:
    """A short text for a bench figure that may be a number or a small mapping."""
    if isinstance(value, Mapping):
        return ", ".join(
            f"{key} ({_summary(item)})" if isinstance(item, Mapping) else f"{key} {fmt(item)}"
            for key, item in value.items()
        )
    return fmt(value)


def _number(value: Any) -> float | None:
    """A finite number as a float; anything else (None, NaN, a mapping) as None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _parity_summary(bench: BenchResult) -> str:
    """`✓ within tolerance` / `✗ off: fused` from the verdict the bench gives, else its raw figures."""
    if bench.parity_ok is True:
        return "✓ within tolerance"
    if bench.parity_ok is False:
        return "✗ off: " + ", ".join(bench.parity_breach or ["?"])
    checked = {impl.name: impl.parity.to_dict() for impl in bench.implementations if impl.parity}
    return _summary(checked)


def _parity_of(bench: BenchResult, impl: ImplResult) -> dict[str, Any]:
    """`✓`/`✗` with the largest differences from the reference implementation, or `reference`."""
    if impl.parity is not None:
        ok = impl.parity.ok
        mark = "✓" if ok is True else "✗" if ok is False else "?"
        pairs = (("max_abs", impl.parity.max_abs), ("max_rel", impl.parity.max_rel))
        figures = ", ".join(f"{key} {fmt(value)}" for key, value in pairs if value is not None)
        return {"text": f"{mark} {figures}".strip(), "ok": ok}
    if impl.name == (bench.parity_reference or REFERENCE):
        return {"text": "reference", "ok": None}
    return {"text": "", "ok": None}


def _impl_view(bench: BenchResult, impl: ImplResult) -> dict[str, Any]:
    timing, memory = impl.timing, impl.memory
    spread = timing.spread_ms if timing else None
    return {
        "name": impl.name,
        "kwargs": "" if impl.kwargs is None else json.dumps(finite(impl.kwargs), ensure_ascii=False, sort_keys=True),
        "unavailable": None if impl.unavailable is None else impl.unavailable or "unavailable",
        "median_ms": _number(impl.step_ms),
        "spread": {key: _number(getattr(spread, key)) if spread else None for key in ("p25", "p75", "min", "max")},
        "vs_forloop": _number(bench.speedup.get(f"{impl.name}/forloop")),
        "bytes_per_step": _number(timing.bytes_per_step) if timing else None,
        "achieved_gbs": _number(timing.achieved_gbs) if timing else None,
        "bandwidth_fraction": _number(timing.bandwidth_fraction) if timing else None,
        "state_bytes_per_param": _number(memory.state_bytes_per_param) if memory else None,
        "peak_memory_bytes": _number(memory.peak_memory_bytes) if memory else None,
        "step_extra_memory_bytes": _number(memory.step_extra_memory_bytes) if memory else None,
        "parity": _parity_of(bench, impl),
    }


def _bench_label(record: Record) -> str:
    extra = "" if (record.variant, record.builder) == ("plain", "direct") else f" · {record.variant} · {record.builder}"
    return f"{record.optimizer} · {record.dtype}{extra}"


def _setup(benches: Sequence[BenchResult]) -> list[tuple[str, str]]:
    """What every benchmark of a device shares (or the range it spans): how the figures were taken."""
    rows: list[tuple[str, str]] = []
    fields = [(key, label, [getattr(b, key) for b in benches]) for key, label in _SETUP]
    unknown = sorted({key for b in benches for key in b.extra})
    fields += [(key, key, [b.extra.get(key) for b in benches]) for key in unknown]
    for _, label, found in fields:
        values = [value for value in found if value is not None]
        if not values:
            continue
        numbers = [n for n in map(_number, values) if n is not None]
        if len(numbers) == len(values) and len({*numbers}) > 1:
            text = f"{fmt(min(numbers))} – {fmt(max(numbers))} (median {fmt(statistics.median(numbers))})"
        else:
            text = "; ".join(ordered(_summary(v) for v in values))
        rows.append((label, text))
    tolerances = ordered(
        f"{b.dtype or '?'}: {_summary({'atol': b.parity_tolerance.atol, 'rtol': b.parity_tolerance.rtol})}"
        for b in benches
        if b.parity_tolerance is not None
    )
    if tolerances:
        rows.append(("parity tolerance", "; ".join(tolerances)))
    return rows


def _row(i: int, record: Record, bench: BenchResult) -> dict[str, Any]:
    impls = [
        _impl_view(bench, impl) for impl in sorted(bench.implementations, key=lambda impl: rank(impl.name, IMPL_ORDER))
    ]
    fractions = {impl.name: impl.timing.bandwidth_fraction for impl in bench.implementations if impl.timing}
    return {
        "i": i,
        "record": record,
        "bench": bench,
        "label": _bench_label(record),
        "speedups": bench.gate_speedups(),
        "chart_speedups": bench.speedups(CHART_KEYS),
        "step_ms": {impl: bench.step_ms(impl) for impl in IMPL_ORDER},
        "unavailable": {v["name"]: v["unavailable"] for v in impls if v["unavailable"] is not None},
        "bandwidth": _summary({name: value for name, value in fractions.items() if value is not None}),
        "parity": _parity_summary(bench),
        "impls": impls,
    }


def speedup_groups(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per device: a summary table, a per-implementation table and a bar chart of every benchmarked record."""
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    order = sorted(
        range(len(records)),
        key=lambda i: (
            row_sort_key(records[i]),
            *(axis_sort_key(a, getattr(records[i], a)) for a in ("dtype", "variant", "builder")),
        ),
    )
    for i in order:
        bench = records[i].bench
        if bench is not None:
            by_device[records[i].device].append(_row(i, records[i], bench))
    groups = []
    for device in sorted_axis("device", by_device):
        rows = by_device[device]
        impls = [impl for row in rows for impl in row["impls"]]
        groups.append(
            {
                "device": device,
                "rows": rows,
                "chart": _bar_chart(rows),
                "setup": _setup([row["bench"] for row in rows]),
                "has_memory": any(
                    v["peak_memory_bytes"] is not None or v["step_extra_memory_bytes"] is not None for v in impls
                ),
            }
        )
    return groups


def _bar_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometry of a horizontal bar chart (a bar per speed-up in `CHART_KEYS`), drawn by the template as SVG.

    A speed-up the bench lacks gets no empty bar: one line says why (no fused implementation, or its error).
    """
    label_w, bar_w, bar_h, gap, top = 340, 360, 12, 10, 34
    peak = max([1.0, *(v for row in rows for v in row["chart_speedups"].values())])
    bars, labels, notes = [], [], []
    y = top
    for row in rows:
        start = y
        for series, key in enumerate(CHART_KEYS):
            value = row["chart_speedups"].get(key)
            if value is None:
                continue
            width = bar_w * value / peak
            text = f"{value:.2f}× {key}"
            bars.append(
                {
                    "x": label_w,
                    "y": y,
                    "w": round(width, 1),
                    "h": bar_h,
                    "series": series,
                    "text": text,
                    "tx": round(label_w + width + 4, 1),
                    "ty": y + bar_h - 2,
                }
            )
            y += bar_h + 1
        missing = [key for key in CHART_KEYS if key not in row["chart_speedups"]]
        if missing:
            notes.append({"x": label_w + 4, "y": y + bar_h - 2, "text": _missing_note(row, missing)})
            y += bar_h + 1
        labels.append({"x": label_w - 8, "y": round((start + y) / 2 + 3, 1), "text": row["label"]})
        y += gap
    one_x = label_w + bar_w / peak
    return {
        "width": label_w + bar_w + 150,
        "height": y + 4,
        "bars": bars,
        "labels": labels,
        "notes": notes,
        "one_x": round(one_x, 1),
        "top": top - 6,
        "axis_bottom": y,
    }


def _missing_note(row: Mapping[str, Any], missing: Iterable[str]) -> str:
    """Why a speed-up has no bar: `no fused implementation`, `fused unavailable: <error>`, or `not measured`."""
    missing = list(missing)
    names = {impl["name"] for impl in row["impls"]}
    lacking = ordered(
        part for key in missing for part in key.split("/") if part not in names or part in row["unavailable"]
    )
    if not lacking:
        return f"{', '.join(missing)}: not measured"
    reasons = [
        f"{name} unavailable: {short(row['unavailable'][name], 80)}"
        if name in row["unavailable"]
        else f"no {name} implementation"
        for name in lacking
    ]
    return "; ".join(reasons)
