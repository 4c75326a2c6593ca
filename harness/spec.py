"""Check a matrix file against its schema and hold it as a frozen `Matrix` that knows its lines.

`harness.yamlsource` reads the YAML (plain data only, with the line of every key); the pydantic models
here check each section, `_sentence` turns pydantic's errors into the user's sentences, and
`_check_matrix` checks what needs the whole matrix (duplicates, exclude/include keys).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from harness.cells import AXES, check_scenario
from harness.checks import (
    NUMERIC_KWARGS,
    check_builder,
    check_device_entry,
    check_dtype,
    check_numeric_kwargs,
    check_optimizer_name,
    check_variant_name,
)
from harness.errors import MatrixError
from harness.settings import BenchSettings, ModelSettings, Settings, TrainSettings
from harness.wording import close_matches, describe, dotted, quote, unknown
from harness.yamlsource import KeyPath, line_of, read_yaml


@dataclass(frozen=True)
class OptimizerEntry:
    """One entry of `optimizers:` as written: a name (maybe a family) and the kwargs it always takes."""

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass(frozen=True)
class Matrix:
    """A checked matrix file: its axes, its exclude/include entries and its settings."""

    path: Path
    optimizers: tuple[OptimizerEntry, ...]
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float32",)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=lambda: {"plain": {}})
    builders: tuple[str, ...] = ("direct",)
    scenarios: tuple[str, ...] = ("train",)
    exclude: tuple[dict[str, Any], ...] = ()
    include: tuple[dict[str, Any], ...] = ()
    settings: Settings = field(default_factory=Settings)
    environments: dict[str, dict[str, str | bool]] = field(default_factory=dict)
    """Named sets of package pins (`{torch-2.13: {torch: "2.13.0"}}`), each maybe with `isolated: true`;
    `harness.environments` builds them."""
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)
    """The 1-based line of each key or list item, by its path (`("include", 0, "device")`)."""

    def line_of(self, *path: str | int) -> int | None:
        """The line of the key or item at `path`, or of its nearest written ancestor; None without lines."""
        return line_of(self.lines, path)


def load_matrix(path: str | Path) -> Matrix:
    """Read, check and return the matrix file at `path`; any mistake raises `MatrixError` with its line."""
    path = Path(path)
    node, data, lines = read_yaml(path)
    if node is None:
        raise MatrixError(
            "the matrix file is empty; it needs at least an `optimizers:` list, "
            "e.g. `optimizers: [torch.optim.AdamW]`.",
            path=path,
        )
    if not isinstance(data, dict):
        raise MatrixError(
            "the top level of a matrix file must be a mapping with keys such as "
            f"{', '.join(_MatrixSpec.model_fields)}; found {describe(data)}.",
            path=path,
            line=node.start_mark.line + 1,
        )
    return matrix_from_data(data, path=path, lines=lines)


def matrix_from_data(
    data: Mapping[str, Any], *, path: str | Path, lines: Mapping[KeyPath, int] | None = None
) -> Matrix:
    """Check already-parsed matrix data (a mapping) and build the `Matrix`; `lines` place the errors."""
    path = Path(path)
    lines = dict(lines or {})
    try:
        spec = _MatrixSpec.model_validate(dict(data))
    except ValidationError as exc:
        # A misspelt key explains the "missing" error that comes with it, so it is told first.
        first = min(
            exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", line_of(lines, _clean_loc(e["loc"])) or 0)
        )
        loc = _clean_loc(first["loc"])
        raise MatrixError(_sentence(first, loc), path=path, line=line_of(lines, loc)) from exc
    matrix = Matrix(
        path=path,
        optimizers=tuple(
            OptimizerEntry(entry.name, dict(entry.defaults), line_of(lines, ("optimizers", i)))
            for i, entry in enumerate(spec.optimizers)
        ),
        devices=tuple(spec.devices),
        dtypes=tuple(spec.dtypes),
        kwargs={name: dict(kwargs) for name, kwargs in spec.kwargs.items()},
        builders=tuple(spec.builders),
        scenarios=tuple(spec.scenarios),
        exclude=tuple(dict(entry) for entry in spec.exclude),
        include=tuple(dict(entry) for entry in spec.include),
        settings=Settings(train=spec.train, model=spec.model, bench=spec.bench),
        environments={name: _environment(written) for name, written in spec.environments.items()},
        lines=lines,
    )
    _check_matrix(matrix)
    return matrix


# --- the schema ------------------------------------------------------------------------------------


def _valid(check: Callable[[str], str | None]) -> AfterValidator:
    """A pydantic validator from a `check_*` function: its sentence becomes the error."""

    def validate(value: str) -> str:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _OptimizerSpec(_Section):
    name: Annotated[str, _valid(check_optimizer_name)]
    defaults: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict):
            return data
        raise ValueError(
            "an optimizer entry is a name (e.g. 'torch.optim.AdamW') or a mapping "
            f"`{{name: ..., defaults: {{...}}}}`, not {describe(data)}."
        )

    @field_validator("defaults", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class _EnvironmentSpec(BaseModel):
    """An environment: package pins (any other key, each a version string) and whether it is isolated."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, str] = Field(init=False)
    isolated: bool = Field(
        False, description="a full venv that does not see the current interpreter's packages (slower to build)"
    )


