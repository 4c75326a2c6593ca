"""harness.shards and `merge` over shards: shard.json, an empty shard, a missing shard, shards of different runs."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

from harness import cli
from harness.cells import Cell, Record
from harness.errors import HarnessError
from harness.expand import shard_cells
from harness.measurements import Environment
from harness.records import write_records
from harness.shards import SHARD_NAME, ShardInfo, missing_shards, read_shard_info, shard_info, write_shard_info

CELLS = [Cell(f"torch.optim.{name}", "cpu", "float32", "plain") for name in ("SGD", "Adam", "AdamW", "RMSprop")]


def shard_folder(root: Path, index: int, count: int, *, narrowed: bool = False) -> Path:
    """The output folder of `harness run --shard index/count` over CELLS, each of its cells `ok`."""
    folder = root / f"s{index}"
    info = shard_info(f"{index}/{count}", CELLS, matrix="m.yaml", narrowed=narrowed)
    write_shard_info(folder, info)
    env = Environment(torch=version("torch"))
    mine = [cell for cell in CELLS if cell.id in info.cells]
    write_records(folder / "results.jsonl", [Record.for_cell(cell, "ok", env=env) for cell in mine])
    return folder


def test_shard_info_names_its_place_and_every_shards_cells() -> None:
    info = shard_info("2/3", CELLS)

    assert (info.index, info.count, info.name) == (2, 3, "2/3")
    assert info.cells == tuple(cell.id for cell in shard_cells(CELLS, 2, 3))
    assert sorted(cell for ids in info.shards.values() for cell in ids) == sorted(cell.id for cell in CELLS)


def test_shard_json_round_trips(tmp_path: Path) -> None:
    info = shard_info("1/2", CELLS, matrix="m.yaml", narrowed=True)
    write_shard_info(tmp_path, info)

    assert read_shard_info(tmp_path) == info
    assert json.loads((tmp_path / SHARD_NAME).read_text())["shard"] == "1/2"
    write_shard_info(tmp_path, None)
    assert read_shard_info(tmp_path) is None


def test_an_unreadable_shard_json_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / SHARD_NAME).write_text("{not json")

    with pytest.raises(HarnessError, match=r"shard\.json, which says which shard that folder holds"):
        read_shard_info(tmp_path)


def test_a_bad_shard_is_refused_before_anything_is_written() -> None:
    with pytest.raises(HarnessError, match="--shard"):
        shard_info("3/2", CELLS)


def test_every_shard_there_loses_nothing() -> None:
    assert missing_shards([shard_info(f"{i}/3", CELLS) for i in (1, 2, 3)]) == {}
    assert missing_shards([]) == {}


def test_a_missing_shards_cells_are_named_from_the_shards_that_are_there() -> None:
    lost = missing_shards([shard_info("1/2", CELLS)])

    assert sorted(lost) == sorted(shard_info("2/2", CELLS).cells)
    assert all("shard 2/2 is missing" in why for why in lost.values())


def test_a_missing_shard_of_a_narrowed_run_or_with_no_cell_is_named_as_the_shard() -> None:
    narrowed = missing_shards([shard_info("1/2", CELLS, narrowed=True)])
    empty = next(i for i in range(1, 9) if not shard_cells(CELLS, i, 8))  # 4 cells over 8 shards: some select none
    present = [shard_info(f"{i}/8", CELLS) for i in range(1, 9) if i != empty]

    assert list(narrowed) == ["shard 2/2"] and "-k" in narrowed["shard 2/2"]
    assert list(missing_shards(present)) == [f"shard {empty}/8"]


def test_shards_of_different_runs_or_one_shard_twice_are_refused() -> None:
    with pytest.raises(HarnessError, match="split differently"):
        missing_shards([shard_info("1/2", CELLS), shard_info("2/3", CELLS)])
    with pytest.raises(HarnessError, match="pass each shard once"):
        missing_shards([shard_info("1/2", CELLS), shard_info("1/2", CELLS)])


# --- merge ------------------------------------------------------------------------------------------------------


def merge(tmp_path: Path, *folders: Path) -> int:
    return cli.main(["merge", *map(str, folders), "--out", str(tmp_path / "all"), "--baselines", str(tmp_path)])


def test_merge_of_every_shard_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert merge(tmp_path, shard_folder(tmp_path, 1, 2), shard_folder(tmp_path, 2, 2)) == 0
    assert f"merged {len(CELLS)} records" in capsys.readouterr().out


def test_merge_takes_an_empty_shard(tmp_path: Path) -> None:
    empty = next(i for i in range(1, 9) if not shard_cells(CELLS, i, 8))
    folders = [shard_folder(tmp_path, i, 8) for i in range(1, 9)]

    assert (folders[empty - 1] / "results.jsonl").read_text() == ""
    assert merge(tmp_path, *folders) == 0


def test_merge_without_a_shard_fails_the_gate_and_lists_its_cells_as_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert merge(tmp_path, shard_folder(tmp_path, 2, 2)) == 1
    out = capsys.readouterr().out
    assert "missing shards: 1/2" in out and "gate: FAILED" in out
    for cell in shard_info("1/2", CELLS).cells:
        assert f"lost: {cell}: shard 1/2 is missing" in out
    assert "∅ lost" in (tmp_path / "all" / "summary.md").read_text()


def test_merge_counts_a_shard_that_left_no_results_file_as_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stopped = shard_folder(tmp_path, 1, 2)
    (stopped / "results.jsonl").unlink()

    assert merge(tmp_path, stopped, shard_folder(tmp_path, 2, 2)) == 1
    assert "shard 1/2 left no results file" in capsys.readouterr().out


def test_merge_of_folders_without_shard_json_joins_them_as_before(tmp_path: Path) -> None:
    folders = [shard_folder(tmp_path, i, 2) for i in (1, 2)]
    for folder in folders:
        (folder / SHARD_NAME).unlink()

    assert merge(tmp_path, folders[0]) == 0  # nothing says a shard is missing


def test_a_baselines_folder_without_this_runs_baseline_is_named_in_the_summary(tmp_path: Path) -> None:
    assert merge(tmp_path, shard_folder(tmp_path, 1, 1)) == 0

    summary = (tmp_path / "all" / "summary.md").read_text()
    assert f"note: {tmp_path}/baselines has no baseline for" in summary.replace("\\_", "_")
    assert "it holds no baseline at all" in summary


def test_shard_info_is_a_value(tmp_path: Path) -> None:
    info = ShardInfo(1, 1, {1: ("a",)}, "m.yaml", source=tmp_path)

    assert info == ShardInfo(1, 1, {1: ("a",)}, "m.yaml") and info.cells == ("a",)
