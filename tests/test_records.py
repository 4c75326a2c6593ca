"""harness.records: appended whole, read back whole, torn tails skipped with a warning."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from harness.cells import Cell, Record
from harness.errors import HarnessError
from harness.records import (
    append_record,
    finished_ids,
    lock_out_dir,
    read_records,
    repair_torn_tail,
    results_path,
    write_records,
)


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


def test_resume_cuts_a_torn_tail_so_the_next_record_starts_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    whole = Record.for_cell(Cell("torch.optim.AdamW", "cpu", "float32", "plain", {}, "direct"), "ok")
    path.write_text(whole.to_json() + "\n" + '{"id": "torn", "optim')
    assert repair_torn_tail(path) == len('{"id": "torn", "optim')
    append_record(path, whole.replace(status="no_learning"))
    assert [r.status for r in read_records(path)] == ["no_learning"]
    assert repair_torn_tail(path) == 0 and repair_torn_tail(tmp_path / "absent.jsonl") == 0


def test_lines_that_are_not_utf8_or_not_objects_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    whole = Record.for_cell(Cell("torch.optim.AdamW", "cpu", "float32", "plain", {}, "direct"), "ok")
    path.write_bytes(b"\xff\xfe garbage\n[1, 2]\n" + whole.to_json().encode() + b"\n")
    with pytest.warns(UserWarning) as caught:
        records = read_records(path)
    assert [r.id for r in records] == [whole.id]
    assert len(caught) == 2 and "not an object" in str(caught[1].message)


def test_a_second_run_into_the_same_directory_is_refused_with_a_sentence(tmp_path: Path) -> None:
    first = lock_out_dir(tmp_path / "out")
    try:
        with pytest.raises(HarnessError, match=r"Another run is writing to .*out \(pid \d+"):
            lock_out_dir(tmp_path / "out")
    finally:
        os.close(first)
    os.close(lock_out_dir(tmp_path / "out"))  # free again once the first run ends
    (tmp_path / "file").write_text("")
    with pytest.raises(HarnessError, match="is a file; name a directory"):
        lock_out_dir(tmp_path / "file")
