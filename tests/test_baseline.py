"""The baseline files: keys, accept -> load roundtrip, merging, the per-environment split, bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.baseline import (
    BaselineEntry,
    accept,
    baseline_path,
    bench_speedups,
    environment_key,
    load_baselines,
    read_baseline_file,
    record_environment_key,
)
from harness.cells import Cell, Record
from harness.errors import HarnessError

CPU_ENV = {"python": "3.11.7", "torch": "2.14.1+cpu"}
CUDA_ENV = {"python": "3.11.7", "torch": "2.11.0+cu130", "device_name": "NVIDIA H100"}


def record(
    optimizer: str = "torch.optim.AdamW",
    status: str = "ok",
    *,
    device: str = "cpu",
    variant: str = "plain",
    env: dict | None = None,
    **fields,
) -> Record:
    cell = Cell(optimizer, device, "float32", variant, {}, "direct")
    return Record.for_cell(cell, status, env=env if env is not None else CPU_ENV, **fields)


@pytest.mark.parametrize(
    ("env", "device", "key"),
    [
        ({"torch": "2.14.1+cpu"}, "cpu", "torch-2.14.1-cpu"),
        ({"torch": "2.11.0+cu130"}, "cuda:1", "torch-2.11.0-cuda"),
        ({"torch": "2.6.0"}, "mps", "torch-2.6.0-mps"),
        ({"versions": {"torch": "2.5.1+rocm6.2"}}, "cuda", "torch-2.5.1-cuda"),
        ({"torch": "2.14.1", "device": "cuda:0"}, None, "torch-2.14.1-cuda"),
        ({}, "cpu", "torch-unknown-cpu"),
    ],
)
def test_environment_key_strips_the_local_suffix_and_keeps_the_device_kind(env, device, key):
    assert environment_key(env, device) == key


def test_baseline_path_is_one_json_file_per_key(tmp_path):
    assert baseline_path(tmp_path, "torch-2.14.1-cpu") == tmp_path / "baselines" / "torch-2.14.1-cpu.json"


def test_bench_speedups_keeps_only_finite_positive_fused_ratios():
    bench = {"speedup": {"fused/foreach": 1.5, "fused/forloop": math.nan, "foreach/forloop": 2.0}}
    assert bench_speedups(bench) == {"fused/foreach": 1.5}
    assert bench_speedups({"speedups": {"fused/forloop": 3}}) == {"fused/forloop": 3.0}
    assert bench_speedups({"speedup": {"fused/foreach": True, "fused/forloop": -1.0}}) == {}
    assert bench_speedups(None) == {}


def test_accept_then_load_gives_back_every_cell(tmp_path):
    records = [
        record("torch.optim.AdamW", bench={"speedup": {"fused/foreach": 1.62, "fused/forloop": 3.1}}),
        record("grokadamw.GrokAdamW", "construct_error", reason="unexpected_kwarg"),
        record("torch.optim.SGD", "skipped", reason="missing_dependency"),
    ]
    [path] = accept(records, tmp_path)
    assert path == tmp_path / "baselines" / "torch-2.14.1-cpu.json"
    loaded = load_baselines(records, tmp_path)
    assert loaded == {r.id: BaselineEntry.from_record(r) for r in records}
    assert loaded[records[0].id].speedup == {"fused/foreach": 1.62, "fused/forloop": 3.1}
    assert loaded[records[1].id] == BaselineEntry("construct_error", "unexpected_kwarg")


def test_the_file_is_sorted_stable_and_readable(tmp_path):
    records = [record("z.Opt"), record("a.Opt", "step_error", reason="unsupported_dtype")]
    [path] = accept(records, tmp_path)
    first = path.read_text()
    accept(list(reversed(records)), tmp_path)
    assert path.read_text() == first
    assert first.endswith("\n") and "\n  " in first  # indented: one line per field in a diff
    document = json.loads(first)
    assert document["environment"] == "torch-2.14.1-cpu"
    assert list(document["cells"]) == sorted(document["cells"])
    assert document["cells"]["z.Opt-cpu-float32-plain-direct"] == {"status": "ok"}  # no nulls, no empty speedup
    assert document["cells"]["a.Opt-cpu-float32-plain-direct"] == {
        "status": "step_error",
        "reason": "unsupported_dtype",
    }


def test_accept_merges_into_the_existing_file(tmp_path):
    kept, changed, added = record("a.Opt"), record("b.Opt"), record("c.Opt")
    accept([kept, changed], tmp_path)
    accept([changed.replace(status="step_error", reason="other"), added], tmp_path)
    entries = read_baseline_file(baseline_path(tmp_path, "torch-2.14.1-cpu"))
    assert entries == {
        kept.id: BaselineEntry("ok"),
        changed.id: BaselineEntry("step_error", "other"),
        added.id: BaselineEntry("ok"),
    }


def test_a_skipped_cell_never_overwrites_a_real_outcome(tmp_path):
    ran = record("torch.optim.AdamW", device="cuda", env=CUDA_ENV)
    accept([ran], tmp_path)
    accept([ran.replace(status="skipped", reason="unsupported_device")], tmp_path)
    assert load_baselines([ran], tmp_path) == {ran.id: BaselineEntry("ok")}
    never_ran = record("torch.optim.SGD", "skipped", reason="missing_dependency")
    accept([never_ran], tmp_path)
    assert load_baselines([never_ran], tmp_path) == {never_ran.id: BaselineEntry("skipped", "missing_dependency")}


def test_a_run_splits_across_files_by_device_kind_and_torch_version(tmp_path):
    cpu = record("torch.optim.AdamW", device="cpu", env=CPU_ENV)
    cuda0 = record("torch.optim.AdamW", device="cuda:0", env=CUDA_ENV)
    cuda1 = record("torch.optim.SGD", device="cuda:1", env=CUDA_ENV)
    old_torch = record("torch.optim.Adam", device="cpu", env={"torch": "2.4.0"})
    paths = accept([cpu, cuda0, cuda1, old_torch], tmp_path)
    assert sorted(p.name for p in paths) == ["torch-2.11.0-cuda.json", "torch-2.14.1-cpu.json", "torch-2.4.0-cpu.json"]
    cuda_cells = json.loads((tmp_path / "baselines" / "torch-2.11.0-cuda.json").read_text())["cells"]
    assert set(cuda_cells) == {cuda0.id, cuda1.id}
    assert record_environment_key(cuda1) == "torch-2.11.0-cuda"
    assert set(load_baselines([cpu, cuda0], tmp_path)) == {cpu.id, cuda0.id}


def test_loading_a_missing_file_is_an_empty_baseline(tmp_path):
    assert load_baselines([record()], tmp_path) == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON (line 1"),
        ('{"environment": "x"}', "no `cells` object"),
        ('["a"]', "no `cells` object"),
        ('{"cells": {"a.Opt-cpu-float32-plain-direct": {"reason": "other"}}}', "malformed entry for cell 'a.Opt"),
        (
            '{"cells": {"a.Opt-cpu-float32-plain-direct": {"status": "ok", "speedup": {"fused/foreach": "fast"}}}}',
            "malformed entry",
        ),
    ],
)
def test_a_malformed_baseline_names_the_file_and_the_fix(tmp_path, text, words):
    path = baseline_path(tmp_path, "torch-2.14.1-cpu")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(HarnessError) as info:
        load_baselines([record("a.Opt")], tmp_path)
    message = str(info.value)
    assert str(path) in message and words in message
    assert "python -m harness baseline accept" in message
    with pytest.raises(HarnessError):
        accept([record("a.Opt")], tmp_path)  # never silently replaced


def test_an_unwritable_baseline_folder_fails_loudly(tmp_path):
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the reports folder should be")
    with pytest.raises(HarnessError, match=r"Cannot write the baseline file .*torch-2\.14\.1-cpu\.json"):
        accept([record()], Path(blocker))
