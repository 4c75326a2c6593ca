"""Where things go on the page: the order of rows and columns, and the matrix's header groups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.baseline import device_kind
from harness.cells import Record
from harness.report.formatting import rank
from harness.vocabulary import BUILDERS, SCENARIOS

# Known values first in this order, then any other value alphabetically: a report reads the same every run.
FAMILY_ORDER = ("torch", "bitsandbytes", "grokadamw", "timm")
AXIS_ORDER: dict[str, tuple[str, ...]] = {
    "device": ("cpu",),
    "dtype": ("float32",),
    "variant": ("plain", "fused", "foreach", "fused_false"),
    "builder": BUILDERS,
    "scenario": SCENARIOS,
}
MATRIX_COLUMN_AXES = ("device", "dtype", "variant", "builder")
SCENARIO_AXIS = "scenario"
"""The last column level, where the records hold more than one scenario: scenario cells that share a device x dtype x
variant x builder slot each get a column of their own."""


def axis_sort_key(axis: str, value: str) -> tuple[int, str]:
    """Where a value of a matrix axis (`device`, `dtype`, `variant`, `builder`) goes among its column headers."""
    if axis == "device":  # every index of a kind together: cpu, cuda, cuda:0, cuda:1, mps
        kind = device_kind(value)
        return rank(kind, AXIS_ORDER["device"])[0], f"{kind}\0{value}"
    return rank(value, AXIS_ORDER.get(axis, ()))


def row_sort_key(record: Record) -> tuple[int, str, str, str]:
    """Matrix rows: by family (torch, bitsandbytes, grokadamw, timm, then others alphabetically), then name."""
    return (*rank(record.family, FAMILY_ORDER), record.optimizer.casefold(), record.optimizer)


def sorted_axis(axis: str, values: Iterable[str]) -> list[str]:
    return sorted(set(values), key=lambda value: axis_sort_key(axis, value))


@dataclass(frozen=True)
class Column:
    index: int
    device: str
    dtype: str
    variant: str
    builder: str
    scenario: str = "train"


@dataclass(frozen=True)
class HeaderGroup:
    label: str
    first: int
    last: int

    @property
    def span(self) -> int:
        return self.last - self.first + 1


def matrix_axes(records: Sequence[Record]) -> tuple[str, ...]:
    """The column levels: device x dtype x variant x builder, and the scenario when there is more than one."""
    several = len({record.scenario for record in records}) > 1
    return (*MATRIX_COLUMN_AXES, SCENARIO_AXIS) if several else MATRIX_COLUMN_AXES


def matrix(records: Sequence[Record]) -> dict[str, Any]:
    """Rows (optimizers, by `row_sort_key`) by columns (device x dtype x variant x builder [x scenario], by
    `axis_sort_key`): every record has a cell of its own (a repeated id: the last wins)."""
    axes = matrix_axes(records)
    keys = sorted(
        {tuple(getattr(r, axis) for axis in axes) for r in records},
        key=lambda key: tuple(axis_sort_key(axis, v) for axis, v in zip(axes, key, strict=True)),
    )
    columns = [Column(i, *key) for i, key in enumerate(keys)]
    column_of = {key: i for i, key in enumerate(keys)}
    levels: list[list[HeaderGroup]] = []
    for depth, axis in enumerate(axes):
        groups: list[HeaderGroup] = []
        for column in columns:
            prefix = keys[column.index][: depth + 1]
            if groups and keys[groups[-1].first][: depth + 1] == prefix:
                groups[-1] = HeaderGroup(groups[-1].label, groups[-1].first, column.index)
            else:
                groups.append(HeaderGroup(getattr(column, axis), column.index, column.index))
        levels.append(groups)
    cells_by_row: dict[str, list[int | None]] = {}
    for i, record in sorted(enumerate(records), key=lambda item: row_sort_key(item[1])):
        row = cells_by_row.setdefault(record.optimizer, [None] * len(columns))
        row[column_of[tuple(getattr(record, axis) for axis in axes)]] = i  # a repeated id: the last wins
    rows = [
        {"optimizer": name, "family": records[next(i for i in row if i is not None)].family, "cells": row}
        for name, row in cells_by_row.items()
    ]
    return {"columns": columns, "levels": list(zip(axes, levels, strict=True)), "rows": rows}


def filters(records: Sequence[Record]) -> dict[str, list[str]]:
    """The values each filter of the matrix offers (the scenario's where there is more than one)."""
    axes = matrix_axes(records)
    return {
        "device": sorted_axis("device", (r.device for r in records)),
        "dtype": sorted_axis("dtype", (r.dtype for r in records)),
        "family": sorted({r.family for r in records}),
        "builder": sorted_axis("builder", (r.builder for r in records)),
        **({"scenario": sorted_axis("scenario", (r.scenario for r in records))} if SCENARIO_AXIS in axes else {}),
    }
