"""Builders: direct, signature, safe (`build_optimizer`) and a framework's own helper."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import bitsandbytes
import grokadamw
import pytest
import timm.optim
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.optim import optimizer as torch_optimizer

import harness
from harness.build import (
    Built,
    DroppedKwargsWarning,
    KwargTypeError,
    UnexpectedKwargError,
    build,
    build_optimizer,
    load_builder,
)
from harness.classify import classify_error
from harness.errors import HarnessError
from harness.resolve import MissingDependency, ResolvedOptimizer, resolve_optimizer
from harness.vocabulary import ACCELERATION_HINTS

CPU_HAS_FUSED = "cpu" in torch_optimizer._get_fused_kernels_supported_devices()


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))]


def resolved(cls: Callable[..., Any], name: str = "test") -> ResolvedOptimizer:
    return ResolvedOptimizer(name=name, factory=cls, cls=cls, package="test", version=None)


class TakesAnything(torch.optim.Optimizer):
    """Takes unknown kwargs through **kwargs and keeps them in its defaults (many wrappers do)."""

    def __init__(self, params, lr: float = 1e-3, **kwargs):
        super().__init__(params, {"lr": lr, **kwargs})

    def step(self, closure=None):
        return None


class LazyFused(torch.optim.Optimizer):
    """Names `fused` and refuses it only at its first step, as torch's Adagrad did on CUDA before fused CUDA Adagrad."""

    def __init__(self, params, lr: float = 1e-3, fused: bool | None = None):
        super().__init__(params, {"lr": lr, "fused": fused})

    def step(self, closure=None):
        for group in self.param_groups:
            if group["fused"]:
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of supported devices: "
                    "['cuda'] but torch.float32 and cpu"
                )


class NoBFloat16(torch.optim.Optimizer):
    """Names `fused`, and fails on bfloat16 whatever `fused` says, as a kernel missing for that dtype would."""

    def __init__(self, params, lr: float = 1e-3, fused: bool | None = None):
        super().__init__(params, {"lr": lr, "fused": fused})

    def step(self, closure=None):
        if any(p.dtype == torch.bfloat16 for g in self.param_groups for p in g["params"]):
            raise NotImplementedError("\"lerp_cpu\" not implemented for 'BFloat16'")


# --- direct and signature -------------------------------------------------------------------------


def test_direct_passes_every_kwarg_and_so_fails_on_fused():
    with pytest.raises(TypeError, match="unexpected keyword argument 'fused'"):
        build("direct", resolved(grokadamw.GrokAdamW), params(), {"fused": True}, device="cpu")


def test_direct_flags_kwargs_that_only_var_kwargs_take():
    built = build("direct", resolved(TakesAnything), params(), {"lr": 0.1, "fused": True}, device="cpu")
    assert built.absorbed_kwargs == ["fused"] and built.dropped_kwargs == []


def test_signature_drops_what_the_signature_lacks_typos_included():
    built = build(
        "signature", resolved(bitsandbytes.optim.AdamW8bit), params(), {"fused": True, "lrr": 0.5}, device="cpu"
    )
    assert built.dropped_kwargs == ["fused", "lrr"]  # the typo goes silently: what the safe builder fixes
    assert built.optimizer.defaults["lr"] == 1e-3


def test_signature_keeps_everything_for_a_var_kwargs_factory():
    built = build("signature", resolved(TakesAnything), params(), {"lrr": 0.5}, device="cpu")
    assert built.dropped_kwargs == [] and built.absorbed_kwargs == ["lrr"]
    assert built.optimizer.defaults["lrr"] == 0.5


def test_signature_sees_through_a_partial_with_bound_defaults():
    sgdp = resolve_optimizer("timm:sgdp")
    built = build("signature", sgdp, params(), {"lr": 0.1, "momentum": 0.9, "fused": True}, device="cpu")
    assert built.dropped_kwargs == ["fused"]
    assert built.optimizer.defaults["nesterov"] is True


# --- safe ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [grokadamw.GrokAdamW, bitsandbytes.optim.AdamW8bit, torch.optim.RMSprop])
def test_safe_drops_hints_the_class_cannot_take_and_keeps_the_rest(cls):
    built = build("safe", resolved(cls), params(), {"lr": 0.05, "fused": True, "foreach": False}, device="cpu")
    takes_foreach = cls is torch.optim.RMSprop
    assert built.dropped_kwargs == (["fused"] if takes_foreach else ["fused", "foreach"])
    assert built.optimizer.defaults["lr"] == 0.05


