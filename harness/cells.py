"""The two values every stage passes along: a `Cell` to run and the `Record` of what happened."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.vocabulary import REASONS, STATUSES

AXES = ("optimizer", "device", "dtype", "kwargs", "builder")
"""Singular axis names, as `exclude`/`include` entries key them (`kwargs` names a variant)."""

__all__ = ["AXES", "REASONS", "STATUSES", "Cell", "Record", "finite"]  # the statuses and reasons re-exported


@dataclass(frozen=True)
class Cell:
    """One combination of the matrix: an optimizer built one way on one device and dtype."""

    optimizer: str
    device: str
    dtype: str
    variant: str
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    builder: str = "direct"
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Keys an `include` entry added beyond the axes (kept, shown, never interpreted)."""

    @property
    def id(self) -> str:
        """Stable, readable and usable with `pytest -k`: the same cell has the same id everywhere."""
        return f"{self.optimizer}-{self.device}-{self.dtype}-{self.variant}-{self.builder}"

    def axis(self, name: str) -> str:
        """The cell's value on a singular axis name (`kwargs` is the variant name)."""
        return self.variant if name == "kwargs" else getattr(self, name)

    def matches(self, rule: Mapping[str, Any]) -> bool:
        """Whether every axis key of `rule` equals the cell's value (a partial match, as in `exclude`).

        The optimizer may also be a shell glob (`torch.optim.*`).
        """
        for key, value in rule.items():
            mine = self.axis(key) if key in AXES else None
            if key == "optimizer" and mine is not None and fnmatch.fnmatchcase(mine, str(value)):
                continue
            if mine != str(value):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "optimizer": self.optimizer,
            "device": self.device,
            "dtype": self.dtype,
            "variant": self.variant,
            "kwargs": dict(self.kwargs),
            "builder": self.builder,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            optimizer=data["optimizer"],
            device=data["device"],
            dtype=data["dtype"],
            variant=data["variant"],
            kwargs=dict(data.get("kwargs", {})),
            builder=data["builder"],
            extra=dict(data.get("extra", {})),
        )


@dataclass(frozen=True)
class Record:
    """What happened to one cell: the one source of truth every report is rendered from."""

    id: str
    optimizer: str
    device: str
    dtype: str
    variant: str
    kwargs: dict[str, Any]
    builder: str
    status: str
    reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    dropped_kwargs: list[str] = field(default_factory=list)
    absorbed_kwargs: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    initial_loss: float | None = None
    final_loss: float | None = None
    judgement: str | None = None
    construct_s: float | None = None
    steps_s: float | None = None
    duration_s: float = 0.0
    num_params: int | None = None
    state_bytes: int | None = None
    state_bytes_per_param: float | None = None
    peak_memory_bytes: int | None = None
    bench: dict[str, Any] | None = None
    env: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_cell(cls, cell: Cell, status: str, **fields: Any) -> Record:
        axes = cell.to_dict()
        axes.pop("extra", None)
        return cls(**axes, status=status, extra=dict(cell.extra), **fields)

    @property
    def cell(self) -> Cell:
        return Cell(self.optimizer, self.device, self.dtype, self.variant, self.kwargs, self.builder, self.extra)

    @property
    def family(self) -> str:
        """The package an optimizer comes from (`torch`, `bitsandbytes`, `timm`, ...)."""
        return self.optimizer.split(":")[0].split(".")[0]

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One line of JSON; NaN and infinity become null so every reader can parse it."""
        return json.dumps(finite(self.to_dict()), sort_keys=False, allow_nan=False, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def finite(value: Any) -> Any:
    """`value` ready for strict JSON: NaN and infinities become None, mapping keys strings, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
