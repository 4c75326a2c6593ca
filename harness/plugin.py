"""The pytest plugin: a matrix file collects into one pytest item per cell.

`pytest matrix.yaml -n auto` runs the cells with pytest-xdist; `-k`, `--lf` and `--junitxml` work as
for any test. Each worker runs its cells in a `CellRunner` process and appends each record to the
results file as the cell finishes. The cell's pytest outcome is its verdict against the baseline:
a known incompatibility is an xfail, a regression (or an unaccepted fix) a failure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import TerminalRepr

from harness.cells import Cell, Record
from harness.environments import NAME_ENV as ENVIRONMENT_NAME
from harness.errors import HarnessError
from harness.exclusive import LOCK_DIR_ENV
from harness.isolate import CellRunner
from harness.probe import CACHE_ENV
from harness.progress import MatrixProgress
from harness.records import (
    append_record,
    finished_ids,
    lock_out_dir,
    read_records,
    repair_torn_tail,
    results_path,
)
from harness.settings import Settings
from harness.verdict import Verdict
from harness.wording import first_line, strip_control
from harness.workdir import check_working_directory

_RUNNER_KEY = pytest.StashKey[CellRunner]()
_OUT_LOCK_KEY = pytest.StashKey[int]()
OUT_LOCK_ENV = "HARNESS_OUT_LOCKED"
"""Set by whoever holds the results directory's lock for this run (`harness run`, or the plugin)."""
LOST_NAME = "lost.json"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "optimizer compatibility matrix")
    group.addoption("--matrix-out", default="reports", help="directory for results.jsonl (default: reports)")
    group.addoption("--matrix-resume", action="store_true", help="run only the cells without a record")
    group.addoption("--matrix-shard", default=None, metavar="I/N", help="run the I-th of N stable shares of the cells")
    group.addoption(
        "--matrix-baselines", default="reports", metavar="DIR", help="directory holding baselines/ (default: reports)"
    )
    group.addoption(
        "--matrix-strict", action="store_true", help="a cell with no accepted outcome (`new`) fails, as a regression"
    )


def pytest_configure(config: pytest.Config) -> None:
    is_worker = hasattr(config, "workerinput")
    out = results_path(config.getoption("matrix_out"))
    if not is_worker and _matrix_args(config):
        try:
            check_working_directory()
            _claim_out_dir(config, out)
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from exc
    config.stash[_RUNNER_KEY] = CellRunner()
    if _matrix_args(config) and (is_worker or not _uses_xdist(config)):
        config.stash[_RUNNER_KEY].start()  # imports torch while pytest collects
    if not is_worker and _matrix_args(config):
        config.pluginmanager.register(MatrixProgress(config), "harness-progress")  # harness.progress
        # Workers inherit this: their benchmarks take the machine exclusively (harness.exclusive).
        # One lock directory per machine, outside the reports, so two runs at once do not time each other.
        os.environ.setdefault(LOCK_DIR_ENV, str(Path(tempfile.gettempdir()) / "harness-locks"))


def _claim_out_dir(config: pytest.Config, out: Path) -> None:
    """Lock the results' directory for this run, start or repair its results file, register the ledger."""
    if os.environ.get(OUT_LOCK_ENV) != str(out.parent.resolve()):  # `harness run` holds it already
        config.stash[_OUT_LOCK_KEY] = lock_out_dir(out.parent)
        os.environ[OUT_LOCK_ENV] = str(out.parent.resolve())
    if config.getoption("matrix_resume"):
        cut = repair_torn_tail(out)
        if cut:
            sys.stderr.write(f"{out}: cut a torn last line ({cut} bytes) left by an interrupted run.\n")
    elif out.exists():
        out.unlink()  # a fresh run starts a fresh results file; --resume keeps it
    if not os.environ.get(CACHE_ENV):
        cache = out.parent / ".expansion.json"
        cache.unlink(missing_ok=True)  # one cache per run: workers read what the controller probed
        os.environ[CACHE_ENV] = str(cache.resolve())
        config.add_cleanup(_forget_cache)
    config.pluginmanager.register(Ledger(config, out), "harness-ledger")