@pytest.mark.skipif(not CPU_HAS_FUSED, reason="this torch has no fused CPU kernels")
def test_safe_keeps_fused_where_the_device_has_the_kernel():
    built = build("safe", resolved(torch.optim.AdamW), params(), {"fused": True}, device="cpu")
    assert built.dropped_kwargs == [] and built.optimizer.defaults["fused"] is True


def test_safe_drops_capturable_on_a_device_without_graphs_and_the_step_then_works():
    ps = params()
    with pytest.raises(AssertionError, match="capturable=True"):
        direct = build("direct", resolved(torch.optim.AdamW), ps, {"capturable": True}, device="cpu").optimizer
        ps[0].grad = torch.ones_like(ps[0])
        direct.step()
    built = build("safe", resolved(torch.optim.AdamW), ps, {"capturable": True}, device="cpu")
    assert built.dropped_kwargs == ["capturable"]
    built.optimizer.step()


def test_safe_asks_the_class_about_a_hint_it_only_checks_at_step():
    ps = params()
    for p in ps:
        p.grad = torch.ones_like(p)
    direct = build("direct", resolved(LazyFused), ps, {"fused": True}, device="cpu").optimizer
    with pytest.raises(RuntimeError, match="supported devices"):
        direct.step()
    built = build("safe", resolved(LazyFused), ps, {"fused": True}, device="cpu")
    assert built.dropped_kwargs == ["fused"]
    built.optimizer.step()


def test_safe_keeps_a_hint_that_is_not_what_fails():
    bf16 = [torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16))]
    built = build("safe", resolved(NoBFloat16), bf16, {"fused": True}, device="cpu")
    assert built.dropped_kwargs == [] and built.optimizer.defaults["fused"] is True


def test_safe_drops_fused_for_a_device_torch_lists_no_kernel_for():
    meta = [torch.nn.Parameter(torch.empty(4, 4, device="meta"))]
    built = build("safe", resolved(torch.optim.AdamW), meta, {"fused": True, "lr": 0.1}, device="meta")
    assert built.dropped_kwargs == ["fused"]


def test_safe_keeps_what_var_kwargs_takes_and_flags_it():
    built = build("safe", resolved(TakesAnything), params(), {"fused": True, "lrr": 0.5}, device="cpu")
    assert built.dropped_kwargs == [] and built.absorbed_kwargs == ["fused", "lrr"]
    assert built.optimizer.defaults["lrr"] == 0.5


def test_safe_raises_on_a_typo_naming_the_close_kwarg():
    with pytest.raises(UnexpectedKwargError) as caught:
        build("safe", resolved(torch.optim.AdamW), params(), {"lrr": 0.1}, device="cpu")
    assert str(caught.value).startswith("unknown keyword argument 'lrr' for AdamW: did you mean 'lr'? Available: lr,")
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, HarnessError)
    assert classify_error(caught.value, device="cpu", dtype="float32") == "unexpected_kwarg"


def test_safe_lists_what_the_class_takes_when_nothing_is_close():
    with pytest.raises(UnexpectedKwargError, match=r"'zzz' for GrokAdamW\. Available: lr, betas, eps"):
        build("safe", resolved(grokadamw.GrokAdamW), params(), {"zzz": 1}, device="cpu")


def test_safe_refuses_a_number_written_as_a_string():
    with pytest.raises(KwargTypeError, match=r"lr='1e-3' for AdamW is a string, but its default 0.001 is a float"):
        build("safe", resolved(torch.optim.AdamW), params(), {"lr": "1e-3"}, device="cpu")


def test_safe_keeps_torchs_own_refusal_of_conflicting_hints():
    if not CPU_HAS_FUSED:
        pytest.skip("this torch has no fused CPU kernels, so fused is dropped and nothing conflicts")
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        build("safe", resolved(torch.optim.AdamW), params(), {"fused": True, "foreach": True}, device="cpu")


