"""Findings: the defects of packages that a run's records show, one entry per defect, for a maintainer to act on.

A record is a *finding* when its cell shows a defect of the package that built or stepped the optimizer:

- `mismatch` (a scenario's invariant broke), `nonfinite` (the loss or the parameters became NaN or inf) and
  `crashed` (the process died) always are;
- `step_error` and `construct_error` are, unless what raised is a known incompatibility: a kwarg the class does
  not take or cannot combine (`unexpected_kwarg`, `conflicting_kwargs`), a value it rejects (`invalid_value`),
  a device or dtype it says it does not support (`unsupported_device`, `unsupported_dtype`), a package that is
  not installed (`missing_dependency`), or the class refusing the setup in so many words ("Muon only supports
  2D parameters", "SparseAdam does not support dense gradients": `REFUSAL`). An `import_error` is a finding:
  an installed package that cannot be imported is what a release break looks like.

`no_learning` is not one (the matrix's lr may simply not suit the optimizer), nor `timeout` (it depends on the
machine's load), nor `skipped`. What is left out is counted in `left_out`, so the choice stays visible.

Findings are grouped by package and version and deduplicated: records of one package whose status, reason,
scenario and symptom (the judgement's broken invariant, or the error's type and first line, with every number
stripped) agree are one finding, listing its cells. `Finding.key` names a defect without the version, so
`compare` can tell a finding that appears or disappears between environments.

Everything here is a pure function of records; `render_findings_md` is the `findings.md` every run writes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cells import DEFAULT_SCENARIO, Record
from harness.vocabulary import BUILDERS, Reason
from harness.wording import first_line

FINDINGS_NAME = "findings.md"

DEFECT_STATUSES = ("mismatch", "nonfinite", "crashed")
"""Statuses that are a finding whatever their reason."""

ERROR_STATUSES = ("step_error", "construct_error")
"""Statuses that are a finding unless their reason (or the message) is a known incompatibility."""

KNOWN_INCOMPATIBILITIES: frozenset[Reason] = frozenset(
    {"unexpected_kwarg", "conflicting_kwargs", "invalid_value", "unsupported_device", "unsupported_dtype",
     "missing_dependency"}
)  # fmt: skip
"""Reasons of an error that the matrix's own axes explain: the builder's kwargs, the device, the dtype, a package."""

REFUSAL = re.compile(r"\b(only supports?|does not support|doesn't support|do not support|is not supported)\b", re.I)
"""An error whose message says the class does not take this setup at all: a documented limit, not a defect."""

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NUMBERS = re.compile(r"#(\s*[,x×]\s*#)+")
_LOSS_NOTE = re.compile(r"\s*\((loss |float16 \+ GradScaler)[^()]*(\([^()]*\)[^()]*)*\)\s*$")
"""The judgement's closing note on the loss: not part of the broken invariant."""
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\s*$')

EXPECTED: dict[str, str] = {
    "train": "`step()` runs and the loss stays finite while it falls",
    "groups": "the parameter group with lr 0 stays bit-identical through every step, and each group's step uses "
    "that group's own lr and weight_decay",
    "resume": "the resumed run lands on the parameters of the uninterrupted run (on CPU, exactly; within 1e-6 in "
    "float32 anywhere)",
    "amp": "the step with an inf gradient leaves every parameter unchanged, the loss scale drops, and the loss stays "
    "finite",
    "schedule": "a step whose lr is 0 leaves every parameter bit-identical, and each step uses the schedule's lr",
    "compile": "`step()` runs under `torch.compile` as it does eagerly, and the loss stays finite",
    "frozen": "a parameter whose grad is None (`requires_grad=False`) stays bit-identical through every step, weight "
    "decay included, while the others learn",
    "unfreeze": "after `add_param_group` the existing group's parameters follow exactly the run where nothing was "
    "added, the new group steps, and a `state_dict()` / `load_state_dict()` round trip continues the same",
}
"""What a correct optimizer does in each scenario, in a bug report's words."""

