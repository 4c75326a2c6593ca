"""Expand a `Matrix` into its cells with GitHub Actions `strategy.matrix` semantics, and split cells into shards."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.cells import AXES, Cell, check_scenario
from harness.checks import check_builder, check_device, check_dtype
from harness.errors import HarnessError, MatrixError
from harness.frameworks import pairs
from harness.spec import Matrix, OptimizerEntry
from harness.wording import quote, unknown

Expander = Callable[[str], list[str]]

_AXIS_LISTS = {
    "device": "devices",
    "dtype": "dtypes",
    "kwargs": "kwargs",
    "builder": "builders",
    "scenario": "scenarios",
}


@dataclass
class _Combination:
    """A cell in the making: its axis values, where it came from, and the extra keys includes gave it."""

    entry: OptimizerEntry | None
    values: dict[str, str]
    line: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def expand_matrix(matrix: Matrix, *, expand_optimizer: Expander | None = None) -> list[Cell]:
    """Every cell of `matrix`: the product of its axes, less `exclude`, extended or added to by `include`.

    `expand_optimizer` turns an optimizer entry as written (`torch.optim:*`, `AdamW`) into concrete
    names; by default `harness.resolve.expand_optimizer`, or the name itself when that is unavailable.
    """
    expand = expand_optimizer or _default_expander()
    members = _members(matrix, expand)
    combinations = [
        _Combination(entry, dict(zip(AXES, (name, *rest), strict=False)), entry.line)
        for (entry, name), *rest in itertools.product(
            members, matrix.devices, matrix.dtypes, matrix.kwargs, matrix.builders, matrix.scenarios
        )
    ]
    for index, rule in enumerate(matrix.exclude):
        _check_exclude(matrix, members, index, rule)
        combinations = [c for c in combinations if not _matches(rule, c)]
    originals = list(combinations)
    for index, rule in enumerate(matrix.include):
        combinations += _apply_include(matrix, members, originals, index, rule, expand)
    # A framework's own names (`transformers:adamw_torch`) go only with its builder, and its builder only with them.
    combinations = [c for c in combinations if pairs(c.values["optimizer"], c.values["builder"])]
    return _cells(matrix, combinations)


def shard_cells(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard `index` of `count` (1-based), chosen by a hash of each id: n shards cover every cell once."""
    if count < 1 or not 1 <= index <= count:
        raise HarnessError(f"shard {index}/{count} does not exist; the index runs from 1 to the shard count, e.g. 2/4.")
    return [cell for cell in cells if _shard_of(cell.id, count) == index - 1]


