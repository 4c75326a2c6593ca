"""One run of a matrix: its cells through pytest (the plugin, xdist), then the reports and the gate's verdict.

`harness.cli` parses the command line and calls these; each returns the exit status the CLI returns.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.cells import Cell, Record
    from harness.spec import Matrix


def run_matrix(
    path: str | Path,
    matrix: Matrix,
    out: Path,
    workers: str,
    *,
    keyword: str | None = None,
    resume: bool = False,
    shard: str | None = None,
    baselines: Path = Path("reports"),
    screenshot: bool = False,
    strict: bool = False,
    pytest_args: Sequence[str] = (),
) -> int:
    """Run the matrix's cells under pytest (the plugin, xdist), then write the reports; the gate's exit status.

    The caller holds `out`'s lock. A selected cell left without a record is `lost` and fails the gate.
    """
    import pytest

    from harness.plugin import LOST_NAME, OUT_LOCK_ENV
    from harness.probe import CACHE_ENV
    from harness.records import repair_torn_tail, results_path
    from harness.repro import save_settings
    from harness.shards import shard_info, write_shard_info

    cache = out / ".expansion.json"
    cache.unlink(missing_ok=True)
    cells = matrix_cells(matrix, None, cache)  # a bad matrix or shard fails here, cleanly, before pytest starts
    narrowed = bool(keyword or pytest_args)
    info = shard_info(shard, cells, matrix=str(path), narrowed=narrowed) if shard else None
    write_shard_info(out, info)  # shard.json: which shard of how many, and every shard's cells (for merge)
    save_settings(out, matrix.settings)  # settings.json: what `repro` rebuilds a cell's setup from
    (out / LOST_NAME).unlink(missing_ok=True)
    # here, before pytest starts, so a results file --resume must not append to is one sentence
    if resume and (cut := repair_torn_tail(results_path(out))):
        print(f"{results_path(out)}: cut a torn last line ({cut} bytes) left by an interrupted run.", file=sys.stderr)
    args = [
        str(path),
        "-p",
        "harness.plugin",
        "-q",
        "--no-header",
        "-rfE",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        f"--matrix-out={out}",
        f"--matrix-baselines={baselines}",
        f"--junitxml={out / 'junit.xml'}",
        "-o",
        "junit_family=xunit2",
    ]
    args += ["-n", workers] if workers != "0" else ["-p", "no:xdist"]
    if keyword:
        args += ["-k", keyword]
    if resume:
        args.append("--matrix-resume")
    if shard:
        args.append(f"--matrix-shard={shard}")
    if strict:
        args.append("--matrix-strict")
    args += pytest_args  # the user's, after `--`: last, so they can override ours
    env = {OUT_LOCK_ENV: str(out.resolve()), CACHE_ENV: str(cache.resolve())}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        code = pytest.main(args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    lost = read_lost(out / LOST_NAME)
    if code == pytest.ExitCode.INTERRUPTED:
        return interrupted(results_path(out), len(lost))
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
        print_lost(lost)
        raise HarnessError(
            f"pytest stopped with exit status {int(code)} before the matrix finished; see its output above."
            + (f" {len(lost)} selected cells have no record; rerun with --resume." if lost else "")
        )
    results = results_path(out)
    if not results.exists() and not lost:
        if code != pytest.ExitCode.NO_TESTS_COLLECTED:  # pytest ran no cell it selected (--collect-only)
            print("No cell ran; nothing to report.")
            return 0
        results.touch()  # an empty shard is a shard: merge reads its empty results file (and shard.json)
        print(f"No cell ran (none selected); wrote an empty {results}.")
    tolerance = matrix.settings.bench.speedup_tolerance
    return render_and_gate(results, out, baselines, tolerance, screenshot, lost=lost, strict=strict)


INTERRUPTED = 130
"""The exit status of a run stopped by Ctrl-C (SIGINT), as a shell reports it: 128 + 2."""


def interrupted(results: Path, unfinished: int) -> int:
    """Ctrl-C: one line saying what was kept and how to finish; the exit status 130."""
    from harness.records import finished_ids

    kept = len(finished_ids(results))
    left = f"; {unfinished} selected cells have no record" if unfinished else ""
    print(
        f"interrupted: {kept} records kept in {results}{left}; rerun the same command with --resume to finish the run.",
        file=sys.stderr,
    )
    return INTERRUPTED


def read_lost(path: Path) -> dict[str, str]:
    """The cells the run selected but left without a record (written by the plugin's ledger)."""
    if not path.exists():
        return {}
    try:
        return {entry["id"]: entry["error"] for entry in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"Cannot read {path}, the run's list of lost cells: {exc}.") from exc


def print_lost(lost: dict[str, str]) -> None:
    from harness.wording import first_line, strip_control

    for cell_id, error in list(lost.items())[:20]:
        print(f"lost: {cell_id}: {first_line(strip_control(error))}")
    if len(lost) > 20:
        print(f"lost: ... and {len(lost) - 20} more cells (see lost.json)")


def render_and_gate(
    results: Path,
    out: Path,
    baselines: Path,
    tolerance: float,
    screenshot: bool,
    *,
    lost: dict[str, str] | None = None,
    strict: bool = False,
) -> int:
    """Judge the results against the baselines, write the reports, print the verdict; 1 when the gate fails.

    `strict`: a cell with no accepted outcome (`new`) fails the gate too.
    """
    from harness.baseline import load_baseline_files, load_baselines, missing_baselines
    from harness.plugin import LOST_NAME
    from harness.records import readable_records
    from harness.report import write_reports
    from harness.verdict import Verdict, count_verdicts, gate_failed, judge, not_run_lines, vanished
    from harness.wording import first_line, strip_control

    records = [printable(record) for record in readable_records(results)] if results.exists() else []
    if lost is None:  # `report` and `merge`: the run's own list of lost cells, where it left one
        lost = read_lost(results.parent / LOST_NAME)
    have = {record.id for record in records}
    lost = {cell_id: error for cell_id, error in lost.items() if cell_id not in have}
    verdicts = judge(records, load_baselines(records, baselines), speedup_tolerance=tolerance, strict=strict)
    verdicts += vanished(records, load_baseline_files(records, baselines), strict=strict)
    verdicts += [
        Verdict(
            cell_id,
            "lost",
            None,
            "no record",
            f"Selected, left no record: {first_line(strip_control(error))}",
            strict=strict,
        )
        for cell_id, error in lost.items()
    ]
    counts = count_verdicts(verdicts)
    note = missing_baselines(records, baselines) if counts["new"] else None
    notes = [f"{'strict' if strict else 'note'}: {note}"] if note else []
    title = "Optimizer compatibility matrix"
    paths = write_reports(records, verdicts, out, title=title, notes=notes, results_dir=results.parent)
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    if screenshot:
        from harness.screenshot import take_screenshot

        html = paths["report.html"] if "report.html" in paths else out / "report.html"
        no_shot = take_screenshot(Path(html), Path(html).with_suffix(".png"))
        print(f"no screenshot: {no_shot}" if no_shot else f"wrote screenshot: {Path(html).with_suffix('.png')}")
    print_lost(lost)
    for line in not_run_lines(verdicts):
        print(f"not run: {line}")
    for line in notes:
        print(line)
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    if gate_failed(verdicts):
        print(f"gate: FAILED{' (--strict)' if strict else ''} ({summary})")
        return 1
    print(f"gate: passed{' (--strict)' if strict else ''} ({summary})")
    return 0


def printable(record: Record) -> Record:
    """The record with ANSI escapes and control characters taken out of its texts (for terminal and Markdown)."""
    from harness.wording import strip_control

    texts = ("error_message", "error_type", "judgement", "traceback")
    return record.replace(**{name: strip_control(v) for name in texts if isinstance(v := getattr(record, name), str)})


def matrix_cells(matrix: Matrix, shard: str | None, cache: Path | None) -> list[Cell]:
    """The matrix's cells, its families expanded in a child process (never importing a module here)."""
    from harness.expand import expand_matrix, parse_shard, shard_cells
    from harness.probe import cached_expander, optimizer_names

    cells = expand_matrix(matrix, expand_optimizer=cached_expander(optimizer_names(matrix), cache))
    return shard_cells(cells, *parse_shard(shard)) if shard else cells
