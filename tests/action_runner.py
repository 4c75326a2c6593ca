"""A small emulation of the GitHub runner, enough to run a composite action's steps and check its wiring.

It runs `action.yml`'s steps as the runner does: `${{ }}` expressions over `inputs`, `steps`, `github`, `runner`
and `env`; `if:` with its implied `success()`; each `run:` step in `bash --noprofile --norc -eo pipefail` with its
`env:` and a fresh `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY` file (outputs parsed as the runner parses them,
heredocs included); the action's outputs evaluated after its last step, whether or not a step failed (as the
runner's CompositeActionHandler does); `actions/upload-artifact` and `actions/download-artifact` as copies into
and out of a folder that stands for the workflow run's artifacts. Other `uses:` steps and contexts are errors:
this is not GitHub, only what the action needs of it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Value = str | bool | float | None


# --- expressions -------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>\d+(?:\.\d+)?)|(?P<op>==|!=|<=|>=|&&|\|\||[!<>(),])"
    r"|(?P<name>[A-Za-z_][\w-]*(?:\.[\w-]+|\.\*)*))"
)
_STATUS_FUNCTIONS = ("success", "failure", "always", "cancelled")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read the expression {text!r} at {text[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match[kind]))
        position = match.end()
    return tokens


def _truthy(value: Value) -> bool:
    return value not in (None, False, "", 0)


def _text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def _number(value: Value) -> float:
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except ValueError:
        return float("nan")


def _equal(left: Value, right: Value) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold() == right.casefold()  # GitHub compares strings ignoring case
    if left is None or right is None:
        return left is right
    return _number(left) == _number(right)


class Expression:
    """One GitHub expression, parsed by recursive descent: literals, contexts, ! && || == != < >, and functions."""

    def __init__(self, text: str, contexts: Mapping[str, Any], functions: Mapping[str, Callable[..., Value]]):
        self.tokens = _tokens(text)
        self.position = 0
        self.contexts = contexts
        self.functions = functions
        self.text = text

    def evaluate(self) -> Value:
        value = self._or()
        if self.position != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.position][1]!r} in {self.text!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise ValueError(f"{self.text!r} ends too early")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise ValueError(f"expected {expected!r} in {self.text!r}, found {token[1]!r}")
        self.position += 1
        return token

    def _or(self) -> Value:
        value = self._and()
        while self._peek() == "||":
            self._take()
            right = self._and()
            value = value if _truthy(value) else right
        return value

    def _and(self) -> Value:
        value = self._compare()
        while self._peek() == "&&":
            self._take()
            right = self._compare()
            value = right if _truthy(value) else value
        return value

    def _compare(self) -> Value:
        value = self._unary()
        if self._peek() in ("==", "!=", "<", ">", "<=", ">="):
            op = self._take()[1]
            right = self._unary()
            if op in ("==", "!="):
                return _equal(value, right) == (op == "==")
            left_n, right_n = _number(value), _number(right)
            return {"<": left_n < right_n, ">": left_n > right_n, "<=": left_n <= right_n, ">=": left_n >= right_n}[op]
        return value

    def _unary(self) -> Value:
        if self._peek() == "!":
            self._take()
            return not _truthy(self._unary())
        return self._primary()

    def _primary(self) -> Value:
        kind, token = self._take()
        if token == "(":
            value = self._or()
            self._take(")")
            return value
        if kind == "string":
            return token[1:-1].replace("''", "'")
        if kind == "number":
            return float(token)
        if kind != "name":
            raise ValueError(f"unexpected {token!r} in {self.text!r}")
        if token in ("true", "false"):
            return token == "true"
        if token == "null":
            return None
        if self._peek() == "(":
            self._take("(")
            args: list[Value] = []
            while self._peek() != ")":
                args.append(self._or())
                if self._peek() == ",":
                    self._take(",")
            self._take(")")
            if token.casefold() not in self.functions:
                raise ValueError(f"the emulation has no function {token}() (in {self.text!r})")
            return self.functions[token.casefold()](*args)
        return self._lookup(token)

    def _lookup(self, path: str) -> Value:
        head, *rest = path.split(".")
        if head not in self.contexts:
            raise ValueError(f"the emulation has no context {head!r} (in {self.text!r})")
        value: Any = self.contexts[head]
        for key in rest:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, Mapping):
            raise ValueError(f"{path} is an object; the emulation reads only strings")
        return value


_INTERPOLATION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


# --- the runner ---------------------------------------------------------------------------------------------------


@dataclass
class StepRun:
    name: str
    outcome: str  # success, failure or skipped
    log: str = ""


@dataclass
class ActionRun:
    """What one use of the action did: its outcome, its outputs, each step, the job summary and the log."""

    outcome: str
    outputs: dict[str, str]
    steps: list[StepRun]
    summary: str
    step_outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each step id's outputs, as `steps.<id>.outputs` saw them."""

    @property
    def log(self) -> str:
        return "\n".join(f"--- {step.name} ({step.outcome})\n{step.log}" for step in self.steps)


