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
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
    "skipped": "–",
    "crashed": "☠",
    "timeout": "◷",
}
VERDICT_SYMBOLS = {
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
    env.globals.update(status_symbol=status_symbol, verdict_symbols=VERDICT_SYMBOLS, fmt=_fmt)
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
    """Rows (optimizers) by columns (device x dtype x variant x builder), each axis in first-seen order."""
    axes = ("device", "dtype", "variant", "builder")
    order = {axis: {v: i for i, v in enumerate(_ordered(getattr(r, axis) for r in records))} for axis in axes}
    keys = sorted(
        {tuple(getattr(r, axis) for axis in axes) for r in records},
        key=lambda key: tuple(order[axis][v] for axis, v in zip(axes, key)),
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
    for i, record in enumerate(records):
        row = cells_by_row.setdefault(record.optimizer, [None] * len(columns))
        row[column_of[tuple(getattr(record, axis) for axis in axes)]] = i  # a repeated id: the last wins
    rows = [
        {"optimizer": name, "family": records[next(i for i in row if i is not None)].family, "cells": row}
        for name, row in cells_by_row.items()
    ]
    return {"columns": columns, "levels": list(zip(axes, levels)), "rows": rows}


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


def _environments(records: Sequence[Record]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        key = json.dumps(_finite(record.env), sort_keys=True)
        group = groups.setdefault(key, {"items": _flatten(record.env), "devices": [], "count": 0})
        group["count"] += 1
        if record.device not in group["devices"]:
            group["devices"].append(record.device)
    return list(groups.values())


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


def _speedups(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per device: a table and a bar chart of the fused speed-ups of every benchmarked record."""
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, record in enumerate(records):
        if not record.bench:
            continue
        speedups = bench_speedups(record.bench)
        by_device[record.device].append(
            {
                "i": i,
                "record": record,
                "label": f"{record.optimizer} · {record.dtype}",
                "speedups": speedups,
                "step_ms": {impl: _step_ms(record.bench, impl) for impl in ("fused", "foreach", "forloop")},
                "bandwidth": _bench_summary(record.bench.get("bandwidth_fraction")),
                "parity": _parity_summary(record.bench),
            }
        )
    return [{"device": device, "rows": rows, "chart": _bar_chart(rows)} for device, rows in by_device.items()]


def _bar_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometry of a horizontal bar chart (two bars per row), drawn by the template as inline SVG."""
    label_w, bar_w, bar_h, gap, top = 300, 360, 13, 10, 22
    peak = max([1.0, *(v for row in rows for v in row["speedups"].values())])
    bars, labels = [], []
    y = top
    for row in rows:
        labels.append({"x": label_w - 8, "y": y + bar_h + 2, "text": row["label"]})
        for series, key in enumerate(SPEEDUP_KEYS):
            value = row["speedups"].get(key)
            width = 0.0 if value is None else bar_w * value / peak
            text = f"{value:.2f}× vs {key.split('/')[1]}" if value is not None else f"no {key}"
            bars.append(
                {"x": label_w, "y": y, "w": round(width, 1), "h": bar_h, "series": series, "text": text,
                 "tx": label_w + width + 4, "ty": y + bar_h - 3}
            )
            y += bar_h + 1
        y += gap
    one_x = label_w + bar_w / peak
    return {"width": label_w + bar_w + 120, "height": y + 4, "bars": bars, "labels": labels, "one_x": round(one_x, 1),
            "top": top - 6, "axis_bottom": y}


def render_html(
    records: list[Record], verdicts: list[Verdict] | None, *, title: str, generated_at: str | None = None
) -> str:
    """One self-contained HTML report of these records (and their verdicts, when a baseline was given)."""
    verdict_of = {v.id: v for v in verdicts or []}
    index_of = {record.id: i for i, record in enumerate(records)}
    listed = [v for v in sort_verdicts(verdicts or []) if v.verdict != "as_expected"]
    return _jinja().get_template("report.html.j2").render(
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
        environments=_environments(records),
        filters={
            "device": _ordered(r.device for r in records),
            "dtype": _ordered(r.dtype for r in records),
            "family": sorted({r.family for r in records}),
            "builder": _ordered(r.builder for r in records),
        },
        statuses=list(status_counts(records)),
        payload=_script_json(_payload(records, verdict_of)),
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

    changes = [v for v in sort_verdicts(verdicts or []) if v.verdict != "as_expected"]
    if changes:
        lines += ["", "## Changes against the baseline", "", "| verdict | cell | was | now | detail |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {VERDICT_SYMBOLS.get(v.verdict, '?')} {_md(v.verdict)} | {_md(v.id)} | {_md(v.was or '—')} "
            f"| {_md(v.now)} | {_md(_short(v.detail, 240))} |"
            for v in changes[:_MD_ROWS]
        ]
        if len(changes) > _MD_ROWS:
            lines += ["", f"… and {len(changes) - _MD_ROWS} more changes: see report.html."]

    benched = [r for r in records if bench_speedups(r.bench)]
    if benched:
        lines += ["", "## Fused speed-ups", "", "| device | optimizer | dtype | " + " | ".join(SPEEDUP_KEYS) + " |",
                  "| --- | --- | --- | " + " | ".join("---:" for _ in SPEEDUP_KEYS) + " |"]
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
            lines.append(f"- {status_symbol(status)} **{_md(status)} / {_md(reason)}** ({len(group)}): "
                         f"{shown}{more}{common}")
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
    return {"torch": ", ".join(torch_versions), "devices": ", ".join(kinds) or "no cells",
            "device_names": ", ".join(names)}


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
    return _jinja().get_template("compare.html.j2").render(
        title=title,
        runs=[{"name": name, **_run_label(records), "count": len(records), "counts": status_counts(records)}
              for name, records in runs],
        differing=differing,
        same=same,
        short=_short,
    )
