"""The framework paths `frozen` and `unfreeze`: each fault is caught by its scenario only; correct optimizers pass."""

from __future__ import annotations

import pytest
import torch

from harness.cells import Cell, Record
from harness.execute import run_cell
from harness.findings import EXPECTED, WHAT_RAN
from harness.gpt import build_gpt, synthetic_batch
from harness.scenarios.frozen import frozen
from harness.scenarios.unfreeze import with_head
from harness.settings import Settings
from harness.vocabulary import SCENARIOS

SMALL = Settings(
    bench={"enabled": False},
    train={"steps": 8},
    model={"d_model": 32, "n_layers": 1, "vocab_size": 32, "seq_len": 16},
)
FAULTS = "tests.faults.scenario_optimizers"
CHEAP = [s for s in SCENARIOS if s != "compile"]  # compiling costs 10-50 s a cell on a busy CPU


def run(optimizer: str, scenario: str, kwargs: dict | None = None) -> Record:
    kwargs = {"lr": 0.1} if kwargs is None else kwargs
    return run_cell(Cell(optimizer, "cpu", "float32", "plain", kwargs, "safe", scenario=scenario), SMALL)


# --- each new fault breaks its scenario and no other -----------------------------------------------------

CAUGHT = {
    "DecaysWithoutGrad": (
        "frozen",
        "7 parameters with requires_grad=False (grad None; weight_decay 0.1 in their group) moved by",
    ),
    "ForgetsOnAddGroup": (
        "unfreeze",
        "after add_param_group before step 5 of 8, the existing group's parameters differ from a run where nothing "
        "was added by",
    ),
}


@pytest.mark.parametrize("scenario", CHEAP)
@pytest.mark.parametrize("fault", list(CAUGHT))
def test_a_path_fault_is_mismatch_in_its_scenario_and_ok_in_every_other(fault, scenario):
    record = run(f"{FAULTS}.{fault}", scenario)

    caught_in, words = CAUGHT[fault]
    if scenario == caught_in:
        assert record.status == "mismatch", record.judgement or record.error_message
        assert words in record.judgement
    else:
        assert record.status == "ok", record.judgement or record.error_message


@pytest.mark.parametrize(
    ("fault", "frozen_status", "unfreeze_status"),
    [
        ("IgnoresGroupLr", "ok", "ok"),
        ("CachesLr", "ok", "ok"),  # it caches the added group's lr too: only a scheduler's change is lost
        ("IgnoresFoundInf", "ok", "ok"),
        ("MomentsOutsideState", "ok", "mismatch"),  # unfreeze's state_dict round trip loses the momentum too
    ],
)
def test_the_older_faults_in_the_new_scenarios(fault, frozen_status, unfreeze_status):
    assert run(f"{FAULTS}.{fault}", "frozen").status == frozen_status
    record = run(f"{FAULTS}.{fault}", "unfreeze")

    assert record.status == unfreeze_status, record.judgement
    if unfreeze_status == "mismatch":
        broken = "state_dict() -> load_state_dict() into a fresh optimizer with the same groups after step 6, the two"
        assert broken in record.judgement
        assert record.scenario_numbers["existing_max_abs_diff"] == 0.0  # the add itself changed nothing


# --- correct optimizers keep both invariants, with the numbers to show it -----------------------------------


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [("torch.optim.AdamW", {"lr": 0.01}), ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1})],
)
def test_torch_keeps_frozen_parameters_bit_identical_and_spends_no_state_on_them(optimizer, kwargs):
    record = run(optimizer, "frozen", kwargs)

    assert record.status == "ok", record.judgement or record.error_message
    numbers = record.scenario_numbers
    assert numbers["frozen_moved"] == 0.0 and numbers["trainable_moved"] > 1e-3
    assert numbers["frozen_tensors"] == 7 and numbers["frozen_with_state"] == 0 and numbers["frozen_with_grad"] == 0
    assert record.judgement.startswith("the 7 parameters with requires_grad=False (grad None; weight_decay 0.1 in")
    assert record.built["kwargs"][0]["weight_decay"] == 0.1  # the group's, over the cell's


@pytest.mark.parametrize(
    ("optimizer", "kwargs"), [("torch.optim.AdamW", {"lr": 0.01}), ("torch.optim.SGD", {"lr": 0.1, "momentum": 0.9})]
)
def test_torch_continues_exactly_after_add_param_group_and_round_trips_the_new_group(optimizer, kwargs):
    record = run(optimizer, "unfreeze", kwargs)

    assert record.status == "ok", record.judgement or record.error_message
    numbers = record.scenario_numbers
    assert numbers["existing_max_abs_diff"] == 0.0 and numbers["round_trip_max_abs_diff"] == 0.0
    assert numbers["added_moved"] > 1e-3
    assert (numbers["added_before_step"], numbers["round_trip_after_step"]) == (5, 6)
    assert "the existing group stayed bit-identical to a run where nothing was added" in record.judgement


def test_an_optimizer_without_weight_decay_is_judged_on_the_frozen_parameters_all_the_same():
    record = run("torch.optim.LBFGS", "frozen", {"lr": 1.0, "max_iter": 2})

    assert record.status == "ok", record.judgement or record.error_message
    assert record.scenario_numbers["weight_decay"] == "not an option of this optimizer: the group carries it unused"


def test_lbfgs_refuses_a_second_group_at_its_next_step():
    record = run("torch.optim.LBFGS", "unfreeze", {"lr": 1.0, "max_iter": 2})

    assert record.status == "step_error" and "Expected exactly one param_group, but got 2" in record.error_message
    assert len(record.losses) == 4  # the steps before the add ran


# --- the scenarios' own pieces --------------------------------------------------------------------------------


def test_the_frozen_parameters_span_matrices_biases_norms_and_an_embedding():
    model = build_gpt(SMALL.model, seed=0, device="cpu", dtype=torch.float32)
    names = {name for name, p in model.named_parameters() if any(p is q for q in frozen(model))}

    assert names == {
        "wpe.weight",
        "blocks.0.ln_1.weight",
        "blocks.0.ln_1.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.attn.proj.bias",
    }


def test_the_head_never_changes_the_gpts_gradients_and_draws_nothing_from_the_global_generator():
    inputs, targets = synthetic_batch(SMALL.model, 4, 0, "cpu")
    alone = build_gpt(SMALL.model, seed=0, device="cpu", dtype=torch.float32)
    alone.loss(inputs, targets).backward()
    state = torch.get_rng_state()
    model = with_head(build_gpt(SMALL.model, seed=0, device="cpu", dtype=torch.float32), seed=0)
    assert torch.equal(torch.get_rng_state(), state)

    model.head.requires_grad_(True)
    model.loss(inputs, targets).backward()

    for a, b in zip(alone.parameters(), model.gpt.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.head.parameters())


def test_every_scenario_has_a_bug_reports_words():
    assert set(EXPECTED) == set(WHAT_RAN) == set(SCENARIOS)
