"""harness.records: appended whole, read back whole, torn tails skipped with a warning."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from harness.cells import Cell, Record
from harness.errors import HarnessError
from harness.records import append_record, finished_ids, read_records, results_path, write_records


def record(i: int, status: str = "ok") -> Record:
    return Record.for_cell(
        Cell(f"pkg.Opt{i}", "cpu", "float32", "plain", {"lr": 0.1}, "direct"), status, losses=[1.0, float("nan")]
    )


def _append_many(path: str, start: int) -> None:
    for i in range(start, start + 200):
        append_record(Path(path), record(i))


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    workers = [
        multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(path), k * 200)) for k in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(record(i).id for i in range(600))


def test_nan_is_written_as_null_and_the_last_record_of_a_cell_wins(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_record(path, record(1, "step_error"))
    append_record(path, record(1, "ok"))
    (got,) = read_records(path)
    assert got.status == "ok" and got.losses == [1.0, None]
    assert finished_ids(path) == {record(1).id}


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_record(path, record(1))
    with path.open("a") as f:
        f.write(record(2).to_json()[:40])
    with pytest.warns(UserWarning, match="not a whole record"):
        assert [r.id for r in read_records(path)] == [record(1).id]


def test_missing_results_say_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="harness run"):
        read_records(tmp_path / "nope.jsonl")
    assert finished_ids(tmp_path / "nope.jsonl") == set()


def test_write_records_replaces_the_file_and_results_path_accepts_a_dir_or_a_file(tmp_path: Path) -> None:
    write_records(results_path(tmp_path), [record(1), record(2)])
    assert [r.id for r in read_records(tmp_path / "results.jsonl")] == [record(1).id, record(2).id]
    assert results_path(tmp_path / "x.jsonl") == tmp_path / "x.jsonl"
