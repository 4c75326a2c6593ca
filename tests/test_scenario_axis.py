"""The `scenarios` axis: ids, exclude/include, validation, and records written before it existed."""

from __future__ import annotations

import json

import pytest

from harness.cells import Cell, Record
from harness.errors import MatrixError
from harness.expand import expand_matrix
from harness.spec import load_matrix, matrix_from_data


def identity(name: str) -> list[str]:
    return [name]


def cells_of(**data):
    return expand_matrix(
        matrix_from_data({"optimizers": ["pkg.Opt"], **data}, path="m.yaml"), expand_optimizer=identity
    )


def test_without_scenarios_every_cell_is_a_train_cell_with_todays_id():
    (cell,) = cells_of()

    assert cell.scenario == "train"
    assert cell.id == "pkg.Opt-cpu-float32-plain-direct"


def test_a_cell_of_another_scenario_ends_its_id_with_the_scenario():
    cells = cells_of(scenarios=["train", "resume", "amp"])

    assert [cell.id for cell in cells] == [
        "pkg.Opt-cpu-float32-plain-direct",
        "pkg.Opt-cpu-float32-plain-direct-resume",
        "pkg.Opt-cpu-float32-plain-direct-amp",
    ]


def test_exclude_and_include_name_a_scenario_like_any_axis():
    cells = cells_of(
        builders=["direct", "safe"],
        scenarios=["train", "groups"],
        exclude=[{"builder": "direct", "scenario": "groups"}],
        include=[
            {"scenario": "groups", "note": "decay/no-decay"},  # extends the original groups cell
            {"optimizer": "pkg.Opt", "device": "cpu", "dtype": "float32", "kwargs": "plain", "builder": "direct",
             "scenario": "compile"},  # adds a new one
        ],
    )  # fmt: skip

    assert [(cell.builder, cell.scenario, dict(cell.extra)) for cell in cells] == [
        ("direct", "train", {}),
        ("safe", "train", {}),
        ("safe", "groups", {"note": "decay/no-decay"}),
        ("direct", "compile", {}),
    ]


def test_an_include_adding_a_combination_without_a_scenario_adds_it_in_every_scenario_of_the_matrix():
    new = {"optimizer": "pkg.Opt", "device": "cpu", "dtype": "bfloat16", "kwargs": "plain", "builder": "direct"}

    assert [cell.id for cell in cells_of(include=[new])][1:] == ["pkg.Opt-cpu-bfloat16-plain-direct"]
    assert [cell.scenario for cell in cells_of(scenarios=["train", "amp"], include=[new])][2:] == ["train", "amp"]


def test_a_misspelt_scenario_is_an_error_naming_the_line_and_the_close_match(write_matrix):
    path = write_matrix(
        """
        optimizers: [torch.optim.AdamW]
        scenarios: [train, resum]
        """
    )

    with pytest.raises(MatrixError) as caught:
        load_matrix(path)
    assert caught.value.line == 2
    assert "unknown scenario 'resum': did you mean 'resume'?" in str(caught.value)


def test_a_misspelt_scenario_in_an_exclude_is_an_error():
    with pytest.raises(MatrixError, match="unknown scenario 'comple' in `scenarios`: did you mean 'compile'"):
        cells_of(scenarios=["train", "compile"], exclude=[{"scenario": "comple"}])


def test_a_record_written_before_scenarios_reads_as_a_train_record(resources):
    line = (resources / "records" / "before-scenarios.jsonl").read_text().splitlines()[0]

    record = Record.from_dict(json.loads(line))

    assert record.scenario == "train" and record.scenario_numbers == {}
    assert record.cell.id == record.id == "torch.optim.AdamW-cpu-float32-plain-direct"


def test_a_cell_and_its_record_carry_the_scenario_through_json():
    cell = Cell("torch.optim.SGD", "cpu", "float32", "plain", {"lr": 0.1}, "safe", scenario="schedule")
    record = Record.for_cell(cell, "mismatch", judgement="step 1 has lr 0 but moved the parameters by 0.01")

    again = Record.from_dict(json.loads(record.to_json()))

    assert Cell.from_dict(json.loads(json.dumps(cell.to_dict()))) == cell
    assert again == record and again.cell.id == cell.id == "torch.optim.SGD-cpu-float32-plain-safe-schedule"
