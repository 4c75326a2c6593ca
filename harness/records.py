"""The results file: one JSON object per line, appended as each cell finishes."""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from harness.cells import Record
from harness.errors import HarnessError

RESULTS_NAME = "results.jsonl"


def append_record(path: Path, record: Record) -> None:
    """Append one record as a whole line and flush it to disk before returning.

    Several pytest-xdist workers append to the same file: each line goes out in one `write` on an
    `O_APPEND` descriptor under an exclusive lock, so lines never interleave. Once `write` returns the
    line is the kernel's, so `kill -9` of the run loses nothing already reported (only a power cut
    could, and an fsync per cell would cost more than the cell's own bookkeeping).
    """
    line = (record.to_json() + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HarnessError(
            f"Cannot write results to {path}: {exc.strerror}. Choose a writable --out directory."
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = os.write(fd, line)
        if written != len(line):
            raise HarnessError(f"Only {written} of {len(line)} bytes of a record reached {path}; is the disk full?")
    finally:
        os.close(fd)


def read_records(path: Path) -> list[Record]:
    """The records of a results file, the last one of each cell id winning (a resumed cell reruns).

    A line that does not parse (the torn tail of a killed run) is skipped with a warning: its cell
    has no finished record, and `--resume` runs it again.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        raise HarnessError(
            f"No results file at {path}. Run `python -m harness run` first, or pass the right path."
        ) from exc
    except OSError as exc:
        raise HarnessError(f"Cannot read results file {path}: {exc.strerror}.") from exc
    latest: dict[str, Record] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = Record.from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError) as exc:
            warnings.warn(f"{path}:{number}: skipped a line that is not a whole record ({exc}).", stacklevel=2)
            continue
        latest[record.id] = record
    return list(latest.values())


def finished_ids(path: Path) -> set[str]:
    """Ids of the cells that already have a record (for `--resume`); none when there is no file."""
    if not Path(path).exists():
        return set()
    return {record.id for record in read_records(path)}


def write_records(path: Path, records: Iterable[Record]) -> None:
    """Write a whole results file at once (merge, tests); replaces the file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(record.to_json() + "\n" for record in records))
        os.replace(tmp, path)
    except OSError as exc:
        raise HarnessError(f"Cannot write results to {path}: {exc.strerror}.") from exc


def results_path(out_dir: Path | str) -> Path:
    """`DIR/results.jsonl`, or the path itself when it already names a file."""
    out = Path(out_dir)
    return out if out.suffix == ".jsonl" else out / RESULTS_NAME
