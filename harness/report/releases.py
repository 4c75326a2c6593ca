"""The cross-release view of a comparison: which changes matter first, and where each optimizer works.

Pure functions of records, one list per run (environment), in the order the runs were given (oldest
release first):

- `difference_rank` orders the cells whose outcome differs between runs: a cell that ran in every run
  and changed outcome is the news (0); one absent from a run comes next (1); a difference that is only
  a missing optional package (skipped, `missing_dependency`) comes last (2).
- `release_rows` gives, per optimizer and variant, the state in each run (`ok`, `fails`, `partly`,
  `missing`, or nothing ran) and a verdict: works everywhere, broken everywhere, works since X,
  broken since X, or the runs where it is ok.

`render_releases_md` and `templates/releases.html.j2` render the rows; `render_compare_md` is the
Markdown summary of a whole comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from harness.cells import Record
from harness.findings import render_findings_across_md

State = Literal["ok", "partly", "fails", "missing", "none"]
"""One optimizer and variant in one run: every cell ok, some, none; its package missing; nothing ran."""

STATE_SYMBOLS: dict[str, str] = {"ok": "✓", "partly": "◐", "fails": "✗", "missing": "∅", "none": "·"}

Run = tuple[str, Sequence[Record]]


def outcome(record: Record | None) -> tuple[str, str | None] | None:
    return None if record is None else (record.status, record.reason)


def _missing(record: Record | None) -> bool:
    return record is not None and record.status == "skipped" and record.reason == "missing_dependency"


def difference_rank(cells: Sequence[Record | None]) -> int:
    """0: ran in every run and changed outcome; 1: absent from a run; 2: only a missing package differs."""
    if any(_missing(cell) for cell in cells):
        return 2
    if any(cell is None for cell in cells):
        return 1
    return 0


def run_name(records: Sequence[Record], fallback: str) -> str:
    """A run's column title: its environment's name when all its records carry the same one."""
    names = {r.environment for r in records}
    return names.pop() if len(names) == 1 and "" not in names else fallback


@dataclass(frozen=True)
class ReleaseRow:
    """One optimizer and variant across the runs."""

    optimizer: str
    variant: str
    states: tuple[State, ...]
    counts: tuple[tuple[int, int], ...]
    """(cells ok, cells that ran) per run; a skipped cell (absent device, missing package) did not run."""
    verdict: str
    changed: bool


def _state(records: Sequence[Record]) -> tuple[State, int, int]:
    ran = [r for r in records if r.status != "skipped"]
    ok = sum(r.status == "ok" for r in ran)
    if not ran:
        return ("missing" if any(_missing(r) for r in records) else "none"), 0, 0
    return ("ok" if ok == len(ran) else "fails" if ok == 0 else "partly"), ok, len(ran)


def _verdict(states: Sequence[State], names: Sequence[str]) -> tuple[str, bool]:
    seen = [(name, state) for name, state in zip(names, states, strict=True) if state != "none"]
    if not seen:
        return "not run", False
    good = [state == "ok" for _, state in seen]
    if all(good):
        return "works everywhere", False
    if not any(good):
        kinds = {state for _, state in seen}
        return ("missing everywhere" if kinds == {"missing"} else "broken everywhere"), len(kinds) > 1
    flips = [i for i in range(1, len(good)) if good[i] != good[i - 1]]
    if len(flips) == 1:
        since = seen[flips[0]][0]
        return (f"works since {since}" if good[-1] else f"broken since {since}"), True
    return "ok in " + ", ".join(name for (name, _), g in zip(seen, good, strict=True) if g), True


def release_rows(runs: Sequence[Run]) -> list[ReleaseRow]:
    """Per optimizer and variant, its state in every run and where it works; changed rows first."""
    names = [name for name, _ in runs]
    keys: dict[tuple[str, str], None] = {}
    for _, records in runs:
        for record in records:
            keys.setdefault((record.optimizer, record.variant), None)
    rows = []
    for optimizer, variant in keys:
        per_run = [
            _state([r for r in records if r.optimizer == optimizer and r.variant == variant]) for _, records in runs
        ]
        states = tuple(state for state, _, _ in per_run)
        verdict, changed = _verdict(states, names)
        rows.append(
            ReleaseRow(optimizer, variant, states, tuple((ok, ran) for _, ok, ran in per_run), verdict, changed)
        )
    return sorted(rows, key=lambda row: (not row.changed, row.optimizer, row.variant))


def _md(text: object) -> str:
    value = str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(value.split())


def _state_text(state: State, counts: tuple[int, int]) -> str:
    ok, ran = counts
    detail = f" {ok}/{ran}" if state in ("ok", "partly", "fails") else ""
    return f"{STATE_SYMBOLS[state]} {state}{detail}"


def render_releases_md(rows: Sequence[ReleaseRow], names: Sequence[str], *, limit: int = 60) -> str:
    """The "works since / broken since" table in Markdown, the rows that changed first."""
    lines = [
        "## Works since / broken since",
        "",
        "| optimizer | variant | where it works | " + " | ".join(_md(n) for n in names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for row in rows[:limit]:
        states = " | ".join(_state_text(s, c) for s, c in zip(row.states, row.counts, strict=True))
        lines.append(f"| {_md(row.optimizer)} | {_md(row.variant)} | {_md(row.verdict)} | {states} |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more rows: see compare.html.")
    return "\n".join(lines) + "\n"


def differing_cells(runs: Sequence[Run]) -> list[tuple[str, list[Record | None]]]:
    """Cells whose outcome differs between runs, in `difference_rank` order, then by id."""
    by_run = [{r.id: r for r in records} for _, records in runs]
    ids = sorted({cell_id for run in by_run for cell_id in run})
    rows = [(cell_id, [run.get(cell_id) for run in by_run]) for cell_id in ids]
    differing = [(cell_id, cells) for cell_id, cells in rows if len({outcome(c) for c in cells}) > 1]
    return sorted(differing, key=lambda row: (difference_rank(row[1]), row[0]))


def _outcome_text(record: Record | None) -> str:
    if record is None:
        return "— not in this run"
    return f"{record.status} ({record.reason})" if record.reason else record.status


def render_compare_md(runs: Sequence[Run], *, limit: int = 60) -> str:
    """A Markdown summary of a comparison: the differing cells (the news first), then where each works."""
    names = [name for name, _ in runs]
    differing = differing_cells(runs)
    lines = [f"**{len(runs)} runs compared** ({', '.join(names)}): {len(differing)} cells differ.", ""]
    if differing:
        lines += [
            "| cell | " + " | ".join(_md(n) for n in names) + " |",
            "| --- | " + " | ".join("---" for _ in names) + " |",
        ]
        for cell_id, cells in differing[:limit]:
            shown = [
                "— not in this run" if c is None else c.status + (f" ({c.reason})" if c.reason else "") for c in cells
            ]
            lines.append(f"| {_md(cell_id)} | " + " | ".join(_md(s) for s in shown) + " |")
        if len(differing) > limit:
            lines.append(f"\n… and {len(differing) - limit} more: see compare.html.")
        lines.append("")
    findings = render_findings_across_md(runs, limit=limit)
    return (
        "\n".join(lines).rstrip("\n")
        + "\n\n"
        + findings
        + "\n"
        + render_releases_md(release_rows(runs), names, limit=limit)
    )