def _environment(written: _EnvironmentSpec | None) -> dict[str, str | bool]:
    """An environment's pins as written, with `isolated: True` only where it was set."""
    if written is None:
        return {}
    return {**(written.model_extra or {}), **({"isolated": True} if written.isolated else {})}


class _MatrixSpec(_Section):
    optimizers: list[_OptimizerSpec] = Field(min_length=1)
    devices: list[Annotated[str, _valid(check_device_entry)]] = Field(default_factory=lambda: ["cpu"], min_length=1)
    dtypes: list[Annotated[str, _valid(check_dtype)]] = Field(default_factory=lambda: ["float32"], min_length=1)
    kwargs: dict[Annotated[str, _valid(check_variant_name)], dict[str, Any]] = Field(
        default_factory=lambda: {"plain": dict[str, Any]()}, min_length=1
    )
    builders: list[Annotated[str, _valid(check_builder)]] = Field(default_factory=lambda: ["direct"], min_length=1)
    scenarios: list[Annotated[str, _valid(check_scenario)]] = Field(default_factory=lambda: ["train"], min_length=1)
    exclude: list[dict[str, str]] = Field(default_factory=list)
    include: list[dict[str, Any]] = Field(default_factory=list)
    train: TrainSettings = TrainSettings()
    model: ModelSettings = ModelSettings()
    bench: BenchSettings = BenchSettings()
    environments: dict[str, _EnvironmentSpec | None] = Field(default_factory=dict)

    @field_validator("environments", mode="before")
    @classmethod
    def _no_environments(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("train", "model", "bench", "exclude", "include", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # `train:` with every key commented out is None in YAML; it means "the defaults".
        if value is None:
            return [] if info.field_name in ("exclude", "include") else {}
        return value


_EXAMPLES = {
    "optimizers": "optimizers: [torch.optim.AdamW]",
    "devices": "devices: [cpu, cuda]",
    "dtypes": "dtypes: [float32, bfloat16]",
    "kwargs": "kwargs: {plain: {}, fused: {fused: true}}",
    "builders": "builders: [direct, signature, safe]",
    "scenarios": "scenarios: [train, resume]",
    "exclude": "exclude: [{device: cpu, dtype: float16}]",
    "include": "include: [{optimizer: torch.optim.AdamW, note: slow}]",
    "environments": 'environments: {current: {}, torch-2.13: {torch: "2.13.0"}}',
}


def _sentence(error: ErrorDetails, loc: tuple[Any, ...]) -> str:
    """One sentence for one pydantic error: what is wrong, where, and what would be right."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    where = f"`{dotted(loc)}`"
    example = f" For example: `{_EXAMPLES[loc[0]]}`." if len(loc) == 1 and loc[0] in _EXAMPLES else ""
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = tuple(model.model_fields) if model else ()
        owner = f"`{dotted(loc[:-1])}`" if len(loc) > 1 else "the top level"
        return unknown("key", loc[-1], valid, where=f" in {owner}")
    if kind == "missing":
        owner = f"`{dotted(loc[:-1])}`" if len(loc) > 1 else "the matrix"
        return f"{owner} is missing the required key {quote(loc[-1])}.{example}"
    if kind == "value_error":
        return f"{where}: {str(ctx.get('error', error['msg'])).removeprefix('Value error, ')}"
    if kind == "too_short":
        return f"{where} is empty; give at least one.{example}"
    if kind == "list_type":
        simple = isinstance(value, str) and value.isprintable() and value.strip() and isinstance(loc[-1], str)
        fix = f" Write `{loc[-1]}: [{value}]`." if simple else ""
        return f"{where} must be a list, not {describe(value)}.{fix or example}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if len(loc) == 2 and loc[0] == "kwargs":
            return (
                f"the variant {quote(loc[1])} under `kwargs` must be a mapping of keyword arguments, "
                f"e.g. `{loc[1]}: {{fused: true}}`, not {describe(value)}."
            )
        model = _model_at(loc)
        keys = f" with keys such as {', '.join(model.model_fields)}" if model else ""
        return f"{where} must be a mapping{keys}, not {describe(value)}.{example}"
    wanted = {
        "int": "a whole number",
        "float": "a number",
        "bool": "true or false",
        "string": "a string",
    }.get(kind.split("_")[0])
    if wanted and kind.endswith(("_type", "_parsing", "_from_float", "_fraction")):
        return f"{where} must be {wanted}, not {describe(value)}."
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("greater than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{where} must be {words} {bound}, not {value!r}."
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{where}: {message}; got {describe(value)}."


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields are the valid keys at `loc` (None if there is none)."""
    annotation: Any = _MatrixSpec
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field_info = annotation.model_fields.get(str(part))
            if field_info is None:
                return None
            annotation = field_info.annotation
        else:  # list[X] or dict[K, X]: the item's type
            args = typing.get_args(annotation)
            if not args:
                return None
            annotation = args[-1]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Pydantic's loc without its markers for dict keys and validator functions."""
    return tuple(part for part in loc if part != "[key]" and not str(part).startswith("function-"))


# --- checks across entries (need the whole matrix) -----------------------------------------------------


def _check_matrix(matrix: Matrix) -> None:
    _no_duplicates(matrix, "optimizers", [entry.name for entry in matrix.optimizers])
    for index, optimizer in enumerate(matrix.optimizers):
        problem = check_numeric_kwargs(optimizer.defaults)
        if problem:
            key = next(k for k in (*NUMERIC_KWARGS, "betas") if k in optimizer.defaults and k in problem)
            raise MatrixError(
                f"`optimizers[{index}].defaults`: {problem}",
                path=matrix.path,
                line=matrix.line_of("optimizers", index, "defaults", key),
            )
    for variant, kwargs in matrix.kwargs.items():
        problem = check_numeric_kwargs(kwargs)
        if problem:
            key = next(k for k in (*NUMERIC_KWARGS, "betas") if k in kwargs and k in problem)
            raise MatrixError(
                f"`kwargs.{variant}`: {problem}", path=matrix.path, line=matrix.line_of("kwargs", variant, key)
            )
    for axis in ("devices", "dtypes", "builders", "scenarios"):
        _no_duplicates(matrix, axis, list(getattr(matrix, axis)))
    for section in ("exclude", "include"):
        for index, entry in enumerate(getattr(matrix, section)):
            _check_entry_keys(matrix, section, index, entry)
    for index, entry in enumerate(matrix.settings.bench.cells):
        not_axes = [key for key in entry if key not in AXES]
        if not_axes:
            raise MatrixError(
                f"`bench.cells[{index}]`: {unknown('axis', not_axes[0], AXES)}",
                path=matrix.path,
                line=matrix.line_of("bench", "cells", index, not_axes[0]),
            )


def _no_duplicates(matrix: Matrix, axis: str, values: list[str]) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            raise MatrixError(
                f"`{axis}` lists {quote(value)} twice (first at line {matrix.line_of(axis, first[value])}); "
                "list each once.",
                path=matrix.path,
                line=matrix.line_of(axis, index),
            )
        first[value] = index


def _check_entry_keys(matrix: Matrix, section: str, index: int, entry: dict[str, Any]) -> None:
    line = matrix.line_of(section, index)
    if not entry:
        raise MatrixError(
            f"`{section}[{index}]` is empty; name at least one axis, e.g. `- {{device: cpu, dtype: float16}}`.",
            path=matrix.path,
            line=line,
        )
    for key, value in entry.items():
        key_line = matrix.line_of(section, index, key)
        if key in AXES:
            if not isinstance(value, str):
                raise MatrixError(
                    f"`{section}[{index}].{key}` must be a string naming one {key}, not {describe(value)}.",
                    path=matrix.path,
                    line=key_line,
                )
            continue
        # An include may carry extra keys; one that looks like a misspelt axis is almost surely a mistake.
        if section == "exclude" or close_matches(key, AXES, cutoff=0.75):
            extra = (
                " An include may add other keys, but not ones that look like an axis." if section == "include" else ""
            )
            raise MatrixError(
                f"`{section}[{index}]`: {unknown('axis', key, AXES, cutoff=0.75)}{extra}",
                path=matrix.path,
                line=key_line,
            )
