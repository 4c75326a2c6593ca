"""Tests for harness.bench and harness.roofline, on a tiny GPT so each run_bench takes a fraction of a second."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from harness.bench import (
    bench_param_shapes,
    implementations,
    run_bench,
)
from harness.cells import Cell
from harness.errors import HarnessError
from harness.memory import state_bytes_per_param
from harness.roofline import bytes_moved_per_step, measure_device_bandwidth
from harness.settings import BenchSettings, Settings

TINY = BenchSettings(d_model=32, n_layers=1, vocab_size=64, seq_len=16, warmup=1, repeats=3, parity_steps=2)
SETTINGS = Settings(bench=TINY)
TINY_PARAMS = 64 * 32 + 16 * 32 + (12 * 32 * 32 + 13 * 32) + 2 * 32
TINY_TENSORS = 2 + 12 + 2

REQUIRED_KEYS = {
    "step_ms",
    "spread_ms",
    "speedup",
    "bandwidth_fraction",
    "device_bandwidth_gbs",
    "bytes_per_step",
    "parity",
    "parity_ok",
    "parity_breach",
    "threads",
    "device_name",
    "implementations",
    "unavailable",
    "peak_memory_bytes",
    "state_bytes_per_param",
    "params",
    "repeats",
    "warmup",
}


@dataclass(frozen=True)
class Resolved:
    name: str
    factory: Callable[..., torch.optim.Optimizer]
    cls: type


def resolved(cls: type) -> Resolved:
    return Resolved(name=cls.__name__, factory=cls, cls=cls)


def bench(cls: type, dtype: str = "float32", settings: Settings = SETTINGS, **kwargs: Any) -> dict[str, Any] | None:
    return run_bench(resolved(cls), Cell(cls.__name__, "cpu", dtype, "plain", kwargs), settings)


class BrokenFusedSGD(torch.optim.SGD):
    """An SGD whose fused path is wrong: it nudges every parameter (or poisons one) after the real step."""

    damage = "noise"

    def __init__(self, params, lr: float = 0.01, foreach: bool | None = None, fused: bool | None = None):
        super().__init__(params, lr=lr, foreach=foreach, fused=False)
        self._broken = bool(fused)

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if self._broken:
            first = self.param_groups[0]["params"][0]
            if self.damage == "nan":
                first.view(-1)[0] = math.nan
            else:
                for param in self.param_groups[0]["params"]:
                    param.add_(1e-3)
        return loss


class NanFusedSGD(BrokenFusedSGD):
    damage = "nan"


class LazyFusedSGD(torch.optim.SGD):
    """Like torch's own fused check: the constructor accepts `fused`, the first step refuses it."""

    def __init__(self, params, lr: float = 0.01, foreach: bool | None = None, fused: bool | None = None):
        super().__init__(params, lr=lr, foreach=foreach, fused=False)
        self._fused = bool(fused)

    def step(self, closure=None):
        if self._fused:
            raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
        return super().step(closure)


class FusedOnlySGD(torch.optim.SGD):
    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, fused: bool | None = None):
        super().__init__(params, lr=lr, momentum=momentum, foreach=False, fused=fused)


@pytest.fixture(scope="module")
def adamw() -> dict[str, Any]:
    original = torch.get_num_threads()
    torch.set_num_threads(3)  # differs from the bench's 1, so a missing restore shows
    try:
        result = bench(torch.optim.AdamW)
        assert torch.get_num_threads() == 3, "run_bench must restore the caller's thread count"
    finally:
        torch.set_num_threads(original)
    assert result is not None
    return result


def test_adamw_reports_every_key_as_plain_json(adamw):
    assert set(adamw) >= REQUIRED_KEYS
    assert set(adamw["step_ms"]) == {"fused", "foreach", "forloop"}
    assert adamw["unavailable"] == {}
    assert adamw["threads"] == 1
    assert adamw["params"] == TINY_PARAMS
    assert (adamw["repeats"], adamw["warmup"]) == (3, 1)
    assert adamw["implementations"]["fused"] == {"fused": True, "foreach": False}
    assert adamw["implementations"]["forloop"] == {"fused": False, "foreach": False}
    json.loads(json.dumps(adamw, allow_nan=False))


def test_adamw_timings_and_speedups_are_positive_and_finite(adamw):
    assert set(adamw["speedup"]) == {"fused/foreach", "fused/forloop", "foreach/forloop"}
    for ratio in adamw["speedup"].values():
        assert isinstance(ratio, float) and 0 < ratio < math.inf
    assert adamw["speedup"]["fused/forloop"] == pytest.approx(adamw["step_ms"]["forloop"] / adamw["step_ms"]["fused"])
    for name, median in adamw["step_ms"].items():
        spread = adamw["spread_ms"][name]
        assert 0 < spread["min"] <= spread["p25"] <= median <= spread["p75"] <= spread["max"] < math.inf


