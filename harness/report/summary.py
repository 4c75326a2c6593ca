"""The Markdown summary for a CI job page: counts, the gate, changes, speed-ups, failures by reason."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from harness.cells import Record
from harness.measurements import GATE_SPEEDUP_KEYS
from harness.report.formatting import VERDICT_SYMBOLS, md, short, status_counts, status_symbol
from harness.verdict import Verdict, count_verdicts, gate_failed, not_run_lines, sort_verdicts
from harness.vocabulary import FAILING_STATUSES, STATUSES

_MD_ROWS = 60  # rows per Markdown table: a CI job page is read, not searched


def render_summary_md(records: list[Record], verdicts: list[Verdict] | None, *, notes: Sequence[str] = ()) -> str:
    """A Markdown summary for a CI job page: counts, gate, changes, speed-ups, failures by reason.

    `notes`: sentences the gate printed beside its verdict (a baselines folder with no baseline for this run).
    """
    lines: list[str] = []
    counts = status_counts(records)
    if verdicts is None:
        lines.append(f"**Gate: not checked** (no baseline given), {len(records)} cells.")
    else:
        result = "FAILED" if gate_failed(verdicts) else "passed"
        by_verdict = ", ".join(f"{n} {name}" for name, n in count_verdicts(verdicts).items() if n)
        cells = len({record.id for record in records} | {verdict.id for verdict in verdicts})  # lost ones too
        strict = " under --strict" if any(v.strict for v in verdicts) else ""
        lines.append(f"**Gate: {result}**{strict} ({cells} cells: {by_verdict or 'none judged'}).")
        lines += [f"\n**{md(line)}.**" for line in not_run_lines(verdicts)]
    lines += [f"\n{md(note)}" for note in notes]
    lines += ["", "| status | cells |", "| --- | ---: |"]
    lines += [f"| {status_symbol(s)} {md(s)} | {n} |" for s, n in counts.items()]
    lines += _changes(verdicts or [])
    lines += _speedups(records)
    lines += _failing(records)
    return "\n".join(lines) + "\n"


def _changes(verdicts: list[Verdict]) -> list[str]:
    # Cells that fail the gate (or stopped running) head the page; a first run's thousands of `new`
    # cells are a count, not a table nobody reads.
    lines: list[str] = []
    changes = [v for v in sort_verdicts(verdicts) if v.verdict not in ("as_expected", "new")]
    new = sum(v.verdict == "new" for v in verdicts)
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
            f"| {VERDICT_SYMBOLS.get(v.verdict, '?')} {md(v.verdict)} | {md(v.id)} | {md(v.was or '—')} "
            f"| {md(v.now)} | {md(short(v.detail, 240))} |"
            for v in changes[:_MD_ROWS]
        ]
        if len(changes) > _MD_ROWS:
            lines += ["", f"… and {len(changes) - _MD_ROWS} more changes: see report.html."]
    return lines


def _speedups(records: list[Record]) -> list[str]:
    benched = [(r, r.bench.gate_speedups()) for r in records if r.bench is not None and r.bench.gate_speedups()]
    if not benched:
        return []
    lines = [
        "",
        "## Fused speed-ups",
        "",
        "| device | optimizer | dtype | " + " | ".join(GATE_SPEEDUP_KEYS) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in GATE_SPEEDUP_KEYS) + " |",
    ]
    for r, figures in benched[:_MD_ROWS]:
        values = " | ".join(f"{figures[k]:.2f}×" if k in figures else "—" for k in GATE_SPEEDUP_KEYS)
        lines.append(f"| {md(r.device)} | {md(r.optimizer)} | {md(r.dtype)} | {values} |")
    if len(benched) > _MD_ROWS:
        lines += ["", f"… and {len(benched) - _MD_ROWS} more benchmarked cells: see report.html."]
    return lines


def _failing(records: list[Record]) -> list[str]:
    failing: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        if r.status in FAILING_STATUSES or r.status not in STATUSES:
            failing[(r.status, r.reason or "—")].append(r)
    if not failing:
        return []
    lines = ["", "## Failing cells by reason", ""]
    for (status, reason), group in sorted(failing.items(), key=lambda item: (-len(item[1]), item[0]))[:_MD_ROWS]:
        messages = Counter(short(r.error_message, 120) for r in group if r.error_message)
        common = f" — e.g. “{md(messages.most_common(1)[0][0])}”" if messages else ""
        shown = ", ".join(md(r.id) for r in group[:8])
        more = f" and {len(group) - 8} more" if len(group) > 8 else ""
        lines.append(f"- {status_symbol(status)} **{md(status)} / {md(reason)}** ({len(group)}): {shown}{more}{common}")
    return lines
