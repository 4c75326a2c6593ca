"""Reports rendered from records alone: one self-contained HTML file and a Markdown summary for CI.

Every string that came from an optimizer or an exception reaches the HTML through Jinja's autoescape, or
through JSON in a `<script type="application/json">` block with `<`, `>` and `&` escaped, and the page's
script writes it with `textContent` only. The page loads nothing from the network (its Content Security
Policy forbids it too).
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from harness.baseline import SPEEDUP_KEYS, bench_speedups, device_kind, torch_version
from harness.cells import STATUSES, Record
from harness.errors import HarnessError
from harness.verdict import GATE_FAILING, VERDICTS, Verdict, count_verdicts, gate_failed, sort_verdicts

STATUS_SYMBOLS = {
    "ok": "✓",
    "construct_error": "✗",
    "step_error": "!",
    "no_learning": "~",
    "nonfinite": "∞",
    "mismatch": "≠",
    "skipped": "–",
    "crashed": "☠",
    "timeout": "◷",
}
VERDICT_SYMBOLS = {
    "lost": "⊘",
    "regression": "▼",
    "fixed": "▲",
    "changed": "↔",
    "slower": "↘",
    "new": "+",
    "not_run": "–",
    "as_expected": "=",
}
FAILING_STATUSES = tuple(s for s in STATUSES if s not in ("ok", "skipped"))
_MD_ROWS = 60  # rows per Markdown table: a CI job page is read, not searched
_TRACEBACK_KEEP = 12_000  # characters kept from the end of a very long traceback


def status_symbol(status: str) -> str:
    return STATUS_SYMBOLS.get(status, "?")


def status_counts(records: Iterable[Record]) -> dict[str, int]:
    """Cells per status, every known status listed (zeros too), then any unknown ones."""
    counts = dict.fromkeys(STATUSES, 0)
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------- HTML


@functools.lru_cache(maxsize=1)
def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(status_symbol=status_symbol, verdict_symbols=VERDICT_SYMBOLS, fmt=_fmt, size=_bytes)
    return env


def _script_json(value: Any) -> Markup:
    """JSON safe inside `<script type="application/json">`: no `</script>`, `<!--` or entity can appear."""
    text = json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: `2.13`, `1.2e-05`; anything else as text; missing as an empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


# Known values first in this order, then any other value alphabetically: a report reads the same every run.
FAMILY_ORDER = ("torch", "bitsandbytes", "grokadamw", "timm")
AXIS_ORDER: dict[str, tuple[str, ...]] = {
    "device": ("cpu",),
    "dtype": ("float32",),
    "variant": ("plain", "fused", "foreach", "fused_false"),
    "builder": ("direct", "signature", "safe"),
}


def _rank(value: str, known: Sequence[str]) -> tuple[int, str]:
    return (known.index(value), "") if value in known else (len(known), value)


def axis_sort_key(axis: str, value: str) -> tuple[int, str]:
    """Where a value of a matrix axis (`device`, `dtype`, `variant`, `builder`) goes among its column headers."""
    if axis == "device":  # every index of a kind together: cpu, cuda, cuda:0, cuda:1, mps
        kind = device_kind(value)
        return _rank(kind, AXIS_ORDER["device"])[0], f"{kind}\0{value}"
    return _rank(value, AXIS_ORDER.get(axis, ()))


def row_sort_key(record: Record) -> tuple[int, str, str, str]:
    """Matrix rows: by family (torch, bitsandbytes, grokadamw, timm, then others alphabetically), then name."""
    return (*_rank(record.family, FAMILY_ORDER), record.optimizer.casefold(), record.optimizer)


def _sorted_axis(axis: str, values: Iterable[str]) -> list[str]:
    return sorted(set(values), key=lambda value: axis_sort_key(axis, value))


@dataclass(frozen=True)
class _Column:
    index: int
    device: str
    dtype: str
    variant: str
    builder: str


@dataclass(frozen=True)
class _HeaderGroup:
    label: str
    first: int
    last: int

    @property
    def span(self) -> int:
        return self.last - self.first + 1


def _matrix(records: Sequence[Record]) -> dict[str, Any]:
    """Rows (optimizers, by `row_sort_key`) by columns (device x dtype x variant x builder, by `axis_sort_key`)."""
    axes = ("device", "dtype", "variant", "builder")
    keys = sorted(
        {tuple(getattr(r, axis) for axis in axes) for r in records},
        key=lambda key: tuple(axis_sort_key(axis, v) for axis, v in zip(axes, key, strict=False)),
    )
    columns = [_Column(i, *key) for i, key in enumerate(keys)]
    column_of = {key: i for i, key in enumerate(keys)}
    levels: list[list[_HeaderGroup]] = []
    for depth, axis in enumerate(axes):
        groups: list[_HeaderGroup] = []
        for column in columns:
            prefix = keys[column.index][: depth + 1]
            if groups and keys[groups[-1].first][: depth + 1] == prefix:
                groups[-1] = _HeaderGroup(groups[-1].label, groups[-1].first, column.index)
            else:
                groups.append(_HeaderGroup(getattr(column, axis), column.index, column.index))
        levels.append(groups)
    cells_by_row: dict[str, list[int | None]] = {}
    for i, record in sorted(enumerate(records), key=lambda item: row_sort_key(item[1])):
        row = cells_by_row.setdefault(record.optimizer, [None] * len(columns))
        row[column_of[tuple(getattr(record, axis) for axis in axes)]] = i  # a repeated id: the last wins
    rows = [
        {"optimizer": name, "family": records[next(i for i in row if i is not None)].family, "cells": row}
        for name, row in cells_by_row.items()
    ]
    return {"columns": columns, "levels": list(zip(axes, levels, strict=False)), "rows": rows}


class _Strings:
    """Long strings (messages, tracebacks) stored once and referred to by index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def ref(self, text: str | None) -> int | None:
        if not text:
            return None
        if len(text) > _TRACEBACK_KEEP:
            text = f"… ({len(text) - _TRACEBACK_KEEP} characters cut)\n" + text[-_TRACEBACK_KEEP:]
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def _round(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value


def _payload(records: Sequence[Record], verdict_of: Mapping[str, Verdict]) -> dict[str, Any]:
    strings = _Strings()
    envs: list[Mapping[str, Any]] = []
    env_index: dict[str, int] = {}
    cells = []
    for record in records:
        env_key = json.dumps(_finite(record.env), sort_keys=True)
        if env_key not in env_index:
            env_index[env_key] = len(envs)
            envs.append(record.env)
        cell: dict[str, Any] = {
            "id": record.id,
            "optimizer": record.optimizer,
            "device": record.device,
            "dtype": record.dtype,
            "variant": record.variant,
            "builder": record.builder,
            "family": record.family,
            "status": record.status,
            "reason": record.reason,
            "error_type": record.error_type,
            "message": strings.ref(record.error_message),
            "traceback": strings.ref(record.traceback),
            "kwargs": record.kwargs,
            "dropped": record.dropped_kwargs,
            "absorbed": record.absorbed_kwargs,
            "losses": [_round(x) for x in record.losses],
            "initial_loss": _round(record.initial_loss),
            "final_loss": _round(record.final_loss),
            "judgement": record.judgement,
            "construct_s": _round(record.construct_s),
            "steps_s": _round(record.steps_s),
            "duration_s": _round(record.duration_s),
            "num_params": record.num_params,
            "state_bytes": record.state_bytes,
            "state_bytes_per_param": _round(record.state_bytes_per_param),
            "peak_memory_bytes": record.peak_memory_bytes,
            "bench": record.bench,
            "extra": record.extra,
            "env": env_index[env_key],
        }
        verdict = verdict_of.get(record.id)
        if verdict is not None:
            cell["verdict"] = {"verdict": verdict.verdict, "was": verdict.was, "detail": verdict.detail}
        cells.append({k: v for k, v in cell.items() if v not in (None, [], {}, "")})
    return {"cells": cells, "strings": strings.items, "envs": envs, "symbols": STATUS_SYMBOLS}


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(_finite(value), ensure_ascii=False)))
    return items