def test_adamw_roofline_counts_param_grad_and_two_moments(adamw):
    # read+write param, exp_avg, exp_avg_sq (6 x 4 bytes) and read grad (4 bytes) per element
    assert adamw["bytes_per_step"] == {name: 28 * TINY_PARAMS for name in ("fused", "foreach", "forloop")}
    assert 0 < adamw["device_bandwidth_gbs"] < math.inf
    for fraction in adamw["bandwidth_fraction"].values():
        assert 0 < fraction <= 2.5


def test_adamw_float32_parity_and_memory(adamw):
    assert adamw["parity_ok"] is True and adamw["parity_breach"] == []
    assert adamw["parity"]["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    for name in ("fused", "foreach"):
        assert adamw["parity"][name]["ok"] is True
        assert adamw["parity"][name]["max_abs"] <= 1e-5
    for name, per_param in adamw["state_bytes_per_param"].items():
        # two float32 moments plus one 4-byte step counter per tensor
        assert per_param == pytest.approx(8 + 4 * TINY_TENSORS / TINY_PARAMS), name
    assert adamw["peak_memory_bytes"] == {"fused": None, "foreach": None, "forloop": None}
    assert adamw["peak_memory_method"] is None


@pytest.mark.parametrize(
    ("momentum", "state_per_param", "bytes_per_element"),
    [(0.0, 0.0, 12), (0.9, 4.0, 20)],
    ids=["plain", "momentum"],
)
def test_sgd_state_and_bytes_follow_momentum(momentum, state_per_param, bytes_per_element):
    result = bench(torch.optim.SGD, lr=0.1, momentum=momentum)
    assert result is not None and result["parity_ok"] is True
    assert set(result["step_ms"]) == {"fused", "foreach", "forloop"}
    assert result["implementations"]["fused"]["momentum"] == momentum
    assert list(result["state_bytes_per_param"].values()) == pytest.approx([state_per_param] * 3)
    assert set(result["bytes_per_step"].values()) == {bytes_per_element * TINY_PARAMS}


def test_cell_acceleration_kwargs_are_replaced_by_each_implementation():
    result = bench(torch.optim.Adam, lr=1e-2, fused=True, foreach=True)
    assert result is not None and result["unavailable"] == {}
    assert result["implementations"]["forloop"] == {"lr": 1e-2, "fused": False, "foreach": False}
    assert result["implementations"]["foreach"] == {"lr": 1e-2, "foreach": True, "fused": False}


def test_foreach_only_class_compares_foreach_with_forloop():
    result = bench(torch.optim.NAdam)
    assert result is not None
    assert set(result["step_ms"]) == set(result["implementations"]) == {"foreach", "forloop"}
    assert set(result["speedup"]) == {"foreach/forloop"}
    assert set(result["parity"]) == {"foreach", "tolerance"}
    assert result["parity_ok"] is True


def test_fused_only_class_compares_fused_with_unfused():
    assert implementations(FusedOnlySGD) == {"fused": {"fused": True}, "forloop": {"fused": False}}
    result = bench(FusedOnlySGD, momentum=0.9)
    assert result is not None and result["unavailable"] == {}
    assert set(result["speedup"]) == {"fused/forloop"}
    assert result["parity_ok"] is True and result["state_bytes_per_param"]["fused"] == pytest.approx(4)


def test_single_implementation_gives_none():
    assert implementations(torch.optim.LBFGS) == {}
    assert bench(torch.optim.LBFGS) is None


def test_bitsandbytes_8bit_has_one_implementation():
    bnb = pytest.importorskip("bitsandbytes")
    assert bench(bnb.optim.AdamW8bit) is None


def test_bfloat16_agrees_within_loose_tolerance_or_records_why_not():
    result = bench(torch.optim.AdamW, dtype="bfloat16")
    assert result is not None
    for name in ("fused", "foreach", "forloop"):
        assert (name in result["step_ms"]) != (name in result["unavailable"])
    assert "forloop" in result["step_ms"]
    assert result["parity"]["tolerance"] == {"atol": 5e-2, "rtol": 5e-2}
    assert result["parity_breach"] == []
    # bfloat16 state is half the size of float32 state
    assert result["state_bytes_per_param"]["forloop"] == pytest.approx(4, abs=0.1)
    assert result["bytes_per_step"]["forloop"] == 14 * TINY_PARAMS


@pytest.mark.parametrize("cls", [BrokenFusedSGD, NanFusedSGD], ids=["noise", "nan"])
def test_a_wrong_fused_step_is_flagged_as_a_parity_breach(cls):
    result = bench(cls)
    assert result is not None
    assert result["parity_ok"] is False
    assert result["parity_breach"] == ["fused"]
    assert result["parity"]["fused"]["ok"] is False
    assert result["parity"]["fused"]["max_abs"] >= 1e-3
    assert result["parity"]["foreach"]["ok"] is True
    json.dumps(result)  # inf from a NaN stays a float; Record.to_json turns it into null


def test_a_fused_path_that_fails_at_step_is_recorded_unavailable():
    result = bench(LazyFusedSGD)
    assert result is not None
    assert "requires all the params to be CUDA tensors" in result["unavailable"]["fused"]
    assert result["unavailable"]["fused"].startswith("RuntimeError: ")
    assert set(result["step_ms"]) == {"foreach", "forloop"}
    assert set(result["speedup"]) == {"foreach/forloop"}
    assert set(result["parity"]) == {"foreach", "tolerance"}


def test_eight_bit_state_is_under_a_third_of_adamw_state():
    bnb = pytest.importorskip("bitsandbytes")

    def stepped(cls: type) -> torch.optim.Optimizer:
        generator = torch.Generator().manual_seed(0)
        params = [torch.randn(128, 64, generator=generator).requires_grad_(True) for _ in range(3)]
        for param in params:
            param.grad = torch.randn(128, 64, generator=generator)
        optimizer = cls(params)
        optimizer.step()
        return optimizer

    full = state_bytes_per_param(stepped(torch.optim.AdamW))
    eight_bit = state_bytes_per_param(stepped(bnb.optim.AdamW8bit))
    assert full == pytest.approx(8, abs=0.01)
    assert 0 < eight_bit <= 0.3 * full


def test_state_bytes_per_param_is_zero_before_the_first_step():
    params = [torch.zeros(10, requires_grad=True)]
    assert state_bytes_per_param(torch.optim.AdamW(params)) == 0.0


def test_bench_shapes_follow_the_settings():
    shapes = bench_param_shapes(TINY)
    assert len(shapes) == TINY_TENSORS
    assert sum(math.prod(shape) for shape in shapes) == TINY_PARAMS
    assert shapes[:2] == [(64, 32), (16, 32)]


def test_roofline_helpers():
    params = [torch.zeros(100, requires_grad=True), torch.zeros(3, 4, requires_grad=True)]
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer = torch.optim.Adam(params, foreach=False)
    optimizer.step()
    assert bytes_moved_per_step(optimizer) == 28 * 112
    params[1].grad = None
    assert bytes_moved_per_step(optimizer) == 28 * 100
    bandwidth = measure_device_bandwidth(torch.device("cpu"), mib=4, repeats=3)
    assert 0 < bandwidth < math.inf


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "float33", "unknown dtype 'float33': did you mean 'float32'?"),
        ("dtype", "float64", "No parity tolerance for dtype 'float64'"),
        ("device", "gpu", "'gpu' is not a torch device"),
        pytest.param(
            "device",
            "cuda",
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the cell would run"),
        ),
    ],
)
def test_bad_cells_raise_sentences(field, value, message):
    cell = _with(Cell("AdamW", "cpu", "float32", "plain", {}), field, value)
    with pytest.raises(HarnessError, match=message):
        run_bench(resolved(torch.optim.AdamW), cell, SETTINGS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_bench_times_with_events_and_measures_peak_memory(dtype):
    result = run_bench(resolved(torch.optim.AdamW), Cell("AdamW", "cuda", dtype, "plain", {}), SETTINGS)
    assert result is not None
    assert result["timer"] == "cuda_event" and result["threads"] is None
    assert result["unavailable"] == {}
    assert result["parity_ok"] is True
    assert result["peak_memory_method"] == "torch.cuda.max_memory_allocated"
    element = torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    for name in ("fused", "foreach", "forloop"):
        # at least the parameters, their grads and the two moments stay allocated through the step
        assert result["peak_memory_bytes"][name] >= 4 * element * TINY_PARAMS
        assert result["step_extra_memory_bytes"][name] >= 0
        assert 0 < result["step_ms"][name] < math.inf
        assert 0 < result["bandwidth_fraction"][name] <= 2.5
    assert all(0 < ratio < math.inf for ratio in result["speedup"].values())
    json.loads(json.dumps(result, allow_nan=False))


def _with(cell: Cell, field: str, value: str) -> Cell:
    data = cell.to_dict()
    data[field] = value
    return Cell.from_dict(data)