def parse_shard(text: str) -> tuple[int, int]:
    """`"2/4"` -> `(2, 4)`; anything else raises `HarnessError` saying what a shard looks like."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise HarnessError(f"--shard takes INDEX/COUNT, e.g. --shard 2/4, not {quote(text)}.")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise HarnessError(f"--shard {text}: the index runs from 1 to the shard count, e.g. 1/{max(count, 1)}.")
    return index, count


def _shard_of(cell_id: str, count: int) -> int:
    digest = hashlib.sha256(cell_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def _default_expander() -> Expander:
    try:
        from harness.resolve import expand_optimizer
    except ImportError:
        return lambda name: [name]
    return expand_optimizer


def _expand_name(matrix: Matrix, expand: Expander, name: str, line: int | None) -> list[str]:
    try:
        names = list(dict.fromkeys(expand(name)))
    except MatrixError:
        raise
    except HarnessError as exc:
        raise MatrixError(str(exc), path=matrix.path, line=line) from exc
    if not names:
        raise MatrixError(f"the optimizer {quote(name)} expands to no optimizer at all.", path=matrix.path, line=line)
    return names


def _members(matrix: Matrix, expand: Expander) -> list[tuple[OptimizerEntry, str]]:
    """Each optimizer entry paired with each concrete name it expands to, in declaration order.

    An optimizer that a family (`torch.optim:*`) holds and an entry also names on its own belongs to
    that entry alone, so a family can take one learning rate and a few members their own.
    """
    members = [
        (entry, name) for entry in matrix.optimizers for name in _expand_name(matrix, expand, entry.name, entry.line)
    ]
    named_alone = {name for entry, name in members if not _is_family(entry.name)}
    return [(entry, name) for entry, name in members if not (_is_family(entry.name) and name in named_alone)]


def _is_family(name: str) -> bool:
    """A wildcard entry such as `torch.optim:*` or `timm:*lion*`, as opposed to one optimizer."""
    return any(ch in name for ch in "*?[")


def _optimizer_matches(pattern: str, entry: OptimizerEntry | None, name: str) -> bool:
    """An exclude/include optimizer names the concrete name, the entry as written, or a glob over names."""
    return pattern == name or (entry is not None and pattern == entry.name) or fnmatch.fnmatchcase(name, pattern)


def _matches(rule: dict[str, Any], combination: _Combination) -> bool:
    """Whether every axis key of `rule` agrees with `combination` (a partial match)."""
    for axis in AXES:
        if axis not in rule:
            continue
        if axis == "optimizer":
            if not _optimizer_matches(rule[axis], combination.entry, combination.values[axis]):
                return False
        elif rule[axis] != combination.values[axis]:
            return False
    return True


def _check_exclude(matrix: Matrix, members: list[tuple[OptimizerEntry, str]], index: int, rule: dict[str, Any]) -> None:
    """An exclude may only name values the matrix has: anything else is a typo that would exclude nothing."""
    for axis, value in rule.items():
        line = matrix.line_of("exclude", index, axis)
        if axis == "optimizer":
            # A glob may aim at a family whose package is not installed here (it stays one `skipped` cell).
            unexpanded = _is_family(value) and any(_is_family(name) for _, name in members)
            if not unexpanded and not any(_optimizer_matches(value, entry, name) for entry, name in members):
                raise MatrixError(
                    f"`exclude[{index}].optimizer`: {_no_optimizer(value, members)}", path=matrix.path, line=line
                )
        else:
            choices = list(getattr(matrix, _AXIS_LISTS[axis]))
            if value not in choices:
                raise MatrixError(
                    f"`exclude[{index}].{axis}`: {_not_on_axis(axis, value, choices)}", path=matrix.path, line=line
                )


def _apply_include(
    matrix: Matrix,
    members: list[tuple[OptimizerEntry, str]],
    originals: list[_Combination],
    index: int,
    rule: dict[str, Any],
    expand: Expander,
) -> list[_Combination]:
    """Extend the original combinations `rule` matches with its extra keys, or return the new ones it adds."""
    _check_include_values(matrix, index, rule)
    extra = {key: value for key, value in rule.items() if key not in AXES}
    matched = [combination for combination in originals if _matches(rule, combination)]
    for combination in matched:
        # Original axis values are never overwritten (`_matches` guarantees it); extra keys an earlier
        # include added may be, as GitHub documents.
        combination.extra.update(extra)
    if matched:
        return []
    line = matrix.line_of("include", index)
    # `scenario` may go unnamed (matrices older than the axis): the new combination runs in every scenario.
    missing = [axis for axis in AXES if axis not in rule and axis != "scenario"]
    if missing:
        raise MatrixError(
            f"`include[{index}]` matches no combination, so it adds a new one, and a new combination must name "
            f"every axis; it lacks {', '.join(missing)}.{_unmatched_hint(matrix, members, rule)}",
            path=matrix.path,
            line=line,
        )
    pattern = rule["optimizer"]
    chosen: list[tuple[OptimizerEntry | None, str]] = [
        (entry, name) for entry, name in members if _optimizer_matches(pattern, entry, name)
    ]
    if not chosen:
        names = _expand_name(matrix, expand, pattern, matrix.line_of("include", index, "optimizer"))
        chosen = [(None, name) for name in names]
    scenarios = [rule["scenario"]] if "scenario" in rule else list(matrix.scenarios)
    return [
        _Combination(
            entry,
            {**{axis: rule[axis] for axis in AXES if axis in rule}, "optimizer": name, "scenario": scenario},
            line,
            dict(extra),
        )
        for entry, name in chosen
        for scenario in scenarios
    ]


def _check_include_values(matrix: Matrix, index: int, rule: dict[str, Any]) -> None:
    """Values an include may add anew must still be valid: a known variant, a dtype, a builder, a device."""
    if "kwargs" in rule and rule["kwargs"] not in matrix.kwargs:
        raise MatrixError(
            f"`include[{index}].kwargs`: {_not_on_axis('kwargs', rule['kwargs'], list(matrix.kwargs))}",
            path=matrix.path,
            line=matrix.line_of("include", index, "kwargs"),
        )
    checks = (
        ("dtype", check_dtype),
        ("builder", check_builder),
        ("device", check_device),
        ("scenario", check_scenario),
    )
    for axis, check in checks:
        problem = check(rule[axis]) if axis in rule else None
        if problem:
            raise MatrixError(
                f"`include[{index}].{axis}`: {problem}", path=matrix.path, line=matrix.line_of("include", index, axis)
            )


def _unmatched_hint(matrix: Matrix, members: list[tuple[OptimizerEntry, str]], rule: dict[str, Any]) -> str:
    """Why an include matched nothing, when one of its values is on no combination."""
    for axis, value in rule.items():
        if axis == "optimizer" and not any(_optimizer_matches(value, entry, name) for entry, name in members):
            return f" Its optimizer: {_no_optimizer(value, members)}"
        if axis in _AXIS_LISTS and value not in (choices := list(getattr(matrix, _AXIS_LISTS[axis]))):
            return f" Its {axis}: {_not_on_axis(axis, value, choices)}"
    return ""


def _not_on_axis(axis: str, value: str, choices: list[str]) -> str:
    kind = "variant" if axis == "kwargs" else axis
    return unknown(kind, value, choices, where=f" in `{_AXIS_LISTS[axis]}`")


def _no_optimizer(pattern: str, members: list[tuple[OptimizerEntry, str]]) -> str:
    names = list(dict.fromkeys([name for _, name in members] + [entry.name for entry, _ in members]))
    return unknown(
        "optimizer",
        pattern,
        names,
        where=" in the matrix",
        shown=8,
        also=" (a concrete optimizer, an entry as written, or a glob such as '*Adam*')",
    )


def _cells(matrix: Matrix, combinations: list[_Combination]) -> list[Cell]:
    cells: list[Cell] = []
    first_line: dict[str, int | None] = {}
    for combination in combinations:
        values = combination.values
        defaults = combination.entry.defaults if combination.entry else {}
        cell = Cell(
            optimizer=values["optimizer"],
            device=values["device"],
            dtype=values["dtype"],
            variant=values["kwargs"],
            kwargs={**defaults, **matrix.kwargs[values["kwargs"]]},
            builder=values["builder"],
            extra=dict(combination.extra),
            scenario=values["scenario"],
        )
        if cell.id in first_line:
            raise MatrixError(
                f"the cell {quote(cell.id)} comes from line {first_line[cell.id]} "
                f"and again from line {combination.line}; "
                "every cell must be unique, so remove one of the two (an entry written twice under two names, "
                "or an include that repeats a combination).",
                path=matrix.path,
                line=combination.line,
            )
        first_line[cell.id] = combination.line
        cells.append(cell)
    return cells
