"""How far a run is, shown once: a live rich display on a terminal, a line every 10 s in CI.

`MatrixProgress` is a pytest plugin for the process that reports (the xdist controller, or pytest
itself without xdist). On a terminal it draws one progress bar (cells done and left, the ETA, cells
failing the gate, known incompatibilities) and keeps pytest's per-cell letters off the screen; with no
terminal (CI logs) it prints at most one plain line every `interval_s`. Either way pytest's letter per
cell is left out, except for failures and errors. The counting lives in `Tally`, which knows nothing of
pytest or rich.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TextIO

import pytest

CI_INTERVAL_S = 10.0
"""The least time between two progress lines when no terminal is attached."""

_REFRESH_S = 0.25


@dataclass(frozen=True)
class Tally:
    """Cells done out of a total, and how the done ones went."""

    total: int = 0
    done: int = 0
    failing: int = 0
    """Cells whose verdict fails the gate (pytest failures)."""
    incompatible: int = 0
    """Known incompatibilities (xfails)."""
    skipped: int = 0

    @property
    def left(self) -> int:
        return max(self.total - self.done, 0)

    def count(self, report: pytest.TestReport) -> Tally:
        """The tally after one finished cell's report."""
        return replace(
            self,
            done=self.done + 1,
            failing=self.failing + report.failed,
            incompatible=self.incompatible + bool(getattr(report, "wasxfail", None)),
            skipped=self.skipped + (report.skipped and not getattr(report, "wasxfail", None)),
        )

    def eta_s(self, elapsed_s: float) -> float | None:
        """Seconds left at the pace so far; None before the first cell."""
        if not self.done or not self.total:
            return None
        return elapsed_s / self.done * self.left

    def line(self, elapsed_s: float) -> str:
        eta = self.eta_s(elapsed_s)
        return (
            f"[matrix] {self.done}/{self.total} cells done, {self.left} left"
            + (f", ETA {format_duration(eta)}" if eta is not None and self.left else "")
            + f", {self.failing} failing the gate, {self.incompatible} known incompatibilities"
        )


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s` or `1h02m`: short enough for a progress line."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def finished_cell(report: pytest.TestReport) -> bool:
    """Whether `report` closes a matrix cell: its call, or a setup that skipped it."""
    if not is_cell(report.nodeid):
        return False
    return report.when == "call" or (report.when == "setup" and report.skipped)


def is_cell(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].endswith((".yaml", ".yml")) and "::" in nodeid


def is_interactive(stream: TextIO) -> bool:
    """A terminal a person watches (not a CI log, not a dumb terminal)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM") != "dumb"


class MatrixProgress:
    """The pytest plugin: counts finished cells and shows them, live on a terminal, every 10 s otherwise."""

    def __init__(
        self,
        config: pytest.Config,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval_s: float = CI_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stream = stream if stream is not None else sys.stdout  # the terminal, before capture swaps it
        self.interactive = is_interactive(self.stream) if interactive is None else interactive
        self.interval_s = interval_s
        self.clock = clock
        self.tally = Tally()
        self.started = clock()
        self.last_line = self.started
        self.last_refresh = 0.0
        self._live: Any = None
        self._task: Any = None

    # --- pytest hooks ------------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        total = sum(is_cell(item.nodeid) for item in session.items)
        if total:
            self._set_total(total)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self._set_total(sum(map(is_cell, ids)))  # the controller collects nothing itself

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config) -> Any:
        """No letter per passing cell: the progress display says it all (categories stay for the summary)."""
        if not is_cell(report.nodeid) or report.when not in ("setup", "call"):
            return None
        if report.when == "setup" and report.passed:
            return "", "", ""
        if report.failed:
            return None  # errors and failures keep pytest's own letter
        if getattr(report, "wasxfail", None):
            return ("xfailed", "", "XFAIL") if report.skipped else ("xpassed", "", "XPASS")
        return ("skipped", "", "SKIPPED") if report.skipped else ("passed", "", "PASSED")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not finished_cell(report):
            return
        self.tally = self.tally.count(report)
        if self.interactive:
            self._draw()
            if not self.tally.left:
                self.close()  # before pytest ends the line of letters with its `[100%]`
        else:
            self._maybe_print_line()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.close()

    def pytest_unconfigure(self) -> None:
        self.close()

    def _set_total(self, total: int) -> None:
        if not self.tally.total:  # cells start now: the ETA counts from here, not from torch's import
            self.started = self.last_line = self.clock()
        self.tally = replace(self.tally, total=total)

    # --- output ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the live display, leaving its last state on screen."""
        if self._live is not None:
            self._update()
            self._live.stop()  # draws the last state once more and ends its line
            self._live = None

    def _maybe_print_line(self) -> None:
        now = self.clock()
        if now - self.last_line < self.interval_s:
            return
        self.last_line = now
        self.stream.write(self.tally.line(now - self.started) + "\n")
        self.stream.flush()

    def _draw(self) -> None:
        if self._live is None and not self._start_live():
            self.interactive = False  # no rich: plain lines instead
            self._maybe_print_line()
            return
        now = self.clock()
        if now - self.last_refresh < _REFRESH_S and self.tally.left:
            return
        self.last_refresh = now
        self._update()
        self._live.refresh()

    def _update(self) -> None:
        tally = self.tally
        self._live.update(
            self._task,
            total=tally.total or None,
            completed=tally.done,
            failing=tally.failing,
            incompatible=tally.incompatible,
        )

    def _start_live(self) -> bool:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            return False
        self.stream.write("\n")  # leave pytest's line (its header, a last letter) alone
        self._live = Progress(
            TextColumn("[bold]matrix"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cells · ETA"),
            TimeRemainingColumn(compact=True),
            TextColumn("· [red]{task.fields[failing]} failing the gate[/] · {task.fields[incompatible]} known"),
            console=Console(file=self.stream),
            auto_refresh=False,  # no thread: we draw from pytest's hooks, when pytest's capture is off
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._live.add_task("cells", total=self.tally.total or None, failing=0, incompatible=0)
        self._live.start()
        return True