PER_CELL_ENV_KEYS = ("optimizer_package", "optimizer_package_version", "device")
"""Env keys that vary from cell to cell on one machine: never a reason for another environment group."""
REDUCED_ENV_KEYS = frozenset({"python", "torch", "device"})
"""All that the parent records for a cell whose runner died (crashed, timed out)."""


def _is_reduced(env: Mapping[str, Any]) -> bool:
    return set(env) <= REDUCED_ENV_KEYS


def _machine_of(record: Record) -> tuple[str, str, str]:
    """What even a reduced env tells: python, torch (no local suffix) and the cell's device kind."""
    return str(record.env.get("python")), torch_version(record.env), device_kind(record.device)


def _environments(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One group per machine: its python, torch, device and package versions, each shown once.

    Groups ignore the per-cell keys (`PER_CELL_ENV_KEYS`); a cell with only a reduced env joins the group
    of the same python, torch version and device kind, or one of its own when there is none.
    """
    groups: dict[str, dict[str, Any]] = {}
    reduced: list[Record] = []
    for record in records:
        if _is_reduced(record.env) and record.env:
            reduced.append(record)
            continue
        machine = {k: v for k, v in record.env.items() if k not in PER_CELL_ENV_KEYS}
        key = json.dumps([device_kind(record.device), _finite(machine)], sort_keys=True)
        if key not in groups:
            groups[key] = {"machine": _machine_of(record), "env": machine, "records": [], "reduced": 0}
        groups[key]["records"].append(record)
    for record in reduced:
        home = next((g for g in groups.values() if g["machine"] == _machine_of(record)), None)
        if home is None:
            home = groups.setdefault(
                f"reduced {_machine_of(record)}",
                {
                    "machine": _machine_of(record),
                    "env": {k: v for k, v in record.env.items() if k != "device"},
                    "records": [],
                    "reduced": 0,
                },
            )
        home["records"].append(record)
        home["reduced"] += 1
    return [_environment_view(group) for group in groups.values()]


def _environment_view(group: Mapping[str, Any]) -> dict[str, Any]:
    env: Mapping[str, Any] = group["env"]
    records: list[Record] = group["records"]
    kind = group["machine"][2]
    items = [("device kind", kind), *_flatten({k: v for k, v in env.items() if k != "packages"})]
    versions: dict[str, list[str]] = defaultdict(list)
    cells: Counter[str] = Counter()
    packages = env.get("packages")
    if isinstance(packages, Mapping):
        for name, version in packages.items():
            versions[str(name)].append(_fmt(version) or "not installed")
    for record in records:
        name = record.env.get("optimizer_package")
        if name is None:
            continue
        cells[str(name)] += 1
        version = _fmt(record.env.get("optimizer_package_version")) or "not installed"
        if version not in versions[str(name)]:
            versions[str(name)].append(version)
    return {
        "count": len(records),
        "devices": _sorted_axis("device", (r.device for r in records)),
        "kind": kind,
        "items": items,
        "packages": [
            {"name": name, "versions": found, "cells": cells[name]}
            for name, found in sorted(versions.items(), key=lambda item: _rank(item[0], FAMILY_ORDER))
        ],
        "reduced": group["reduced"],
    }


def _step_ms(bench: Mapping[str, Any], impl: str) -> float | None:
    step_ms = bench.get("step_ms")
    raw = step_ms.get(impl) if isinstance(step_ms, Mapping) else None
    if isinstance(raw, Mapping):
        raw = raw.get("median")
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None


def _bench_summary(value: Any) -> str:
    """A short text for a bench figure that may be a number or a small mapping."""
    if isinstance(value, Mapping):
        return ", ".join(
            f"{key} ({_bench_summary(item)})" if isinstance(item, Mapping) else f"{key} {_fmt(item)}"
            for key, item in value.items()
        )
    return _fmt(value)


def _parity_summary(bench: Mapping[str, Any]) -> str:
    """`✓ within tolerance` / `✗ fused off` from the verdict the bench gives, else its raw figures."""
    if bench.get("parity_ok") is True:
        return "✓ within tolerance"
    if bench.get("parity_ok") is False:
        return "✗ off: " + ", ".join(str(name) for name in bench.get("parity_breach") or ["?"])
    return _bench_summary(bench.get("parity"))


IMPL_ORDER = ("fused", "foreach", "forloop")
CHART_KEYS = (*SPEEDUP_KEYS, "foreach/forloop")
"""The speed-ups charted per benchmarked cell: the gate's two fused ones, then foreach over the for-loop."""
_SETUP_KEYS = {
    "device_name": "device name",
    "timer": "timer",
    "threads": "CPU threads",
    "params": "parameters benchmarked",
    "model": "model",
    "warmup": "warm-up steps",
    "repeats": "timed steps",
    "device_bandwidth_gbs": "device bandwidth (GB/s)",
    "device_bandwidth_method": "bandwidth measured by",
    "parity_reference": "parity reference",
    "parity_steps": "parity steps",
    "peak_memory_method": "peak memory measured by",
}
# Keys shown per implementation or per row; any other key of a bench lands in the setup table.
_ROW_KEYS = frozenset(
    {
        "device",
        "dtype",
        "implementations",
        "unavailable",
        "step_ms",
        "spread_ms",
        "speedup",
        "speedups",
        "bytes_per_step",
        "achieved_gbs",
        "bandwidth_fraction",
        "parity",
        "parity_ok",
        "parity_breach",
        "state_bytes_per_param",
        "peak_memory_bytes",
        "step_extra_memory_bytes",
    }
)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _per_impl(bench: Mapping[str, Any], key: str, impl: str) -> Any:
    section = bench.get(key)
    return section.get(impl) if isinstance(section, Mapping) else None


def _chart_speedups(bench: Mapping[str, Any]) -> dict[str, float]:
    raw = bench.get("speedup", bench.get("speedups"))
    raw = raw if isinstance(raw, Mapping) else {}
    found = {key: _number(raw.get(key)) for key in CHART_KEYS}
    return {key: value for key, value in found.items() if value is not None and value > 0}


def _impl_names(bench: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for key in ("implementations", "step_ms", "unavailable", "bandwidth_fraction", "state_bytes_per_param"):
        section = bench.get(key)
        if isinstance(section, Mapping):
            names.extend(str(name) for name in section)
    return sorted(set(names), key=lambda name: _rank(name, IMPL_ORDER))


def _parity_of(bench: Mapping[str, Any], impl: str) -> dict[str, Any]:
    """`✓`/`✗` with the largest differences from the reference implementation, or `reference`."""
    found = _per_impl(bench, "parity", impl)
    if isinstance(found, Mapping):
        ok = found.get("ok")
        mark = "✓" if ok is True else "✗" if ok is False else "?"
        figures = ", ".join(f"{k} {_fmt(_number(found.get(k)))}" for k in ("max_abs", "max_rel") if k in found)
        return {"text": f"{mark} {figures}".strip(), "ok": ok}
    if impl == bench.get("parity_reference", "forloop"):
        return {"text": "reference", "ok": None}
    return {"text": "", "ok": None}


def _impl_view(bench: Mapping[str, Any], impl: str) -> dict[str, Any]:
    spread = _per_impl(bench, "spread_ms", impl)
    spread = spread if isinstance(spread, Mapping) else {}
    unavailable = _per_impl(bench, "unavailable", impl)
    kwargs = _per_impl(bench, "implementations", impl)
    return {
        "name": impl,
        "kwargs": json.dumps(_finite(kwargs), ensure_ascii=False, sort_keys=True) if kwargs is not None else "",
        "unavailable": None if unavailable is None else str(unavailable) or "unavailable",
        "median_ms": _step_ms(bench, impl),
        "spread": {k: _number(spread.get(k)) for k in ("p25", "p75", "min", "max")},
        "vs_forloop": _number((bench.get("speedup") or {}).get(f"{impl}/forloop"))
        if isinstance(bench.get("speedup"), Mapping)
        else None,
        "bytes_per_step": _number(_per_impl(bench, "bytes_per_step", impl)),
        "achieved_gbs": _number(_per_impl(bench, "achieved_gbs", impl)),
        "bandwidth_fraction": _number(_per_impl(bench, "bandwidth_fraction", impl)),
        "state_bytes_per_param": _number(_per_impl(bench, "state_bytes_per_param", impl)),
        "peak_memory_bytes": _number(_per_impl(bench, "peak_memory_bytes", impl)),
        "step_extra_memory_bytes": _number(_per_impl(bench, "step_extra_memory_bytes", impl)),
        "parity": _parity_of(bench, impl),
    }


def _bench_label(record: Record) -> str:
    extra = "" if (record.variant, record.builder) == ("plain", "direct") else f" · {record.variant} · {record.builder}"
    return f"{record.optimizer} · {record.dtype}{extra}"


def _setup(benches: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """What every benchmark of a device shares (or the range it spans): how the figures were taken."""
    rows: list[tuple[str, str]] = []
    keys = [*_SETUP_KEYS, *sorted({k for b in benches for k in b} - set(_SETUP_KEYS) - _ROW_KEYS)]
    for key in keys:
        values = [b.get(key) for b in benches if b.get(key) is not None]
        if not values:
            continue
        numbers = [n for n in map(_number, values) if n is not None]
        if len(numbers) == len(values) and len({*numbers}) > 1:
            text = f"{_fmt(min(numbers))} – {_fmt(max(numbers))} (median {_fmt(statistics.median(numbers))})"
        else:
            text = "; ".join(_ordered(_bench_summary(v) for v in values))
        rows.append((_SETUP_KEYS.get(key, key), text))
    tolerances = _ordered(
        f"{b.get('dtype', '?')}: {_bench_summary(b['parity']['tolerance'])}"
        for b in benches
        if isinstance(b.get("parity"), Mapping) and isinstance(b["parity"].get("tolerance"), Mapping)
    )
    if tolerances:
        rows.append(("parity tolerance", "; ".join(tolerances)))
    return rows


def _speedups(records: Sequence[Record]) -> list[dict[str, Any]]:
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
        record = records[i]
        if not isinstance(record.bench, Mapping) or not record.bench:
            continue
        impls = [_impl_view(record.bench, name) for name in _impl_names(record.bench)]
        by_device[record.device].append(
            {
                "i": i,
                "record": record,
                "label": _bench_label(record),
                "speedups": bench_speedups(record.bench),
                "chart_speedups": _chart_speedups(record.bench),
                "step_ms": {impl: _step_ms(record.bench, impl) for impl in IMPL_ORDER},
                "unavailable": {v["name"]: v["unavailable"] for v in impls if v["unavailable"] is not None},
                "bandwidth": _bench_summary(record.bench.get("bandwidth_fraction")),
                "parity": _parity_summary(record.bench),
                "impls": impls,
            }
        )
    groups = []
    for device in _sorted_axis("device", by_device):
        rows = by_device[device]
        impls = [impl for row in rows for impl in row["impls"]]
        groups.append(
            {
                "device": device,
                "rows": rows,
                "chart": _bar_chart(rows),
                "setup": _setup([row["record"].bench for row in rows]),
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


def _missing_note(row: Mapping[str, Any], missing: list[str]) -> str:
    """Why a speed-up has no bar: `no fused implementation`, `fused unavailable: <error>`, or `not measured`."""
    names = {impl["name"] for impl in row["impls"]}
    lacking = _ordered(
        part for key in missing for part in key.split("/") if part not in names or part in row["unavailable"]
    )
    if not lacking:
        return f"{', '.join(missing)}: not measured"
    reasons = [
        f"{name} unavailable: {_short(row['unavailable'][name], 80)}"
        if name in row["unavailable"]
        else f"no {name} implementation"
        for name in lacking
    ]
    return "; ".join(reasons)


def _bytes(value: float | None) -> str:
    """`96724992` -> `92.2 MiB`; missing as an empty string."""
    if value is None:
        return ""
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def render_html(
    records: list[Record], verdicts: list[Verdict] | None, *, title: str, generated_at: str | None = None
) -> str:
    """One self-contained HTML report of these records (and their verdicts, when a baseline was given)."""
    verdict_of = {v.id: v for v in verdicts or []}
    index_of = {record.id: i for i, record in enumerate(records)}
    listed = [v for v in sort_verdicts(verdicts or []) if v.verdict != "as_expected"]
    return (
        _jinja()
        .get_template("report.html.j2")
        .render(
            title=title,
            generated_at=generated_at,
            total=len(records),
            counts=status_counts(records),
            matrix=_matrix(records),
            records=records,
            verdict_of=verdict_of,
            has_verdicts=verdicts is not None,
            verdict_counts=count_verdicts(verdicts or []),
            verdict_names=VERDICTS,
            gate_failing=[name for name in VERDICTS if name in GATE_FAILING],
            listed_verdicts=listed,
            index_of=index_of,
            gate_failed=gate_failed(verdicts or []),
            speedups=_speedups(records),
            speedup_keys=SPEEDUP_KEYS,
            chart_keys=CHART_KEYS,
            environments=_environments(records),
            filters={
                "device": _sorted_axis("device", (r.device for r in records)),
                "dtype": _sorted_axis("dtype", (r.dtype for r in records)),
                "family": sorted({r.family for r in records}),
                "builder": _sorted_axis("builder", (r.builder for r in records)),
            },
            statuses=list(status_counts(records)),
            payload=_script_json(_payload(records, verdict_of)),
        )
    )


# ------------------------------------------------------------------------------------------ Markdown


def _md(text: Any) -> str:
    """Text safe in a Markdown table cell: no HTML, no pipes, one line."""
    value = "" if text is None else str(text)
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = value.replace("|", "\\|").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
    return " ".join(value.split())


def _short(text: str | None, limit: int = 160) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def render_summary_md(records: list[Record], verdicts: list[Verdict] | None) -> str:
    """A Markdown summary for a CI job page: counts, gate, changes, speed-ups, failures by reason."""
    lines: list[str] = []
    counts = status_counts(records)
    if verdicts is None:
        lines.append(f"**Gate: not checked** (no baseline given), {len(records)} cells.")
    else:
        result = "FAILED" if gate_failed(verdicts) else "passed"
        by_verdict = ", ".join(f"{n} {name}" for name, n in count_verdicts(verdicts).items() if n)
        lines.append(f"**Gate: {result}** ({len(records)} cells: {by_verdict or 'none judged'}).")
    lines += ["", "| status | cells |", "| --- | ---: |"]
    lines += [f"| {status_symbol(s)} {_md(s)} | {n} |" for s, n in counts.items()]

    # Cells that fail the gate (or stopped running) head the page; a first run's thousands of `new`
    # cells are a count, not a table nobody reads.
    changes = [v for v in sort_verdicts(verdicts or []) if v.verdict not in ("as_expected", "new")]
    new = sum(v.verdict == "new" for v in verdicts or [])
    if new:
        lines += [
            "",
            f"{new} cells have no accepted outcome yet (`new`); "
            "`python -m harness baseline accept` makes this run the baseline.",
        ]
    if changes:
        lines += [
            "",
            "## Changes against the baseline",
            "",
            "| verdict | cell | was | now | detail |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {VERDICT_SYMBOLS.get(v.verdict, '?')} {_md(v.verdict)} | {_md(v.id)} | {_md(v.was or '—')} "
            f"| {_md(v.now)} | {_md(_short(v.detail, 240))} |"
            for v in changes[:_MD_ROWS]
        ]
        if len(changes) > _MD_ROWS:
            lines += ["", f"… and {len(changes) - _MD_ROWS} more changes: see report.html."]

    benched = [r for r in records if bench_speedups(r.bench)]
    if benched:
        lines += [
            "",
            "## Fused speed-ups",
            "",
            "| device | optimizer | dtype | " + " | ".join(SPEEDUP_KEYS) + " |",
            "| --- | --- | --- | " + " | ".join("---:" for _ in SPEEDUP_KEYS) + " |",
        ]
        for r in benched[:_MD_ROWS]:
            figures = bench_speedups(r.bench)
            values = " | ".join(f"{figures[k]:.2f}×" if k in figures else "—" for k in SPEEDUP_KEYS)
            lines.append(f"| {_md(r.device)} | {_md(r.optimizer)} | {_md(r.dtype)} | {values} |")
        if len(benched) > _MD_ROWS:
            lines += ["", f"… and {len(benched) - _MD_ROWS} more benchmarked cells: see report.html."]

    failing: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        if r.status in FAILING_STATUSES or r.status not in STATUSES:
            failing[(r.status, r.reason or "—")].append(r)
    if failing:
        lines += ["", "## Failing cells by reason", ""]
        for (status, reason), group in sorted(failing.items(), key=lambda item: (-len(item[1]), item[0]))[:_MD_ROWS]:
            messages = Counter(_short(r.error_message, 120) for r in group if r.error_message)
            common = f" — e.g. “{_md(messages.most_common(1)[0][0])}”" if messages else ""
            shown = ", ".join(_md(r.id) for r in group[:8])
            more = f" and {len(group) - 8} more" if len(group) > 8 else ""
            lines.append(
                f"- {status_symbol(status)} **{_md(status)} / {_md(reason)}** ({len(group)}): {shown}{more}{common}"
            )
    return "\n".join(lines) + "\n"


def write_reports(
    records: list[Record], verdicts: list[Verdict] | None, out_dir: Path, *, title: str
) -> dict[str, Path]:
    """Write `report.html` and `summary.md` into out_dir, keyed by those names; failing to write raises."""
    out_dir = Path(out_dir)
    outputs = {
        "report.html": (out_dir / "report.html", render_html(records, verdicts, title=title)),
        "summary.md": (out_dir / "summary.md", render_summary_md(records, verdicts)),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, text in outputs.values():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HarnessError(
            f"Cannot write the reports into {out_dir}: {exc.strerror or exc} ({exc.filename or out_dir}); "
            "choose a writable folder."
        ) from exc
    return {name: path for name, (path, _) in outputs.items()}


# ------------------------------------------------------------------------------------------- compare


def _run_label(records: Sequence[Record]) -> dict[str, str]:
    torch_versions = _ordered(torch_version(r.env) for r in records) or ["unknown"]
    kinds = _ordered(device_kind(r.device) for r in records)
    names = _ordered(str(r.env.get("device_name")) for r in records if r.env.get("device_name"))
    return {
        "torch": ", ".join(torch_versions),
        "devices": ", ".join(kinds) or "no cells",
        "device_names": ", ".join(names),
    }


def render_compare_html(runs: list[tuple[str, list[Record]]], *, title: str) -> str:
    """Runs side by side, one column each; the cells whose outcome differs between runs come first."""
    by_run = [{r.id: r for r in records} for _, records in runs]
    ids = _ordered(cell_id for run in by_run for cell_id in run)

    def outcome(record: Record | None) -> tuple[str, str | None] | None:
        return None if record is None else (record.status, record.reason)

    differing, same = [], []
    for cell_id in sorted(ids):
        row = {"id": cell_id, "cells": [run.get(cell_id) for run in by_run]}
        (differing if len({outcome(c) for c in row["cells"]}) > 1 else same).append(row)
    # A cell that ran everywhere and changed outcome is the news; one missing from a run comes after.
    differing.sort(key=lambda row: any(cell is None for cell in row["cells"]))
    return (
        _jinja()
        .get_template("compare.html.j2")
        .render(
            title=title,
            runs=[
                {"name": name, **_run_label(records), "count": len(records), "counts": status_counts(records)}
                for name, records in runs
            ],
            differing=differing,
            same=same,
            short=_short,
        )
    )
