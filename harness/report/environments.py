"""The report's environment section: one group per machine, each version shown once."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.baseline import device_kind
from harness.cells import Record
from harness.report.formatting import finite, fmt, rank
from harness.report.layout import FAMILY_ORDER, sorted_axis


@dataclass
class _Group:
    machine: tuple[str, str, str]
    env: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    reduced: int = 0


def _machine_of(record: Record) -> tuple[str, str, str]:
    """What even a reduced env tells: python, torch (no local suffix) and the cell's device kind."""
    return str(record.env.python), record.env.torch_release, device_kind(record.device)


def environments(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One group per machine: its python, torch, device and package versions, each shown once.

    Groups ignore the keys that vary per cell (`Environment.machine`); a cell with only a reduced env
    (its runner died) joins the group of the same python, torch version and device kind, or one of its
    own when there is none.
    """
    groups: dict[str, _Group] = {}
    reduced: list[Record] = []
    for record in records:
        if record.env.is_reduced:
            reduced.append(record)
            continue
        machine = record.env.machine()
        key = json.dumps([device_kind(record.device), finite(machine)], sort_keys=True)
        group = groups.setdefault(key, _Group(_machine_of(record), machine))
        group.records.append(record)
    for record in reduced:
        home = next((g for g in groups.values() if g.machine == _machine_of(record)), None)
        if home is None:
            home = groups.setdefault(
                f"reduced {_machine_of(record)}", _Group(_machine_of(record), record.env.machine())
            )
        home.records.append(record)
        home.reduced += 1
    return [_environment_view(group) for group in groups.values()]


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value if isinstance(value, str) else json.dumps(finite(value), ensure_ascii=False)))
    return items


def _environment_view(group: _Group) -> dict[str, Any]:
    kind = group.machine[2]
    items = [("device kind", kind), *_flatten({k: v for k, v in group.env.items() if k != "packages"})]
    versions: dict[str, list[str]] = defaultdict(list)
    cells: Counter[str] = Counter()
    for name, version in (group.env.get("packages") or {}).items():
        versions[str(name)].append(fmt(version) or "not installed")
    for record in group.records:
        name = record.env.optimizer_package
        if name is None:
            continue
        cells[name] += 1
        version = fmt(record.env.optimizer_package_version) or "not installed"
        if version not in versions[name]:
            versions[name].append(version)
    return {
        "count": len(group.records),
        "devices": sorted_axis("device", (r.device for r in group.records)),
        "kind": kind,
        "items": items,
        "packages": [
            {"name": name, "versions": found, "cells": cells[name]}
            for name, found in sorted(versions.items(), key=lambda item: rank(item[0], FAMILY_ORDER))
        ],
        "reduced": group.reduced,
    }
