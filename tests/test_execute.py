"""One cell in-process: statuses from real and deliberately broken optimizers, judging, measuring, classifying."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch
from torch.optim import optimizer as torch_optimizer

from harness.cells import REASONS, Cell, Record
from harness.classify import classify_error
from harness.errors import HarnessError
from harness.execute import (
    device_absence,
    environment,
    judge_loss,
    parse_dtype,
    run_cell,
)
from harness.measurements import BenchResult
from harness.resolve import MissingDependency, resolve_optimizer
from harness.settings import Settings

try:  # optional, so the CUDA tests below can run on a GPU machine that lacks them
    import bitsandbytes
except ImportError:
    bitsandbytes = None
try:
    import grokadamw
except ImportError:
    grokadamw = None

SETTINGS = Settings(bench={"enabled": False})
needs_bnb = pytest.mark.skipif(bitsandbytes is None, reason="bitsandbytes is not installed")
needs_grok = pytest.mark.skipif(grokadamw is None, reason="grokadamw is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FAULTS = "tests.faults.optimizers"


def run(
    optimizer: str,
    kwargs: dict | None = None,
    *,
    builder: str = "direct",
    dtype: str = "float32",
    device: str = "cpu",
    steps: int | None = None,
) -> Record:
    kwargs = kwargs or {}
    variant = "-".join(f"{k}={v}" for k, v in sorted(kwargs.items())) or "plain"
    settings = SETTINGS if steps is None else Settings(bench={"enabled": False}, train={"steps": steps})
    return run_cell(Cell(optimizer, device, dtype, variant, kwargs, builder), settings)


# --- statuses ---------------------------------------------------------------------------------------


def test_adamw_learns_and_the_record_says_so():
    record = run("torch.optim.AdamW", {"lr": 3e-3})
    assert record.status == "ok", record.error_message
    assert record.reason is None and record.error_type is None
    assert len(record.losses) == SETTINGS.train.steps
    assert record.initial_loss == record.losses[0]
    assert record.final_loss < record.losses[-1] < record.initial_loss
    assert record.judgement.startswith(f"loss fell {record.initial_loss:.4g} → {record.final_loss:.4g} (-")
    assert record.judgement.endswith("more than the 5% required")
    assert record.num_params > 100_000
    # AdamW keeps two float32 moments per parameter, plus a step counter per tensor
    assert 8 <= record.state_bytes_per_param < 8.1
    assert record.state_bytes == pytest.approx(record.state_bytes_per_param * record.num_params)
    assert 0 < record.construct_s < record.duration_s and 0 < record.steps_s < record.duration_s
    assert record.peak_memory_bytes is None and record.bench is None
    assert record.id == "torch.optim.AdamW-cpu-float32-lr=0.003-direct"


def test_zero_learning_rate_is_no_learning():
    record = run("torch.optim.AdamW", {"lr": 0.0})
    assert record.status == "no_learning"
    assert record.final_loss == pytest.approx(record.initial_loss)
    assert "not the 5% drop required" in record.judgement


def test_an_optimizer_that_does_nothing_is_no_learning():
    record = run(f"{FAULTS}.DoesNothing")
    assert record.status == "no_learning" and record.reason is None
    assert len(set(record.losses)) == 1


def test_an_optimizer_that_writes_nan_is_nonfinite():
    record = run(f"{FAULTS}.NaNWriter")
    assert record.status == "nonfinite"
    assert math.isnan(record.final_loss)
    assert "loss became nan at evaluation 2" in record.judgement
    assert len(record.losses) == 2  # training stops at the first non-finite loss
    assert Record.from_dict(__import__("json").loads(record.to_json())).final_loss is None  # NaN stored as null


def test_an_exception_in_init_is_a_construct_error():
    record = run(f"{FAULTS}.RaiseInInit")
    assert (record.status, record.reason, record.error_type) == ("construct_error", "other", "RuntimeError")
    assert record.error_message == "RaiseInInit refuses to be built"
    assert "RaiseInInit refuses to be built" in record.traceback and "Traceback" in record.traceback
    assert record.losses == [] and record.construct_s is None


def test_an_exception_in_step_is_a_step_error():
    record = run(f"{FAULTS}.RaiseInStep")
    assert (record.status, record.error_type) == ("step_error", "RuntimeError")
    assert record.error_message == "RaiseInStep refuses to step"
    # the loop backpropagated before `step()` (no closure: the optimizer needs none), so the first loss is known
    assert record.construct_s is not None and len(record.losses) == 1


def test_system_exit_in_step_is_recorded_not_obeyed():
    record = run(f"{FAULTS}.SysExitInStep")
    assert (record.status, record.reason, record.error_type) == ("step_error", "other", "SystemExit")


@needs_grok
def test_unexpected_kwarg_is_classified():
    record = run("grokadamw.GrokAdamW", {"fused": True})
    assert (record.status, record.reason, record.error_type) == ("construct_error", "unexpected_kwarg", "TypeError")
    assert "unexpected keyword argument 'fused'" in record.error_message


def test_lbfgs_steps_through_its_closure_and_records_one_loss_per_step():
    record = run("torch.optim.LBFGS", {"max_iter": 4}, steps=5)
    assert record.status == "ok", record.error_message
    assert len(record.losses) == 5


class NeedsGradientGraph(torch.optim.SGD):
    """Says it is second order and fails unless the gradients carry a graph, as Adahessian needs."""

    is_second_order = True

    def step(self, closure=None):
        loss = closure() if closure is not None else None  # the loop passes none: it backpropagated already
        if any(p.grad.grad_fn is None for g in self.param_groups for p in g["params"]):
            raise RuntimeError("gradients carry no graph")
        with torch.no_grad():
            for g in self.param_groups:
                for p in g["params"]:
                    p.add_(p.grad, alpha=-g["lr"])
        return loss


def test_a_second_order_optimizer_gets_a_graph_of_the_gradients():
    record = run(f"{__name__}.NeedsGradientGraph", {"lr": 0.1})
    assert record.status == "ok", record.error_message


def test_adahessian_steps_through_attention_twice_differentiated():
    # the fused CPU attention kernel has no double backward: the harness uses the math kernel for it
    record = run("timm:adahessian", steps=3)
    assert record.status in ("ok", "no_learning"), record.error_message
    assert len(record.losses) == 3 and all(math.isfinite(x) for x in record.losses)


def test_bfloat16_cell_trains_in_bfloat16():
    record = run("torch.optim.AdamW", {"lr": 3e-3}, dtype="bfloat16")
    assert record.status == "ok"
    # bfloat16 moments: half of float32's 8 bytes per parameter
    assert 4 <= record.state_bytes_per_param < 4.1


@needs_grok
def test_dropped_and_absorbed_kwargs_come_from_the_builder():
    record = run("grokadamw.GrokAdamW", {"fused": True, "lr": 3e-3}, builder="safe")
    assert record.status == "ok" and record.dropped_kwargs == ["fused"] and record.absorbed_kwargs == []


def test_a_typo_under_the_safe_builder_is_an_unexpected_kwarg_error():
    record = run("torch.optim.AdamW", {"lrr": 3e-3}, builder="safe")
    assert (record.status, record.reason) == ("construct_error", "unexpected_kwarg")
    assert "did you mean 'lr'?" in record.error_message


def test_a_missing_package_is_skipped_with_the_pip_name():
    record = run("notinstalled_pkg_xyz.optim.Fast")
    assert (record.status, record.reason) == ("skipped", "missing_dependency")
    assert record.error_message == "notinstalled_pkg_xyz is not installed: pip install notinstalled_pkg_xyz"


def test_a_framework_builder_whose_package_is_missing_is_skipped():
    record = run("torch.optim.AdamW", builder="notinstalled_fw_xyz.utils:make")
    assert (record.status, record.reason) == ("skipped", "missing_dependency")


def test_an_unknown_optimizer_is_recorded_with_its_sentence():
    record = run("torch.optim.AdamWW")
    assert (record.status, record.reason, record.error_type) == ("construct_error", "other", "UnknownOptimizerError")
    assert "did you mean 'AdamW'" in record.error_message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_an_absent_device_is_skipped_not_failed():
    record = run("torch.optim.AdamW", device="cuda")
    assert (record.status, record.reason) == ("skipped", None)
    assert record.error_message == "device 'cuda' is not present on this machine."


def test_an_unknown_device_is_skipped_as_unsupported():
    record = run("torch.optim.AdamW", device="warpdrive")
    assert (record.status, record.reason) == ("skipped", "unsupported_device")
    assert record.error_message.startswith("torch does not know device 'warpdrive'")


@needs_bnb
@needs_grok
def test_every_record_names_its_environment():
    env = run("bitsandbytes.optim.AdamW8bit", {"lr": 3e-3}).env
    assert env.torch == torch.__version__ and env.python is not None and env.python.count(".") == 2
    assert env.optimizer_package == "bitsandbytes" and env.optimizer_package_version == bitsandbytes.__version__
    assert env.packages is not None and env.packages["grokadamw"] is not None and env.device_name


def test_the_same_cell_gives_the_same_losses():
    first, second = run("torch.optim.SGD", {"lr": 0.05}), run("torch.optim.SGD", {"lr": 0.05})
    assert first.losses == second.losses and first.final_loss == second.final_loss


def test_a_typical_cell_is_fast():
    record = run("torch.optim.AdamW", {"lr": 3e-3})
    assert record.duration_s < 1.5  # ~0.15 s alone on one thread; generous for a busy 2-core machine


# --- judge, measure, match -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("losses", "status"),
    [
        ([4.0, 3.0, 2.0], "ok"),
        ([4.0, 3.9, 3.85], "no_learning"),  # -3.75%: under the 5% required
        ([4.0, 4.1, 4.5], "no_learning"),
        ([4.0, float("nan"), 1.0], "nonfinite"),
        ([4.0, 2.0, float("inf")], "nonfinite"),
    ],
)
def test_judge_loss(losses, status):
    assert judge_loss(losses, 0.05)[0] == status


def test_judge_loss_sentence_says_by_how_much():
    assert judge_loss([4.0, 2.0], 0.05) == ("ok", "loss fell 4 → 2 (-50%), more than the 5% required")
    assert judge_loss([4.0, 5.0], 0.05) == ("no_learning", "loss rose 4 → 5 (+25%), not the 5% drop required")


def test_judge_loss_flags_nonfinite_parameters_even_with_a_finite_loss():
    assert judge_loss([4.0, 2.0], 0.05, params_finite=False)[0] == "nonfinite"


@needs_grok
def test_state_kept_in_the_param_group_is_counted_too():
    # GrokAdamW keeps three float32 tensors per parameter in group["state"], none in optimizer.state
    record = run("grokadamw.GrokAdamW", {"lr": 3e-3}, steps=2)
    assert record.state_bytes_per_param == pytest.approx(12, rel=0.01)


def test_bench_filters_match_partially_on_singular_axis_names():
    cell = Cell("torch.optim.AdamW", "cuda", "bfloat16", "plain", {}, "direct")
    assert Settings(bench={"cells": [{"builder": "direct", "kwargs": "plain"}]}).bench.selects(cell)
    assert Settings(bench={"cells": [{"dtype": "float32"}, {"optimizer": "torch.optim.*"}]}).bench.selects(cell)
    assert not Settings(bench={"cells": [{"builder": "direct", "kwargs": "fused"}]}).bench.selects(cell)
    assert not Settings(bench={"cells": [{"optimizer": "timm:*"}]}).bench.selects(cell)
    assert not Settings(bench={"cells": []}).bench.selects(cell)
    assert not Settings(bench={"enabled": False}).bench.selects(cell)


def test_bench_runs_for_every_cell_whose_steps_ran_that_the_filters_choose():
    tiny = {"d_model": 16, "n_layers": 1, "vocab_size": 64, "seq_len": 8, "warmup": 0, "repeats": 3, "parity_steps": 1}
    settings = Settings(bench={"enabled": True, "cells": [{"kwargs": "plain"}], **tiny}, train={"steps": 5})
    chosen = run_cell(Cell("torch.optim.AdamW", "cpu", "float32", "plain", {"lr": 3e-3}, "direct"), settings)
    other = run_cell(Cell("torch.optim.AdamW", "cpu", "float32", "fast", {"lr": 3e-3}, "direct"), settings)
    learned_nothing = run_cell(Cell("torch.optim.AdamW", "cpu", "float32", "plain", {"lr": 0.0}, "direct"), settings)
    failed = run_cell(Cell("torch.optim.AdamW", "cpu", "float32", "plain", {"lr": -1.0}, "direct"), settings)
    assert chosen.status == "ok" and isinstance(chosen.bench, BenchResult) and chosen.bench.implementations
    assert other.bench is None
    # step speed does not depend on the loss verdict: a cell that learned nothing is timed too
    assert (
        learned_nothing.status == "no_learning"
        and learned_nothing.bench is not None
        and learned_nothing.bench.step_ms("forloop")
    )
    assert failed.status == "construct_error" and failed.bench is None


def test_parse_dtype_refuses_non_float_names():
    assert parse_dtype("bfloat16") is torch.bfloat16
    expected = "unknown dtype 'int8'. Available: float32, float16, bfloat16, float64."
    with pytest.raises(HarnessError, match=re.escape(expected)):
        parse_dtype("int8")


def test_device_absence():
    assert device_absence("cpu") is None
    assert device_absence("not-a-device")[0] == "unsupported_device"


def test_environment_without_an_optimizer():
    env = environment("cpu", None)
    assert env.optimizer_package is None and env.torch == torch.__version__


# --- classification against the messages real optimizers and kernels raise ---------------------------


def _raised(action) -> BaseException:
    try:
        action()
    except BaseException as exc:
        return exc
    raise AssertionError("expected the action to raise")


def _param(device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(4, 4, device=device, dtype=dtype))
    p.grad = torch.zeros_like(p)
    return p


def _sparse_adam_step():
    torch.optim.SparseAdam([_param()]).step()


def _capturable_step_on_cpu():
    torch.optim.Adam([_param()], capturable=True).step()


def _fused_step_on_meta():
    torch.optim.Adam([_param("meta")], fused=True).step()


def _case(label: str, where: str, reason: str, action, needs=()):
    device, dtype = where.split("/")
    return pytest.param(action, device, dtype, reason, id=label, marks=needs)


def _int_param_fused_check():
    torch_optimizer._device_dtype_check_for_fused(torch.zeros(2, dtype=torch.int64))


CPU = "cpu/float32"
REAL_ERRORS = [
    _case("bnb fused", CPU, "unexpected_kwarg", lambda: bitsandbytes.optim.AdamW8bit([_param()], fused=1), needs_bnb),
    _case("grok fused", CPU, "unexpected_kwarg", lambda: grokadamw.GrokAdamW([_param()], fused=True), needs_grok),
    _case("rmsprop fused", "cuda/bfloat16", "unexpected_kwarg", lambda: torch.optim.RMSprop([_param()], fused=True)),
    _case("fused+foreach", CPU, "conflicting_kwargs", lambda: torch.optim.Adam([_param()], fused=True, foreach=True)),
    _case(
        "fused+differentiable",
        CPU,
        "conflicting_kwargs",
        lambda: torch.optim.Adam([_param()], fused=True, differentiable=True),
    ),
    _case("capturable on cpu", CPU, "unsupported_device", _capturable_step_on_cpu),
    _case("fused on meta", "meta/float32", "unsupported_device", _fused_step_on_meta),
    _case("fused on int", "cpu/int64", "unsupported_dtype", _int_param_fused_check),
    _case("svd bf16", "cpu/bfloat16", "unsupported_dtype", lambda: torch.linalg.svd(torch.ones(3, 3).bfloat16())),
    _case("qr half", "cpu/float16", "unsupported_dtype", lambda: torch.linalg.qr(torch.ones(3, 3).half())),
    _case("inv bf16", "cpu/bfloat16", "unsupported_dtype", lambda: torch.linalg.inv(torch.ones(3, 3).bfloat16())),
    _case("negative lr", CPU, "invalid_value", lambda: torch.optim.Adam([_param()], lr=-1)),
    _case("bad beta", CPU, "invalid_value", lambda: grokadamw.GrokAdamW([_param()], betas=(1.5, 0.9)), needs_grok),
    _case("nesterov alone", CPU, "invalid_value", lambda: torch.optim.SGD([_param()], lr=0.1, nesterov=True)),
    _case("lr as text", CPU, "invalid_value", lambda: torch.optim.Adam([_param()], lr="fast")),
    _case("bnb lr missing", CPU, "invalid_value", lambda: bitsandbytes.optim.SGD([_param()]), needs_bnb),
    _case("timm lr missing", CPU, "invalid_value", lambda: resolve_optimizer("timm:sgdp").factory([_param()])),
    _case("missing package", CPU, "missing_dependency", lambda: resolve_optimizer("notinstalled_pkg_xyz.A")),
    _case("import error", CPU, "missing_dependency", lambda: __import__("notinstalled_pkg_xyz")),
    _case("sparse adam dense", CPU, "other", _sparse_adam_step),
    _case("muon 1-d", CPU, "other", lambda: torch.optim.Muon([torch.nn.Parameter(torch.zeros(4))])),
    _case("system exit", CPU, "other", lambda: (_ for _ in ()).throw(SystemExit(1))),
]


@pytest.mark.parametrize(("action", "device", "dtype", "reason"), REAL_ERRORS)
def test_classify_real_errors(action, device, dtype, reason):
    exc = _raised(action)
    assert classify_error(exc, device=device, dtype=dtype) == reason, f"{type(exc).__name__}: {exc}"


def test_a_dtype_message_blames_only_the_cells_dtype():
    # an op missing for bfloat16 is not a float32 cell's dtype problem
    exc = _raised(lambda: torch.linalg.svd(torch.ones(3, 3, dtype=torch.bfloat16)))
    assert classify_error(exc, device="cpu", dtype="float32") == "other"


def test_every_reason_the_table_gives_is_a_known_reason():
    from harness.classify import RULES

    assert {rule.reason for rule in RULES} <= set(REASONS)
    # every reason but two comes from the table: `other` is its fallback, and the resume scenario gives
    # `weights_only_load` itself
    assert {rule.reason for rule in RULES} | {"other", "weights_only_load"} == set(REASONS)


def test_missing_dependency_is_an_import_error_and_a_harness_error():
    exc = _raised(lambda: resolve_optimizer("notinstalled_pkg_xyz.A"))
    assert isinstance(exc, MissingDependency) and isinstance(exc, ImportError)


# --- on a CUDA device (skipped where there is none) -------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kwargs", [{"fused": True}, {"foreach": True}, {"capturable": True}], ids=str)
def test_cuda_cell_trains_and_measures_peak_memory(dtype, kwargs):
    record = run("torch.optim.AdamW", {"lr": 3e-3, **kwargs}, dtype=dtype, device="cuda")
    assert record.status == "ok", record.error_message
    assert record.peak_memory_bytes > record.state_bytes > 0
    assert record.env.device_name == torch.cuda.get_device_name()


@needs_cuda
def test_safe_builder_keeps_every_hint_cuda_can_run():
    for hint in ("fused", "foreach", "capturable"):
        record = run("torch.optim.Adam", {"lr": 3e-3, hint: True}, builder="safe", device="cuda")
        assert (record.status, record.dropped_kwargs) == ("ok", []), (hint, record.error_message)


@needs_cuda
def test_safe_builder_on_cuda_drops_only_what_fails_there():
    # whether this torch has fused Adagrad on CUDA (older ones had it on CPU only), `safe` must end `ok`
    direct = run("torch.optim.Adagrad", {"lr": 0.05, "fused": True}, device="cuda")
    safe = run("torch.optim.Adagrad", {"lr": 0.05, "fused": True}, builder="safe", device="cuda")
    assert safe.status == "ok", safe.error_message
    assert safe.dropped_kwargs == ([] if direct.status == "ok" else ["fused"])
    if direct.status != "ok":
        assert (direct.status, direct.reason) == ("step_error", "unsupported_device")


@needs_cuda
@needs_bnb
def test_eight_bit_state_is_a_quarter_of_adamw_on_cuda():
    eight_bit = run("bitsandbytes.optim.AdamW8bit", {"lr": 3e-3}, device="cuda")
    adamw = run("torch.optim.AdamW", {"lr": 3e-3}, device="cuda")
    assert eight_bit.status == adamw.status == "ok", eight_bit.error_message
    assert eight_bit.state_bytes_per_param < adamw.state_bytes_per_param / 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks")
def test_cuda_in_a_child_forked_after_a_cuda_probe_on_a_cpu_only_machine_is_an_unsupported_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    import os
    import subprocess

    # bitsandbytes probes CUDA while it imports; a forked child then cannot try CUDA at all
    code = (
        "import os, torch, bitsandbytes\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        torch.zeros(1).cuda()\n"
        "    except RuntimeError as exc:\n"
        "        print(exc)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    pytest.importorskip("bitsandbytes")
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)).stdout
    if "Cannot re-initialize CUDA" not in said:
        pytest.skip(f"this torch/bitsandbytes says something else in the child: {said.strip()[:80]}")
    assert classify_error(RuntimeError(said.strip()), device="cpu", dtype="float32") == "unsupported_device"
