"""The cross-release view: which differences come first, and where each optimizer works."""

from __future__ import annotations

from harness.cells import Cell, Record
from harness.report import render_compare_html
from harness.report.releases import differing_cells, release_rows, render_compare_md, run_name


def _record(optimizer: str, status: str, *, reason: str | None = None, device: str = "cpu", env: str = "") -> Record:
    cell = Cell(optimizer, device, "float32", "plain")
    return Record.for_cell(cell, status, reason=reason).replace(environment=env)


OLD = [
    _record("a.Changed", "ok"),
    _record("a.OnlyOld", "ok"),
    _record("a.Missing", "skipped", reason="missing_dependency"),
    _record("a.Steady", "ok"),
    _record("a.Fixed", "step_error", reason="other"),
    _record("a.Fixed", "step_error", reason="other", device="cuda"),
]
NEW = [
    _record("a.Changed", "construct_error", reason="unexpected_kwarg"),
    _record("a.Missing", "ok"),
    _record("a.Steady", "ok"),
    _record("a.Fixed", "ok"),
    _record("a.Fixed", "skipped", reason=None, device="cuda"),  # an absent device did not run: not a failure
]
RUNS = [("old", OLD), ("new", NEW)]


def test_cells_that_ran_in_both_and_changed_come_first_missing_packages_last() -> None:
    order = [cell_id.split("-")[0] for cell_id, _ in differing_cells(RUNS)]
    assert order[:2] == ["a.Changed", "a.Fixed"]  # ran in both, changed
    assert order.index("a.OnlyOld") < order.index("a.Missing")
    assert order[-1] == "a.Missing"


def test_the_html_comparison_uses_the_same_order() -> None:
    html = render_compare_html([(name, list(records)) for name, records in RUNS], title="t")
    positions = [html.index(f'data-id="{name}-cpu-float32-plain-direct"') for name in ("a.Changed", "a.Missing")]
    assert positions == sorted(positions)
    assert 'id="releases"' in html and "broken since new" in html


def test_works_since_and_broken_since() -> None:
    verdicts = {(row.optimizer, row.variant): row.verdict for row in release_rows(RUNS)}
    assert verdicts[("a.Changed", "plain")] == "broken since new"
    assert verdicts[("a.Fixed", "plain")] == "works since new"
    assert verdicts[("a.Steady", "plain")] == "works everywhere"
    assert verdicts[("a.OnlyOld", "plain")] == "works everywhere"  # nothing ran in `new`: no evidence there
    assert verdicts[("a.Missing", "plain")] == "works since new"
    rows = release_rows(RUNS)
    assert [row.changed for row in rows] == sorted((row.changed for row in rows), reverse=True)


def test_ok_in_some_environments_only() -> None:
    runs = [(n, [_record("a.Flaky", s)]) for n, s in (("e1", "ok"), ("e2", "nonfinite"), ("e3", "ok"))]
    (row,) = release_rows(runs)
    assert row.verdict == "ok in e1, e3"
    assert row.states == ("ok", "fails", "ok")


def test_the_markdown_summary_holds_both_views() -> None:
    text = render_compare_md(RUNS)
    assert text.index("a.Changed-cpu") < text.index("a.Missing-cpu") < text.index("## Works since / broken since")
    assert "| a.Changed | plain | broken since new | ✓ ok 1/1 | ✗ fails 0/1 |" in text


def test_a_run_is_named_by_its_environment() -> None:
    assert run_name([_record("a.X", "ok", env="bnb-0.49")], "fallback") == "bnb-0.49"
    assert run_name([_record("a.X", "ok")], "fallback") == "fallback"
