"""`harness bisect`: which release of a package changed a cell's outcome?

List the package's releases between OLD and NEW as pip sees them (so any configured index works),
run the selected cells at both ends, and for every cell whose outcome (status and reason) differs,
binary-search the last release with OLD's outcome and the first with NEW's. Each probed release is a
cached environment (`harness.environments`): a wheel-only package is layered over the current
interpreter and never reinstalls torch. Probes are shared: one probe runs every cell still searched.

The search assumes one change. When the releases probed (for any cell: probes are shared) show a cell's
outcome changing more than once, or a third outcome (a crash, say, or a release that cannot be installed),
its answer says it is not monotone (`monotone: false`), names each change, and `bisect.md` lists every
probed release with its outcome.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from harness.cells import Cell, Record
from harness.environments import (
    BuiltEnvironment,
    Environment,
    EnvironmentBuildError,
    ensure_environment,
    find_environment,
)
from harness.errors import HarnessError
from harness.report.files import write_atomically

NOT_INSTALLABLE = "not_installable"
"""The outcome of a release pip cannot install here (then no cell of it ran)."""

LOST = "lost"
"""The outcome of a selected cell that left no record in a probe."""

Outcomes = dict[str, str]
"""cell id -> outcome (`ok`, `step_error (other)`, ...) at one release."""


class BisectInputError(HarnessError):
    """A bad package, version or selection: told in one line, exit status 2."""


@dataclass(frozen=True)
class CellBisection:
    """The answer for one cell whose outcome differs between OLD and NEW."""

    cell: str
    package: str
    from_: str
    to: str
    outcome_from: str
    outcome_to: str
    last_old: str | None
    first_new: str | None
    tried: dict[str, str]
    """version -> outcome, for every release probed, in release order."""
    monotone: bool = True
    """Whether the probed outcomes, in release order, change once (from OLD's to NEW's); releases not probed
    may still hide more changes."""
    note: str = ""
    """Why the answer is not monotone, naming each change among the probed releases; "" when it is."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as `bisect.json` writes them (`from_` is `from` there)."""
        fields = asdict(self)
        return {("from" if key == "from_" else key): value for key, value in fields.items()}


@dataclass
class Probes:
    """Runs the cells at a release once, keeps the outcomes, and counts the environments it built."""

    run: Callable[[str, Sequence[str]], Outcomes]
    """(version, cell ids) -> outcomes; the side effect (building, running) lives here."""
    seen: dict[str, Outcomes] = field(default_factory=dict)

    def at(self, version: str, cells: Sequence[str]) -> Outcomes:
        missing = [c for c in cells if c not in self.seen.get(version, {})]
        if missing:
            self.seen.setdefault(version, {}).update(self.run(version, missing))
        return self.seen[version]


# --- the search (pure, given the probes) ----------------------------------------------------------------


def bisect_cell(cell: str, versions: Sequence[str], probes: Probes, still: Sequence[str]) -> tuple[str, str]:
    """(last release with OLD's outcome, first with NEW's) for one cell over `versions`.

    `versions[0]` is OLD and `versions[-1]` NEW, both already probed. The first search assumes the old
    outcome holds up to some release and then stops; the second, when the release after that one does
    not show NEW's outcome, searches on for the first that does. `still` are the cells a probe runs.
    """
    old, new = probes.seen[versions[0]][cell], probes.seen[versions[-1]][cell]

    def outcome(index: int) -> str:
        return probes.at(versions[index], still).get(cell, LOST)

    last_old = _boundary(0, len(versions) - 1, lambda index: outcome(index) != old) - 1
    first = last_old + 1
    if outcome(first) != new:  # a third outcome sits at the boundary: find where NEW's begins
        first = _boundary(first, len(versions) - 1, lambda index: outcome(index) == new)
    return versions[last_old], versions[first]


def monotony(tried: Mapping[str, str]) -> tuple[bool, str]:
    """(whether the outcomes, in release order, change just once; else a note naming each change).

    `tried` maps each probed release, oldest first, to the cell's outcome there; the first is OLD, the last NEW.
    """
    versions = list(tried)
    changes = [(a, b) for a, b in itertools.pairwise(versions) if tried[a] != tried[b]]
    if len(changes) <= 1:
        return True, ""
    old, new = versions[0], versions[-1]
    named = "; ".join(f"{a} -> {b}: {tried[a]} -> {tried[b]}" for a, b in changes)
    note = f"not monotone: the probed outcomes change {len(changes)} times ({named})"
    odd = list(dict.fromkeys(o for o in tried.values() if o not in (tried[old], tried[new])))
    if odd:
        note += f"; {', '.join(odd)} is neither {old}'s outcome nor {new}'s"
    return False, note + ". last_old and first_new are the change the search met; releases not probed may hide more."


