"""The gate: every transition from an accepted outcome to a new one, and properties over many cells."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.baseline import BaselineEntry, accept, load_baselines
from harness.cells import REASONS, STATUSES, Cell, Record
from harness.errors import HarnessError
from harness.verdict import GATE_FAILING, VERDICTS, Verdict, count_verdicts, gate_failed, judge, sort_verdicts

FAILING = [s for s in STATUSES if s not in ("ok", "skipped")]
ENV = {"torch": "2.14.1+cpu"}


def record(
    status: str = "ok",
    reason: str | None = None,
    *,
    optimizer: str = "torch.optim.AdamW",
    speedup: dict[str, float] | None = None,
    **fields,
) -> Record:
    bench = {"speedup": speedup} if speedup is not None else None
    return Record.for_cell(
        Cell(optimizer, "cpu", "float32", "plain", {}, "direct"), status, reason=reason, bench=bench, env=ENV, **fields
    )


def verdict_of(now: Record, was: BaselineEntry | None, tolerance: float = 0.2) -> Verdict:
    [verdict] = judge([now], {} if was is None else {now.id: was}, speedup_tolerance=tolerance)
    assert verdict.id == now.id
    return verdict


def test_ok_to_ok_is_as_expected():
    v = verdict_of(record("ok"), BaselineEntry("ok"))
    assert (v.verdict, v.was, v.now) == ("as_expected", "ok", "ok")
    assert not v.fails_gate


@pytest.mark.parametrize("status", FAILING)
def test_ok_to_any_failing_status_is_a_regression(status):
    now = record(status, "other", error_type="RuntimeError", error_message="fused=True is not supported.\nmore")
    v = verdict_of(now, BaselineEntry("ok"))
    assert v.verdict == "regression" and v.fails_gate
    assert (v.was, v.now) == ("ok", f"{status} (other)")
    assert "RuntimeError: fused=True is not supported" in v.detail and "more" not in v.detail


@pytest.mark.parametrize("status", FAILING)
def test_failing_to_ok_is_fixed_and_fails_the_gate_until_accepted(status):
    v = verdict_of(record("ok"), BaselineEntry(status, "unexpected_kwarg"))
    assert v.verdict == "fixed" and v.fails_gate
    assert v.was == f"{status} (unexpected_kwarg)"
    assert "accept" in v.detail


@pytest.mark.parametrize("status", FAILING)
def test_failing_the_same_way_is_as_expected(status):
    v = verdict_of(record(status, "unsupported_device"), BaselineEntry(status, "unsupported_device"))
    assert v.verdict == "as_expected"


@pytest.mark.parametrize(("was", "now"), [(a, b) for a in FAILING for b in FAILING if a != b])
def test_failing_with_another_status_is_changed(was, now):
    v = verdict_of(record(now, "other"), BaselineEntry(was, "other"))
    assert v.verdict == "changed" and v.fails_gate
    assert (v.was, v.now) == (f"{was} (other)", f"{now} (other)")


@pytest.mark.parametrize(("was", "now"), [("unexpected_kwarg", "conflicting_kwargs"), (None, "other"), ("other", None)])
def test_failing_with_the_same_status_and_another_reason_is_changed(was, now):
    v = verdict_of(record("construct_error", now), BaselineEntry("construct_error", was))
    assert v.verdict == "changed"


def test_a_speedup_drop_beyond_the_tolerance_is_slower():
    v = verdict_of(
        record(speedup={"fused/foreach": 1.5, "fused/forloop": 3.0}),
        BaselineEntry("ok", speedup={"fused/foreach": 2.0, "fused/forloop": 3.0}),
        tolerance=0.2,
    )
    assert v.verdict == "slower" and v.fails_gate
    assert "fused/foreach 1.50x < 2.00x" in v.detail and "fused/forloop" not in v.detail


@pytest.mark.parametrize("now", [1.61, 2.0, 5.0])
def test_a_speedup_within_the_tolerance_or_faster_is_as_expected(now):
    v = verdict_of(
        record(speedup={"fused/forloop": now}), BaselineEntry("ok", speedup={"fused/forloop": 2.0}), tolerance=0.2
    )
    assert v.verdict == "as_expected"


def test_speedups_measured_only_once_are_not_compared():
    assert (
        verdict_of(record(speedup={"fused/foreach": 0.1}), BaselineEntry("ok", speedup={"fused/forloop": 9.0})).verdict
        == "as_expected"
    )
    assert verdict_of(record(), BaselineEntry("ok", speedup={"fused/forloop": 9.0})).verdict == "as_expected"


@pytest.mark.parametrize("status", STATUSES)
def test_a_cell_without_a_baseline_entry_is_new_and_passes(status):
    v = verdict_of(record(status), None)
    assert (v.verdict, v.was) == ("new", None) and not v.fails_gate


@pytest.mark.parametrize("was", ["ok", *FAILING])
def test_skipped_for_an_absent_device_after_a_real_outcome_is_no_device_and_passes(was):
    now = record("skipped", "unsupported_device", error_message="Device cuda is not available.")
    v = verdict_of(now, BaselineEntry(was))
    assert v.verdict == "no_device" and not v.fails_gate
    assert "cuda is not available" in v.detail


@pytest.mark.parametrize("was", ["ok", *FAILING])
def test_a_package_gone_after_a_real_outcome_is_not_run_and_fails_the_gate(was):
    message = "bitsandbytes is not installed: pip install bitsandbytes"
    now = record("skipped", "missing_dependency", error_message=message)
    v = verdict_of(now, BaselineEntry(was))
    assert v.verdict == "not_run" and v.fails_gate
    assert v.cause == "bitsandbytes is not installed"


def test_skipped_both_times_is_as_expected():
    assert (
        verdict_of(record("skipped", "missing_dependency"), BaselineEntry("skipped", "missing_dependency")).verdict
        == "as_expected"
    )


@pytest.mark.parametrize("status", ["ok", *FAILING])
def test_running_a_cell_the_baseline_only_saw_skipped_is_new(status):
    assert verdict_of(record(status), BaselineEntry("skipped", "unsupported_device")).verdict == "new"


@pytest.mark.parametrize("tolerance", [-0.1, 1.0, 3])
def test_a_tolerance_outside_zero_to_one_is_refused(tolerance):
    with pytest.raises(HarnessError, match="tolerance must be a fraction"):
        judge([record()], {}, speedup_tolerance=tolerance)


def test_judge_keeps_the_records_order_and_ignores_baseline_cells_not_run():
    records = [record(optimizer="b.Opt"), record(optimizer="a.Opt")]
    baseline = {"gone.Opt-cpu-float32-plain-direct": BaselineEntry("ok")}
    assert [v.id for v in judge(records, baseline, speedup_tolerance=0.2)] == [r.id for r in records]


def test_sort_verdicts_puts_regressions_first():
    verdicts = [Verdict(str(i), name, None, "ok", "") for i, name in enumerate(reversed(VERDICTS))]
    assert [v.verdict for v in sort_verdicts(verdicts)] == list(VERDICTS)
    assert VERDICTS[:2] == ("lost", "regression")
    assert VERDICTS[0] in GATE_FAILING and VERDICTS[-1] == "as_expected"


# ----------------------------------------------------------------------------------------- properties

verdicts_strategy = st.lists(
    st.builds(
        Verdict,
        id=st.text(max_size=5),
        verdict=st.sampled_from(VERDICTS),
        was=st.none(),
        now=st.just("ok"),
        detail=st.just(""),
    ),
    max_size=20,
)


@given(verdicts_strategy)
def test_the_gate_fails_exactly_when_a_verdict_is_gate_failing(verdicts):
    assert gate_failed(verdicts) == any(v.verdict in GATE_FAILING for v in verdicts)
    counts = count_verdicts(verdicts)
    assert list(counts) == list(VERDICTS)
    assert sum(counts.values()) == len(verdicts)
    assert all(counts[name] == sum(v.verdict == name for v in verdicts) for name in VERDICTS)


@st.composite
def runs(draw) -> list[Record]:
    names = draw(st.lists(st.sampled_from(["AdamW", "SGD", "Lion", "GrokAdamW", "AdamW8bit"]), unique=True, min_size=1))
    records = []
    for name in names:
        status = draw(st.sampled_from(STATUSES))
        reason = None if status == "ok" else draw(st.none() | st.sampled_from(REASONS))
        speedup = draw(
            st.none()
            | st.fixed_dictionaries({}, optional={k: st.floats(0.01, 100) for k in ("fused/foreach", "fused/forloop")})
        )
        records.append(record(status, reason, optimizer=f"pkg.{name}", speedup=speedup))
    return records


@settings(max_examples=40, deadline=None)
@given(runs(), st.floats(0, 0.99))
def test_a_run_judged_against_its_own_accepted_baseline_is_all_as_expected(records, tolerance):
    with tempfile.TemporaryDirectory() as folder:
        accept(records, Path(folder))
        verdicts = judge(records, load_baselines(records, Path(folder)), speedup_tolerance=tolerance)
    assert [v.verdict for v in verdicts] == ["as_expected"] * len(records)
    assert not gate_failed(verdicts)


@settings(max_examples=40, deadline=None)
@given(runs(), runs())
def test_after_accepting_a_run_every_failing_verdict_goes_away(before, after):
    with tempfile.TemporaryDirectory() as folder:
        accept(before, Path(folder))
        first = judge(after, load_baselines(after, Path(folder)), speedup_tolerance=0.2)
        accept(after, Path(folder))
        second = judge(after, load_baselines(after, Path(folder)), speedup_tolerance=0.2)
    assert not gate_failed(second)
    # Only a cell skipped for its device can still differ (accept keeps the other machine's outcome), and it
    # never fails the gate; a package gone is accepted as gone.
    assert all(v.verdict in ("as_expected", "no_device") for v in second)
    assert len(first) == len(after)