WHAT_RAN: dict[str, str] = {
    "train": "trains it for {steps} steps on one synthetic batch",
    "groups": "builds it over three parameter groups as LitGPT, nanoGPT and the HF Trainer do (weight matrices with "
    "weight_decay 0.1; biases, norms and the token embedding without; the position embedding with lr 0) and "
    "trains {steps} steps, then replays the first step with one group's weight_decay or lr changed",
    "resume": "trains {half} steps, saves `optimizer.state_dict()` with `torch.save`, loads it with "
    "`torch.load(weights_only=True)` into a fresh optimizer over the same parameters (`load_state_dict`), trains "
    "the remaining steps, and compares with {steps} uninterrupted steps",
    "amp": "trains {steps} steps under autocast (CPU: bfloat16, then float16 with a GradScaler; CUDA: float16 with "
    "a GradScaler) and puts an inf into one gradient at step {half}",
    "schedule": "steps LitGPT's LR schedule every step (a linear warm-up from lr 0 with `LambdaLR`, then cosine to "
    "0 with `CosineAnnealingLR`, joined by `SequentialLR`) over {steps} steps",
    "compile": "trains {steps} steps with `optimizer.step()` inside `torch.compile`",
    "frozen": "freezes every block's attention and first LayerNorm and the position embedding (`requires_grad=False`), "
    "builds it over all the parameters in one group with weight_decay 0.1, and trains {steps} steps",
    "unfreeze": "trains {half} steps, then unfreezes a head on the model's detached features and adds it with "
    "`add_param_group`, trains the remaining steps, and compares with a run where nothing was added over {steps} "
    "steps; half-way from the add it also round-trips `state_dict()` into a fresh optimizer with the same groups",
}
"""What each scenario does around the optimizer, in a bug report's words."""


@dataclass(frozen=True)
class Finding:
    """One defect of one package (at one version), with every cell that shows it."""

    key: str
    """The defect without its version: package, status, reason, scenario and symptom (`compare` matches by it)."""
    package: str
    version: str
    status: str
    reason: str | None
    scenario: str
    """The scenario whose invariant broke; "" for an error, which is the same defect in every scenario."""
    symptom: str
    """The broken invariant or the error, numbers stripped: what the cells share."""
    records: tuple[Record, ...]
    """The cells that show it, the one the repro command names first."""

    @property
    def example(self) -> Record:
        return self.records[0]

    @property
    def optimizers(self) -> list[str]:
        return list(dict.fromkeys(r.optimizer for r in self.records))

    @property
    def title(self) -> str:
        names = ", ".join(short_name(name) for name in self.optimizers)
        record = self.example
        if record.status in ERROR_STATUSES:
            where = {"construct_error": "the constructor", "step_error": "`step()`"}[record.status]
            if record.reason == "import_error":
                where = "import"
            message = first_line(record.error_message) or "(no message)"
            return f"{names}: {record.error_type or 'error'} in {where}: {message}"
        if record.status == "crashed":
            return f"{names}: the process died in the {record.scenario} scenario: {first_line(record.error_message)}"
        return f"{names}: {observed(record)}"

    def repro_command(self, results_dir: str | Path | None = None) -> str:
        return repro_command(self.example.id, results_dir)


@dataclass(frozen=True)
class LeftOut:
    """Failing cells that are no finding, by why: counted so the choice stays visible."""

    why: str
    optimizers: tuple[str, ...]
    cells: int


def is_finding(record: Record) -> bool:
    """Whether the record shows a defect of a package (see the module docstring for what is left out)."""
    return _left_out_because(record) is None and record.status in (*DEFECT_STATUSES, *ERROR_STATUSES)


def _left_out_because(record: Record) -> str | None:
    """Why a failing record is no finding; None when it is one, or when it does not fail at all."""
    if record.status in DEFECT_STATUSES or record.status in ("ok", "skipped"):
        return None
    if record.status not in ERROR_STATUSES:
        return f"`{record.status}`: not a defect of the package by itself (the matrix's settings, the machine)"
    if record.reason in KNOWN_INCOMPATIBILITIES:
        return f"`{record.reason}`: a known incompatibility the matrix's axes explain"
    if record.reason != "import_error" and REFUSAL.search(f"{record.error_message or ''}"):
        return "the class refuses this setup in its own words (a documented limit)"
    return None


