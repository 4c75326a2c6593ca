"""Optimizer names: expanding matrix entries and resolving concrete names to factories."""

from __future__ import annotations

import functools
import sys
import types

import pytest
import torch

from harness.errors import HarnessError, UnknownOptimizerError
from harness.resolve import (
    BrokenImport,
    MissingDependency,
    expand_optimizer,
    optimizer_package_versions,
    resolve_optimizer,
)


@pytest.fixture
def fake_package(monkeypatch):
    """A package `fakeopt` that imports fine but whose submodule `fakeopt.needs` needs a missing one."""
    package = types.ModuleType("fakeopt")
    package.__path__ = []  # a package, so `fakeopt.<sub>` is looked for as a module
    monkeypatch.setitem(sys.modules, "fakeopt", package)
    return package


@pytest.mark.parametrize(
    "name",
    ["torch.optim.AdamW", "bitsandbytes.optim.AdamW8bit", "grokadamw.GrokAdamW", "timm.optim.Lion", "timm:adamw"],
)
def test_a_concrete_name_expands_to_itself(name):
    assert expand_optimizer(name) == [name]


def test_a_short_torch_name_is_torch_optim():
    assert expand_optimizer("AdamW") == ["torch.optim.AdamW"]
    assert resolve_optimizer("SGD").factory is torch.optim.SGD


def test_a_short_name_torch_lacks_names_the_close_ones():
    with pytest.raises(UnknownOptimizerError, match=r"unknown optimizer 'adamw' in torch.optim: did you mean 'AdamW'"):
        expand_optimizer("adamw")


def test_torch_family_lists_every_torch_optimizer_sorted():
    names = expand_optimizer("torch.optim:*")
    assert names == sorted(names)
    assert {"torch.optim.AdamW", "torch.optim.SGD", "torch.optim.LBFGS"} <= set(names)
    assert "torch.optim.Optimizer" not in names  # the base class is not an optimizer to test
    assert all(issubclass(resolve_optimizer(n).cls, torch.optim.Optimizer) for n in names)


def test_pattern_filters_class_names():
    names = expand_optimizer("bitsandbytes.optim:*8bit")
    assert "bitsandbytes.optim.AdamW8bit" in names
    assert names and all(n.endswith("8bit") for n in names)


def test_single_class_package_family():
    assert expand_optimizer("grokadamw:*") == ["grokadamw.GrokAdamW"]


def test_timm_wildcard_keeps_only_what_timm_implements():
    names = expand_optimizer("timm:*adam*")
    assert "timm:adamp" in names and "timm:nadamw" in names
    # timm's registry also lists torch's Adam/AdamW and bitsandbytes' 8-bit Adam: those are not timm's
    assert not {"timm:adam", "timm:adamw", "timm:bnbadamw8bit"} & set(names)
    assert all(resolve_optimizer(n).cls.__module__.startswith("timm.") for n in names)


def test_timm_name_given_explicitly_is_kept_even_if_a_wrapper():
    assert expand_optimizer("timm:adamw") == ["timm:adamw"]
    assert resolve_optimizer("timm:adamw").cls is torch.optim.AdamW