@dataclass
class Runner:
    """One workflow run: jobs share its artifacts folder; each job has its own workspace and RUNNER_TEMP."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    """Environment every step sees (PATH with the Python the steps call, PYTHONPATH, ...)."""
    jobs: int = 0

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def job(self, action: Path, inputs: Mapping[str, str], *, workspace: Path) -> ActionRun:
        """Run the action once, as one job's step `uses: <action>` with `with: inputs`."""
        self.jobs += 1
        temp = self.root / f"job-{self.jobs}" / "temp"
        temp.mkdir(parents=True)
        return _Job(self, load_action(action), action.parent, dict(inputs), workspace, temp).run()


def load_action(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)


class _Job:
    def __init__(
        self, runner: Runner, action: dict[str, Any], action_path: Path, given: dict[str, str], ws: Path, temp: Path
    ):
        declared = action.get("inputs", {})
        unknown = set(given) - set(declared)
        if unknown:
            raise ValueError(f"inputs the action does not declare: {sorted(unknown)}")
        self.runner = runner
        self.action = action
        self.inputs = {name: given.get(name, spec.get("default", "")) for name, spec in declared.items()}
        self.steps: dict[str, dict[str, Any]] = {}
        self.runs: list[StepRun] = []
        self.failed = False
        self.workspace = ws
        self.temp = temp
        self.github = {"action_path": str(action_path), "workspace": str(ws)}
        self.summary: list[str] = []

    def contexts(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "steps": self.steps,
            "github": self.github,
            "runner": {"temp": str(self.temp), "os": "Linux"},
            "env": dict(env or {}),
        }

    def functions(self) -> dict[str, Callable[..., Value]]:
        return {
            "success": lambda: not self.failed,
            "failure": lambda: self.failed,
            "always": lambda: True,
            "cancelled": lambda: False,
            "contains": lambda a, b: _text(b).casefold() in _text(a).casefold(),
            "startswith": lambda a, b: _text(a).casefold().startswith(_text(b).casefold()),
        }

    def evaluate(self, text: str, env: Mapping[str, str] | None = None) -> Value:
        return Expression(text, self.contexts(env), self.functions()).evaluate()

    def interpolate(self, text: str, env: Mapping[str, str] | None = None) -> str:
        return _INTERPOLATION.sub(lambda m: _text(self.evaluate(m[1], env)), text)

    def condition(self, text: str) -> bool:
        text = text.strip()
        if text.startswith("${{") and text.endswith("}}"):
            text = text[3:-2]
        if not any(re.search(rf"\b{name}\s*\(", text) for name in _STATUS_FUNCTIONS):
            text = f"success() && ({text})"
        return _truthy(self.evaluate(text))

    def run(self) -> ActionRun:
        for index, step in enumerate(self.action["runs"]["steps"]):
            name = step.get("name") or step.get("id") or step.get("uses") or f"step {index + 1}"
            if not self.condition(step.get("if", "success()")):
                self.record(step, StepRun(name, "skipped"), {})
                continue
            env = {key: self.interpolate(value) for key, value in step.get("env", {}).items()}
            if "run" in step:
                run, outputs = self.run_script(name, step, env)
            else:
                run, outputs = self.use(name, step, env)
            self.record(step, run, outputs)
            self.failed = self.failed or run.outcome == "failure"
        outputs = {
            name: self.interpolate(spec.get("value", "")) for name, spec in self.action.get("outputs", {}).items()
        }
        by_id = {step_id: dict(step["outputs"]) for step_id, step in self.steps.items()}
        return ActionRun("failure" if self.failed else "success", outputs, self.runs, "".join(self.summary), by_id)

    def record(self, step: dict[str, Any], run: StepRun, outputs: dict[str, str]) -> None:
        self.runs.append(run)
        if "id" in step:
            self.steps[step["id"]] = {"outputs": outputs, "outcome": run.outcome, "conclusion": run.outcome}

    def run_script(self, name: str, step: dict[str, Any], env: dict[str, str]) -> tuple[StepRun, dict[str, str]]:
        if step.get("shell") != "bash":
            raise ValueError(f"step {name!r}: the emulation runs only `shell: bash`")
        files = self.temp / "_runner_file_commands" / str(len(self.runs))
        files.mkdir(parents=True)
        script, output, summary = files / "script.sh", files / "output", files / "summary"
        script.write_text(self.interpolate(step["run"], env), encoding="utf-8")
        output.touch()
        summary.touch()
        environ = {
            **self.runner.env,
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_ACTION_PATH": self.github["action_path"],
            "GITHUB_WORKSPACE": str(self.workspace),
            "RUNNER_TEMP": str(self.temp),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
            **env,
        }
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=self.workspace,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
            check=False,
        )
        self.summary.append(summary.read_text(encoding="utf-8"))
        log = done.stdout + (f"\nError: Process completed with exit code {done.returncode}." if done.returncode else "")
        return StepRun(name, "failure" if done.returncode else "success", log), parse_outputs(output.read_text())

    def use(self, name: str, step: dict[str, Any], env: dict[str, str]) -> tuple[StepRun, dict[str, str]]:
        action = step["uses"].split("@", 1)[0]
        given = {key: self.interpolate(value, env) for key, value in step.get("with", {}).items()}
        handler = {"actions/upload-artifact": self.upload, "actions/download-artifact": self.download}.get(action)
        if handler is None:
            raise ValueError(f"the emulation cannot run `uses: {step['uses']}`")
        try:
            return StepRun(name, "success", handler(given)), {}
        except _StepFailed as exc:
            return StepRun(name, "failure", str(exc)), {}

    def upload(self, given: dict[str, str]) -> str:
        name = given.get("name") or "artifact"
        source = Path(given["path"])
        hidden = given.get("include-hidden-files", "false") == "true"
        files = [
            path
            for path in sorted(source.rglob("*") if source.is_dir() else [source] if source.exists() else [])
            if path.is_file() and (hidden or not any(part.startswith(".") for part in path.relative_to(source).parts))
        ]
        if not files:
            message = f"No files were found with the provided path: {source}. No artifacts will be uploaded."
            if given.get("if-no-files-found", "warn") == "error":
                raise _StepFailed(f"Error: {message}")
            return f"Warning: {message}"
        target = self.runner.artifacts / name
        if target.exists():
            if given.get("overwrite", "false") != "true":
                raise _StepFailed(
                    "Error: Failed to CreateArtifact: Received non-retryable error: Failed request: (409) Conflict: "
                    "an artifact with this name already exists on the workflow run"
                )
            shutil.rmtree(target)
        for path in files:
            copy = target / (path.relative_to(source) if source.is_dir() else path.name)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        return f"Artifact {name} has been successfully uploaded ({len(files)} files)."

    def download(self, given: dict[str, str]) -> str:
        destination = Path(given.get("path") or self.workspace)
        store = self.runner.artifacts
        names = sorted(path.name for path in store.iterdir()) if store.is_dir() else []
        if given.get("name"):
            if given["name"] not in names:
                missing = given["name"]
                raise _StepFailed(f"Error: Unable to download artifact(s): Artifact not found for name: {missing}")
            shutil.copytree(store / given["name"], destination, dirs_exist_ok=True)
            return f"Artifact {given['name']} was downloaded to {destination}."
        chosen = [name for name in names if fnmatch.fnmatchcase(name, given.get("pattern", "*"))]
        for name in chosen:
            into = destination if given.get("merge-multiple", "false") == "true" else destination / name
            shutil.copytree(store / name, into, dirs_exist_ok=True)
        return f"Total of {len(chosen)} artifact(s) downloaded."


