"""The release gate: each record judged against its cell's accepted outcome in the baseline.

Verdicts, most severe first (`harness.vocabulary.VERDICTS`):

- `lost`: the cell was selected but left no record (its runner died before writing one).
- `regression`: the cell was `ok` and now fails.
- `fixed`: the cell was failing and is now `ok`. It fails the gate until accepted (like pytest's strict
  xfail), so a fix is never forgotten in a baseline that still expects the failure.
- `changed`: the cell was failing and now fails with another status or reason.
- `slower`: `ok` both times, but a fused speed-up measured both times fell under the baseline's by more
  than the tolerance.
- `new`: nothing to compare with: no baseline entry, or the baseline only saw the cell skipped.
- `not_run`: the cell is `skipped` now (absent device, missing package) but had a real outcome before.
  Skipping is not running, so it tells nothing about the outcome and never fails the gate.
- `as_expected`: the same outcome as accepted (including skipped both times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from harness.baseline import SPEEDUP_KEYS, BaselineEntry, bench_speedups
from harness.cells import Record
from harness.errors import HarnessError
from harness.vocabulary import GATE_FAILING, VERDICTS
from harness.vocabulary import Verdict as VerdictName
from harness.wording import first_line

__all__ = [
    "GATE_FAILING",
    "VERDICTS",
    "Verdict",
    "count_verdicts",
    "gate_failed",
    "judge",
    "judge_one",
    "sort_verdicts",
]


@dataclass(frozen=True)
class Verdict:
    """One cell's outcome against the baseline. `was`/`now` read `status` or `status (reason)`."""

    id: str
    verdict: VerdictName
    was: str | None
    now: str
    detail: str

    @property
    def fails_gate(self) -> bool:
        return self.verdict in GATE_FAILING


def outcome_label(status: str, reason: str | None) -> str:
    return f"{status} ({reason})" if reason else status


def judge(
    records: Iterable[Record], baseline: Mapping[str, BaselineEntry], *, speedup_tolerance: float
) -> list[Verdict]:
    """One verdict per record, in the records' order; baseline cells not in the records are not judged."""
    if not 0 <= speedup_tolerance < 1:
        raise HarnessError(
            f"The speed-up tolerance must be a fraction in [0, 1), such as 0.2 for 20 %; got {speedup_tolerance!r}."
        )
    return [judge_one(record, baseline.get(record.id), speedup_tolerance=speedup_tolerance) for record in records]


def judge_one(record: Record, entry: BaselineEntry | None, *, speedup_tolerance: float) -> Verdict:
    now = outcome_label(record.status, record.reason)
    if entry is None:
        return Verdict(record.id, "new", None, now, f"No accepted outcome for this cell yet; it is {now} now.")
    was = outcome_label(entry.status, entry.reason)

    def verdict(name: VerdictName, detail: str) -> Verdict:
        return Verdict(record.id, name, was, now, detail)

    if record.status == "skipped":
        if entry.status == "skipped":
            return verdict("as_expected", "Skipped, as accepted.")
        why = f": {record.error_message}" if record.error_message else ""
        return verdict("not_run", f"Was {was}; skipped this time{why}, so there is nothing to compare.")
    if entry.status == "skipped":
        return verdict("new", f"The baseline only saw this cell skipped; it ran this time and is {now}.")
    if entry.status == "ok" and record.status == "ok":
        return _compare_speedups(record, entry, verdict, speedup_tolerance)
    if entry.status == "ok":
        return verdict("regression", f"Was ok, now {now}{_error_suffix(record)}.")
    if record.status == "ok":
        return verdict("fixed", f"Was {was}, now ok: accept the new baseline if the fix is intended.")
    if (entry.status, entry.reason) != (record.status, record.reason):
        return verdict("changed", f"Was {was}, now {now}{_error_suffix(record)}.")
    return verdict("as_expected", f"Fails as accepted: {now}.")


def _compare_speedups(
    record: Record, entry: BaselineEntry, verdict: Callable[[VerdictName, str], Verdict], tolerance: float
) -> Verdict:
    now_speedups = bench_speedups(record.bench)
    old_speedups = dict(entry.speedup or {})
    drops = [
        f"{key} {now_speedups[key]:.2f}x < {old_speedups[key]:.2f}x"
        for key in SPEEDUP_KEYS
        if key in now_speedups and key in old_speedups and now_speedups[key] < old_speedups[key] * (1 - tolerance)
    ]
    if drops:
        return verdict(
            "slower", f"Fused speed-up fell more than {tolerance:.0%} under the baseline: {'; '.join(drops)}."
        )
    return verdict("as_expected", "Ok, as accepted.")


def _error_suffix(record: Record) -> str:
    parts = [part for part in (record.error_type, first_line(record.error_message).rstrip(".")) if part]
    return ": " + ": ".join(parts) if parts else ""


def gate_failed(verdicts: Iterable[Verdict]) -> bool:
    """True when any verdict fails the release gate."""
    return any(v.verdict in GATE_FAILING for v in verdicts)


def count_verdicts(verdicts: Iterable[Verdict]) -> dict[VerdictName, int]:
    """How many cells got each verdict, every verdict listed (zeros too), most severe first."""
    counts = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v.verdict] += 1
    return counts


def sort_verdicts(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Most severe first, then by cell id."""
    rank = {name: i for i, name in enumerate(VERDICTS)}
    return sorted(verdicts, key=lambda v: (rank.get(v.verdict, len(VERDICTS)), v.id))