def test_timm_name_resolves_with_timm_defaults_bound():
    resolved = resolve_optimizer("timm:sgdp")
    import timm.optim

    assert resolved.cls is timm.optim.SGDP
    assert isinstance(resolved.factory, functools.partial)
    assert resolved.factory.keywords == {"nesterov": True}
    assert resolved.package == "timm" and resolved.version == optimizer_package_versions()["timm"]
    optimizer = resolved.factory([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    assert optimizer.defaults["nesterov"] is True


def test_timm_bitsandbytes_wrapper_resolves_without_cuda():
    # timm itself asserts CUDA before importing bitsandbytes classes; the harness lets the optimizer decide
    import bitsandbytes

    assert resolve_optimizer("timm:bnbadamw8bit").cls is bitsandbytes.optim.AdamW8bit


def test_timm_optimizer_of_a_missing_package_is_a_missing_dependency():
    with pytest.raises(MissingDependency, match="apex is not installed: pip install apex") as caught:
        resolve_optimizer("timm:fusedadam")
    assert caught.value.package == "apex"


def test_unknown_timm_name_names_the_close_ones():
    with pytest.raises(UnknownOptimizerError, match=r"'adamww' in timm's registry: did you mean 'adamw'"):
        expand_optimizer("timm:adamww")


@pytest.mark.parametrize("name", ["notinstalled_pkg_xyz.optim:*", "notinstalled_pkg_xyz.Opt", "apex.optimizers:*"])
def test_a_missing_package_expands_to_the_name_unchanged(name):
    assert expand_optimizer(name) == [name]


def test_a_missing_package_resolves_to_missing_dependency_with_the_pip_name():
    expected = r"^notinstalled_pkg_xyz is not installed: pip install notinstalled_pkg_xyz$"
    with pytest.raises(MissingDependency, match=expected) as caught:
        resolve_optimizer("notinstalled_pkg_xyz.optim.Fast")
    assert caught.value.package == "notinstalled_pkg_xyz"
    assert isinstance(caught.value, HarnessError)


def test_an_installed_package_whose_own_dependency_is_missing_is_broken_and_names_it(fake_package, monkeypatch):
    def find_module(name, *args, **kwargs):
        if name == "fakeopt.needs":
            raise ModuleNotFoundError("No module named 'scipy'", name="scipy")
        return real_import(name, *args, **kwargs)

    import importlib

    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", find_module)
    # Installed but not importable is what an upgrade that broke the package looks like: a failure, never a skip.
    with pytest.raises(BrokenImport, match=r"fakeopt is installed but cannot be imported: it needs scipy") as caught:
        resolve_optimizer("fakeopt.needs.Opt")
    assert caught.value.package == "fakeopt" and "pip install scipy" in str(caught.value)


def test_unknown_class_in_an_installed_package_names_the_close_ones():
    with pytest.raises(UnknownOptimizerError) as caught:
        resolve_optimizer("bitsandbytes.optim.AdamW8")
    message = str(caught.value)
    assert message.startswith("unknown optimizer 'AdamW8' in module 'bitsandbytes.optim': did you mean 'AdamW8bit'")
    assert "Available: " in message and "Lion8bit" in message


def test_a_typo_in_a_full_path_fails_at_expansion_not_at_run_time():
    with pytest.raises(UnknownOptimizerError, match="did you mean 'AdamW'"):
        expand_optimizer("torch.optim.AdamWW")


def test_unknown_module_of_an_installed_package_names_the_close_one():
    expected = r"unknown module 'optimm' in torch: did you mean 'optim'\? Available: .*\bamp\b"
    with pytest.raises(UnknownOptimizerError, match=expected):
        resolve_optimizer("torch.optimm.AdamW")


def test_a_pattern_matching_nothing_lists_what_there_is():
    expected = r"unknown optimizer '\*9bit' in module 'bitsandbytes.optim'\. Available: .*AdamW8bit"
    with pytest.raises(UnknownOptimizerError, match=expected):
        expand_optimizer("bitsandbytes.optim:*9bit")


def test_a_non_class_is_refused_with_a_sentence():
    with pytest.raises(UnknownOptimizerError, match="is a module, not an optimizer class"):
        resolve_optimizer("torch.optim.lr_scheduler")


@pytest.mark.parametrize("name", ["torch.optim:", ":Adam"])
def test_a_malformed_family_says_the_form(name):
    with pytest.raises(UnknownOptimizerError, match="needs the form 'module:PATTERN'"):
        expand_optimizer(name)


def test_resolved_optimizer_carries_package_and_version():
    resolved = resolve_optimizer("bitsandbytes.optim.AdamW8bit")
    versions = optimizer_package_versions()
    assert resolved.package == "bitsandbytes"
    assert resolved.version == versions["bitsandbytes"] is not None
    assert resolve_optimizer("torch.optim.AdamW").version == versions["torch"]


def test_package_versions_name_every_optimizer_package():
    versions = optimizer_package_versions()
    assert set(versions) == {"torch", "bitsandbytes", "grokadamw", "timm"}
    assert versions["torch"] == torch.__version__.split("+")[0]


def test_test_fault_optimizers_resolve_by_path():
    from tests.faults import optimizers

    assert resolve_optimizer("tests.faults.optimizers.NaNWriter").cls is optimizers.NaNWriter