def test_safe_drops_both_conflicting_hints_when_the_class_takes_neither():
    built = build("safe", resolved(grokadamw.GrokAdamW), params(), {"fused": True, "foreach": True}, device="cpu")
    assert built.dropped_kwargs == ["fused", "foreach"]


# --- build_optimizer, the public function ------------------------------------------------------------


def test_build_optimizer_is_exported_by_the_package():
    assert harness.build_optimizer is build_optimizer


@pytest.mark.parametrize(
    "optimizer",
    ["grokadamw.GrokAdamW", grokadamw.GrokAdamW, functools.partial(grokadamw.GrokAdamW, weight_decay=0.0)],
    ids=["name", "class", "factory"],
)
def test_build_optimizer_takes_a_name_a_class_or_a_factory_and_reports_drops(optimizer):
    with pytest.warns(DroppedKwargsWarning, match="build_optimizer dropped fused for GrokAdamW"):
        built = build_optimizer(optimizer, iter(params()), lr=0.02, fused=True)
    assert isinstance(built, grokadamw.GrokAdamW)
    assert built.dropped_kwargs == ["fused"] and built.absorbed_kwargs == []
    assert built.defaults["lr"] == 0.02


def test_build_optimizer_is_silent_when_nothing_is_dropped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = build_optimizer("AdamW", params(), lr=0.01, foreach=False)
    assert built.dropped_kwargs == [] and built.defaults["foreach"] is False


def test_build_optimizer_accepts_parameter_groups():
    ps = params()
    built = build_optimizer(torch.optim.SGD, [{"params": ps[:1], "lr": 0.5}, {"params": ps[1:]}], lr=0.1, fused=True)
    assert [g["lr"] for g in built.param_groups] == [0.5, 0.1]


# --- framework builders -------------------------------------------------------------------------------


def test_framework_builder_is_called_with_the_optimizer_name():
    built = build(
        "tests.frameworks.litgpt_like:instantiate_optimizer",
        resolve_optimizer("torch.optim.AdamW"),
        params(),
        {"lr": 0.01},
        device="cpu",
    )
    assert isinstance(built, Built) and isinstance(built.optimizer, torch.optim.AdamW)
    assert built.optimizer.defaults["fused"] is True  # the framework's own addition reached the class


def test_framework_builder_reproduces_the_bug():
    with pytest.raises(TypeError, match="AdamW8bit.__init__.. got an unexpected keyword argument 'fused'"):
        build(
            "tests.frameworks.litgpt_like:instantiate_optimizer",
            resolve_optimizer("bitsandbytes.optim.AdamW8bit"),
            params(),
            {},
            device="cpu",
        )


def test_a_framework_that_uses_build_optimizer_reports_its_drops():
    with pytest.warns(DroppedKwargsWarning):
        built = build(
            "harness.build:build_optimizer",
            resolve_optimizer("grokadamw.GrokAdamW"),
            params(),
            {"fused": True},
            device="cpu",
        )
    assert built.dropped_kwargs == ["fused"]


def test_unknown_named_builder_names_the_close_one():
    expected = r"unknown builder 'signatur': did you mean 'signature'\? Available: direct, signature, safe"
    with pytest.raises(HarnessError, match=expected):
        load_builder("signatur")


def test_builder_function_missing_from_its_module_names_the_close_one():
    expected = r"unknown function 'instantiate' in tests.frameworks.litgpt_like: did you mean 'instantiate_optimizer'\?"
    with pytest.raises(HarnessError, match=expected):
        load_builder("tests.frameworks.litgpt_like:instantiate")


def test_builder_from_a_package_not_installed_is_a_missing_dependency():
    expected = r"notinstalled_fw_xyz \(of builder 'notinstalled_fw_xyz.utils:make'\) is not installed"
    with pytest.raises(MissingDependency, match=expected) as caught:
        load_builder("notinstalled_fw_xyz.utils:make")
    assert caught.value.package == "notinstalled_fw_xyz"


def test_builder_module_missing_from_an_installed_package_is_a_user_error():
    with pytest.raises(HarnessError, match="names module 'tests.frameworks.nope', which cannot be imported"):
        load_builder("tests.frameworks.nope:make")


# --- properties of the safe builder over real classes --------------------------------------------------

