"""harness.memory: optimizer state bytes wherever the optimizer keeps them, each storage once."""

from __future__ import annotations

import pytest
import torch

from harness.memory import device_name, state_bytes, state_bytes_per_param, unique_params


def stepped(cls: type, **kwargs: object) -> torch.optim.Optimizer:
    param = torch.nn.Parameter(torch.randn(64, 128))
    param.grad = torch.randn_like(param)
    optimizer = cls([param], **kwargs)
    optimizer.step()
    return optimizer


def test_adamw_keeps_two_float32_moments_per_parameter() -> None:
    assert state_bytes_per_param(stepped(torch.optim.AdamW)) == pytest.approx(8, rel=0.01)
    assert state_bytes_per_param(stepped(torch.optim.SGD, lr=0.1, momentum=0.9)) == pytest.approx(4, rel=0.01)
    assert state_bytes_per_param(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])) == 0.0


def test_state_in_param_groups_and_shared_storages_count_once() -> None:
    param = torch.nn.Parameter(torch.zeros(10))
    optimizer = torch.optim.SGD([param], lr=0.1)
    shared = torch.zeros(10)
    optimizer.state[param] = {
        "m": shared,
        "view": shared[:5],
        "step": 3,
        "pair": (torch.zeros(2, dtype=torch.float64),),
    }
    optimizer.param_groups[0]["state"] = [torch.zeros(4, dtype=torch.uint8), shared]  # GrokAdamW's habit

    assert state_bytes(optimizer) == 40 + 16 + 4


def test_a_parameter_in_two_groups_counts_once() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([{"params": [param]}], lr=0.1)
    optimizer.param_groups.append({**optimizer.param_groups[0]})
    assert unique_params(optimizer) == [param]


def test_eight_bit_adamw_keeps_under_30_percent_of_adamw_state() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    param = torch.nn.Parameter(torch.randn(256, 256))
    param.grad = torch.randn_like(param)
    eight_bit = bnb.optim.AdamW8bit([param])
    eight_bit.step()
    assert state_bytes_per_param(eight_bit) <= 0.3 * state_bytes_per_param(stepped(torch.optim.AdamW))


def test_the_cpu_has_a_name() -> None:
    assert device_name("cpu").strip()
