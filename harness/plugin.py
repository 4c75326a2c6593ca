"""The pytest plugin: a matrix file collects into one pytest item per cell.

`pytest matrix.yaml -n auto` runs the cells with pytest-xdist; `-k`, `--lf` and `--junitxml` work as
for any test. Each worker runs its cells in a `CellRunner` process and appends each record to the
results file as the cell finishes. The cell's pytest outcome is its verdict against the baseline:
a known incompatibility is an xfail, a regression (or an unaccepted fix) a failure.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.cells import Cell, Record
from harness.environments import NAME_ENV as ENVIRONMENT_NAME
from harness.errors import HarnessError
from harness.exclusive import LOCK_DIR_ENV
from harness.isolate import CellRunner
from harness.progress import MatrixProgress
from harness.records import append_record, finished_ids, results_path
from harness.settings import Settings
from harness.vocabulary import GATE_FAILING
from harness.wording import first_line

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

_RUNNER_KEY = pytest.StashKey[CellRunner]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "optimizer compatibility matrix")
    group.addoption("--matrix-out", default="reports", help="directory for results.jsonl (default: reports)")
    group.addoption("--matrix-resume", action="store_true", help="run only the cells without a record")
    group.addoption("--matrix-shard", default=None, metavar="I/N", help="run the I-th of N stable shares of the cells")
    group.addoption(
        "--matrix-baselines", default="reports", metavar="DIR", help="directory holding baselines/ (default: reports)"
    )


def pytest_configure(config: pytest.Config) -> None:
    is_worker = hasattr(config, "workerinput")
    out = results_path(config.getoption("matrix_out"))
    if not is_worker and not config.getoption("matrix_resume") and _matrix_args(config) and out.exists():
        out.unlink()  # a fresh run starts a fresh results file; --resume keeps it
    config.stash[_RUNNER_KEY] = CellRunner()
    if _matrix_args(config) and (is_worker or not _uses_xdist(config)):
        config.stash[_RUNNER_KEY].start()  # imports torch while pytest collects
    if not is_worker and _matrix_args(config):
        config.pluginmanager.register(MatrixProgress(config), "harness-progress")  # harness.progress
        # Workers inherit this: their benchmarks take the machine exclusively (harness.exclusive).
        # One lock directory per machine, outside the reports, so two runs at once do not time each other.
        os.environ.setdefault(LOCK_DIR_ENV, str(Path(tempfile.gettempdir()) / "harness-locks"))


def pytest_unconfigure(config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER_KEY, None)
    if runner is not None:
        runner.close()


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
        from harness.spec import load_matrix

        matrix = load_matrix(self.path)
        cells = expand_matrix(matrix)
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
        self.user_properties.append(("status", record.status))
        if record.reason:
            self.user_properties.append(("reason", record.reason))
        verdict = _verdict_for(self.config, record, self.settings)
        self.user_properties.append(("verdict", verdict))
        if verdict in GATE_FAILING:
            raise CellFailure(record, verdict)
        if record.status == "skipped":
            pytest.skip(f"{record.error_message or 'skipped'}")
        if record.status != "ok":
            pytest.xfail(
                f"{verdict}: {record.status} ({record.reason}): {first_line(record.error_message or record.judgement)}"
            )

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
            return "\n".join(lines)
        if isinstance(excinfo.value, pytest.xfail.Exception):
            return str(excinfo.value)  # its reason says it all; pytest's traceback rendering costs ~0.2 s a cell
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"cell: {self.cell.id}"


def _uses_xdist(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller (its workers run the cells, not it)."""
    return bool(getattr(config.option, "numprocesses", None)) and getattr(config.option, "dist", "no") != "no"


_BASELINES_KEY = pytest.StashKey[dict]()


def _verdict_for(config: pytest.Config, record: Record, settings: Settings) -> str:
    from harness.baseline import baseline_path, read_baseline_file, record_environment_key
    from harness.verdict import judge_one

    files = config.stash.setdefault(_BASELINES_KEY, {})  # one read per baseline file, not per cell
    key = record_environment_key(record)
    if key not in files:
        files[key] = read_baseline_file(baseline_path(Path(config.getoption("matrix_baselines")), key))
    entry = files[key].get(record.id)
    return judge_one(record, entry, speedup_tolerance=settings.bench.speedup_tolerance).verdict