_UNIT = st.floats(0.0, 0.99, allow_nan=False)
_VALID: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "AdamW": {
        "lr": st.floats(1e-5, 0.1),
        "weight_decay": st.floats(0.0, 0.1),
        "betas": st.tuples(_UNIT, _UNIT),
        "eps": st.floats(1e-10, 1e-6),
    },
    "SGD": {"lr": st.floats(1e-5, 0.1), "weight_decay": st.floats(0.0, 0.1), "momentum": _UNIT},
    "AdamW8bit": {"lr": st.floats(1e-5, 0.1), "weight_decay": st.floats(0.0, 0.1), "betas": st.tuples(_UNIT, _UNIT)},
    "GrokAdamW": {"lr": st.floats(1e-5, 0.1), "weight_decay": st.floats(0.0, 0.1), "betas": st.tuples(_UNIT, _UNIT)},
    "Lion": {"lr": st.floats(1e-5, 0.1), "weight_decay": st.floats(0.0, 0.1), "betas": st.tuples(_UNIT, _UNIT)},
}
_CLASSES = {
    "AdamW": torch.optim.AdamW,
    "SGD": torch.optim.SGD,
    "AdamW8bit": bitsandbytes.optim.AdamW8bit,
    "GrokAdamW": grokadamw.GrokAdamW,
    "Lion": timm.optim.Lion,
}
_HINT_VALUES = st.sampled_from([True, False, None])
_PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def class_and_kwargs(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = draw(st.sampled_from(sorted(_CLASSES)))
    valid = draw(st.fixed_dictionaries({}, optional=_VALID[name]))
    hints = draw(st.fixed_dictionaries({}, optional={"fused": _HINT_VALUES, "foreach": _HINT_VALUES}))
    return name, valid, hints


@_PROPERTY_SETTINGS
@given(class_and_kwargs())
def test_valid_kwargs_always_reach_the_optimizer_and_hints_are_kept_or_reported(case):
    name, valid, hints = case
    try:
        built = build("safe", resolved(_CLASSES[name]), params(), {**valid, **hints}, device="cpu")
    except RuntimeError as exc:  # only torch's own refusal of two hints it was given
        assert hints.get("fused") and hints.get("foreach")
        assert classify_error(exc, device="cpu", dtype="float32") == "conflicting_kwargs"
        return
    defaults = built.optimizer.defaults
    assert not set(valid) & set(built.dropped_kwargs)
    for key, value in valid.items():
        assert tuple(defaults[key]) == value if key == "betas" else defaults[key] == value
    assert set(built.dropped_kwargs) <= set(hints)
    for hint, value in hints.items():
        assert hint in built.dropped_kwargs or defaults[hint] == value, f"{hint} neither kept nor reported dropped"


def _typos(word: str) -> st.SearchStrategy[str]:
    """Words one edit away: a letter dropped, doubled or swapped with the next."""
    edits = [word[:i] + word[i + 1 :] for i in range(len(word))]
    edits += [word[:i] + word[i] + word[i:] for i in range(len(word))]
    edits += [word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)]
    return st.sampled_from(edits)


@_PROPERTY_SETTINGS
@given(st.data())
def test_a_typo_always_raises_and_names_the_kwarg_meant(data):
    name = data.draw(st.sampled_from(sorted(_CLASSES)))
    meant = data.draw(st.sampled_from(sorted(_VALID[name])))
    typo = data.draw(_typos(meant))
    import inspect

    assume(typo not in inspect.signature(_CLASSES[name]).parameters and typo not in ACCELERATION_HINTS and typo)
    with pytest.raises(UnexpectedKwargError) as caught:
        build("safe", resolved(_CLASSES[name]), params(), {typo: 0.01}, device="cpu")
    message = str(caught.value)
    assert message.startswith(f"unknown keyword argument {typo!r} for ")
    assert repr(meant) in message or f" {meant}," in message or message.endswith(f" {meant}.")


@_PROPERTY_SETTINGS
@given(
    st.sampled_from(sorted(_CLASSES)),
    st.sampled_from(["lr", "weight_decay"]),
    st.one_of(st.just("1e-3"), st.text(max_size=5)),
)
def test_a_number_given_as_text_is_never_accepted(name, key, text):
    with pytest.raises((TypeError, ValueError)):
        build("safe", resolved(_CLASSES[name]), params(), {key: text}, device="cpu")
