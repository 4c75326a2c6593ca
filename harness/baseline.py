"""The accepted outcome of every cell, one JSON file per environment (torch version x device kind).

A file looks like this (sorted keys, one entry per cell id, so a change reads well in a diff)::

    {
      "cells": {
        "torch.optim.AdamW-cpu-float32-fused-direct": {"reason": "unsupported_device", "status": "step_error"},
        "torch.optim.AdamW-cuda-float32-fused-direct": {"speedup": {"fused/forloop": 3.1}, "status": "ok"}
      },
      "environment": "torch-2.14.1-cuda"
    }

A cell skipped for what the machine lacks (its device) says nothing about the outcome: accepting it never
overwrites an entry that holds a real outcome (a CPU-only run must not erase the GPU machine's baseline). A
cell skipped because its package is not installed does overwrite it: accepting that run says the package is
gone on purpose.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cells import Record
from harness.errors import HarnessError
from harness.measurements import GATE_SPEEDUP_KEYS, BenchResult, Environment

SPEEDUP_KEYS = GATE_SPEEDUP_KEYS
"""The fused kernels' speed-ups the gate watches, as a record's `bench["speedup"]` names them."""

_ACCEPT_HINT = "re-run `python -m harness baseline accept` on a results file to write it anew"


@dataclass(frozen=True)
class BaselineEntry:
    """One cell's accepted outcome: its status, failure reason and fused speed-ups (if benchmarked)."""

    status: str
    reason: str | None = None
    speedup: Mapping[str, float] | None = field(default=None, hash=False)

    @classmethod
    def from_record(cls, record: Record) -> BaselineEntry:
        return cls(status=record.status, reason=record.reason, speedup=bench_speedups(record.bench) or None)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"status": self.status}
        if self.reason is not None:
            entry["reason"] = self.reason
        if self.speedup:
            # Unrounded: a rounded-up baseline would make an unchanged run `slower` at tolerance 0.
            entry["speedup"] = {k: float(v) for k, v in self.speedup.items()}
        return entry


def bench_speedups(bench: BenchResult | None) -> dict[str, float]:
    """The finite, positive fused speed-ups of a record's bench that the gate watches (`SPEEDUP_KEYS`)."""
    return {} if bench is None else bench.gate_speedups()


def device_kind(device: str) -> str:
    """`cuda:1` -> `cuda`; `cpu` -> `cpu`."""
    return device.split(":", 1)[0].strip().lower() or "unknown"


def environment_key(env: Environment, device: str | None = None) -> str:
    """`torch-<version>-<device kind>`; `device` defaults to the env's own `device` entry."""
    kind = device_kind(device if device is not None else env.device or "unknown")
    key = f"torch-{env.torch_release}-{kind}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)  # a file name on every OS


def record_environment_key(record: Record) -> str:
    """The baseline file a record belongs to: its run's torch version, its device kind and named environment.

    A named environment (`run --env bnb-0.49`) has a baseline of its own: it may share torch with the
    current interpreter while its other packages differ.
    """
    key = environment_key(record.env, record.device)
    name = getattr(record, "environment", "")
    return f"{key}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}" if name else key


def baseline_path(reports_dir: Path, key: str) -> Path:
    return Path(reports_dir) / "baselines" / f"{key}.json"


def read_baseline_file(path: Path) -> dict[str, BaselineEntry]:
    """The entries of one baseline file; a missing file is an empty baseline."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise HarnessError(f"Cannot read the baseline file {path}: {exc.strerror or exc}.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f"The baseline file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"fix it by hand or {_ACCEPT_HINT}."
        ) from exc
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, dict):
        raise HarnessError(
            f"The baseline file {path} has no `cells` object mapping cell ids to outcomes; {_ACCEPT_HINT}."
        )
    return {cell_id: _entry_from_json(path, cell_id, raw) for cell_id, raw in cells.items()}


def _entry_from_json(path: Path, cell_id: str, raw: Any) -> BaselineEntry:
    speedup = raw.get("speedup") if isinstance(raw, dict) else None
    valid = (
        isinstance(raw, dict)
        and isinstance(raw.get("status"), str)
        and (raw.get("reason") is None or isinstance(raw["reason"], str))
        and (
            speedup is None
            or (
                isinstance(speedup, dict)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in speedup.values())
            )
        )
    )
    if not valid:
        raise HarnessError(
            f"The baseline file {path} has a malformed entry for cell {cell_id!r}: expected "
            f'{{"status": str, "reason": str (optional), "speedup": {{name: number}} (optional)}}, '
            f"got {raw!r}; {_ACCEPT_HINT}."
        )
    return BaselineEntry(status=raw["status"], reason=raw.get("reason"), speedup=dict(speedup) if speedup else None)


def write_baseline_file(path: Path, key: str, entries: Mapping[str, BaselineEntry]) -> None:
    """Write one environment's baseline atomically, so an interrupted write never leaves half a file."""
    document = {"environment": key, "cells": {cell_id: entries[cell_id].to_dict() for cell_id in sorted(entries)}}
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise HarnessError(
            f"Cannot write the baseline file {path}: {exc.strerror or exc}; check that the folder is writable."
        ) from exc


def _by_environment(records: Iterable[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record_environment_key(record), []).append(record)
    return groups


def accept(records: list[Record], reports_dir: Path) -> list[Path]:
    """Make these records the accepted outcome of their cells; other cells in the files are kept.

    Returns the baseline files written, one per (torch version, device kind) among the records.
    """
    written: list[Path] = []
    for key, group in sorted(_by_environment(records).items()):
        path = baseline_path(reports_dir, key)
        entries = read_baseline_file(path)
        for record in group:
            previous = entries.get(record.id)
            kept = previous is not None and previous.status != "skipped"
            if kept and record.status == "skipped" and record.reason != "missing_dependency":
                continue  # this machine lacks what it needs (its device): keep the outcome the other machine saw
            entries[record.id] = BaselineEntry.from_record(record)
        write_baseline_file(path, key, entries)
        written.append(path)
    return written


def load_baselines(records: list[Record], reports_dir: Path) -> dict[str, BaselineEntry]:
    """The accepted entries of these records' cells, read from their environments' files."""
    files = load_baseline_files(records, reports_dir)
    return {
        r.id: files[key][r.id] for key, group in _by_environment(records).items() for r in group if r.id in files[key]
    }


def load_baseline_files(records: list[Record], reports_dir: Path) -> dict[str, dict[str, BaselineEntry]]:
    """Every entry of the baseline files these records belong to, by baseline key (an absent file is empty)."""
    return {key: read_baseline_file(baseline_path(reports_dir, key)) for key in sorted(_by_environment(records))}


def missing_baselines(records: list[Record], reports_dir: Path) -> str | None:
    """A sentence when the records' environments have no baseline file but the folder holds others', else None.

    `--strict` fails every `new` cell; when that is because the baselines are another environment's (an older
    torch, a mistyped folder), the sentence says which files are there.
    """
    wanted = sorted(key for key in _by_environment(records) if not baseline_path(reports_dir, key).exists())
    if not wanted:
        return None
    folder = Path(reports_dir) / "baselines"
    others = sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []
    there = f"it holds baselines for {', '.join(others)} only" if others else "it holds no baseline at all"
    return (
        f"{folder} has no baseline for {', '.join(wanted)}: {there}. Accept this run's results with "
        f"`python -m harness baseline accept --baselines {reports_dir}`, or point --baselines at the folder that "
        "holds them."
    )
