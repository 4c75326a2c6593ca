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


def test_texts_enter_a_record_clean_and_capped_and_stay_so_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    cell = Cell("pkg.Opt", "cpu", "float32", "plain", {}, "direct")
    message = "bad " + b"\xff".decode("utf-8", "surrogateescape") + " NUL\x00 " + "x" * 5_000_000 + " END"
    append_record(
        path,
        Record.for_cell(
            cell,
            "step_error",
            error_type="Weird\x1b[31mError",
            error_message=message,
            traceback="Traceback:\n" + message,
            judgement="\x00" * 10,
            measurement_errors={"bench": "oops\x00"},
            process_changes=["patched\x07 torch.optim.AdamW"],
        ),
    )
    assert path.stat().st_size < 200_000  # not the 10 MB the two texts were
    (got,) = read_records(path)
    assert got.error_type == "WeirdError"
    assert got.error_message.startswith("bad \\xff NUL\\x00 x") and got.error_message.endswith("x END")
    assert "characters cut" in got.error_message and "characters cut" in got.traceback
    assert got.judgement == "\\x00" * 10
    assert got.measurement_errors == {"bench": "oops\\x00"} and got.process_changes == [
        "patched\\x07 torch.optim.AdamW"
    ]
    assert got == Record.from_dict(json.loads(got.to_json()))  # read back as written: cleaning is stable


def test_an_older_results_file_holding_surrogates_reads_clean(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    line = record(1).to_json().replace('"error_message": null', '"error_message": "caf\\udcff\\u0000"')
    path.write_text(line + "\n")
    (got,) = read_records(path)
    assert got.error_message == "caf\\xff\\x00"
    got.error_message.encode("utf-8")


def test_resume_refuses_a_results_file_that_is_a_symlink_and_names_its_target(tmp_path: Path) -> None:
    other = tmp_path / "someone-elses.jsonl"
    other.write_text(record(1).to_json() + "\n")
    link = tmp_path / "out" / "results.jsonl"
    link.parent.mkdir()
    link.symlink_to(other)
    with pytest.raises(
        HarnessError, match=r"Refusing to resume into .*results\.jsonl: it is a symbolic link to .*someone-elses"
    ):
        repair_torn_tail(link)
    with pytest.raises(HarnessError, match=r"Refusing to append records to .*results\.jsonl: it is a symbolic link"):
        append_record(link, record(2))
    assert other.read_text() == record(1).to_json() + "\n"  # nothing written through the link


def test_run_resume_into_a_symlinked_results_file_exits_2_before_any_cell(tmp_path: Path, write_matrix, capsys) -> None:
    from harness.cli import main

    matrix = write_matrix(
        """
        optimizers: [torch.optim.SGD]
        devices: [cpu]
        dtypes: [float32]
        kwargs: {plain: {}}
        builders: [direct]
        train: {steps: 3}
        """
    )
    other = tmp_path / "elsewhere.jsonl"
    other.write_text("")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to(other)
    code = main(["run", str(matrix), "--out", str(out), "--baselines", str(out), "-n", "0", "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"Refusing to resume into {out / 'results.jsonl'}: it is a symbolic link to {other}" in err
    assert "Traceback" not in err
    assert other.read_text() == "" and (out / "results.jsonl").is_symlink()
