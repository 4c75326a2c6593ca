"""Reports rendered from records alone: one self-contained HTML file, a Markdown summary for CI, and a
side-by-side comparison of runs.

- `formatting`: status and verdict symbols, counts, numbers and text made fit for a page;
- `layout`: the order of rows and columns, the matrix and its header groups, the filters;
- `payload`: the JSON the page's script reads for a cell's details;
- `environments`: one group per machine with its versions;
- `benchviews`: speed-up tables, the per-implementation table, the bar chart, how it was measured;
- `html`: the HTML report and `write_reports`; `summary`: the Markdown; `compare`: runs side by side;
- `files`: `write_atomically`, how every report file is written (whole, or the previous one is left).
"""

from __future__ import annotations

from harness.report.compare import render_compare_html
from harness.report.files import write_atomically
from harness.report.formatting import STATUS_SYMBOLS, VERDICT_SYMBOLS, status_counts, status_symbol
from harness.report.html import render_html, write_reports
from harness.report.layout import axis_sort_key, row_sort_key
from harness.report.summary import render_summary_md

__all__ = [
    "STATUS_SYMBOLS",
    "VERDICT_SYMBOLS",
    "axis_sort_key",
    "render_compare_html",
    "render_html",
    "render_summary_md",
    "row_sort_key",
    "status_counts",
    "status_symbol",
    "write_atomically",
    "write_reports",
]
