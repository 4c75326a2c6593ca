"""The release gate: each record judged against its cell's accepted outcome in the baseline.

Verdicts, most severe first (`harness.vocabulary.VERDICTS`):

- `lost`: the cell was selected but left no record (its runner died before writing one).
- `regression`: the cell was `ok` and now fails.
- `fixed`: the cell was failing and is now `ok`. It fails the gate until accepted (like pytest's strict
  xfail), so a fix is never forgotten in a baseline that still expects the failure.
- `changed`: the cell was failing and now fails with another status or reason.
- `slower`: `ok` both times, but a fused speed-up measured both times fell under the baseline's by more
  than the tolerance.
- `not_run`: the cell ran in the baseline (any outcome but `skipped`) and did not run now, because its package
  (or a builder's module) is not installed, or the family it came from did not expand (its package is
  absent or broken). That is what a release
  break looks like, so it fails the gate; deselect the cells with `-k`, or accept a new baseline, if you mean it.
- `new`: nothing to compare with: no baseline entry, or the baseline only saw the cell skipped. `--strict`
  fails it too, for CI that commits its baseline.
- `no_device`: skipped for what this machine lacks (its device), while the baseline holds the outcome another
  machine saw; accepting this run keeps that outcome.
- `as_expected`: the same outcome as accepted (including skipped both times).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from harness.baseline import SPEEDUP_KEYS, BaselineEntry, bench_speedups
from harness.cells import Record, cell_id
from harness.errors import HarnessError
from harness.vocabulary import GATE_FAILING, STRICT_FAILING, VERDICTS
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
    "not_run_lines",
    "sort_verdicts",
    "vanished",
]


@dataclass(frozen=True)
class Verdict:
    """One cell's outcome against the baseline. `was`/`now` read `status` or `status (reason)`."""

    id: str
    verdict: VerdictName
    was: str | None
    now: str
    detail: str
    strict: bool = False
    """Judged under `--strict`, where a `new` cell fails the gate too."""
    cause: str | None = field(default=None, compare=False)
    """Why a `not_run` cell did not run (`bitsandbytes is not installed`): the line the gate groups by."""

    @property
    def fails_gate(self) -> bool:
        return self.verdict in (STRICT_FAILING if self.strict else GATE_FAILING)


def outcome_label(status: str, reason: str | None) -> str:
    return f"{status} ({reason})" if reason else status


def judge(
    records: Iterable[Record],
    baseline: Mapping[str, BaselineEntry],
    *,
    speedup_tolerance: float,
    strict: bool = False,
) -> list[Verdict]:
    """One verdict per record, in the records' order; baseline cells not in the records are not judged here
    (`vanished` finds those a family that no longer expands left behind)."""
    if not 0 <= speedup_tolerance < 1:
        raise HarnessError(
            f"The speed-up tolerance must be a fraction in [0, 1), such as 0.2 for 20 %; got {speedup_tolerance!r}."
        )
    return [
        judge_one(record, baseline.get(record.id), speedup_tolerance=speedup_tolerance, strict=strict)
        for record in records
    ]


def judge_one(
    record: Record, entry: BaselineEntry | None, *, speedup_tolerance: float, strict: bool = False
) -> Verdict:
    now = outcome_label(record.status, record.reason)
    if entry is None:
        detail = f"No accepted outcome for this cell yet; it is {now} now."
        return Verdict(record.id, "new", None, now, detail, strict=strict)
    was = outcome_label(entry.status, entry.reason)

    def verdict(name: VerdictName, detail: str, cause: str | None = None) -> Verdict:
        return Verdict(record.id, name, was, now, detail, strict=strict, cause=cause)

    if record.status == "skipped":
        if entry.status == "skipped":
            return verdict("as_expected", "Skipped, as accepted.")
        why = first_line(record.error_message) or "skipped"
        if not release_skip(record):
            return verdict("no_device", f"Was {was}; skipped on this machine: {why}.")
        cause = skip_cause(record)
        return verdict("not_run", f"Was {was}; did not run this time: {why}.", cause)
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


def release_skip(record: Record) -> bool:
    """Whether a skipped cell was skipped for what a release changes (a package not installed), not for what
    this machine lacks (its device, or the device's room for the model)."""
    return record.status == "skipped" and record.reason == "missing_dependency"


def skip_cause(record: Record) -> str:
    """`bitsandbytes is not installed`: a skip's first line without its `: pip install ...` hint."""
    line = first_line(record.error_message) or outcome_label(record.status, record.reason)
    return line.split(": pip install", 1)[0].rstrip(".")


def vanished(
    records: Iterable[Record], baselines: Mapping[str, Mapping[str, BaselineEntry]], *, strict: bool = False
) -> list[Verdict]:
    """`not_run` verdicts for the baseline cells a family left behind when it did not expand this time.

    A family (`bitsandbytes.optim:*8bit`) whose package is absent or broken stands unexpanded in the matrix: its
    one record stands for every cell it expanded to before. `baselines` maps each record's baseline key
    (`harness.baseline.record_environment_key`) to that file's entries.
    """
    from harness.baseline import record_environment_key

    records = list(records)
    have = {record.id for record in records}
    found: dict[str, Verdict] = {}
    for record in records:
        family = _family_pattern(record.optimizer)
        if family is None or record.status == "ok":
            continue
        suffix = cell_id("", record.device, record.dtype, record.variant, record.builder, record.scenario)
        now = outcome_label(record.status, record.reason)
        cause = skip_cause(record) if record.status == "skipped" else first_line(record.error_message) or now
        for cell, entry in baselines.get(record_environment_key(record), {}).items():
            if cell in have or cell in found or entry.status == "skipped" or not cell.endswith(suffix):
                continue
            if fnmatch.fnmatchcase(cell[: -len(suffix)], family):
                was = outcome_label(entry.status, entry.reason)
                detail = f"Was {was}; did not run this time: {record.optimizer} is {now}: {cause}."
                found[cell] = Verdict(cell, "not_run", was, "not run", detail, strict=strict, cause=cause)
    return list(found.values())


def _family_pattern(optimizer: str) -> str | None:
    """The glob over concrete optimizer names that a family entry stands for; None for a concrete name."""
    if ":" not in optimizer:
        return None
    module, pattern = optimizer.split(":", 1)
    if module == "timm":
        return f"timm:{pattern}" if any(ch in pattern for ch in "*?[") else None
    return f"{module}.{pattern}"


def not_run_lines(verdicts: Iterable[Verdict]) -> list[str]:
    """One line per cause: `3 cells that ran in the baseline did not run: bitsandbytes is not installed`."""
    causes = Counter(v.cause or "skipped" for v in verdicts if v.verdict == "not_run")
    return [
        f"{n} {'cells' if n != 1 else 'cell'} that ran in the baseline did not run: {cause}"
        for cause, n in sorted(causes.items(), key=lambda item: (-item[1], item[0]))
    ]


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
    """True when any verdict fails the release gate (`new` too, for verdicts judged under `--strict`)."""
    return any(v.fails_gate for v in verdicts)


def count_verdicts(verdicts: Iterable[Verdict]) -> dict[VerdictName, int]:
    """How many cells got each verdict, every verdict listed (zeros too), most severe first."""
    counts: dict[VerdictName, int] = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        counts[v.verdict] += 1
    return counts


def sort_verdicts(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Most severe first, then by cell id."""
    rank: dict[str, int] = {name: i for i, name in enumerate(VERDICTS)}
    return sorted(verdicts, key=lambda v: (rank.get(v.verdict, len(VERDICTS)), v.id))
