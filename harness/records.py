"""The results file: one JSON object per line, appended as each cell finishes."""

from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

from harness.cells import Record
from harness.errors import HarnessError

RESULTS_NAME = "results.jsonl"
LOCK_NAME = ".harness.lock"


def append_record(path: Path, record: Record) -> None:
    """Append one record as a whole line and flush it to disk before returning.

    Several pytest-xdist workers append to the same file: each line goes out in one `write` on an
    `O_APPEND` descriptor under an exclusive lock, so lines never interleave. Once `write` returns the
    line is the kernel's, so `kill -9` of the run loses nothing already reported (only a power cut
    could, and an fsync per cell would cost more than the cell's own bookkeeping). A results file that
    is a symbolic link is refused: no record is appended through it into another file.
    """
    line = (record.to_json() + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if Path(path).is_symlink():
            raise HarnessError(_linked_results(Path(path), "append records to")) from exc
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
    records, skipped = scan_records(path)
    _warn_skipped(path, skipped)
    return records


def readable_records(path: Path) -> list[Record]:
    """As `read_records`, for a file a user handed over: one with no record but unreadable lines is an error.

    A torn or foreign line among good records is a warning and the rest is read; a file of nothing but
    such lines (not UTF-8, not JSON objects) is one sentence saying so, not a warning per line.
    """
    records, skipped = scan_records(path)
    if skipped and not records:
        number, why = skipped[0]
        raise HarnessError(
            f"{path} holds no readable record (line {number}: {why}; "
            f"{len(skipped)} unreadable line{'s' if len(skipped) > 1 else ''} in all). "
            "Pass the results.jsonl a run wrote, or run the matrix again."
        )
    _warn_skipped(path, skipped)
    return records


def _warn_skipped(path: Path, skipped: list[tuple[int, str]]) -> None:
    for number, why in skipped:
        warnings.warn(f"{path}:{number}: skipped a line that is not a whole record ({why}).", stacklevel=3)


def scan_records(path: Path) -> tuple[list[Record], list[tuple[int, str]]]:
    """The file's records (the last of each cell id) and, for each line that is not one, its number and why."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise HarnessError(
            f"No results file at {path}. Run `python -m harness run` first, or pass the right path."
        ) from exc
    except OSError as exc:
        raise HarnessError(f"Cannot read results file {path}: {exc.strerror}.") from exc
    latest: dict[str, Record] = {}
    skipped: list[tuple[int, str]] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            parsed = json.loads(raw.decode("utf-8"))
            if not isinstance(parsed, dict):
                raise TypeError(f"a JSON {type(parsed).__name__}, not an object")
            record = Record.from_dict(parsed)
        except (ValueError, TypeError, KeyError) as exc:  # UnicodeDecodeError is a ValueError
            skipped.append((number, str(exc)))
            continue
        latest[record.id] = record
    return list(latest.values()), skipped


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that a killed run left unfinished, so the next append starts a line; bytes cut.

    `--resume` calls it first: a results file that is a symbolic link is refused here, before any cell runs.
    """
    if Path(path).is_symlink():
        raise HarnessError(_linked_results(Path(path), "resume into"))
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return 0
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            return len(data) - keep
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise HarnessError(f"Cannot repair the results file {path}: {exc.strerror}.") from exc


def _linked_results(path: Path, action: str) -> str:
    """The sentence refusing a results file that is a symbolic link (it would write into the file it names)."""
    target = os.readlink(path)
    return (
        f"Refusing to {action} {path}: it is a symbolic link to {target}, and a run writes its records only into a "
        f"results file of its own. Replace the link with a copy (`cp --remove-destination {path.resolve()} {path}`)"
        " and run again, or run without --resume to start a fresh results file."
    )


def lock_out_dir(out_dir: Path) -> int:
    """Hold `DIR/.harness.lock` for this run (an open descriptor; closing it releases the lock).

    Two runs writing one results file would unlink and interleave each other's records, so the second
    is refused with a sentence naming the first.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"--out {out_dir} is a file; name a directory for the results and reports.")
    lock = out_dir / LOCK_NAME
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HarnessError(f"Cannot write to {out_dir}: {exc.strerror}. Choose a writable --out directory.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise HarnessError(
            f"Another run is writing to {out_dir} ({holder}); wait for it to finish, or give this run another --out."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%H:%M:%S')}".encode(), 0)
    return fd


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
