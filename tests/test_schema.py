"""The JSON Schema of matrix files: generated from the models, committed beside the matrix, true to the loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.cells import Cell
from harness.errors import HarnessError
from harness.expand import expand_matrix
from harness.probe import cached_expander, optimizer_names
from harness.schema import SCHEMA_FILE, matrix_schema, schema_text, stale_schema
from harness.spec import load_matrix
from harness.yamlsource import read_yaml

jsonschema = pytest.importorskip("jsonschema", reason="the schema tests need jsonschema (pip install jsonschema)")

REPO = Path(__file__).resolve().parents[1]
RESOURCES = Path(__file__).parent / "resources"
GOOD = sorted([*(RESOURCES / "good").glob("*.yaml"), *(RESOURCES / "matrices").glob("*.yaml"), REPO / "matrix.yaml"])
BAD = sorted((RESOURCES / "bad").glob("*.yaml"))
# Mistakes of shape, which the schema alone must catch as an editor's squiggle (the rest need the loader).
SHAPE_MISTAKES = {
    "bad_builder",
    "bad_builder_function",
    "empty",
    "devices_is_a_string",
    "empty_devices",
    "empty_optimizers",
    "exclude_unknown_axis",
    "exclude_value_not_string",
    "missing_optimizers",
    "optimizer_entry_unknown_key",
    "optimizer_is_a_number",
    "settings_section_not_mapping",
    "steps_not_a_number",
    "steps_too_small",
    "top_level_list",
    "unknown_bench_tolerance_key",
    "unknown_dtype",
    "unknown_top_key",
    "unknown_train_key",
    "variant_bad_name",
    "variant_not_mapping",
}


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads((REPO / SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator: Any, path: Path) -> list[str] | None:
    """The schema's complaints about the file's data, or None when the file is not plain YAML data.

    The file is read the way the loader reads it: an alias bomb or 500 nested brackets (which a plain
    `yaml.safe_load` would expand until memory or the stack runs out) never reach the schema.
    """
    try:
        _, data, _ = read_yaml(path)
    except HarnessError:
        return None
    return [error.message for error in validator.iter_errors(data)]


def cells_of(path: Path) -> list[Cell]:
    """The file's cells as `harness list` and `harness run` expand them: optimizer modules imported in a child."""
    matrix = load_matrix(path)
    return expand_matrix(matrix, expand_optimizer=cached_expander(optimizer_names(matrix)))


def test_committed_schema_is_the_generated_one() -> None:
    assert stale_schema(REPO / SCHEMA_FILE) is None, (
        f"{SCHEMA_FILE} is stale: run `python -m harness schema > {SCHEMA_FILE}` and commit it"
    )


def test_a_stale_copy_is_told_apart(tmp_path: Path) -> None:
    stale = tmp_path / SCHEMA_FILE
    stale.write_text(schema_text().replace('"steps"', '"stepz"'), encoding="utf-8")

    assert "is stale" in (stale_schema(stale) or "")
    assert "is missing" in (stale_schema(tmp_path / "absent.json") or "")


def test_cli_prints_the_schema_and_checks_a_copy(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO)}
    printed = subprocess.run(
        [sys.executable, "-m", "harness", "schema"], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    (tmp_path / "old.json").write_text("{}\n", encoding="utf-8")
    check = subprocess.run(
        [sys.executable, "-m", "harness", "schema", "--check", str(tmp_path / "old.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )

    assert json.loads(printed.stdout) == matrix_schema()
    assert check.returncode == 1
    assert "is stale" in check.stderr


def test_default_matrix_points_editors_at_the_schema() -> None:
    first_line = (REPO / "matrix.yaml").read_text(encoding="utf-8").splitlines()[0]

    assert first_line == f"# yaml-language-server: $schema=./{SCHEMA_FILE}"


@pytest.mark.parametrize("path", GOOD, ids=[f"{p.parent.name}/{p.stem}" for p in GOOD])
def test_every_good_matrix_is_valid_against_the_schema(validator: Any, path: Path) -> None:
    cells_of(path)  # the loader takes it, so the schema must too

    assert schema_errors(validator, path) == []


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_every_bad_matrix_is_rejected_by_the_schema_or_the_loader(validator: Any, path: Path) -> None:
    expect = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")
    message = expect.split(": ", 1)[-1] if expect.startswith(":") else expect
    errors = schema_errors(validator, path)

    with pytest.raises(HarnessError) as caught:
        cells_of(path)  # what `harness list` and `harness run` do first
    assert message.strip() in str(caught.value), "the loader's message is the one the bad file expects"
    if path.stem in SHAPE_MISTAKES:
        assert errors, f"the schema should flag {path.name} in the editor already"


def test_shape_mistakes_are_all_still_bad_files() -> None:
    assert {p.stem for p in BAD} >= SHAPE_MISTAKES
