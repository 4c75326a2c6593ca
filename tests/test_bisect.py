"""`harness bisect`: the search itself (pure, on made-up outcomes) and the command over a local index."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.bisect import BisectInputError, Probes, bisect, releases_between, select_cells, write_bisect
from harness.cells import Cell
from harness.cli import main
from tests.releases import BROKEN_FROM, MATRIX, RELEASES, use_local_index

VERSIONS = [f"0.{i}" for i in range(12)]


def _probes(outcome_at: dict[str, str], calls: list[str]) -> Probes:
    def run(version: str, cells: Sequence[str]) -> dict[str, str]:
        calls.append(version)
        return {cell: outcome_at[version] for cell in cells}

    return Probes(run)


@pytest.mark.parametrize("first_broken", range(1, 12))
def test_bisect_finds_the_first_release_with_the_new_outcome_in_log2_probes(first_broken: int) -> None:
    outcome_at = {v: "ok" if i < first_broken else "step_error (other)" for i, v in enumerate(VERSIONS)}
    calls: list[str] = []
    answers, unchanged = bisect("pkg", VERSIONS, ["cell"], _probes(outcome_at, calls))
    (answer,) = answers
    assert (answer.last_old, answer.first_new) == (VERSIONS[first_broken - 1], VERSIONS[first_broken])
    assert (answer.outcome_from, answer.outcome_to) == ("ok", "step_error (other)")
    assert unchanged == [] and answer.note == "" and answer.monotone
    assert len(calls) == len(set(calls)) <= math.ceil(math.log2(len(VERSIONS) - 1)) + 2
    assert list(answer.tried) == sorted(answer.tried, key=VERSIONS.index)


def test_a_third_outcome_is_reported_and_the_search_still_ends() -> None:
    outcome_at = {v: "ok" for v in VERSIONS[:5]} | {v: "crashed" for v in VERSIONS[5:8]}
    outcome_at |= {v: "step_error (other)" for v in VERSIONS[8:]}
    answers, _ = bisect("pkg", VERSIONS, ["cell"], _probes(outcome_at, []))
    (answer,) = answers
    assert answer.last_old == "0.4"
    assert answer.first_new == "0.8"
    assert "not monotone" in answer.note and "crashed" in answer.note
    assert not answer.monotone


def test_outcomes_that_flip_back_are_reported_not_monotone_with_every_probed_release(tmp_path: Path) -> None:
    # `y` breaks once, at 0.2; `x` breaks at 0.2, works again at 0.4, breaks for good at 0.6. The probes `y`'s
    # search asks for show `x` flipping, though `x`'s own search met only its last change.
    versions = VERSIONS[:9]
    broken = "step_error (other)"

    def run(version: str, cells: Sequence[str]) -> dict[str, str]:
        i = versions.index(version)
        x_works = i < 2 or 4 <= i < 6
        return {c: "ok" if (i < 2 if c == "y" else x_works) else broken for c in cells}

    answers, _ = bisect("pkg", versions, ["y", "x"], Probes(run))
    y, x = answers
    assert (y.monotone, y.note, y.first_new) == (True, "", "0.2")
    assert (x.monotone, x.last_old, x.first_new) == (False, "0.5", "0.6")
    assert x.tried == {"0.0": "ok", "0.1": "ok", "0.2": broken, "0.4": "ok", "0.5": "ok", "0.6": broken, "0.8": broken}
    assert x.note.startswith(
        f"not monotone: the probed outcomes change 3 times (0.1 -> 0.2: ok -> {broken}; 0.2 -> 0.4: {broken} -> ok; "
        f"0.5 -> 0.6: ok -> {broken})"
    )

    summary = {"package": "pkg", "from": "0.0", "to": "0.8", "releases": versions, "cells": 2, "unchanged": 0}
    write_bisect(tmp_path, answers, {**summary, "probed": list(x.tried), "environments_built": 0, "wall_s": 0.0})
    written = {a["cell"]: a for a in json.loads((tmp_path / "bisect.json").read_text())}
    assert (written["x"]["monotone"], written["y"]["monotone"]) == (False, True)
    assert list(written["x"]["tried"]) == list(x.tried) and written["x"]["note"] == x.note
    md = (tmp_path / "bisect.md").read_text()
    section = md.split("## Not monotone: `x`\n", 1)[1]
    assert "## Not monotone: `y`" not in md
    assert section.split("\n")[3:10] == [
        "| 0.0 | ok |",
        "| 0.1 | ok |",
        f"| 0.2 | **{broken}** (changed) |",
        "| 0.4 | **ok** (changed) |",
        "| 0.5 | ok |",
        f"| 0.6 | **{broken}** (changed) |",
        f"| 0.8 | {broken} |",
    ]


def test_cells_with_the_same_outcome_at_both_ends_are_not_searched() -> None:
    calls: list[str] = []

    def run(version: str, cells: Sequence[str]) -> dict[str, str]:
        calls.append(version)
        steady = VERSIONS.index(version) < VERSIONS.index("0.6")
        return {c: ("ok" if c == "steady" or steady else "construct_error (unexpected_kwarg)") for c in cells}

    answers, unchanged = bisect("pkg", VERSIONS, ["steady", "breaks"], Probes(run))
    assert unchanged == ["steady"]
    assert [(a.cell, a.first_new) for a in answers] == [("breaks", "0.6")]


def test_releases_between_keeps_the_range_and_drops_prereleases() -> None:
    available = ["0.9", "1.0", "1.1rc1", "1.1", "1.2", "2.0"]
    assert releases_between("p", "1.0", "1.2", available) == ["1.0", "1.1", "1.2"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [("1.5", "1.2", "no release '1.5'"), ("1.2", "1.0", "not older than"), ("1.0", "1.0", "not older than")],
)
def test_releases_between_refuses_bad_ends(old: str, new: str, message: str) -> None:
    with pytest.raises(BisectInputError, match=message):
        releases_between("p", old, new, ["1.0", "1.1", "1.2"])


def test_k_selects_cells_as_pytest_does() -> None:
    cells = [Cell("torch.optim.AdamW", "cpu", "float32", "plain"), Cell("torch.optim.SGD", "cuda", "float32", "plain")]
    assert select_cells(cells, "adamw and cpu") == ["torch.optim.AdamW-cpu-float32-plain-direct"]
    assert select_cells(cells, None) == [c.id for c in cells]
    with pytest.raises(BisectInputError, match="not a pytest -k expression"):
        select_cells(cells, "adamw and (")


@pytest.mark.slow
def test_bisect_over_a_local_index_finds_the_breaking_release(monkeypatch, tmp_path: Path, write_matrix) -> None:
    use_local_index(monkeypatch, tmp_path)
    out = tmp_path / "bisect"
    matrix = str(write_matrix(MATRIX))
    code = main(["bisect", matrix, "--package", "tinyopt", "--from", "1.0", "--to", "1.11", "--out", str(out)])
    assert code == 0
    (answer,) = json.loads((out / "bisect.json").read_text())
    assert answer["cell"] == "tinyopt.TinyOpt-cpu-float32-plain-direct"
    assert (answer["outcome_from"], answer["outcome_to"]) == ("ok", "step_error (other)")
    assert answer["first_new"] == BROKEN_FROM
    assert answer["last_old"] == RELEASES[RELEASES.index(BROKEN_FROM) - 1]
    assert len(answer["tried"]) <= math.ceil(math.log2(len(RELEASES) - 1)) + 2
    built = [p for p in (tmp_path / "envs").iterdir() if (p / "harness-environment.json").exists()]
    assert len(built) == len(answer["tried"])  # one cached environment per probed release
    assert f"**{BROKEN_FROM}**" in (out / "bisect.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--package", "nosuchpkg", "--from", "1.0", "--to", "1.1"], "error: unknown package 'nosuchpkg'"),
        (["--package", "tinyopt", "--from", "1.0", "--to", "3.0"], "error: tinyopt has no release '3.0' (--to)"),
        (["--package", "tinyopt", "--from", "1.0", "--to", "1.1", "-k", "nothing"], "error: -k 'nothing' selects no"),
    ],
)
def test_bad_input_exits_2_with_one_line(monkeypatch, tmp_path: Path, write_matrix, capsys, args, message) -> None:
    use_local_index(monkeypatch, tmp_path)
    code = main(["bisect", str(write_matrix(MATRIX)), *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(message)
    assert not (tmp_path / "envs").exists()  # nothing was built for a bad request
