"""Findings: which records are a package's defect, how they are grouped and deduplicated, and where they show."""

from __future__ import annotations

from typing import Any

import pytest

from harness.cells import Cell, Record
from harness.findings import (
    draft_report,
    find_findings,
    findings_across,
    is_finding,
    left_out,
    raising_frame,
    render_findings_md,
    symptom,
)
from harness.measurements import Environment
from harness.report import render_html, write_reports
from harness.report.layout import matrix
from harness.report.releases import render_compare_md

VERSIONS = {"torch": "2.14.1", "bitsandbytes": "0.50.2", "grokadamw": "0.1.2", "timm": "1.0.31"}
TRACEBACK = """Traceback (most recent call last):
  File "/work/main/harness/scenarios/base.py", line 139, in take_steps
    optimizer.step()
  File "/venv/lib/python3.11/site-packages/bitsandbytes/optim/lars.py", line 251, in step
    assert p.dtype == torch.float32
AssertionError
"""


def record(
    optimizer: str = "torch.optim.Rprop",
    status: str = "mismatch",
    *,
    scenario: str = "groups",
    variant: str = "plain",
    builder: str = "safe",
    dtype: str = "float32",
    versions: dict[str, str] | None = None,
    **fields: Any,
) -> Record:
    package = optimizer.split(":")[0].split(".")[0]
    versions = {**VERSIONS, **(versions or {})}
    env = Environment(
        python="3.11.7",
        torch=f"{versions['torch']}+cpu",
        packages=versions,
        device_name="AMD EPYC",
        optimizer_package=package,
        optimizer_package_version=versions.get(package),
    )
    cell = Cell(optimizer, "cpu", dtype, variant, {"lr": 0.01}, builder, scenario=scenario)
    return Record.for_cell(cell, status, env=env, num_params=233088, **fields)


FROZEN = (
    "group 'frozen' has lr 0 but its parameters moved by {} over 20 steps "
    "(loss fell 4.2 → 0.1 (-98%), more than the 5% required)"
)


@pytest.mark.parametrize(
    ("status", "reason", "message", "expected"),
    [
        ("mismatch", None, None, True),
        ("nonfinite", None, None, True),
        ("crashed", None, "the process died", True),
        ("step_error", "other", "output with shape [96] doesn't match the broadcast shape [64, 96]", True),
        ("construct_error", "import_error", "bitsandbytes 0.50.2 is installed but raises while importing", True),
        ("construct_error", "unexpected_kwarg", "__init__() got an unexpected keyword argument 'fused'", False),
        ("step_error", "conflicting_kwargs", "`fused` and `foreach` cannot be `True` together", False),
        ("construct_error", "missing_dependency", "bitsandbytes is not installed", False),
        ("step_error", "unsupported_device", "fused only supports cuda", False),
        ("step_error", "unsupported_dtype", "not implemented for 'BFloat16'", False),
        ("step_error", "invalid_value", "Invalid learning rate: -1", False),
        ("construct_error", "other", "Muon only supports 2D parameters whereas we found a parameter", False),
        ("step_error", "other", "SparseAdam does not support dense gradients, please consider Adam instead", False),
        ("no_learning", None, None, False),
        ("timeout", None, "training ran past 60 s", False),
        ("ok", None, None, False),
        ("skipped", "missing_dependency", None, False),
    ],
)
def test_what_is_a_finding(status, reason, message, expected):
    made = record(status=status, reason=reason, error_type="RuntimeError" if message else None, error_message=message)

    assert is_finding(made) is expected
    if status not in ("ok", "skipped"):  # every failing cell is a finding or counted as left out, never lost
        assert expected != any(row.cells for row in left_out([made]))


