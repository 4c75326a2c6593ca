"""The small GPT: its size, determinism and that the synthetic batch is learnable in a few steps."""

from __future__ import annotations

import re

import pytest
import torch

from harness.gpt import build_gpt, synthetic_batch
from harness.settings import ModelSettings

MODEL = ModelSettings()


def test_default_gpt_has_a_few_hundred_thousand_parameters():
    gpt = build_gpt(MODEL, seed=0, device="cpu", dtype=torch.float32)
    count = sum(p.numel() for p in gpt.parameters())
    assert 100_000 < count < 1_000_000
    # the head is tied: no separate (vocab x d_model) output matrix
    assert all(p.shape != (MODEL.vocab_size, MODEL.d_model) or p is gpt.wte.weight for p in gpt.parameters())


def test_logits_have_one_row_per_position_and_vocabulary_columns():
    gpt = build_gpt(MODEL, seed=0, device="cpu", dtype=torch.float32)
    inputs, _ = synthetic_batch(MODEL, 3, seed=0, device="cpu")
    assert gpt(inputs).shape == (3, MODEL.seq_len, MODEL.vocab_size)


def test_same_seed_same_weights_other_seed_other_weights():
    a = build_gpt(MODEL, seed=1, device="cpu", dtype=torch.float32)
    b = build_gpt(MODEL, seed=1, device="cpu", dtype=torch.float32)
    c = build_gpt(MODEL, seed=2, device="cpu", dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=False))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=False))


def test_building_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_gpt(MODEL, seed=7, device="cpu", dtype=torch.float32)
    assert torch.equal(torch.rand(3), expected)


def test_attention_is_causal():
    gpt = build_gpt(MODEL, seed=0, device="cpu", dtype=torch.float32)
    inputs, _ = synthetic_batch(MODEL, 1, seed=0, device="cpu")
    changed = inputs.clone()
    changed[0, -1] = (changed[0, -1] + 1) % MODEL.vocab_size
    with torch.no_grad():
        before, after = gpt(inputs), gpt(changed)
    assert torch.allclose(before[0, :-1], after[0, :-1])
    assert not torch.allclose(before[0, -1], after[0, -1])


def test_batch_is_deterministic_and_targets_are_the_next_tokens():
    inputs, targets = synthetic_batch(MODEL, 4, seed=5, device="cpu")
    again, _ = synthetic_batch(MODEL, 4, seed=5, device="cpu")
    other, _ = synthetic_batch(MODEL, 4, seed=6, device="cpu")
    assert inputs.shape == targets.shape == (4, MODEL.seq_len)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert int(inputs.max()) < MODEL.vocab_size and int(inputs.min()) >= 0


def test_next_token_is_a_function_of_the_token():
    inputs, targets = synthetic_batch(MODEL, 8, seed=0, device="cpu")
    rule: dict[int, int] = {}
    for token, following in zip(inputs.flatten().tolist(), targets.flatten().tolist(), strict=False):
        assert rule.setdefault(token, following) == following


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw_lowers_the_loss_by_half_in_25_steps(dtype):
    torch.set_num_threads(1)
    gpt = build_gpt(MODEL, seed=0, device="cpu", dtype=dtype)
    inputs, targets = synthetic_batch(MODEL, 4, seed=0, device="cpu")
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    first = gpt.loss(inputs, targets).item()
    for _ in range(25):
        optimizer.zero_grad()
        gpt.loss(inputs, targets).backward()
        optimizer.step()
    last = gpt.loss(inputs, targets).item()
    assert first == pytest.approx(torch.log(torch.tensor(float(MODEL.vocab_size))).item(), rel=0.05)
    assert last < first / 2


def test_width_not_divisible_by_heads_is_refused_with_a_sentence():
    # Refused where the settings are read, so a matrix.yaml with this model fails before any cell runs.
    with pytest.raises(ValueError, match=re.escape("d_model 30 is not a multiple of n_heads 4")) as refused:
        ModelSettings(d_model=30, n_heads=4)
    assert "use e.g. d_model 28" in str(refused.value)