def _forget_cache() -> None:
    os.environ.pop(CACHE_ENV, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER_KEY, None)
    if runner is not None:
        runner.close()
    lock = config.stash.get(_OUT_LOCK_KEY, None)
    if lock is not None:
        os.close(lock)
        os.environ.pop(OUT_LOCK_ENV, None)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and file_path.resolve() in _matrix_args(parent.config):
        return MatrixFile.from_parent(parent, path=file_path)
    return None


def _matrix_args(config: pytest.Config) -> set[Path]:
    """Only YAML files named on the command line are matrices (never stray YAML under tests/)."""
    paths = set()
    for arg in config.args:
        path = Path(str(arg).split("::")[0])
        if path.suffix in (".yaml", ".yml"):
            paths.add((Path(config.invocation_params.dir) / path).resolve())
    return paths


class MatrixFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        from harness.expand import expand_matrix, parse_shard, shard_cells
        from harness.probe import cached_expander, optimizer_names
        from harness.spec import load_matrix

        matrix = load_matrix(self.path)
        cache = os.environ.get(CACHE_ENV)
        expander = cached_expander(optimizer_names(matrix), Path(cache) if cache else None)
        cells = expand_matrix(matrix, expand_optimizer=expander)
        shard = self.config.getoption("matrix_shard")
        if shard:
            cells = shard_cells(cells, *parse_shard(shard))
        done = (
            finished_ids(results_path(self.config.getoption("matrix_out")))
            if self.config.getoption("matrix_resume")
            else set()
        )
        for cell in cells:
            if cell.id not in done:
                yield CellItem.from_parent(self, name=cell.id, cell=cell, settings=matrix.settings)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, HarnessError):
            return f"error: {excinfo.value}"
        return super().repr_failure(excinfo)


class CellFailure(Exception):
    """A cell whose outcome fails the gate."""

    def __init__(self, record: Record, verdict: str):
        self.record = record
        self.verdict = verdict
        super().__init__(record.id)