def test_cells_with_the_same_symptom_are_one_finding_listing_every_cell():
    madgrad = record("timm:madgrad", judgement=FROZEN.format("0.000201"))
    madgradw = record("timm:madgradw", judgement=FROZEN.format("0.000154"))
    rprop = record("torch.optim.Rprop", judgement=FROZEN.format("0.000126"))

    findings = find_findings([madgradw, rprop, madgrad])

    assert [(f.package, f.version, len(f.records)) for f in findings] == [("torch", "2.14.1", 1), ("timm", "1.0.31", 2)]
    assert findings[1].optimizers == ["timm:madgrad", "timm:madgradw"]  # the repro's cell (by id) comes first
    assert findings[1].title == "timm:madgrad, timm:madgradw: " + FROZEN.format("0.000201").split(" (loss")[0]
    assert symptom(madgrad) == symptom(madgradw) == "group 'frozen' has lr # but its parameters moved by # over # steps"


def test_an_error_is_one_finding_across_scenarios_and_variants_and_a_broken_invariant_is_one_per_scenario():
    def error(**kw: Any) -> Record:
        message = "output with shape [96] doesn't match the broadcast shape [{}, 96]".format(kw.pop("rows", 64))
        return record("bitsandbytes.optim.AdEMAMix32bit", "step_error", reason="other", error_type="RuntimeError",
                      error_message=message, **kw)  # fmt: skip

    errors = [
        error(scenario="train", builder="direct"),
        error(scenario="groups", rows=288),
        error(scenario="train", variant="fused", builder="signature"),
    ]
    schedule = record("torch.optim.Rprop", scenario="schedule", judgement="step 1 has lr 0 but moved the parameters")

    findings = find_findings([*errors, record(judgement=FROZEN.format(1e-4)), schedule])

    assert len(findings) == 3
    [bnb] = [f for f in findings if f.package == "bitsandbytes"]
    assert len(bnb.records) == 3 and bnb.example.id == "bitsandbytes.optim.AdEMAMix32bit-cpu-float32-plain-direct"
    assert bnb.title.startswith("AdEMAMix32bit: RuntimeError in `step()`: output with shape [96]")


def test_findings_are_grouped_by_package_and_version():
    old = record("grokadamw.GrokAdamW", scenario="resume", judgement="resumed after 10 of 20 steps, differ by 0.4",
                 versions={"grokadamw": "0.1.1"})  # fmt: skip
    new = record("grokadamw.GrokAdamW", scenario="resume", judgement="resumed after 10 of 20 steps, differ by 0.5")

    findings = find_findings([new, old])

    assert [(f.package, f.version) for f in findings] == [("grokadamw", "0.1.1"), ("grokadamw", "0.1.2")]
    assert findings[0].key == findings[1].key  # the same defect: compare matches them across environments


def test_the_evidence_says_where_an_error_was_raised():
    lars = record("bitsandbytes.optim.PytorchLARS", "step_error", dtype="bfloat16", reason="other",
                  error_type="AssertionError", error_message="", traceback=TRACEBACK, losses=[4.2])  # fmt: skip

    assert raising_frame(lars) == "bitsandbytes/optim/lars.py:251 in step: assert p.dtype == torch.float32"
    [finding] = find_findings([lars])
    draft = draft_report(finding, "reports")
    assert finding.title == "PytorchLARS: AssertionError in `step()`: (no message)"
    assert "**Environment:** bitsandbytes 0.50.2, torch 2.14.1+cpu, Python 3.11.7, cpu (AMD EPYC)." in draft
    assert "the error comes at step 1" in draft and "`PytorchLARS(params, lr=0.01)`" in draft
    assert (
        "python -m harness repro bitsandbytes.optim.PytorchLARS-cpu-bfloat16-plain-safe-groups --results reports"
        in draft
    )


def test_findings_md_has_evidence_a_repro_command_a_draft_and_what_was_left_out():
    records = [
        record("grokadamw.GrokAdamW", scenario="resume", judgement="resumed after 10 of 20 steps, differ by 0.42",
               scenario_numbers={"max_abs_diff": 0.42, "tolerance": 1e-6}, losses=[4.2, 3.9]),
        record("bitsandbytes.optim.AdamW8bit", "construct_error", scenario="train", reason="unexpected_kwarg",
               error_type="TypeError", error_message="unexpected keyword argument 'fused'"),
        record("torch.optim.SGD", "ok", scenario="train"),
    ]  # fmt: skip

    md = render_findings_md(records, "out dir")

    assert md.startswith("# Findings\n\n1 findings in 1 packages (grokadamw 0.1.2: 1), from 1 of 3 cells.")
    assert "## grokadamw 0.1.2" in md and "### 1. GrokAdamW: resumed after 10 of 20 steps" in md
    assert "- numbers: max_abs_diff 0.42; tolerance 1e-06" in md
    assert "`python -m harness repro grokadamw.GrokAdamW-cpu-float32-plain-safe-resume --results 'out dir' -o " in md
    assert "**Expected:** the resumed run lands on the parameters of the uninterrupted run" in md
    assert "## Left out" in md and "`unexpected_kwarg`: a known incompatibility the matrix's axes explain: 1 cell" in md


