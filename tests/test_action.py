"""action.yml run as a framework's workflow runs it, through a local emulation of the runner (tests/action_runner.py).

Shard jobs, then a merge job, over a workspace holding tiny matrices (tests/resources/action/): two shards and a
merge, an empty shard, a missing shard, a planted regression, a re-run job, and the inputs a user gets wrong (a
mode typo, a bad shard, a package that cannot be installed, a glob, a newline). pip is logged, not run (the steps'
`python` is a shim); the harness runs for real, from this checkout. Each scenario is a function returning what it
observed, so the same scenarios can be run against another action and harness (`Subject`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from harness.baseline import environment_key
from harness.measurements import Environment
from tests.action_runner import PIP_LOG_ENV, UNINSTALLABLE, ActionRun, Runner, runner_env

REPO = Path(__file__).resolve().parents[1]
MATRICES = REPO / "tests" / "resources" / "action"
TWO = ("torch.optim.AdamW-cpu-float32-plain-direct", "torch.optim.SGD-cpu-float32-plain-direct")  # shards 1, 2 of 2

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Subject:
    """The action under test: its action.yml and the harness source its steps import."""

    action: Path = REPO / "action.yml"
    harness: Path = REPO


def new_runner(root: Path, subject: Subject) -> Runner:
    root.mkdir(parents=True)
    return Runner(root, runner_env(root, subject.harness))


def workspace(root: Path) -> Path:
    """A checkout of the framework: its matrices (and, where a scenario puts them, baselines)."""
    return Path(shutil.copytree(MATRICES, root / "workspace"))


def job(runner: Runner, subject: Subject, ws: Path, **inputs: str) -> ActionRun:
    return runner.job(subject.action, {"workers": "0", **inputs}, workspace=ws)


def copy_shards(source: Runner, target: Runner, pattern: str = "matrix-shard-*") -> None:
    """Another workflow run's shard artifacts (not its report), as if its shard jobs had run in this one."""
    for artifact in source.artifacts.glob(pattern):
        shutil.copytree(artifact, target.artifacts / artifact.name)


def pip_calls(runner: Runner) -> list[list[str]]:
    log = Path(runner.env[PIP_LOG_ENV])
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def artifact_files(runner: Runner, name: str) -> list[str]:
    folder = runner.artifacts / name
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def records(out: str) -> list[str]:
    results = Path(out) / "results.jsonl"
    return sorted(json.loads(line)["id"] for line in results.read_text().splitlines()) if results.exists() else []


def lost_ids(out: str) -> list[str]:
    summary = Path(out) / "summary.md"
    if not summary.exists():
        return []
    return sorted(line.split("|")[2].strip() for line in summary.read_text().splitlines() if "| ∅ lost |" in line)


# --- scenarios: each returns what it observed ----------------------------------------------------------------------


def two_shards_and_merge(root: Path, subject: Subject) -> dict[str, Any]:
    runner = new_runner(root, subject)
    ws = workspace(root)
    shards = [job(runner, subject, ws, matrix="two_cells.yaml", shard=f"{i}/2") for i in (1, 2)]
    merge = job(runner, subject, ws, mode="merge")
    summary_md = Path(merge.outputs["out"]) / "summary.md"
    return {
        "runner": runner,
        "shards": [run.outputs["exit-code"] for run in shards],
        "merge": merge.outputs["exit-code"],
        "outcome": merge.outcome,
        "records": records(merge.outputs["out"]),
        "summary is summary.md": summary_md.exists() and merge.summary == summary_md.read_text(),
        "merge log": merge.log,
        "merge pip": pip_calls(runner)[-2:],
    }


def missing_shard(root: Path, subject: Subject, shards_from: Runner) -> dict[str, Any]:
    """A merge given shard 2 of 2 only (shard 1's job failed before uploading)."""
    runner = new_runner(root, subject)
    copy_shards(shards_from, runner, "matrix-shard-2-of-2")
    merge = job(runner, subject, workspace(root), mode="merge")
    return {
        "merge": merge.outputs["exit-code"],
        "outcome": merge.outcome,
        "records": records(merge.outputs["out"]),
        "lost": lost_ids(merge.outputs["out"]),
        "log": merge.log,
    }


