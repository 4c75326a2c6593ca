"""The bug this project exists for: a framework passes `fused=True` to whatever optimizer the user named.

On CPU/float32, `direct` (and a LitGPT-like helper) break bitsandbytes' AdamW8bit and GrokAdamW at
construction, while torch's AdamW is fine; the `signature` and `safe` builders make all three train.
"""

from __future__ import annotations

import pytest

from harness.cells import Cell
from harness.execute import run_cell
from harness.settings import Settings

SETTINGS = Settings(bench={"enabled": False}, train={"steps": 10})
BROKEN_BY_FUSED = ["grokadamw.GrokAdamW", "bitsandbytes.optim.AdamW8bit"]
LITGPT_LIKE = "tests.frameworks.litgpt_like:instantiate_optimizer"


def run(optimizer: str, builder: str, kwargs: dict) -> tuple[str, str | None, list[str]]:
    cell = Cell(optimizer, "cpu", "float32", "fused" if kwargs else "plain", {"lr": 3e-3, **kwargs}, builder)
    record = run_cell(cell, SETTINGS)
    return record.status, record.reason, record.dropped_kwargs


@pytest.mark.parametrize("optimizer", BROKEN_BY_FUSED)
@pytest.mark.parametrize("builder", ["direct", LITGPT_LIKE])
def test_fused_breaks_optimizers_that_do_not_take_it(optimizer, builder):
    assert run(optimizer, builder, {"fused": True})[:2] == ("construct_error", "unexpected_kwarg")


def test_the_litgpt_like_helper_breaks_them_even_without_being_asked():
    assert run("grokadamw.GrokAdamW", LITGPT_LIKE, {})[:2] == ("construct_error", "unexpected_kwarg")


@pytest.mark.parametrize("builder", ["direct", LITGPT_LIKE, "signature", "safe"])
def test_torch_adamw_takes_fused_under_every_builder(builder):
    assert run("torch.optim.AdamW", builder, {"fused": True}) == ("ok", None, [])  # nothing dropped: it takes fused


@pytest.mark.parametrize("optimizer", BROKEN_BY_FUSED)
@pytest.mark.parametrize("builder", ["signature", "safe"])
def test_the_fixed_builders_drop_fused_and_train(optimizer, builder):
    assert run(optimizer, builder, {"fused": True}) == ("ok", None, ["fused"])
