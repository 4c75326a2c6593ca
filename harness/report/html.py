"""The self-contained HTML report, and writing it beside the Markdown summary.

Every string that came from an optimizer or an exception reaches the HTML through Jinja's autoescape, or
through JSON in a `<script type="application/json">` block with `<`, `>` and `&` escaped, and the page's
script writes it with `textContent` only. The page loads nothing from the network (its Content Security
Policy forbids it too).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jinja2

from harness.cells import Record
from harness.findings import FINDINGS_NAME, finding_groups, render_findings_md
from harness.measurements import GATE_SPEEDUP_KEYS
from harness.report.benchviews import CHART_KEYS, speedup_groups
from harness.report.environments import environments
from harness.report.files import write_atomically
from harness.report.formatting import VERDICT_SYMBOLS, fmt, script_json, size, status_counts, status_symbol
from harness.report.layout import filters, matrix
from harness.report.payload import payload
from harness.report.summary import render_summary_md
from harness.verdict import Verdict, count_verdicts, gate_failed, sort_verdicts
from harness.vocabulary import GATE_FAILING, VERDICTS


@functools.lru_cache(maxsize=1)
def jinja() -> jinja2.Environment:
    """The templates in `harness/templates`, autoescaped, failing on any name they lack."""
    env = jinja2.Environment(
        # by file location: a `harness/` folder in the working directory must not stand in for this package
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(status_symbol=status_symbol, verdict_symbols=VERDICT_SYMBOLS, fmt=fmt, size=size)
    return env


def render_html(
    records: list[Record],
    verdicts: list[Verdict] | None,
    *,
    title: str,
    generated_at: str | None = None,
    results_dir: str | Path | None = None,
) -> str:
    """One self-contained HTML report of these records (and their verdicts, when a baseline was given).

    `results_dir` is where the records' results file lies, for the Findings section's `repro` commands.
    """
    verdict_of = {v.id: v for v in verdicts or []}
    index_of = {record.id: i for i, record in enumerate(records)}
    listed = [v for v in sort_verdicts(verdicts or []) if v.verdict != "as_expected"]
    return (
        jinja()
        .get_template("report.html.j2")
        .render(
            title=title,
            generated_at=generated_at,
            total=len(records),
            counts=status_counts(records),
            matrix=matrix(records),
            records=records,
            verdict_of=verdict_of,
            has_verdicts=verdicts is not None,
            verdict_counts={**dict.fromkeys(VERDICTS, 0), **count_verdicts(verdicts or [])},
            verdict_names=VERDICTS,
            gate_failing=[  # `new` too, under --strict
                name
                for name in VERDICTS
                if name in GATE_FAILING or any(v.verdict == name and v.fails_gate for v in verdicts or [])
            ],
            listed_verdicts=listed,
            index_of=index_of,
            gate_failed=gate_failed(verdicts or []),
            speedups=speedup_groups(records),
            speedup_keys=GATE_SPEEDUP_KEYS,
            chart_keys=CHART_KEYS,
            environments=environments(records),
            findings=finding_groups(records, results_dir),
            filters=filters(records),
            statuses=list(status_counts(records)),
            payload=script_json(payload(records, verdict_of)),
        )
    )


def write_reports(
    records: list[Record],
    verdicts: list[Verdict] | None,
    out_dir: Path,
    *,
    title: str,
    notes: Sequence[str] = (),
    results_dir: Path | None = None,
) -> dict[str, Path]:
    """Write `report.html`, `summary.md` (with `notes` under its verdict) and `findings.md` into out_dir, keyed by
    those names; failing to write raises.

    Each file is written whole or not at all (`write_atomically`): a failed write leaves the previous one.
    `results_dir` holds the records' results file (default: out_dir), for the findings' `repro` commands.
    """
    out_dir = Path(out_dir)
    results_dir = out_dir if results_dir is None else results_dir
    outputs = {
        "report.html": (out_dir / "report.html", render_html(records, verdicts, title=title, results_dir=results_dir)),
        "summary.md": (out_dir / "summary.md", render_summary_md(records, verdicts, notes=notes)),
        FINDINGS_NAME: (out_dir / FINDINGS_NAME, render_findings_md(records, results_dir)),
    }
    for path, text in outputs.values():
        write_atomically(path, text)
    return {name: path for name, (path, _) in outputs.items()}