def rerun_merge(root: Path, subject: Subject, shards_from: Runner) -> dict[str, Any]:
    """The merge job re-run in the same workflow run: its artifact `matrix-report` exists already."""
    runner = new_runner(root, subject)
    copy_shards(shards_from, runner)
    ws = workspace(root)
    first, again = job(runner, subject, ws, mode="merge"), job(runner, subject, ws, mode="merge")
    return {"first": first.outcome, "again": again.outcome, "exit-code": again.outputs["exit-code"], "log": again.log}


def empty_shard(root: Path, subject: Subject) -> dict[str, Any]:
    runner = new_runner(root, subject)
    ws = workspace(root)
    empty, full = (job(runner, subject, ws, matrix="one_cell.yaml", shard=f"{i}/2") for i in (1, 2))
    merge = job(runner, subject, ws, mode="merge")
    return {
        "empty": empty.outputs["exit-code"],
        "full": full.outputs["exit-code"],
        "empty artifact": artifact_files(runner, "matrix-shard-1-of-2"),
        "merge": merge.outputs["exit-code"],
        "outcome": merge.outcome,
        "records": records(merge.outputs["out"]),
        "log": merge.log,
    }


def planted_regression(root: Path, subject: Subject) -> dict[str, Any]:
    """regression.yaml's one cell fails to construct; the committed baseline (ci/) says it was ok."""
    runner = new_runner(root, subject)
    ws = workspace(root)
    key = environment_key(Environment(torch=version("torch")), "cpu")  # the baseline file this run reads
    baseline = ws / "ci" / "baselines" / f"{key}.json"
    baseline.parent.mkdir(parents=True)
    baseline.write_text(json.dumps({"cells": {TWO[1]: {"status": "ok"}}, "environment": key}))
    run = job(runner, subject, ws, matrix="regression.yaml", baselines="ci")
    return {
        "exit-code": run.outputs["exit-code"],
        "outcome": run.outcome,
        "uploaded": bool(artifact_files(runner, "matrix-shard-all")),
        "summary says regression": "regression" in run.summary,
        "log": run.log,
    }


def bad_input(root: Path, subject: Subject, **inputs: str) -> dict[str, Any]:
    """One run-mode job with inputs a user got wrong; `absent.yaml` keeps the harness from running cells."""
    runner = new_runner(root, subject)
    run = job(runner, subject, workspace(root), **{"matrix": "absent.yaml", **inputs})
    return {
        "exit-code": run.outputs["exit-code"],
        "outcome": run.outcome,
        "name": run.step_outputs.get("paths", {}).get("name", ""),  # the artifact's name
        "pip": pip_calls(runner),
        "log": run.log,
    }


def mistyped_baselines(root: Path, subject: Subject, shards_from: Runner, **inputs: str) -> dict[str, Any]:
    runner = new_runner(root, subject)
    copy_shards(shards_from, runner)
    merge = job(runner, subject, workspace(root), mode="merge", baselines="ci-typo", **inputs)
    return {
        "exit-code": merge.outputs["exit-code"],
        "summary says so": "ci-typo/baselines has no baseline for" in merge.summary,
        "log": merge.log,
    }


# --- the action as it is --------------------------------------------------------------------------------------------

AFTER = Subject()


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return two_shards_and_merge(tmp_path_factory.mktemp("two") / "run", AFTER)


def explain(observed: Mapping[str, Any]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in observed.items() if key != "runner")


def test_two_shards_merge_into_one_report_whose_summary_is_the_job_summary(two_shards: dict[str, Any]) -> None:
    assert two_shards["shards"] == ["0", "0"], explain(two_shards)
    assert (two_shards["merge"], two_shards["outcome"]) == ("0", "success"), explain(two_shards)
    assert two_shards["records"] == sorted(TWO)
    assert two_shards["summary is summary.md"]


def test_the_merge_job_installs_the_harness_without_torch(two_shards: dict[str, Any]) -> None:
    # requirements/merge.txt is pyproject.toml's dependencies less torch (tests/test_workflows.py checks it)
    assert two_shards["merge pip"] == [
        ["install", "-r", f"{REPO}/requirements/merge.txt"],
        ["install", "--no-deps", str(REPO)],
    ]