def _boundary(lo: int, hi: int, changed: Callable[[int], bool]) -> int:
    """The first index in (lo, hi] where `changed` holds, given it does not at `lo` and does at `hi`."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if changed(mid):
            hi = mid
        else:
            lo = mid
    return hi


def bisect(
    package: str, versions: Sequence[str], cells: Sequence[str], probes: Probes
) -> tuple[list[CellBisection], list[str]]:
    """Probe both ends, then search every cell whose outcome differs; (answers, cells that did not differ)."""
    old, new = versions[0], versions[-1]
    probes.at(old, cells)
    probes.at(new, cells)
    differing = [c for c in cells if probes.seen[old].get(c, LOST) != probes.seen[new].get(c, LOST)]
    for cell in differing:  # a cell absent at one end but present at the other still has an outcome: lost
        probes.seen[old].setdefault(cell, LOST)
        probes.seen[new].setdefault(cell, LOST)
    boundaries = {cell: bisect_cell(cell, versions, probes, differing) for cell in differing}
    answers = []
    for cell, (last_old, first_new) in boundaries.items():  # after every search: each sees all the probes
        tried = {v: probes.seen[v][cell] for v in versions if cell in probes.seen.get(v, {})}
        monotone, note = monotony(tried)
        answers.append(
            CellBisection(
                cell=cell,
                package=package,
                from_=old,
                to=new,
                outcome_from=probes.seen[old][cell],
                outcome_to=probes.seen[new][cell],
                last_old=last_old,
                first_new=first_new,
                tried=tried,
                monotone=monotone,
                note=note,
            )
        )
    return answers, [c for c in cells if c not in differing]


# --- releases, as pip sees them ---------------------------------------------------------------------------


def available_versions(package: str, *, python: str = sys.executable) -> list[str]:
    """Every release of `package` that pip's configured indexes offer, oldest first."""
    result = subprocess.run(
        [python, "-m", "pip", "index", "versions", package, "--pre", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"^Available versions:\s*(.*)$", result.stdout, re.M)
    if result.returncode != 0 or match is None:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
        why = errors[0].removeprefix("ERROR: ") if errors else "pip lists no release of it"
        raise BisectInputError(
            f"unknown package {package!r}: {why.rstrip('.')}. Check the name with `pip index versions {package}`."
        )
    versions = [v.strip() for v in match.group(1).split(",") if v.strip()]
    return sorted(dict.fromkeys(versions), key=_version)


def releases_between(package: str, old: str, new: str, available: Sequence[str]) -> list[str]:
    """OLD, NEW and the releases between them, oldest first; OLD or NEW not released is an error.

    A local version (`2.13.0+cpu`) and its public one are one release; pre-releases count only when
    OLD or NEW is one.
    """
    for name, version in (("--from", old), ("--to", new)):
        if version not in available:
            near = [v for v in available if v.startswith(version.rsplit(".", 1)[0])][-5:]
            hint = f" Releases near it: {', '.join(near)}." if near else ""
            raise BisectInputError(f"{package} has no release {version!r} ({name}).{hint}")
    lo, hi = _version(old), _version(new)
    if lo >= hi:
        raise BisectInputError(f"--from {old} is not older than --to {new}; give the older release first.")
    pre = lo.is_prerelease or hi.is_prerelease
    between: dict[Version, str] = {}
    for version in available:
        parsed = _version(version)
        if (
            lo <= parsed <= hi
            and (pre or not parsed.is_prerelease)
            and parsed.public not in {v.public for v in between}
        ):
            between[parsed] = version
    between[lo], between[hi] = old, new
    return [between[v] for v in sorted(between)]


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise BisectInputError(f"{text!r} is not a version (PEP 440), e.g. 0.49.2.") from exc


# --- selecting and running cells ---------------------------------------------------------------------------


def select_cells(cells: Sequence[Cell], keyword: str | None) -> list[str]:
    """Ids of the cells a pytest `-k` expression selects (substring match, case-insensitive, as pytest)."""
    if not keyword:
        return [cell.id for cell in cells]
    from _pytest.mark.expression import Expression

    try:
        expression = Expression.compile(keyword)
    except SyntaxError as exc:  # pytest's own ParseError, or SyntaxError in newer releases, both subclass it
        raise BisectInputError(f"-k {keyword!r} is not a pytest -k expression: {exc}.") from exc
    chosen = []
    for cell in cells:
        text = cell.id.lower()

        def matches(word: str, /, **_: Any) -> bool:
            return word.lower() in text  # noqa: B023 - used at once, inside this iteration

        if expression.evaluate(matches):
            chosen.append(cell.id)
    return chosen


def outcome_of(record: Record) -> str:
    """A cell's outcome as bisect compares it: the status, and the reason when there is one."""
    return f"{record.status} ({record.reason})" if record.reason else record.status


def run_probe(built: BuiltEnvironment, matrix: Path, cells: Sequence[str], out: Path, workers: str) -> Outcomes:
    """Run `cells` of the matrix inside `built`; their outcomes (a cell without a record is `lost`)."""
    from harness.records import read_records, results_path

    keyword = " or ".join(cells)
    args = ["run", str(matrix), "-k", keyword, "--out", str(out), "--baselines", str(out), "-n", workers]
    code = built.run_harness(args)
    if code not in (0, 1) or not results_path(out).exists():
        return dict.fromkeys(cells, f"crashed (harness exit {code})")
    found = {r.id: outcome_of(r) for r in read_records(results_path(out))}
    return {cell: found.get(cell, LOST) for cell in cells}


# --- the command ----------------------------------------------------------------------------------------------


def bisect_command(args: argparse.Namespace) -> int:
    """`python -m harness bisect`: 0 when the search completed (whatever it found), 2 for bad input."""
    from harness.expand import expand_matrix
    from harness.spec import load_matrix

    started = time.perf_counter()
    matrix = load_matrix(args.matrix)
    cells = select_cells(expand_matrix(matrix), args.keyword)
    if not cells:
        raise BisectInputError(f"-k {args.keyword!r} selects no cell of {args.matrix}; `harness list` shows their ids.")
    over = find_environment(matrix, args.env) if args.env else None  # its pins, and whether it is isolated
    base = dict(over.pins) if over is not None else {}
    isolated = over is not None and over.isolated
    versions = releases_between(args.package, args.old, args.new, available_versions(args.package))
    out = Path(args.out)
    built_count = [0]

    def probe(version: str, wanted: Sequence[str]) -> Outcomes:
        environment = Environment(f"{args.package}-{version}", {**base, args.package: version}, isolated=isolated)
        try:
            built = ensure_environment(environment)
        except EnvironmentBuildError as exc:
            if version in (args.old, args.new):
                raise  # an end that cannot be installed is bad input, not an answer
            print(f"[bisect] {args.package} {version}: {exc}", file=sys.stderr)
            return dict.fromkeys(wanted, NOT_INSTALLABLE)
        built_count[0] += not built.reused
        print(f"[bisect] {args.package} {version}: running {len(wanted)} cells", file=sys.stderr, flush=True)
        return run_probe(built, Path(args.matrix), wanted, out / "probes" / version, str(args.workers))

    probes = Probes(probe)
    answers, unchanged = bisect(args.package, versions, cells, probes)
    seconds = time.perf_counter() - started
    summary = {
        "package": args.package,
        "from": args.old,
        "to": args.new,
        "releases": versions,
        "cells": len(cells),
        "unchanged": len(unchanged),
        "probed": [v for v in versions if v in probes.seen],
        "environments_built": built_count[0],
        "wall_s": round(seconds, 1),
    }
    write_bisect(out, answers, summary)
    print(render_table(answers, summary))
    print(f"wrote {out / 'bisect.json'} and {out / 'bisect.md'}")
    return 0


def write_bisect(out: Path, answers: Sequence[CellBisection], summary: Mapping[str, Any]) -> None:
    """`bisect.json` and `bisect.md` in `out`, each written whole or not at all."""
    write_atomically(out / "bisect.json", json.dumps([a.to_dict() for a in answers], indent=2) + "\n")
    write_atomically(out / "bisect.md", render_markdown(answers, summary))


def _headline(summary: Mapping[str, Any]) -> str:
    return (
        f"{summary['package']} {summary['from']} -> {summary['to']}: {len(summary['releases'])} releases, "
        f"{len(summary['probed'])} probed, {summary['environments_built']} environments built, "
        f"{summary['wall_s']} s; {summary['cells']} cells, {summary['unchanged']} with the same outcome at both ends"
    )


def render_table(answers: Sequence[CellBisection], summary: Mapping[str, Any]) -> str:
    """The plain-text table the command prints."""
    rows = [("cell", f"at {summary['from']}", f"at {summary['to']}", "last_old", "first_new", "tried")]
    for a in answers:
        tried = ", ".join(f"{v}={o}" for v, o in a.tried.items())
        rows.append((a.cell, a.outcome_from, a.outcome_to, a.last_old or "—", a.first_new or "—", tried))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [_headline(summary)]
    for row in rows:
        lines.append("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False)) + "  " + row[5])
    lines += [f"  note: {a.cell}: {a.note}" for a in answers if a.note]
    if not answers:
        lines.append("no selected cell changed outcome between the two releases.")
    return "\n".join(lines)


def render_markdown(answers: Sequence[CellBisection], summary: Mapping[str, Any]) -> str:
    lines = [f"# bisect: {summary['package']} {summary['from']} -> {summary['to']}", "", _headline(summary) + ".", ""]
    if not answers:
        return "\n".join([*lines, "No selected cell changed outcome between the two releases.", ""])
    lines += [
        f"| cell | at {summary['from']} | at {summary['to']} | last_old | first_new | tried |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a in answers:
        tried = "<br>".join(f"{v}: {o}" for v, o in a.tried.items())
        ends = f"{a.outcome_from} | {a.outcome_to} | {a.last_old or '—'} | **{a.first_new or '—'}**"
        lines.append(f"| `{a.cell}` | {ends} | {tried} |")
    lines += ["", *[f"- `{a.cell}`: {a.note}" for a in answers if a.note]]
    for a in answers:
        if not a.monotone:
            lines += ["", f"## Not monotone: `{a.cell}`", "", "| release | outcome |", "| --- | --- |"]
            previous = None
            for version, outcome in a.tried.items():
                changed = previous is not None and outcome != previous
                lines.append(f"| {version} | {f'**{outcome}** (changed)' if changed else outcome} |")
                previous = outcome
    return "\n".join(lines) + "\n"