class _StepFailed(Exception):
    """An emulated `uses:` step that fails, with the line the real action logs."""


def parse_outputs(text: str) -> dict[str, str]:
    """`GITHUB_OUTPUT` as the runner reads it: `name=value` lines and `name<<DELIMITER` heredocs; the last wins."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            key, value = line[:equals], line[equals + 1 :]
        elif heredoc >= 0:
            key, delimiter = line[:heredoc], line[heredoc + 2 :]
            body: list[str] = []
            while index < len(lines) and lines[index] != delimiter:
                body.append(lines[index])
                index += 1
            if index == len(lines):
                raise ValueError(f"GITHUB_OUTPUT: no end delimiter {delimiter!r} for {key!r}")
            index += 1
            value = "\n".join(body)
        else:
            raise ValueError(f"GITHUB_OUTPUT: invalid format {line!r}")
        if not key:
            raise ValueError(f"GITHUB_OUTPUT: a line with no name: {line!r}")
        outputs[key] = value
    return outputs


# --- the Python the steps call ------------------------------------------------------------------------------------

PIP_LOG_ENV = "EMULATED_PIP_LOG"
UNINSTALLABLE = "does-not-exist-anywhere"
"""A requirement the emulated pip cannot install (its error is pip's: no matching distribution)."""

_PYTHON_SHIM = f'''#!{sys.executable}
"""`python` as the action's steps see it: `-m pip` is logged, not run; anything else runs in the test's Python."""
import json, os, sys

args = sys.argv[1:]
if args[:2] == ["-m", "pip"]:
    with open(os.environ["{PIP_LOG_ENV}"], "a", encoding="utf-8") as log:
        log.write(json.dumps(args[2:]) + "\\n")
    if any("{UNINSTALLABLE}" in arg for arg in args):
        print("ERROR: No matching distribution found for {UNINSTALLABLE}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *args])
'''


def python_shim(folder: Path) -> Path:
    """A `bin/` folder whose `python` logs pip calls and runs the rest: put it first on the steps' PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "python"
    shim.write_text(_PYTHON_SHIM, encoding="utf-8")
    shim.chmod(0o755)
    return folder


def runner_env(root: Path, harness_source: Path) -> dict[str, str]:
    """The steps' environment: the shim first on PATH, the harness imported from `harness_source`, pip logged."""
    keep = {key: os.environ[key] for key in ("HOME", "LANG", "LC_ALL", "TMPDIR") if key in os.environ}
    return {
        **keep,
        "PATH": f"{python_shim(root / 'bin')}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(harness_source),
        PIP_LOG_ENV: str(root / "pip.log"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