def test_merge_runs_where_torch_cannot_be_imported(two_shards: dict[str, Any], tmp_path: Path) -> None:
    shards = sorted(str(p) for p in two_shards["runner"].artifacts.glob("matrix-shard-*"))
    code = "import sys; sys.modules['torch'] = None; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "merge", *shards, "--out", str(tmp_path / "out"), "--baselines", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "merged 2 records" in done.stdout


def test_a_missing_shard_fails_the_merge_naming_its_cells_as_lost(two_shards: dict[str, Any], tmp_path: Path) -> None:
    observed = missing_shard(tmp_path / "run", AFTER, two_shards["runner"])

    assert (observed["merge"], observed["outcome"]) == ("1", "failure"), explain(observed)
    assert observed["records"] == [TWO[1]]
    assert observed["lost"] == [TWO[0]]
    assert "missing shards: 1/2" in observed["log"]


def test_a_rerun_merge_job_replaces_its_artifact(two_shards: dict[str, Any], tmp_path: Path) -> None:
    observed = rerun_merge(tmp_path / "run", AFTER, two_shards["runner"])

    assert (observed["first"], observed["again"], observed["exit-code"]) == ("success", "success", "0"), explain(
        observed
    )


def test_a_mistyped_baselines_folder_is_named_in_the_summary_and_fails_under_strict(
    two_shards: dict[str, Any], tmp_path: Path
) -> None:
    lenient = mistyped_baselines(tmp_path / "lenient", AFTER, two_shards["runner"])
    strict = mistyped_baselines(tmp_path / "strict", AFTER, two_shards["runner"], strict="true")

    assert (lenient["exit-code"], lenient["summary says so"]) == ("0", True), explain(lenient)
    assert (strict["exit-code"], strict["summary says so"]) == ("1", True), explain(strict)


def test_an_empty_shard_uploads_an_empty_results_file_and_merge_takes_it(tmp_path: Path) -> None:
    observed = empty_shard(tmp_path / "run", AFTER)

    assert (observed["empty"], observed["full"]) == ("0", "0"), explain(observed)
    assert {"results.jsonl", "shard.json"} <= set(observed["empty artifact"])
    assert (observed["merge"], observed["outcome"], observed["records"]) == ("0", "success", [TWO[1]]), explain(
        observed
    )


def test_a_planted_regression_fails_the_shard_after_uploading_it(tmp_path: Path) -> None:
    observed = planted_regression(tmp_path / "run", AFTER)

    assert (observed["exit-code"], observed["outcome"]) == ("1", "failure"), explain(observed)
    assert observed["uploaded"] and observed["summary says regression"]


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ({"mode": "rnu"}, "mode must be 'run' or 'merge', not rnu"),
        ({"shard": "2of4"}, "shard must be I/N"),
        ({"shard": "2/2\nname=matrix-report"}, "not $'2/2\\nname=matrix-report'"),
        ({"strict": "yes"}, "strict must be 'true' or 'false'"),
        ({"packages": UNINSTALLABLE}, "pip could not install"),
    ],
    ids=["mode-typo", "bad-shard", "newline-in-shard", "strict-typo", "install-fails"],
)
def test_an_input_error_sets_exit_code_2_even_before_the_harness_runs(
    inputs: dict[str, str], says: str, tmp_path: Path
) -> None:
    observed = bad_input(tmp_path / "run", AFTER, **inputs)

    assert (observed["exit-code"], observed["outcome"]) == ("2", "failure"), explain(observed)
    assert says in observed["log"]
    assert observed["name"] != "matrix-report", "an input's newline must not write outputs of its own"


def test_packages_are_split_into_requirements_and_never_glob_expanded(tmp_path: Path) -> None:
    observed = bad_input(tmp_path / "run", AFTER, packages="*  -e .\nlitgpt==0.5.0")

    [install] = observed["pip"]
    assert install == ["install", f"{REPO}[optimizers]", "*", "-e", ".", "litgpt==0.5.0"]
    assert observed["exit-code"] == "2", "absent.yaml is the harness's input error, after the install"