def symptom(record: Record) -> str:
    """What a finding's cells share: the broken invariant or the error's first line, numbers stripped."""
    if record.status in (*ERROR_STATUSES, "crashed"):
        text = f"{record.error_type or ''}: {first_line(record.error_message, limit=300)}"
    else:
        text = _LOSS_NOTE.sub("", record.judgement or "")
    return " ".join(_NUMBERS.sub("#", _NUMBER.sub("#", text)).split())


def package_of(record: Record) -> tuple[str, str]:
    """(package, version) a finding is reported to: the framework for its own names, else the optimizer's package."""
    env = record.env
    prefix = record.optimizer.split(":", 1)[0]
    if env.framework and prefix == record.builder and ":" in record.optimizer:
        return env.framework, env.framework_version or "unknown"
    package = env.optimizer_package or record.family
    packages = dict(env.packages or {})
    version = packages.get(package) or env.optimizer_package_version
    if package == "torch" and not version:
        version = env.torch_release
    return package, version or "unknown"


def find_findings(records: Iterable[Record]) -> list[Finding]:
    """The findings these records show, by package (torch first, then alphabetically), each with its cells."""
    groups: dict[tuple[str, ...], list[Record]] = {}
    for record in records:
        if not is_finding(record):
            continue
        package, version = package_of(record)
        # An error is the same defect in whichever scenario it raised; a broken invariant belongs to its scenario.
        scenario = "" if record.status in (*ERROR_STATUSES, "crashed") else record.scenario
        key = (package, version, record.status, record.reason or "", scenario, symptom(record))
        groups.setdefault(key, []).append(record)
    findings = []
    for (package, version, status, reason, scenario, text), members in groups.items():
        findings.append(
            Finding(
                key=" | ".join((package, status, reason, scenario, text)),
                package=package,
                version=version,
                status=status,
                reason=reason or None,
                scenario=scenario,
                symptom=text,
                records=tuple(sorted(members, key=_example_rank)),
            )
        )
    return sorted(findings, key=lambda f: (f.package != "torch", f.package, f.version, f.title))


def left_out(records: Iterable[Record]) -> list[LeftOut]:
    """Failing cells that are no finding, grouped by why, most cells first."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        why = _left_out_because(record)
        if why is not None:
            groups.setdefault(why, []).append(record)
    rows = [
        LeftOut(why, tuple(dict.fromkeys(r.optimizer for r in members)), len(members))
        for why, members in groups.items()
    ]
    return sorted(rows, key=lambda row: (-row.cells, row.why))


def _example_rank(record: Record) -> tuple[Any, ...]:
    """The cell a finding's repro names: one that runs anywhere and builds most plainly (cpu, float32, plain)."""
    builder = BUILDERS.index(record.builder) if record.builder in BUILDERS else len(BUILDERS)
    return (
        record.device != "cpu",
        record.dtype != "float32",
        record.variant != "plain",
        builder,
        record.scenario != DEFAULT_SCENARIO,
        record.id,
    )


def short_name(optimizer: str) -> str:
    """`grokadamw.GrokAdamW` -> `GrokAdamW`; `timm:madgrad` -> `timm:madgrad` (a registry name is its own)."""
    return optimizer if ":" in optimizer else optimizer.rsplit(".", 1)[-1]


def repro_command(cell_id: str, results_dir: str | Path | None = None) -> str:
    """`python -m harness repro ID [--results DIR] -o repro.py`, quoted for a shell."""
    results = f" --results {shlex.quote(str(results_dir))}" if results_dir is not None else ""
    return f"python -m harness repro {shlex.quote(cell_id)}{results} -o repro.py && python repro.py"


def observed(record: Record) -> str:
    """What the cell showed, in one sentence with its numbers."""
    if record.status in ERROR_STATUSES or record.status == "crashed":
        return f"{record.error_type or 'error'}: {first_line(record.error_message, limit=300) or '(no message)'}"
    return first_line(_LOSS_NOTE.sub("", record.judgement or ""), limit=400) or record.status


def raising_frame(record: Record) -> str | None:
    """Where the error was raised, from the traceback's last frame: `bitsandbytes/optim/lars.py:251 in step`."""
    lines = (record.traceback or "").splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _FRAME.match(lines[index])
        if match:
            path = match["file"]
            for marker in ("site-packages/", "dist-packages/"):
                if marker in path:
                    path = path.split(marker, 1)[1]
            code = lines[index + 1].strip() if index + 1 < len(lines) else ""
            where = f"{path}:{match['line']} in {match['func']}"
            return f"{where}: {code}" if code and not _FRAME.match(lines[index + 1]) else where
    return None


