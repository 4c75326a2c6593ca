"""Runs side by side (`harness compare`): one column per run, the cells whose outcome differs first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.baseline import device_kind
from harness.cells import Record
from harness.findings import findings_across
from harness.report.formatting import ordered, short, status_counts
from harness.report.html import jinja
from harness.report.releases import STATE_SYMBOLS, difference_rank, release_rows


def _run_label(records: Sequence[Record]) -> dict[str, str]:
    torch_versions = ordered(r.env.torch_release for r in records) or ["unknown"]
    kinds = ordered(device_kind(r.device) for r in records)
    names = ordered(r.env.device_name for r in records if r.env.device_name)
    return {
        "torch": ", ".join(torch_versions),
        "devices": ", ".join(kinds) or "no cells",
        "device_names": ", ".join(names),
    }


def render_compare_html(runs: list[tuple[str, list[Record]]], *, title: str) -> str:
    """Runs side by side, one column each; the cells whose outcome differs between runs come first."""
    by_run = [{r.id: r for r in records} for _, records in runs]
    ids = ordered(cell_id for run in by_run for cell_id in run)

    def outcome(record: Record | None) -> tuple[str, str | None] | None:
        return None if record is None else (record.status, record.reason)

    differing: list[dict[str, Any]] = []
    same: list[dict[str, Any]] = []
    for cell_id in sorted(ids):
        cells = [run.get(cell_id) for run in by_run]
        (differing if len({outcome(c) for c in cells}) > 1 else same).append({"id": cell_id, "cells": cells})
    # A cell that ran everywhere and changed outcome is the news; one missing from a run comes after, and
    # a difference that is only a missing package last.
    differing.sort(key=lambda row: difference_rank(row["cells"]))
    return (
        jinja()
        .get_template("compare.html.j2")
        .render(
            title=title,
            runs=[
                {"name": name, **_run_label(records), "count": len(records), "counts": status_counts(records)}
                for name, records in runs
            ],
            differing=differing,
            same=same,
            short=short,
            releases=release_rows(runs),
            findings=findings_across(runs),
            names=[name for name, _ in runs],
            symbols=STATE_SYMBOLS,
        )
    )
