"""The matrix file's settings sections (`train`, `model`, `bench`), with the defaults a run uses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from harness.cells import Cell


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSettings(_Section):
    """How each cell trains the small GPT and how its loss is judged."""

    steps: int = Field(25, ge=2, description="optimizer steps per cell")
    seed: int = Field(0, description="seed of the model's weights and the synthetic data")
    timeout_s: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="a cell running longer ends as `timeout` (a finite deadline)"
    )
    batch_size: int = Field(4, ge=1)
    threads: int = Field(1, ge=1, description="torch CPU threads inside a cell")
    min_rel_drop: float = Field(
        0.05, ge=0, lt=1, description="the loss must fall by this fraction of its start, or `no_learning`"
    )


class ModelSettings(_Section):
    """The small decoder-only GPT every cell trains (a few hundred thousand parameters)."""

    vocab_size: int = Field(64, ge=2)
    seq_len: int = Field(32, ge=2)
    d_model: int = Field(96, ge=4)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSettings:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}, so no cell could build "
                f"the model; use e.g. d_model {self.d_model - self.d_model % self.n_heads}."
            )
        return self


class Tolerance(_Section):
    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)


def _default_tolerances() -> dict[str, Tolerance]:
    return {
        "float32": Tolerance(atol=1e-5, rtol=1e-4),
        "float16": Tolerance(atol=1e-2, rtol=1e-2),
        "bfloat16": Tolerance(atol=5e-2, rtol=5e-2),
    }


class _BenchFields(_Section):
    """Fused / foreach / for-loop step timing, parity and memory, on a GPT larger than the training one."""

    enabled: bool = True
    cells: list[dict[str, str]] = Field(
        default_factory=lambda: [{"builder": "direct", "kwargs": "plain"}],
        description="partial-match filters (like `include`) choosing the cells that benchmark",
    )
    d_model: int = Field(256, ge=4)
    n_layers: int = Field(4, ge=1)
    vocab_size: int = Field(1024, ge=2)
    seq_len: int = Field(128, ge=2)
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=3)
    threads: int = Field(1, ge=1, description="torch CPU threads while timing on CPU")
    parity_steps: int = Field(3, ge=1)
    tolerances: dict[str, Tolerance] = Field(default_factory=_default_tolerances)
    timeout_s: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description="the benchmark's own deadline (training has train.timeout_s); a benchmark also waits at most "
        "this long for the machine, uncharged, and without it keeps its cell's outcome and no figure",
    )
    speedup_tolerance: float = Field(
        0.2, ge=0, lt=1, description="the gate's `slower`: a fused speed-up this fraction under the baseline's"
    )


def _optional(annotation: Any) -> Any:
    return annotation | None


_OVERRIDE_FIELDS: dict[str, Any] = {
    name: (_optional(info.annotation), FieldInfo.merge_field_infos(info, default=None, default_factory=None))
    for name, info in _BenchFields.model_fields.items()
    if name != "cells"
}
BenchOverrides = create_model(
    "BenchOverrides",
    __base__=_Section,
    __doc__="Bench settings one device kind sets in place of the general ones; unset fields are None.",
    **_OVERRIDE_FIELDS,
)
"""`bench.devices.<kind>`: every bench setting but `cells`, each optional, checked as where it stands."""


class BenchSettings(_BenchFields):
    __doc__ = _BenchFields.__doc__

    devices: dict[str, BenchOverrides] = Field(
        default_factory=dict,
        description="per device kind, bench settings that replace the ones above, e.g. `cuda: {d_model: 768, "
        "n_layers: 12}`: a GPU needs a far larger model than a CPU before its kernels, not their launches, "
        "dominate a step",
    )

    def for_device(self, device: str) -> BenchSettings:
        """These settings with the overrides for `device`'s kind (`cuda:1` -> `cuda`) applied."""
        overrides = self.devices.get(device.split(":")[0])
        if overrides is None:
            return self
        changes = overrides.model_dump(exclude_none=True)
        return self.model_validate({**self.model_dump(), **changes, "devices": {}})

    def selects(self, cell: Cell) -> bool:
        """Whether `cell` runs the benchmark after its training."""
        return self.enabled and any(cell.matches(rule) for rule in self.cells)


class Settings(_Section):
    train: TrainSettings = TrainSettings()
    model: ModelSettings = ModelSettings()
    bench: BenchSettings = BenchSettings()