def evidence(finding: Finding) -> list[str]:
    """The lines of evidence: what the example cell showed, its numbers, where it raised, the losses."""
    record = finding.example
    lines = [f"{record.status}" + (f" ({record.reason})" if record.reason else "") + f": {observed(record)}"]
    if record.judgement and record.status not in ERROR_STATUSES:
        lines[0] = f"{record.status}: {first_line(record.judgement, limit=600)}"
    frame = raising_frame(record)
    if frame:
        lines.append(f"raised at {frame}")
    numbers = _numbers_text(record.scenario_numbers)
    if numbers:
        lines.append(f"numbers: {numbers}")
    if record.losses:
        shown = ", ".join(_num(x) for x in record.losses[:3])
        more = f", … {_num(record.losses[-1])}" if len(record.losses) > 3 else ""
        lines.append(f"losses ({len(record.losses)} steps): {shown}{more}")
    return lines


def _numbers_text(numbers: dict[str, Any], limit: int = 400) -> str:
    parts = []
    for key, value in numbers.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {_num(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
            parts.append(f"{key}: {{{inner}}}")
        elif isinstance(value, list):
            parts.append(f"{key}: [{', '.join(_num(v) for v in value[:6])}{', …' if len(value) > 6 else ''}]")
        else:
            parts.append(f"{key} {_num(value)}")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> str:
    """A number as evidence shows it; a loss the results file keeps as null (NaN) as `nan`."""
    if value is None:
        return "nan"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def environment_line(record: Record, package: str, version: str) -> str:
    env = record.env
    parts = [f"{package} {version}"]
    if package != "torch":
        parts.append(f"torch {env.torch or 'unknown'}")
    if env.framework and env.framework != package:
        parts.append(f"{env.framework} {env.framework_version or 'unknown'}")
    parts.append(f"Python {env.python or 'unknown'}")
    device = record.device + (f" ({env.device_name})" if env.device_name else "")
    parts.append(device)
    return ", ".join(parts)


def what_ran(record: Record) -> str:
    """What the repro script does around the optimizer, with the record's step counts where it has them."""
    numbers = record.scenario_numbers or {}
    if "steps_before_save" in numbers:
        steps: int | None = int(numbers["steps_before_save"]) + int(numbers.get("steps_after_load", 0))
    elif record.status in ERROR_STATUSES or not record.losses:
        steps = None
    else:
        steps = len(record.losses)
    text = WHAT_RAN.get(record.scenario, "runs the `{scenario}` scenario")
    if steps is None:  # an error stopped the run: the count of steps it would have taken is not in the record
        text = re.sub(r" (for |over )?\{steps\} (uninterrupted )?steps?", "", text).replace("{half}", "some")
    text = text.format(steps=steps, half=(steps or 0) // 2, scenario=record.scenario)
    if record.status == "step_error" and record.losses:
        text += f"; the error comes at step {len(record.losses)}"
    return text


def draft_report(finding: Finding, results_dir: str | Path | None = None) -> str:
    """A bug report ready to paste upstream: title, environment, steps, expected against observed, the cells."""
    record = finding.example
    kwargs = ", ".join(f"{k}={v!r}" for k, v in record.kwargs.items())
    cls = str((record.built or {}).get("class") or record.optimizer).rsplit(".", 1)[-1]
    build = (
        f"`{cls if ':' in record.optimizer else short_name(record.optimizer)}(params{', ' if kwargs else ''}{kwargs})`"
    )
    if ":" in record.optimizer:
        build += f" (`{record.optimizer}`, with its registry's defaults)"
    if record.builder not in BUILDERS:
        build += f" built by `{record.builder}`"
    if record.reason == "import_error":
        expected = "the package imports"
    elif record.status == "construct_error":
        expected = "the optimizer is built"
    else:
        expected = EXPECTED.get(record.scenario, "the scenario's invariant holds")
    frame = raising_frame(record)
    params = f"{record.num_params:,}" if record.num_params else "about 233k"
    needs = "torch" if finding.package == "torch" else f"torch and {finding.package}"
    lines = [
        f"**{finding.title}**",
        "",
        f"**Environment:** {environment_line(record, finding.package, finding.version)}.",
        "",
        f"**Steps:** a small GPT ({params} parameters, {record.dtype} on {record.device}) with {build}; the script "
        f"{what_ran(record)}. It needs {needs} only: `{repro_command(record.id, results_dir)}` "
        "writes and runs it.",
        "",
        f"**Expected:** {expected}.",
        "",
        f"**Observed:** {observed(record)}" + (f" (raised at `{frame}`)" if frame else "") + ".",
    ]
    others = list(dict.fromkeys(_configuration(r) for r in finding.records[1:]))
    if others:
        shown = "; ".join(others[:8]) + (f"; and {len(others) - 8} more" if len(others) > 8 else "")
        lines += ["", f"**Also seen in** {len(others)} more configuration{'s' if len(others) > 1 else ''}: {shown}."]
    return "\n".join(lines)


def _configuration(record: Record) -> str:
    kwargs = ", ".join(f"{k}={v!r}" for k, v in record.kwargs.items())
    where = f"{record.device} {record.dtype}, {record.builder} builder, {record.scenario}"
    return f"{short_name(record.optimizer)}({kwargs}) on {where}"


def render_findings_md(records: Sequence[Record], results_dir: str | Path | None = None) -> str:
    """`findings.md`: the findings by package and version, each with evidence, the repro command and a draft report."""
    findings = find_findings(records)
    packages = list(dict.fromkeys((f.package, f.version) for f in findings))
    covered = sum(len(f.records) for f in findings)
    lines = ["# Findings", ""]
    if findings:
        by = ", ".join(f"{p} {v}: {sum(1 for f in findings if (f.package, f.version) == (p, v))}" for p, v in packages)
        lines.append(
            f"{len(findings)} findings in {len(packages)} packages ({by}), from {covered} of {len(records)} cells."
        )
    else:
        lines.append(f"No finding in {len(records)} cells.")
    lines += [
        "",
        "A finding is a defect of a package: a `mismatch`, `nonfinite` or `crashed` cell, or a `step_error` / "
        "`construct_error` that no kwarg, device, dtype or missing package explains. Cells that share a package, "
        "status and symptom are one finding.",
    ]
    number = 0
    for package, version in packages:
        lines += ["", f"## {package} {version}"]
        for finding in (f for f in findings if (f.package, f.version) == (package, version)):
            number += 1
            lines += ["", f"### {number}. {_md_text(finding.title)}", ""]
            lines += [f"- {_md_text(line)}" for line in evidence(finding)]
            cells = [f"`{r.id}`" for r in finding.records]
            lines.append(f"- cells ({len(cells)}): " + ", ".join(cells[:12]) + (" …" if len(cells) > 12 else ""))
            lines.append(f"- reproduce: `{finding.repro_command(results_dir)}`")
            draft = draft_report(finding, results_dir)
            fence = "~" * max(3, _longest_run(draft, "~") + 1)
            lines += ["", "<details><summary>Draft bug report</summary>", "", f"{fence}markdown", draft, fence, "",
                      "</details>"]  # fmt: skip
    rows = left_out(records)
    if rows:
        lines += ["", "## Left out", "", "Failing cells that are no finding, by why:", ""]
        for row in rows:
            names = ", ".join(short_name(n) for n in row.optimizers[:6]) + (" …" if len(row.optimizers) > 6 else "")
            lines.append(f"- {_md_text(row.why)}: {_cells(row.cells)} ({_md_text(names)})")
    return "\n".join(lines) + "\n"


def _cells(count: int) -> str:
    return f"{count} cell" if count == 1 else f"{count} cells"


def _md_text(text: str) -> str:
    """Prose safe in Markdown: no HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _longest_run(text: str, char: str) -> int:
    runs = re.findall(f"{re.escape(char)}+", text)
    return max((len(run) for run in runs), default=0)


def finding_keys(records: Iterable[Record]) -> dict[str, Finding]:
    """Each finding by its version-free key: what `compare` matches across environments."""
    return {finding.key: finding for finding in find_findings(records)}


def finding_groups(records: Sequence[Record], results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The findings as the report's Findings section shows them: by package and version, each entry's parts."""
    index_of = {record.id: i for i, record in enumerate(records)}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for finding in find_findings(records):
        groups.setdefault((finding.package, finding.version), []).append(
            {
                "title": finding.title,
                "status": finding.status,
                "reason": finding.reason,
                "scenario": finding.scenario,
                "evidence": evidence(finding),
                "cells": [(r.id, index_of.get(r.id)) for r in finding.records],
                "repro": finding.repro_command(results_dir),
                "draft": draft_report(finding, results_dir),
            }
        )
    return [{"package": p, "version": v, "findings": entries} for (p, v), entries in groups.items()]


@dataclass(frozen=True)
class FindingAcrossRuns:
    """One finding across the runs of a comparison: in which it is found, and how that changed."""

    key: str
    title: str
    package: str
    states: tuple[str, ...]
    """Per run: `found`, `not found` (its cells ran and were fine) or `not run` (none of its cells ran there)."""
    found: tuple[Finding | None, ...]
    change: str
    """`appears in X`, `gone in X`, `in every run`, or `found in X, Y`."""

    @property
    def changed(self) -> bool:
        return self.change.startswith(("appears", "gone", "found in"))


def findings_across(runs: Sequence[tuple[str, Sequence[Record]]]) -> list[FindingAcrossRuns]:
    """Every finding of any run, matched across runs by its version-free key; those that appear or go first.

    A run where none of the finding's cells ran (its package missing, the cells not selected) is `not run`: the
    finding is not said to be gone there.
    """
    names = [name for name, _ in runs]
    per_run = [finding_keys(records) for _, records in runs]
    ran = [{r.id for r in records if r.status != "skipped"} for _, records in runs]
    keys = list(dict.fromkeys(key for found in per_run for key in found))
    rows = []
    for key in keys:
        found = tuple(found.get(key) for found in per_run)
        example = next(f for f in found if f is not None)
        ids = {r.id for f in found if f is not None for r in f.records}
        states = tuple(
            "found" if f is not None else ("not found" if ids & cells else "not run")
            for f, cells in zip(found, ran, strict=True)
        )
        rows.append(FindingAcrossRuns(key, example.title, example.package, states, found, _change(states, names)))
    return sorted(rows, key=lambda row: (not row.changed, row.package != "torch", row.package, row.title))


def _change(states: Sequence[str], names: Sequence[str]) -> str:
    seen = [(name, state == "found") for name, state in zip(names, states, strict=True) if state != "not run"]
    flags = [flag for _, flag in seen]
    if all(flags):
        return "in every run" if len(seen) == len(names) else "in every run where its cells ran"
    flips = [i for i in range(1, len(flags)) if flags[i] != flags[i - 1]]
    if len(flips) == 1:
        return f"{'appears' if flags[-1] else 'gone'} in {seen[flips[0]][0]}"
    return "found in " + ", ".join(name for name, flag in seen if flag)


def render_findings_across_md(runs: Sequence[tuple[str, Sequence[Record]]], *, limit: int = 60) -> str:
    """The comparison's Findings section: each finding per run, those that appear or disappear first."""
    rows = findings_across(runs)
    names = [name for name, _ in runs]
    changed = sum(row.changed for row in rows)
    lines = ["## Findings across environments", ""]
    if not rows:
        return "\n".join([*lines, "No run has a finding."]) + "\n"
    lines += [
        f"{len(rows)} findings, {changed} of them appear or disappear between environments.",
        "",
        "| finding | change | " + " | ".join(_md_cell(n) for n in names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for row in rows[:limit]:
        states = [_state_text(state, f) for state, f in zip(row.states, row.found, strict=True)]
        change = f"**{row.change}**" if row.changed else row.change
        lines.append(f"| {_md_cell(row.title)} | {change} | " + " | ".join(states) + " |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more: see compare.html.")
    return "\n".join(lines) + "\n"


def _state_text(state: str, finding: Finding | None) -> str:
    if finding is not None:
        return f"✗ found ({_cells(len(finding.records))})"
    return "✓ not found" if state == "not found" else "· not run"


def _md_cell(text: str) -> str:
    return " ".join(_md_text(text).replace("|", "\\|").split())
