"""A framework's or builder's module is imported once per runner, before it forks (issue 16 item 6)."""

from __future__ import annotations

import pytest

from harness.cells import Cell
from harness.isolate import CellRunner, warm_modules
from harness.settings import Settings

TINY = Settings(
    train={"steps": 2, "timeout_s": 120},
    model={"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 8},
    bench={"enabled": False},
)


def cell(builder: str, optimizer: str = "torch.optim.SGD") -> Cell:
    return Cell(optimizer, "cpu", "float32", "plain", {"lr": 0.01}, builder)


def test_what_each_builder_warms():
    assert warm_modules(cell("direct")) == frozenset()
    assert warm_modules(cell("tests.frameworks.import_witness:build")) == {"tests.frameworks.import_witness"}
    assert warm_modules(cell("transformers", "transformers:sgd")) == {"transformers.trainer"}


def test_a_builder_module_is_imported_once_in_the_server_not_in_each_cell(tmp_path, monkeypatch):
    witness = tmp_path / "witness.txt"
    monkeypatch.setenv("HARNESS_TEST_WITNESS", str(witness))
    with CellRunner() as runner:
        runner.run(cell("direct"), TINY)  # a server without the module
        records = [runner.run(cell("tests.frameworks.import_witness:build"), TINY) for _ in range(3)]
    assert [r.status for r in records] != [] and all(r.status != "construct_error" for r in records)
    lines = [line.split() for line in witness.read_text().splitlines()]
    imports = [pid for what, pid in lines if what == "import"]
    builds = [pid for what, pid in lines if what == "build"]
    assert len(imports) == 1 and len(builds) == 3  # the restarted server imported it, once
    assert imports[0] not in builds  # ... before it forked the process the cells ran in


def test_a_builder_module_that_kills_its_importer_costs_only_its_own_cells():
    with CellRunner() as runner:
        bad = runner.run(cell("tests.faults.import_exit:build"), TINY)
        good = runner.run(cell("direct"), TINY)
    assert bad.status == "crashed"
    assert good.status in ("ok", "no_learning")


@pytest.mark.parametrize("builder", ["direct", "tests.frameworks.import_witness:build"])
def test_cells_still_run_after_the_server_is_restarted_warm(builder):
    with CellRunner() as runner:
        first = runner.run(cell("direct"), TINY)
        second = runner.run(cell(builder), TINY)
    assert first.status == second.status
