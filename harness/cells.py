"""The two values every stage passes along: a `Cell` to run and the `Record` of what happened."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.measurements import BenchResult, Environment
from harness.vocabulary import REASONS, SCENARIOS, STATUSES, Reason, Status
from harness.wording import MESSAGE_LIMIT, NAME_LIMIT, TRACEBACK_LIMIT, safe_text, unknown

AXES = ("optimizer", "device", "dtype", "kwargs", "builder", "scenario")
"""Singular axis names, as `exclude`/`include` entries key them (`kwargs` names a variant)."""

DEFAULT_SCENARIO = "train"
"""The plain training loop: a cell of this scenario keeps the id it had before scenarios existed."""

__all__ = ["AXES", "DEFAULT_SCENARIO", "REASONS", "STATUSES", "Cell", "Record", "finite"]  # vocabulary re-exported


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
    scenario: str = DEFAULT_SCENARIO
    """What the framework does around the optimizer (`harness.scenarios`)."""

    @property
    def id(self) -> str:
        """Stable, readable and usable with `pytest -k`: the same cell has the same id everywhere.

        A cell of another scenario than `train` ends in `-<scenario>`, so today's ids do not change.
        """
        return cell_id(self.optimizer, self.device, self.dtype, self.variant, self.builder, self.scenario)

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
            "scenario": self.scenario,
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
            scenario=data.get("scenario") or DEFAULT_SCENARIO,
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
    status: Status
    scenario: str = DEFAULT_SCENARIO
    """A record written before scenarios existed has none: it was a `train` cell."""
    reason: Reason | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    dropped_kwargs: list[str] = field(default_factory=list)
    absorbed_kwargs: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    initial_loss: float | None = None
    final_loss: float | None = None
    judgement: str | None = None
    scenario_numbers: dict[str, Any] = field(default_factory=dict)
    """The figures the scenario's invariant was checked with (moved-by, tolerances, scale, compile time)."""
    construct_s: float | None = None
    steps_s: float | None = None
    duration_s: float = 0.0
    num_params: int | None = None
    state_bytes: int | None = None
    state_bytes_per_param: float | None = None
    peak_memory_bytes: int | None = None
    bench: BenchResult | None = None
    env: Environment = field(default_factory=Environment)
    extra: dict[str, Any] = field(default_factory=dict)
    environment: str = ""
    """The named environment (matrix `environments:`) the cell ran in; "" for the current interpreter."""
    built: dict[str, Any] | None = None
    """What the builder really returned: `class` (its import path), `kwargs` (each param group's effective
    settings, no tensors) and `conventions` (how the loop trained it: closure, train/eval, layerwise hooks)."""
    measurement_errors: dict[str, str] = field(default_factory=dict)
    """What failed while measuring (`state_bytes`, `peak_memory`, `bench`, ...): never the cell's status."""
    process_changes: list[str] = field(default_factory=list)
    """What the cell changed process-wide (a patched class, closed stdout, a signal handler, a process left
    running); the next cell got a fresh process."""

    def __post_init__(self) -> None:
        # `bench` and `env` are JSON objects on disk: their JSON form is accepted here and typed once.
        if isinstance(self.bench, Mapping):
            object.__setattr__(self, "bench", BenchResult.from_dict(self.bench))
        if isinstance(self.env, Mapping):
            object.__setattr__(self, "env", Environment.from_dict(self.env))
        # Texts from an exception or an optimizer are made safe once, here, as they enter a record (or are read
        # back from an older results file): the results file, every report and the terminal get clean text.
        limits = (
            ("error_type", NAME_LIMIT),
            ("error_message", MESSAGE_LIMIT),
            ("traceback", TRACEBACK_LIMIT),
            ("judgement", MESSAGE_LIMIT),
        )
        for name, limit in limits:
            if isinstance(value := getattr(self, name), str):
                object.__setattr__(self, name, safe_text(value, limit=limit))
        if isinstance(self.measurement_errors, Mapping):
            errors = {k: safe_text(v) if isinstance(v, str) else v for k, v in self.measurement_errors.items()}
            object.__setattr__(self, "measurement_errors", errors)
        if isinstance(self.process_changes, (list, tuple)):
            changes = [safe_text(v) if isinstance(v, str) else v for v in self.process_changes]
            object.__setattr__(self, "process_changes", changes)

    @classmethod
    def for_cell(cls, cell: Cell, status: Status, **fields: Any) -> Record:
        axes = cell.to_dict()
        axes.pop("extra", None)
        return cls(**axes, status=status, extra=dict(cell.extra), **fields)

    @property
    def cell(self) -> Cell:
        return Cell(
            self.optimizer,
            self.device,
            self.dtype,
            self.variant,
            self.kwargs,
            self.builder,
            self.extra,
            scenario=self.scenario or DEFAULT_SCENARIO,
        )

    @property
    def family(self) -> str:
        """The package an optimizer comes from (`torch`, `bitsandbytes`, `timm`, ...)."""
        return self.optimizer.split(":")[0].split(".")[0]

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(dataclasses.replace(self, bench=None, env=Environment()))
        data["bench"] = None if self.bench is None else self.bench.to_dict()
        data["env"] = self.env.to_dict()
        return data

    def to_json(self) -> str:
        """One line of JSON; NaN and infinity become null so every reader can parse it."""
        return json.dumps(finite(self.to_dict()), sort_keys=False, allow_nan=False, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        if fields.get("scenario") is None:
            fields["scenario"] = DEFAULT_SCENARIO
        return cls(**fields)


def cell_id(optimizer: str, device: str, dtype: str, variant: str, builder: str, scenario: str) -> str:
    """`optimizer-device-dtype-variant-builder`, then `-<scenario>` unless the scenario is `train`."""
    base = f"{optimizer}-{device}-{dtype}-{variant}-{builder}"
    return base if scenario == DEFAULT_SCENARIO else f"{base}-{scenario}"


def check_scenario(name: str) -> str | None:
    """Why `name` is not a scenario (a sentence naming the close match and the valid ones), or None."""
    return None if name in SCENARIOS else unknown("scenario", name, SCENARIOS)


def finite(value: Any) -> Any:
    """`value` ready for strict JSON: NaN and infinities become None, mapping keys strings, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
