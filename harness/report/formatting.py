"""The report's words and numbers: status and verdict symbols, counts, and numbers, sizes and text made fit."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from markupsafe import Markup

from harness.cells import Record
from harness.vocabulary import STATUSES, VERDICTS

STATUS_SYMBOLS: dict[str, str] = {
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
VERDICT_SYMBOLS: dict[str, str] = {
    "lost": "∅",
    "regression": "▼",
    "fixed": "▲",
    "changed": "↔",
    "slower": "↘",
    "new": "+",
    "not_run": "⊘",
    "no_device": "–",
    "as_expected": "=",
}
if set(STATUS_SYMBOLS) != set(STATUSES) or set(VERDICT_SYMBOLS) != set(VERDICTS):  # checked once, at import
    raise RuntimeError("harness.report.formatting: every status and verdict of harness.vocabulary needs a symbol.")

_TRACEBACK_KEEP = 12_000  # characters kept from the end of a very long traceback


def status_symbol(status: str) -> str:
    return STATUS_SYMBOLS.get(status, "?")


def status_counts(records: Iterable[Record]) -> dict[str, int]:
    """Cells per status, every known status listed (zeros too), then any unknown ones."""
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


def finite(value: Any) -> Any:
    """JSON-ready: NaN and infinity as null, keys as text, anything unknown as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def script_json(value: Any) -> Markup:
    """JSON safe inside `<script type="application/json">`: no `</script>`, `<!--` or entity can appear."""
    text = json.dumps(finite(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: `2.13`, `1.2e-05`; anything else as text; missing as an empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def size(value: float | None) -> str:
    """`96724992` -> `92.2 MiB`; missing as an empty string."""
    if value is None:
        return ""
    amount, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            break
        amount /= 1024
    return f"{amount:.0f} B" if unit == "B" else f"{amount:.1f} {unit}"


def round6(value: Any) -> Any:
    """A float to 6 significant digits (the page needs no more); anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    return value


def short(text: str | None, limit: int = 160) -> str:
    """The first line of `text`, cut to `limit` characters."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def md(text: Any) -> str:
    """Text safe in a Markdown table cell: no HTML, no pipes, one line."""
    value = "" if text is None else str(text)
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = value.replace("|", "\\|").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
    return " ".join(value.split())


def ordered(values: Iterable[str]) -> list[str]:
    """Each value once, in the order first seen."""
    return list(dict.fromkeys(values))


def rank(value: str, known: Sequence[str]) -> tuple[int, str]:
    """Known values first in their order, then any other alphabetically: a report reads the same every run."""
    return (known.index(value), "") if value in known else (len(known), value)


def keep_tail(text: str) -> str:
    """A very long traceback cut to its end, where the error is."""
    if len(text) > _TRACEBACK_KEEP:
        return f"… ({len(text) - _TRACEBACK_KEEP} characters cut)\n" + text[-_TRACEBACK_KEEP:]
    return text
