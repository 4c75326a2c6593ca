"""Framework adapters (issue 16): the contract, discovery by entry point, pairing with optimizer names, the
training conventions the loop follows, what records say was built, and the built-in adapters on real packages
where they are installed (Hugging Face's Trainer, timm's factory; LitGPT's helper through its two behaviours).
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import types

import pytest
import torch

from harness import frameworks
from harness.cells import Cell
from harness.execute import run_cell
from harness.expand import expand_matrix
from harness.frameworks import (
    Conventions,
    FrameworkAdapter,
    default_conventions,
    framework_prefix,
    get_adapter,
    is_framework,
    pairs,
)
from harness.gpt import build_gpt, synthetic_batch
from harness.scenarios.base import take_steps
from harness.settings import ModelSettings, Settings
from harness.spec import load_matrix

SETTINGS = Settings(bench={"enabled": False}, train={"steps": 6})
TOY = "tests.frameworks.toy_adapter:ADAPTER"


@pytest.fixture
def toy(monkeypatch):
    """The test adapter `toyfw`, registered as an entry point would register it."""
    monkeypatch.setattr(frameworks, "_entry_points", lambda: {"toyfw": TOY})


def cell(optimizer: str, builder: str, scenario: str = "train", **kwargs) -> Cell:
    return Cell(optimizer, "cpu", "float32", "plain", kwargs, builder, scenario=scenario)


# --- the contract and its registry ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["transformers", "litgpt", "timm"])
def test_each_built_in_adapter_meets_the_protocol_without_importing_its_framework(name):
    adapter = get_adapter(name)
    assert isinstance(adapter, FrameworkAdapter)
    assert adapter.name == name and adapter.distribution == name and is_framework(name)


def test_a_third_party_adapter_is_found_by_its_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "toyfw-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfw\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[harness.frameworks]\ntoyfw = {TOY}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    frameworks._entry_points.cache_clear()
    try:
        assert "toyfw" in frameworks.framework_names() and is_framework("toyfw")
        assert get_adapter("toyfw").names() == ["sgd", "averaged", "hooked", "fused_backward"]
    finally:
        monkeypatch.undo()
        frameworks._entry_points.cache_clear()
    assert not is_framework("toyfw")


def test_an_unknown_adapter_names_the_close_ones():
    with pytest.raises(frameworks.HarnessError, match=r"unknown framework adapter 'transformer': did you mean"):
        get_adapter("transformer")


def test_an_object_that_is_not_an_adapter_is_refused_with_what_it_lacks(monkeypatch):
    monkeypatch.setattr(frameworks, "_entry_points", lambda: {"notone": "harness.frameworks:Conventions"})
    with pytest.raises(frameworks.HarnessError, match=r"needs the attributes name, distribution, module"):
        get_adapter("notone")


def test_framework_names_pair_only_with_their_builder(toy):
    assert framework_prefix("toyfw:sgd") == "toyfw" and framework_prefix("timm:adamw") is None
    assert pairs("toyfw:sgd", "toyfw") and not pairs("toyfw:sgd", "direct") and not pairs("toyfw:sgd", "litgpt")
    assert not pairs("torch.optim.SGD", "toyfw") and pairs("torch.optim.SGD", "direct")
    assert pairs("timm:adamw", "timm") and pairs("timm:adamw", "direct") and not pairs("torch.optim.SGD", "timm")
    assert pairs("bitsandbytes.optim.AdamW8bit", "litgpt") and not pairs("timm:adamw", "litgpt")


def test_a_matrix_expands_a_frameworks_vocabulary_and_pairs_it(toy, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        'optimizers: ["toyfw:*", "toyfw:no_such_name_yet", torch.optim.SGD]\ndevices: [cpu]\ndtypes: [float32]\n'
        "kwargs: {plain: {}}\nbuilders: [toyfw, direct]\n"
    )
    ids = [c.id for c in expand_matrix(load_matrix(path))]
    toy_names = ["sgd", "averaged", "hooked", "fused_backward", "no_such_name_yet"]
    expected = [f"toyfw:{name}-cpu-float32-plain-toyfw" for name in toy_names]
    assert ids == [*expected, "torch.optim.SGD-cpu-float32-plain-direct"]


# --- the training conventions ---------------------------------------------------------------------------


def test_default_conventions_pass_a_closure_only_where_the_optimizer_needs_one():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert default_conventions(torch.optim.LBFGS(params)).closure
    assert default_conventions(torch.optim.SGD(params, lr=0.1)) == Conventions()

    class NeedsClosure(torch.optim.SGD):
        def step(self, closure):  # no default: a closure is required
            return super().step(closure)

    assert default_conventions(NeedsClosure(params, lr=0.1)).closure


@pytest.mark.parametrize("name", ["averaged", "hooked", "fused_backward"])
def test_the_loop_follows_what_the_adapter_says(name):
    from tests.frameworks.toy_adapter import ADAPTER

    model_settings = ModelSettings(d_model=32, n_layers=1, n_heads=2, seq_len=16)
    model = build_gpt(model_settings, seed=0, device="cpu", dtype=torch.float32)
    inputs, targets = synthetic_batch(model_settings, 4, 0, "cpu")
    made = ADAPTER.build(f"toyfw:{name}", model, {"learning_rate": 0.5})
    losses: list[float] = []
    last = take_steps(model, made.optimizer, inputs, targets, 5, losses, conventions=made.conventions)
    assert len(losses) == 5 and last < losses[0]
    if name == "averaged":
        assert made.optimizer.modes == ["train", "eval"]  # train() before the steps, eval() before evaluating
    if name == "hooked":
        assert made.optimizer.hook_updates == 5 * len(list(model.parameters()))
    if name == "fused_backward":
        assert made.optimizer.fused_calls == 5


@pytest.mark.parametrize("name", ["sgd", "averaged", "hooked", "fused_backward"])
def test_a_framework_cell_records_what_was_built_and_by_which_framework(toy, name):
    record = run_cell(cell(f"toyfw:{name}", "toyfw", learning_rate=0.5), SETTINGS)
    assert record.status == "ok", record.error_message or record.judgement
    classes = {"sgd": "torch.optim.sgd.SGD", "averaged": "tests.frameworks.toy_adapter.Averaged"}
    assert record.built["class"] == classes.get(name, record.built["class"])
    assert record.built["kwargs"][0]["lr"] == 0.5 and "params" not in record.built["kwargs"][0]
    assert record.env.framework == "toyfw"
    conventions = {"averaged": "optimizer.train()/eval()", "hooked": "layerwise updates in gradient hooks"}
    assert conventions.get(name, "no closure") in record.built["conventions"]


def test_a_plain_builder_records_what_it_built_too():
    record = run_cell(cell("torch.optim.LBFGS", "direct", lr=0.5), SETTINGS)
    assert record.built["class"] == "torch.optim.lbfgs.LBFGS" and "closure" in record.built["conventions"]


def test_a_framework_builder_runs_the_train_scenario_only(toy):
    record = run_cell(cell("toyfw:sgd", "toyfw", scenario="resume"), SETTINGS)
    assert record.status == "skipped" and "runs the train scenario only" in record.error_message


def test_an_absent_framework_skips_its_cells():
    if importlib.util.find_spec("litgpt") is not None:
        pytest.skip("litgpt is installed here")
    record = run_cell(cell("torch.optim.AdamW", "litgpt", lr=0.01), SETTINGS)
    assert (record.status, record.reason) == ("skipped", "missing_dependency")
    assert "litgpt" in record.error_message


# --- LitGPT: its helper before and after it filtered kwargs by signature (0.4.12 -> 0.4.13) --------------

LITGPT_0_4_12 = """
    def instantiate_torch_optimizer(optimizer, model_parameters, **kwargs):
        import importlib
        class_module, class_name = optimizer["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(class_module), class_name)
        return cls(model_parameters, **{**optimizer["init_args"], **kwargs})
"""
LITGPT_0_4_13 = """
    def instantiate_torch_optimizer(optimizer, model_parameters, **kwargs):
        import importlib, inspect
        class_module, class_name = optimizer["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(class_module), class_name)
        valid = set(inspect.signature(cls).parameters)
        kwargs = {k: v for k, v in kwargs.items() if k in valid}
        return cls(model_parameters, **{**optimizer["init_args"], **kwargs})
"""


@pytest.mark.parametrize(("source", "status"), [(LITGPT_0_4_12, "construct_error"), (LITGPT_0_4_13, "ok")])
def test_litgpt_passes_its_own_fused_to_whatever_class_it_builds(monkeypatch, source, status):
    pytest.importorskip("bitsandbytes")
    package = types.ModuleType("litgpt")
    package.__path__ = []
    utils = types.ModuleType("litgpt.utils")
    exec(textwrap.dedent(source), utils.__dict__)
    monkeypatch.setitem(sys.modules, "litgpt", package)
    monkeypatch.setitem(sys.modules, "litgpt.utils", utils)
    record = run_cell(cell("bitsandbytes.optim.AdamW8bit", "litgpt", lr=0.01), SETTINGS)
    assert record.status == status, record.error_message
    if status == "construct_error":
        assert record.reason == "unexpected_kwarg" and "fused" in record.error_message


# --- timm's factory and Hugging Face's Trainer, where installed ------------------------------------------


def test_timm_factory_groups_the_model_itself():
    pytest.importorskip("timm")
    record = run_cell(cell("timm:adamw", "timm", lr=0.01, weight_decay=0.05), SETTINGS)
    assert record.status == "ok" and record.env.framework == "timm"
    decays = sorted(group["weight_decay"] for group in record.built["kwargs"])
    assert decays == [0.0, 0.05]  # biases and norms in a group without decay, as timm's factory puts them


def test_transformers_trainer_builds_from_its_own_names_and_keys():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    record = run_cell(cell("transformers:adamw_torch", "transformers", learning_rate=0.003, weight_decay=0.1), SETTINGS)
    assert record.status == "ok", record.error_message
    assert record.built["class"] == "torch.optim.adamw.AdamW" and record.env.framework == "transformers"
    assert sorted(group["weight_decay"] for group in record.built["kwargs"]) == [0.0, 0.1]
    assert record.env.framework_version == importlib.metadata.version("transformers")


def test_transformers_names_are_every_name_the_installed_version_accepts():
    pytest.importorskip("transformers")
    from transformers.training_args import OptimizerNames

    from harness.resolve import expand_optimizer

    expanded = expand_optimizer("transformers:*")
    assert expanded == [f"transformers:{member.value}" for member in OptimizerNames]


def test_a_transformers_field_that_does_not_exist_is_an_unexpected_kwarg():
    pytest.importorskip("transformers")
    record = run_cell(cell("transformers:sgd", "transformers", lr=0.003), SETTINGS)
    assert (record.status, record.reason) == ("construct_error", "unexpected_kwarg")


@pytest.mark.parametrize(
    ("name", "package", "convention"),
    [
        ("schedule_free_adamw", "schedulefree", "optimizer.train()/eval()"),
        ("galore_adamw_layerwise", "galore_torch", "layerwise updates in gradient hooks"),
        ("lomo", "lomo_optim", "framework step fused_backward"),
    ],
)
def test_transformers_optimizers_train_the_way_the_trainer_trains_them(name, package, convention):
    pytest.importorskip("transformers")
    pytest.importorskip(package)
    kwargs = {"learning_rate": 0.01}
    if "galore" in name:
        kwargs["optim_target_modules"] = ["attn", "mlp"]
    record = run_cell(cell(f"transformers:{name}", "transformers", **kwargs), SETTINGS)
    assert record.status in ("ok", "no_learning"), record.error_message
    assert convention in record.built["conventions"]
    assert record.losses[-1] < record.losses[0]


def test_an_optional_package_the_trainer_asks_for_skips_the_cell(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setitem(sys.modules, "schedulefree", None)  # as if not installed
    record = run_cell(cell("transformers:schedule_free_adamw", "transformers", learning_rate=0.01), SETTINGS)
    assert (record.status, record.reason) == ("skipped", "missing_dependency")
    assert record.error_message.startswith("transformers: ")


def test_a_framework_that_is_installed_but_raises_on_import_is_an_import_error(toy, tmp_path, monkeypatch):
    from tests.frameworks.toy_adapter import ADAPTER

    (tmp_path / "brokenfw").mkdir()
    (tmp_path / "brokenfw" / "__init__.py").write_text("raise ImportError('undefined symbol: _ZN5torch3jit')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ADAPTER, "module", "brokenfw", raising=False)
    record = run_cell(cell("toyfw:sgd", "toyfw"), SETTINGS)
    assert (record.status, record.reason) == ("construct_error", "import_error")
    assert "brokenfw (the framework of builder 'toyfw') is installed but raises" in record.error_message


def test_the_report_shows_what_was_built_by_which_framework(toy):
    from harness.report.payload import payload

    record = run_cell(cell("toyfw:hooked", "toyfw", learning_rate=0.5), SETTINGS)
    (shown,) = payload([record], {})["cells"]
    assert shown["built"]["class"] == "tests.frameworks.toy_adapter.Hooked"
    assert "layerwise updates in gradient hooks" in shown["built"]["conventions"]
    assert shown["framework"] == "toyfw"  # no version: toyfw is not an installed distribution