def test_findings_md_escapes_what_an_optimizer_wrote():
    hostile = record("torch.optim.SGD", "step_error", scenario="train", reason="other", error_type="RuntimeError",
                     error_message="<script>alert(1)</script> ~~~ end")  # fmt: skip

    md = render_findings_md([hostile])

    assert "<script>" not in md.split("~~~~markdown")[0]  # outside the fenced draft: escaped
    assert "~~~~markdown" in md  # a fence longer than any run of ~ in the draft


def test_no_finding_says_so():
    assert "No finding in 1 cells." in render_findings_md([record("torch.optim.SGD", "ok", scenario="train")])


def test_compare_marks_a_finding_that_appears_or_goes_and_not_where_its_cells_did_not_run():
    resume = {"scenario": "resume", "judgement": "resumed after 10 of 20 steps, the parameters differ by 0.4"}
    broken = record("grokadamw.GrokAdamW", **resume)
    fine = record("grokadamw.GrokAdamW", "ok", scenario="resume", judgement="resumed, matches")
    absent = record("grokadamw.GrokAdamW", "skipped", scenario="resume", reason="missing_dependency")
    runs = [("old", [fine]), ("missing", [absent]), ("new", [broken])]

    [row] = findings_across(runs)

    assert row.states == ("not found", "not run", "found") and row.change == "appears in new" and row.changed
    [gone] = findings_across([("a", [broken]), ("b", [fine])])
    assert gone.change == "gone in b"
    md = render_compare_md(runs)
    assert "## Findings across environments" in md and "**appears in new**" in md
    assert "| ✓ not found | · not run | ✗ found (1 cell) |" in md


def test_every_run_writes_findings_md_and_the_report_has_a_findings_section(tmp_path):
    records = [record(judgement=FROZEN.format(1e-4)), record("torch.optim.SGD", "ok", scenario="train")]

    paths = write_reports(records, None, tmp_path, title="t", results_dir=tmp_path / "results")
    html = paths["report.html"].read_text()

    assert paths["findings.md"].read_text() == render_findings_md(records, tmp_path / "results")
    assert '<section id="findings">' in html and "Rprop: group &#39;frozen&#39; has lr 0" in html
    assert '<button type="button" class="link open" data-i="0">torch.optim.Rprop-cpu-float32-plain-safe-groups' in html
    assert f"--results {tmp_path / 'results'}" in html


def test_scenario_cells_that_share_a_slot_each_have_a_cell_in_the_grid():
    grok = [record("grokadamw.GrokAdamW", "ok" if s != "resume" else "mismatch", scenario=s)
            for s in ("groups", "resume", "amp", "schedule")]  # fmt: skip
    records = [*grok, record("grokadamw.GrokAdamW", "ok", scenario="train", variant="fused", builder="direct")]

    grid = matrix(records)

    shown = [i for row in grid["rows"] for i in row["cells"] if i is not None]
    assert sorted(shown) == list(range(len(records)))
    assert [axis for axis, _ in grid["levels"]][-1] == "scenario"
    html = render_html(records, None, title="t")
    assert '<select id="f-scenario" data-axis="scenario"' in html
    assert 'data-status="mismatch"' in html.split('id="matrix"')[1]  # the resume mismatch is in the grid


def test_a_matrix_of_one_scenario_keeps_its_four_column_levels():
    grid = matrix([record("torch.optim.SGD", "ok", scenario="train")])

    assert [axis for axis, _ in grid["levels"]] == ["device", "dtype", "variant", "builder"]