class CellItem(pytest.Item):
    def __init__(self, *, cell: Cell, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cell = cell
        self.settings = settings
        self.extra_keyword_matches.add(cell.scenario)  # `-k train` selects the plain-loop cells, whose ids lack it

    def runtest(self) -> None:
        record = self.config.stash[_RUNNER_KEY].run(self.cell, self.settings)
        if os.environ.get(ENVIRONMENT_NAME):  # `run --env NAME` re-ran the harness inside that environment
            record = record.replace(environment=os.environ[ENVIRONMENT_NAME])
        append_record(results_path(self.config.getoption("matrix_out")), record)
        self.harness_record = record.to_json()  # the controller's ledger keeps a copy (see Ledger)
        self.user_properties.append(("status", record.status))
        if record.reason:
            self.user_properties.append(("reason", record.reason))
        judged = _verdict_for(self.config, record, self.settings)
        verdict = judged.verdict
        self.user_properties.append(("verdict", verdict))
        if judged.fails_gate:
            raise CellFailure(record, verdict)
        if record.status == "skipped":
            pytest.skip(f"{record.error_message or 'skipped'}")
        if record.status != "ok":
            why = first_line(strip_control(record.error_message or record.judgement or ""))
            pytest.xfail(f"{verdict}: {record.status} ({record.reason}): {why}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, CellFailure):
            record, verdict = excinfo.value.record, excinfo.value.verdict
            lines = [
                f"{verdict}: {record.id} is now {record.status}" + (f" ({record.reason})" if record.reason else ""),
            ]
            if record.error_type or record.error_message:
                lines.append(f"{record.error_type}: {record.error_message}")
            if record.judgement:
                lines.append(record.judgement)
            return terminal_text("\n".join(lines))
        if isinstance(excinfo.value, pytest.xfail.Exception):
            return str(excinfo.value)  # its reason says it all; pytest's traceback rendering costs ~0.2 s a cell
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"cell: {self.cell.id}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    record = getattr(item, "harness_record", None)
    if record is not None and call.when == "call":
        report.harness_record = record  # travels to the xdist controller with the report
    return report


class Ledger:
    """The controller's account of a run: which cells were selected, which records came back.

    After the run every selected cell must have exactly one record in the results file. Records that
    reached the controller but not the file (a cell deleted it) are written again; a selected cell
    without a record is `lost`, listed with the pytest error that lost it in `DIR/lost.json`, and the
    session fails.
    """

    def __init__(self, config: pytest.Config, results: Path) -> None:
        self.config = config
        self.results = results
        self.selected: dict[str, None] = {}
        self.errors: dict[str, str] = {}
        self.records: dict[str, str] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.selected.update((item.cell.id, None) for item in session.items if isinstance(item, CellItem))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.selected.update((_cell_id(nodeid), None) for nodeid in ids if "::" in nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "::" not in report.nodeid:
            return
        cell_id = _cell_id(report.nodeid)
        record = getattr(report, "harness_record", None)
        if record is not None:
            self.records[cell_id] = record
        if report.failed and cell_id not in self.errors and record is None:
            self.errors[cell_id] = strip_control(report.longreprtext or "failed without a message")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput") or self.config.option.collectonly:
            return
        lost = self.reconcile()
        ledger = self.results.parent / LOST_NAME
        try:
            if lost:
                ledger.write_text(json.dumps([{"id": i, "error": e} for i, e in lost.items()], indent=1) + "\n")
            else:
                ledger.unlink(missing_ok=True)
        except OSError as exc:
            raise HarnessError(f"Cannot write {ledger}: {exc.strerror}.") from exc
        if not lost:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"[matrix] {len(lost)} selected cells have no record (verdict `lost`):", red=True)
            for cell_id, error in list(lost.items())[:20]:
                reporter.write_line(f"  lost: {cell_id}: {first_line(error)}")
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def reconcile(self) -> dict[str, str]:
        """Selected cells without a record, each with the error that lost it; rewrites records a cell removed."""
        on_disk = _ids_on_disk(self.results)
        restored = [cell_id for cell_id in self.records if cell_id not in on_disk]
        for cell_id in restored:
            append_record(self.results, Record.from_dict(json.loads(self.records[cell_id])))
        if restored:
            sys.stderr.write(
                f"{self.results} lost {len(restored)} records during the run (a cell removed or truncated it?); "
                "they were written again from the records the workers reported.\n"
            )
            on_disk |= set(restored)
        return {cell_id: self.errors.get(cell_id, _NEVER_RAN) for cell_id in self.selected if cell_id not in on_disk}


_NEVER_RAN = "pytest never reported this cell (the run stopped early: -x, --maxfail, an interrupt or a dead worker)."


def _cell_id(nodeid: str) -> str:
    return nodeid.split("::", 1)[1]


def _ids_on_disk(results: Path) -> set[str]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn line is a missing record, reported as lost
        try:
            return {record.id for record in read_records(results)}
        except HarnessError:
            return set()


def terminal_text(text: str, *, lines: int = 6, width: int = 300) -> str:
    """At most `lines` lines of at most `width` characters, control characters removed, for the terminal."""
    kept = [line if len(line) <= width else line[: width - 1] + "…" for line in strip_control(text).splitlines()]
    if len(kept) > lines:
        kept = [*kept[: lines - 1], f"... ({len(kept) - lines + 1} more lines in the report)"]
    return "\n".join(kept)


def _uses_xdist(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller (its workers run the cells, not it)."""
    return bool(getattr(config.option, "numprocesses", None)) and getattr(config.option, "dist", "no") != "no"


_BASELINES_KEY = pytest.StashKey[dict]()


def _verdict_for(config: pytest.Config, record: Record, settings: Settings) -> Verdict:
    from harness.baseline import baseline_path, read_baseline_file, record_environment_key
    from harness.verdict import judge_one

    files = config.stash.setdefault(_BASELINES_KEY, {})  # one read per baseline file, not per cell
    key = record_environment_key(record)
    if key not in files:
        files[key] = read_baseline_file(baseline_path(Path(config.getoption("matrix_baselines")), key))
    entry = files[key].get(record.id)
    strict = bool(config.getoption("matrix_strict"))
    return judge_one(record, entry, speedup_tolerance=settings.bench.speedup_tolerance, strict=strict)
