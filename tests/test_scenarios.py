"""Each scenario's invariant: a fault optimizer that breaks it ends `mismatch`; torch's own stay `ok`."""

from __future__ import annotations

import pytest
import torch

from harness.baseline import BaselineEntry
from harness.cells import Cell, Record
from harness.execute import run_cell
from harness.scenarios import get_scenario
from harness.scenarios.amp import float16_scaler_support
from harness.scenarios.resume import NotWeightsOnly, save_and_load
from harness.scenarios.schedule import expected_factor
from harness.settings import Settings
from harness.verdict import judge_one
from harness.vocabulary import SCENARIOS

SMALL = Settings(
    bench={"enabled": False},
    train={"steps": 8},
    model={"d_model": 32, "n_layers": 1, "vocab_size": 32, "seq_len": 16},
)
FAULTS = "tests.faults.scenario_optimizers"


def run(optimizer: str, scenario: str, kwargs: dict | None = None, *, builder: str = "safe") -> Record:
    kwargs = {"lr": 0.1} if kwargs is None else kwargs
    return run_cell(Cell(optimizer, "cpu", "float32", "plain", kwargs, builder, scenario=scenario), SMALL)


# --- each fault is caught by its scenario, and only there ------------------------------------------------

CAUGHT = [
    ("IgnoresGroupLr", "groups", "group 'frozen' has lr 0 but its parameters moved by"),
    ("IgnoresGroupLr", "groups", "group 'no_decay' changed lr 0.1 → 0.05 but its first update moved it by 0"),
    ("CachesLr", "schedule", "step 1 has lr 0 but moved the parameters by"),
    ("MomentsOutsideState", "resume", "resumed after 4 of 8 steps, the parameters differ from the uninterrupted run"),
    ("IgnoresFoundInf", "amp", "the step with an inf gradient (step 5) moved the parameters by inf"),
]


@pytest.mark.parametrize(("fault", "scenario", "words"), CAUGHT)
def test_a_fault_optimizer_ends_mismatch_in_the_scenario_that_checks_its_invariant(fault, scenario, words):
    record = run(f"{FAULTS}.{fault}", scenario)

    assert record.status == "mismatch", record.judgement or record.error_message
    assert words in record.judgement
    assert record.scenario == scenario and record.id.endswith(f"-{scenario}")


@pytest.mark.parametrize("fault", sorted({fault for fault, _, _ in CAUGHT} | {"MomentumSGD"}))
def test_the_faults_learn_in_the_plain_loop(fault):
    record = run(f"{FAULTS}.{fault}", "train")

    assert record.status == "ok", record.judgement
    assert record.id == f"{FAULTS}.{fault}-cpu-float32-plain-safe"


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s not in ("train", "compile")])
def test_the_faults_reference_passes_every_scenario(scenario):
    record = run(f"{FAULTS}.MomentumSGD", scenario)

    assert record.status == "ok", record.judgement or record.error_message


def test_moments_kept_outside_state_dict_are_lost_on_resume_and_the_numbers_say_so():
    record = run(f"{FAULTS}.MomentsOutsideState", "resume")

    numbers = record.scenario_numbers
    assert numbers["max_abs_diff"] > numbers["tolerance"] == 1e-6
    # The resumed run lands exactly where a restart with no state lands: the state carried nothing.
    assert numbers["max_abs_diff"] == pytest.approx(numbers["max_abs_diff_without_state"])


# --- torch's own optimizers keep every invariant, in every implementation ---------------------------------

TORCH = {
    "torch.optim.Adam": {"lr": 0.01},
    "torch.optim.AdamW": {"lr": 0.01},
    "torch.optim.SGD": {"lr": 0.1, "momentum": 0.9},
}
IMPLEMENTATIONS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "forloop": {"foreach": False, "fused": False},
}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("optimizer", list(TORCH))
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "compile"])
def test_torch_optimizers_are_ok_in_every_scenario(scenario, optimizer, implementation):
    record = run(optimizer, scenario, {**TORCH[optimizer], **IMPLEMENTATIONS[implementation]})

    assert record.status == "ok", record.judgement or record.error_message
    assert record.dropped_kwargs == []  # the implementation asked for is the one that ran


def test_torch_sgd_is_ok_compiled_and_the_compile_time_is_apart():
    # One optimizer only: compiling costs 10-50 s on a busy CPU. Every implementation of Adam, AdamW and
    # SGD was run compiled through the CLI for the scenarios' note (`-k compile`).
    optimizer = "torch.optim.SGD"
    record = run(optimizer, "compile", {**TORCH[optimizer], "foreach": True})

    assert record.status == "ok", record.judgement or record.error_message
    compile_s = record.scenario_numbers["compile_s"]
    assert compile_s > 0 and record.steps_s is not None and record.steps_s < record.duration_s - compile_s + 1e-6
    assert record.judgement.startswith(f"compiled in {compile_s:.1f} s")


# --- the invariants' numbers ----------------------------------------------------------------------------


def test_resume_records_what_the_state_carries_and_fused_state_under_forloop():
    record = run("torch.optim.AdamW", "resume", {"lr": 0.01})

    numbers = record.scenario_numbers
    assert numbers["max_abs_diff"] == 0.0  # CPU float32: a correct resume is exact
    assert numbers["max_abs_diff_without_state"] > 1e-3
    assert numbers["fused_state_under_forloop"]["same"] is True


class Opaque:
    """A value torch.load(weights_only=True) refuses to rebuild (an arbitrary class): only pickle can."""


def test_a_state_dict_that_needs_pickle_is_its_own_reason():
    with pytest.raises(NotWeightsOnly):
        save_and_load({"state": {}, "param_groups": [], "extra": Opaque()})
    assert save_and_load({"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []})["state"][0]["step"] == 3


def test_schedule_passes_through_lr_zero_at_the_first_and_last_step():
    factors = [expected_factor(step, 20) for step in range(20)]

    assert factors[0] == 0.0 and factors[-1] == 0.0 and max(factors) == 1.0
    assert factors[1:4] == [0.25, 0.5, 0.75]


def test_the_amp_scenario_knows_whether_this_torch_runs_float16_scaling_on_cpu():
    assert float16_scaler_support("cpu") is None  # torch >= 2.3 runs float16 autocast with a CPU GradScaler


def test_every_scenario_names_its_invariant():
    for name in SCENARIOS:
        scenario = get_scenario(name)
        assert scenario.name == name and len(scenario.invariant) > 20


# --- the gate ---------------------------------------------------------------------------------------------


def test_ok_becoming_mismatch_is_a_regression_and_mismatch_accepted_is_as_expected():
    record = run(f"{FAULTS}.CachesLr", "schedule")

    assert judge_one(record, BaselineEntry("ok"), speedup_tolerance=0.2).verdict == "regression"
    assert judge_one(record, BaselineEntry("mismatch"), speedup_tolerance=0.2).verdict == "as_expected"
