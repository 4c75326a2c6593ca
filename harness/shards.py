"""What a shard leaves for `merge`: `shard.json`, naming which shard of how many it is and the cells of the run.

`harness run --shard I/N` writes `OUT/shard.json` before any cell runs. It lists the shard's own cells and the
cells of every shard of the run, so `merge` can tell a shard that is missing from one that selected no cell, and
name a missing shard's cells from any shard that is there. A run narrowed by `-k` (or pytest arguments of its
own) selects cells only pytest knows; a missing shard of such a run is named as the shard, not cell by cell.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cells import Cell
from harness.errors import HarnessError

SHARD_NAME = "shard.json"


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a run: its place (`index` of `count`) and the cells of every shard of the run, its own included."""

    index: int
    count: int
    shards: Mapping[int, tuple[str, ...]] = field(hash=False)
    """Shard index (1 to count) -> the ids of that shard's cells, in the matrix's order."""
    matrix: str = ""
    narrowed: bool = False
    """The run chose cells beyond the matrix and the shard (`-k`, pytest arguments): only pytest knows which."""
    source: Path | None = field(default=None, compare=False)
    """The folder it was read from (for messages)."""

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def cells(self) -> tuple[str, ...]:
        """The ids of this shard's own cells."""
        return self.shards.get(self.index, ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.name,
            "index": self.index,
            "count": self.count,
            "matrix": self.matrix,
            "narrowed": self.narrowed,
            "cells": list(self.cells),
            "shards": {str(index): list(ids) for index, ids in sorted(self.shards.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> ShardInfo:
        return cls(
            index=int(data["index"]),
            count=int(data["count"]),
            shards={int(index): tuple(str(cell) for cell in ids) for index, ids in data["shards"].items()},
            matrix=str(data.get("matrix", "")),
            narrowed=bool(data.get("narrowed", False)),
            source=source,
        )


def shard_info(shard: str, cells: Sequence[Cell], *, matrix: str = "", narrowed: bool = False) -> ShardInfo:
    """The `ShardInfo` of shard `shard` (`I/N`) of a run over `cells`; a malformed shard raises `HarnessError`."""
    from harness.expand import parse_shard, shard_cells

    index, count = parse_shard(shard)
    shards = {i: tuple(cell.id for cell in shard_cells(cells, i, count)) for i in range(1, count + 1)}
    return ShardInfo(index, count, shards, matrix, narrowed)


def write_shard_info(out: Path, info: ShardInfo | None) -> None:
    """Write `OUT/shard.json` (whole or not at all); `None` removes one a previous sharded run left."""
    from harness.report.files import write_atomically

    path = Path(out) / SHARD_NAME
    if info is None:
        path.unlink(missing_ok=True)
        return
    write_atomically(path, json.dumps(info.to_dict(), indent=1) + "\n")


def read_shard_info(folder: Path) -> ShardInfo | None:
    """The shard a run's output folder holds, or None when the run was not sharded (or predates shard.json)."""
    path = Path(folder) / SHARD_NAME
    if not path.exists():
        return None
    try:
        return ShardInfo.from_dict(json.loads(path.read_text(encoding="utf-8")), source=Path(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(
            f"Cannot read {path}, which says which shard that folder holds: {exc}. Run that shard again."
        ) from exc


def missing_shards(shards: Iterable[ShardInfo]) -> dict[str, str]:
    """The cells of the shards missing from `shards`, each with why it is lost (for the gate's `lost`).

    A missing shard whose cells cannot be named (the run was narrowed by `-k`), or that selected none, is one
    entry, `shard I/N`: the gate fails either way.
    Shards of different counts, or one shard given twice, raise `HarnessError`: they are not one run.
    """
    shards = list(shards)
    if not shards:
        return {}
    first = shards[0]
    by_index: dict[int, ShardInfo] = {}
    for info in shards:
        if info.count != first.count:
            raise HarnessError(
                f"{first.source} holds shard {first.name} and {info.source} shard {info.name}: shards of runs split "
                "differently. Merge the shards of one run (the same --shard count)."
            )
        if info.index in by_index:
            raise HarnessError(
                f"{by_index[info.index].source} and {info.source} both hold shard {info.name}; pass each shard once."
            )
        by_index[info.index] = info
    missing = [index for index in range(1, first.count + 1) if index not in by_index]
    if not missing:
        return {}
    narrowed = any(info.narrowed for info in shards)
    lost: dict[str, str] = {}
    for index in missing:
        name = f"{index}/{first.count}"
        why = "missing: merge was given no results of it (its job failed before uploading them, or never ran)"
        cells = dict.fromkeys(cell for info in shards for cell in info.shards.get(index, ()))
        if narrowed:
            lost[f"shard {name}"] = f"{why}; its cells cannot be named, the shards ran with -k."
        elif cells:
            lost.update(dict.fromkeys(cells, f"shard {name} is {why}."))
        else:
            lost[f"shard {name}"] = f"{why}; it selected no cell, but nothing says it ran."
    return lost
