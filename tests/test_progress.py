"""Progress: one live display on a terminal, at most a line every 10 s without one, no letter per cell."""

from __future__ import annotations

import io

import pytest

from harness.progress import MatrixProgress, Tally, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report(nodeid: str = "matrix.yaml::torch.optim.AdamW-cpu-float32-plain-direct", **kwargs) -> pytest.TestReport:
    fields = {"location": ("matrix.yaml", None, nodeid), "keywords": {}, "outcome": "passed", "longrepr": None}
    fields |= {"when": "call", **kwargs}
    return pytest.TestReport(nodeid=nodeid, **fields)


def xfailed() -> pytest.TestReport:
    rep = report(outcome="skipped", longrepr=("matrix.yaml", 0, "xfail"))
    rep.wasxfail = "construct_error (unexpected_kwarg)"
    return rep


def progress(interactive: bool, clock: Clock, total: int) -> tuple[MatrixProgress, io.StringIO]:
    stream = io.StringIO()
    plugin = MatrixProgress(None, stream=stream, interactive=interactive, clock=clock)  # type: ignore[arg-type]
    plugin.pytest_xdist_node_collection_finished(node=None, ids=[f"m.yaml::cell-{i}" for i in range(total)])
    return plugin, stream


def test_tally_counts_failures_incompatibilities_and_an_eta() -> None:
    tally = Tally(total=4).count(report()).count(report(outcome="failed")).count(xfailed())

    assert (tally.done, tally.left, tally.failing, tally.incompatible) == (3, 1, 1, 1)
    assert tally.eta_s(30.0) == pytest.approx(10.0)
    assert tally.line(30.0) == (
        "[matrix] 3/4 cells done, 1 left, ETA 10s, 1 failing the gate, 1 known incompatibilities"
    )
    assert Tally(total=4).eta_s(5.0) is None


@pytest.mark.parametrize(("seconds", "text"), [(4.4, "4s"), (185, "3m05s"), (3720, "1h02m")])
def test_durations_are_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_without_a_terminal_at_most_one_line_every_ten_seconds() -> None:
    clock = Clock()
    plugin, stream = progress(False, clock, total=100)
    for step in range(100):
        clock.now = step * 0.5  # a cell every half second: 50 s in all
        plugin.pytest_runtest_logreport(report())
    lines = stream.getvalue().splitlines()

    assert len(lines) == 4, lines  # at 10, 20, 30 and 40 s
    assert lines[0].startswith("[matrix] 21/100 cells done, 79 left, ETA ")


def test_reports_of_other_tests_and_phases_are_not_cells() -> None:
    clock = Clock()
    plugin, _ = progress(False, clock, total=3)
    plugin.pytest_runtest_logreport(report(when="setup"))
    plugin.pytest_runtest_logreport(report(nodeid="tests/test_x.py::test_y"))
    plugin.pytest_runtest_logreport(report(when="setup", outcome="skipped", longrepr=("m", 0, "skip")))

    assert plugin.tally.done == 1


def test_on_a_terminal_one_live_display_ends_with_the_counts() -> None:
    pytest.importorskip("rich")
    clock = Clock()
    plugin, stream = progress(True, clock, total=3)
    for rep in (report(), report(outcome="failed"), xfailed()):
        clock.now += 1.0
        plugin.pytest_runtest_logreport(rep)
    text = stream.getvalue()

    assert plugin._live is None, "the display stops with the last cell, before pytest's own last line"
    assert "3/3" in text and "1 failing the gate" in text and "1 known" in text
    assert "[matrix]" not in text


def test_passing_and_xfailing_cells_print_no_letter_but_failures_keep_theirs() -> None:
    plugin, _ = progress(False, Clock(), total=3)

    assert plugin.pytest_report_teststatus(report(), None) == ("passed", "", "PASSED")  # type: ignore[arg-type]
    assert plugin.pytest_report_teststatus(xfailed(), None) == ("xfailed", "", "XFAIL")  # type: ignore[arg-type]
    assert plugin.pytest_report_teststatus(report(outcome="failed"), None) is None  # type: ignore[arg-type]
    assert plugin.pytest_report_teststatus(report(nodeid="t.py::test"), None) is None  # type: ignore[arg-type]
