"""harness.measurements: the record's `bench` and `env` read into types and written back in the same JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.cells import Record
from harness.execute import environment
from harness.measurements import BenchResult, Environment, ImplResult, ImplTiming, MalformedResult
from harness.records import read_records

RECORDS = Path(__file__).parent / "resources" / "records"


def lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (RECORDS / name).read_text().splitlines() if line.strip()]


FIELDS_ADDED_SINCE = {
    "environment": "",
    "scenario": "train",
    "scenario_numbers": {},
    "built": None,
    "measurement_errors": {},
    "process_changes": [],
}
"""Record fields newer than the resource file, with the value an old line reads as."""


def test_every_record_of_the_resource_file_reads_and_its_env_writes_back_identical():
    written = lines("every_status.jsonl")
    records = read_records(RECORDS / "every_status.jsonl")
    assert [r.id for r in records] == [d["id"] for d in written]
    for record, data in zip(records, written, strict=True):
        assert record.env.to_dict() == data["env"]
        assert record.env.extra == {"platform": "Linux-x86_64"}  # a key this version does not know is kept
        if data["bench"] is None:
            # the whole line, unchanged but for fields added since, at their defaults
            assert record.to_dict() == {**FIELDS_ADDED_SINCE, **data}
        else:
            assert isinstance(record.bench, BenchResult)
            assert BenchResult.from_dict(json.loads(json.dumps(record.bench.to_dict()))) == record.bench


def test_a_hand_written_partial_bench_reads_with_what_it_has():
    [data] = [d for d in lines("every_status.jsonl") if d["bench"]]
    bench = BenchResult.from_dict(data["bench"])
    assert [impl.name for impl in bench.implementations] == ["fused", "foreach", "forloop"]
    fused = bench.implementation("fused")
    assert fused is not None and fused.timing is not None and fused.timing.spread_ms is not None
    assert fused.timing.spread_ms.p75 == 1.03 and fused.timing.bandwidth_fraction == 0.41
    forloop = bench.implementation("forloop")
    assert forloop is not None and forloop.parity is None and forloop.timing is not None
    assert forloop.timing.spread_ms is None and forloop.timing.bytes_per_step is None
    assert bench.step_ms("foreach") == 1.6 and bench.step_ms("missing") is None
    assert bench.gate_speedups() == {"fused/foreach": 1.6, "fused/forloop": 3.2}
    assert bench.device_bandwidth_gbs is None and bench.parity_tolerance is None


def test_speedups_leave_out_what_is_missing_broken_or_not_positive():
    bench = BenchResult(speedup={"fused/foreach": math.nan, "fused/forloop": -2.0, "foreach/forloop": 2.5})
    assert bench.speedups() == {"foreach/forloop": 2.5} and bench.gate_speedups() == {}


def test_unknown_bench_keys_are_kept_and_written_back():
    bench = BenchResult.from_dict({"speedup": {"fused/forloop": 3.0}, "gpu_clock_mhz": 1980})
    assert bench.extra == {"gpu_clock_mhz": 1980}
    assert bench.to_dict()["gpu_clock_mhz"] == 1980 and bench.to_dict()["speedup"] == {"fused/forloop": 3.0}


def test_a_timed_implementation_keeps_a_null_median_and_unlisted_figures_stay_out():
    bench = BenchResult(implementations=(ImplResult("fused", timing=ImplTiming(step_ms=None)),))
    data = bench.to_dict()
    assert data["step_ms"] == {"fused": None} and data["spread_ms"] == {} and data["bytes_per_step"] == {}
    assert BenchResult.from_dict(data) == bench


@pytest.mark.parametrize(
    "env",
    [
        {},  # a record built without an environment
        {"python": "3.11.7", "torch": None, "device": "cuda:1"},  # the parent's, for a runner that died
        {"python": "3.11.7", "torch": "2.14.1", "device": "cpu"},
        {
            "python": "3.11.7",
            "torch": "2.14.1+cu130",
            "packages": {"torch": "2.14.1+cu130", "bitsandbytes": None},
            "device_name": "NVIDIA H200",
            "optimizer_package": "bitsandbytes",
            "optimizer_package_version": None,
        },
    ],
    ids=["empty", "reduced-no-torch", "reduced", "full"],
)
def test_every_env_shape_a_writer_writes_reads_back_identical(env):
    assert Environment.from_dict(env).to_dict() == env
    assert json.dumps(Environment.from_dict(env).to_dict()) == json.dumps(env)  # key order too


def test_the_env_execute_writes_reads_back_identical():
    env = environment("cpu", None)
    assert isinstance(env, Environment) and env.optimizer_package is None and not env.is_reduced
    assert Environment.from_dict(json.loads(json.dumps(env.to_dict()))) == env
    assert "optimizer_package" not in env.to_dict()


def test_environment_tells_its_torch_release_and_whether_it_is_reduced():
    assert Environment(torch="2.11.0+cu130").torch_release == "2.11.0"
    assert Environment().torch_release == "unknown"
    assert Environment(python="3.11.7", torch="2.14.1", device="cpu").is_reduced
    assert not Environment().is_reduced
    assert not Environment(python="3.11.7", torch="2.14.1", device_name="x").is_reduced
    full = Environment(
        python="3", torch="2", device_name="cpu", optimizer_package="timm", optimizer_package_version="1"
    )
    assert full.machine() == {"python": "3", "torch": "2", "device_name": "cpu"}


def test_a_record_accepts_the_json_form_of_bench_and_env():
    record = Record.from_dict({**lines("every_status.jsonl")[0], "env": {"torch": "2.14.1"}})
    assert record.env == Environment(torch="2.14.1") and isinstance(record.bench, BenchResult)


def test_a_malformed_bench_or_env_skips_its_line_with_a_warning_naming_the_key():
    path = RECORDS / "malformed_bench_and_env.jsonl"
    with pytest.warns(UserWarning) as caught:
        records = read_records(path)
    assert [r.id for r in records] == [lines("malformed_bench_and_env.jsonl")[1]["id"]]
    messages = [str(w.message) for w in caught]
    assert any(":1:" in m and "bench.step_ms.fused must be a number or null" in m for m in messages), messages
    assert any(":3:" in m and "env.packages must be an object" in m for m in messages), messages


def test_malformed_values_are_refused_with_the_key_path():
    with pytest.raises(MalformedResult, match=r"bench\.parity_ok must be true, false or null"):
        BenchResult.from_dict({"parity_ok": "yes"})
    with pytest.raises(MalformedResult, match=r"bench\.model\.d_model must be a whole number"):
        BenchResult.from_dict({"model": {"d_model": 1.5}})
