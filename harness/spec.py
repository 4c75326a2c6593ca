"""Load a matrix file (YAML) safely, check it, and hold it as a frozen `Matrix` that knows its lines."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
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
from harness.errors import MatrixError
from harness.settings import BenchSettings, ModelSettings, Settings, TrainSettings

DTYPES = ("float32", "float16", "bfloat16", "float64")
BUILTIN_BUILDERS = ("direct", "signature", "safe")
DEVICE_TYPES = (
    "cpu", "cuda", "mps", "xpu", "meta", "hip", "xla", "lazy", "hpu", "mtia", "ipu", "maia", "ve",
    "fpga", "mkldnn", "opengl", "opencl", "ideep", "vulkan", "metal", "privateuseone",
)  # fmt: skip
"""torch's built-in device types; a device of another type is accepted (a custom backend) unless it looks misspelt."""

KeyPath = tuple[str | int, ...]

_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+]+")
_BUILDER_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_DEVICE = re.compile(r"(?P<type>[^:\s]+)(:(?P<index>\d+))?")
_PLAIN_TAGS = frozenset(
    "tag:yaml.org,2002:" + name
    for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge", "timestamp", "binary", "set", "omap")
)


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
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)
    """The 1-based line of each key or list item, by its path (`("include", 0, "device")`)."""

    def line_of(self, *path: str | int) -> int | None:
        """The line of the key or item at `path`, or of its nearest written ancestor; None without lines."""
        return _line_of(self.lines, path)


def load_matrix(path: str | Path) -> Matrix:
    """Read, check and return the matrix file at `path`; any mistake raises `MatrixError` with its line."""
    path = Path(path)
    text = _read(path)
    node, data = _parse(text, path)
    if node is None:
        raise MatrixError(
            "the matrix file is empty; it needs at least an `optimizers:` list, "
            "e.g. `optimizers: [torch.optim.AdamW]`.",
            path=path,
        )
    lines = _check_nodes(node, path)
    if not isinstance(data, dict):
        raise MatrixError(
            "the top level of a matrix file must be a mapping with keys such as "
            f"{', '.join(_MatrixSpec.model_fields)}; found {_describe(data)}.",
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
            exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", _line_of(lines, _clean_loc(e["loc"])) or 0)
        )
        loc = _clean_loc(first["loc"])
        raise MatrixError(_sentence(first, loc), path=path, line=_line_of(lines, loc)) from exc
    matrix = Matrix(
        path=path,
        optimizers=tuple(
            OptimizerEntry(entry.name, dict(entry.defaults), _line_of(lines, ("optimizers", i)))
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
        lines=lines,
    )
    _check_matrix(matrix)
    return matrix


def close_match(word: str, choices: Any, *, cutoff: float = 0.6) -> str:
    """` Did you mean 'x'?` for the nearest of `choices`, or an empty string when none is near."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" Did you mean {quote(matches[0])}?" if matches else ""


def quote(value: Any) -> str:
    """A user's value in single quotes, or its repr when quotes or unprintable characters would mislead."""
    text = str(value)
    if isinstance(value, str) and text.isprintable() and "'" not in text:
        return f"'{text}'"
    return repr(value)


def check_device(device: str) -> str | None:
    """Why `device` cannot be a torch device (a sentence), or None when it can."""
    match = _DEVICE.fullmatch(device)
    if match is None:
        return (
            f"{quote(device)} is not a device; write a device type with an optional index, "
            "e.g. 'cpu', 'cuda' or 'cuda:1'."
        )
    kind = match["type"]
    if kind in DEVICE_TYPES:
        return None
    if kind.lower() in DEVICE_TYPES:
        lower = device.replace(kind, kind.lower(), 1)
        return f"device types are lower case: write {quote(lower)}, not {quote(device)}."
    hint = close_match(kind, DEVICE_TYPES, cutoff=0.75)
    if hint:
        return f"{quote(kind)} is not a torch device type.{hint} Device types include {', '.join(DEVICE_TYPES[:6])}."
    return None


def check_builder(builder: str) -> str | None:
    """Why `builder` is not a builder name (a sentence), or None when its form is right."""
    if builder in BUILTIN_BUILDERS or _BUILDER_FUNCTION.fullmatch(builder):
        return None
    return (
        f"unknown builder {quote(builder)}.{close_match(builder, BUILTIN_BUILDERS)} A builder is one of "
        f"{', '.join(BUILTIN_BUILDERS)}, or a function written as 'package.module:function'."
    )


def check_dtype(dtype: str) -> str | None:
    """Why `dtype` is not a dtype the matrix runs (a sentence), or None when it is one."""
    if dtype in DTYPES:
        return None
    return f"unknown dtype {quote(dtype)}.{close_match(dtype, DTYPES)} Valid dtypes: {', '.join(DTYPES)}."


# --- reading and parsing ------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MatrixError(
            f"no matrix file here (looked for {path.resolve()}); pass the path of a YAML matrix file.", path=path
        ) from exc
    except IsADirectoryError as exc:
        raise MatrixError("this is a directory, not a matrix file; pass the path of a YAML file.", path=path) from exc
    except UnicodeDecodeError as exc:
        raise MatrixError(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}).", path=path) from exc
    except OSError as exc:
        raise MatrixError(f"cannot read the matrix file: {exc.strerror or exc}.", path=path) from exc


def _parse(text: str, path: Path) -> tuple[yaml.Node | None, Any]:
    """Compose the document (to keep lines) and construct plain data from it, never running a tag."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _refuse_tags(node, path)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise MatrixError(_yaml_problem(exc), path=path, line=_yaml_line(exc)) from exc
    except yaml.YAMLError as exc:
        raise MatrixError(f"this is not valid YAML: {exc}.", path=path) from exc
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    problem, context = exc.problem or "", exc.context or ""
    if problem.startswith("but ") and context:  # PyYAML splits "expected X, but found Y" in two
        problem, context = f"{context}, {problem}", ""
    mark, start = exc.problem_mark, exc.context_mark
    if context and start is not None and mark is not None and start.line != mark.line:
        context = f" ({context} started at line {start.line + 1})"
    elif context:
        context = f" ({context})"
    column = f" at column {mark.column + 1}" if mark is not None else ""
    return (
        f"this is not valid YAML: {problem or 'it cannot be parsed'}{context}{column}. "
        "Check the indentation, colons, brackets and quotes on this line and the ones above."
    )


def _yaml_line(exc: yaml.MarkedYAMLError) -> int | None:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark is not None else None


def _walk(node: yaml.Node) -> Iterator[yaml.Node]:
    """Every node once (aliases are shared nodes, so a document of nested aliases stays cheap)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, yaml.MappingNode):
            for key, value in reversed(current.value):
                stack.extend((value, key))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(reversed(current.value))


def _refuse_tags(root: yaml.Node, path: Path) -> None:
    for node in _walk(root):
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise MatrixError(
                f"the tag {quote(tag)} is not allowed: a matrix file holds plain data only (strings, numbers, "
                "booleans, lists and mappings). Remove the tag.",
                path=path,
                line=node.start_mark.line + 1,
            )


def _check_nodes(root: yaml.Node, path: Path) -> dict[KeyPath, int]:
    """The line of every key and list item by path; a key written twice in one mapping is an error."""
    lines: dict[KeyPath, int] = {(): root.start_mark.line + 1}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:  # an alias: its lines are those of its anchor
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                    continue
                line = key.start_mark.line + 1
                if key.value in first_line:
                    owner = f"`{_dotted(where)}`" if where else "the top level"
                    raise MatrixError(
                        f"the key {quote(key.value)} is written twice in {owner} "
                        f"(first at line {first_line[key.value]}); "
                        "YAML would silently keep only the last one, so rename or remove one of them.",
                        path=path,
                        line=line,
                    )
                first_line[key.value] = line
                lines[(*where, key.value)] = line
                stack.append((value, (*where, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*where, index)] = item.start_mark.line + 1
                stack.append((item, (*where, index)))
    return lines


def _line_of(lines: Mapping[KeyPath, int], path: tuple[Any, ...]) -> int | None:
    path = tuple(part if isinstance(part, int) else str(part) for part in path)
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


# --- the schema ------------------------------------------------------------------------------------


def _valid(check: Callable[[str], str | None]) -> AfterValidator:
    """A pydantic validator from a `check_*` function: its sentence becomes the error."""

    def validate(value: str) -> str:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _check_variant_name(name: str) -> str | None:
    if _VARIANT_NAME.fullmatch(name):
        return None
    return (
        f"the variant name {quote(name)} may hold only letters, digits, '_', '.' and '+', so cell ids stay usable "
        f"with `pytest -k`; e.g. '{re.sub(r'[^A-Za-z0-9_.+]+', '_', name) or 'plain'}'."
    )


def _check_name(name: str) -> str | None:
    if name and not any(ch.isspace() for ch in name):
        return None
    return f"{quote(name)} is not a name: write it without spaces, e.g. 'torch.optim.AdamW' or 'cpu'."


def _check_device_entry(device: str) -> str | None:
    return _check_name(device) or check_device(device)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _OptimizerSpec(_Section):
    name: Annotated[str, _valid(_check_name)]
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
            f"`{{name: ..., defaults: {{...}}}}`, not {_describe(data)}."
        )

    @field_validator("defaults", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class _MatrixSpec(_Section):
    optimizers: list[_OptimizerSpec] = Field(min_length=1)
    devices: list[Annotated[str, _valid(_check_device_entry)]] = Field(default_factory=lambda: ["cpu"], min_length=1)
    dtypes: list[Annotated[str, _valid(check_dtype)]] = Field(default_factory=lambda: ["float32"], min_length=1)
    kwargs: dict[Annotated[str, _valid(_check_variant_name)], dict[str, Any]] = Field(
        default_factory=lambda: {"plain": {}}, min_length=1
    )
    builders: list[Annotated[str, _valid(check_builder)]] = Field(default_factory=lambda: ["direct"], min_length=1)
    scenarios: list[Annotated[str, _valid(check_scenario)]] = Field(default_factory=lambda: ["train"], min_length=1)
    exclude: list[dict[str, str]] = Field(default_factory=list)
    include: list[dict[str, Any]] = Field(default_factory=list)
    train: TrainSettings = TrainSettings()
    model: ModelSettings = ModelSettings()
    bench: BenchSettings = BenchSettings()

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
}


def _sentence(error: ErrorDetails, loc: tuple[Any, ...]) -> str:
    """One sentence for one pydantic error: what is wrong, where, and what would be right."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    where = f"`{_dotted(loc)}`"
    example = f" For example: `{_EXAMPLES[loc[0]]}`." if len(loc) == 1 and loc[0] in _EXAMPLES else ""
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = tuple(model.model_fields) if model else ()
        owner = f"`{_dotted(loc[:-1])}`" if len(loc) > 1 else "the top level"
        return f"unknown key {quote(loc[-1])} in {owner}.{close_match(loc[-1], valid)} Valid keys: {', '.join(valid)}."
    if kind == "missing":
        owner = f"`{_dotted(loc[:-1])}`" if len(loc) > 1 else "the matrix"
        return f"{owner} is missing the required key {quote(loc[-1])}.{example}"
    if kind == "value_error":
        return f"{where}: {str(ctx.get('error', error['msg'])).removeprefix('Value error, ')}"
    if kind == "too_short":
        return f"{where} is empty; give at least one.{example}"
    if kind == "list_type":
        simple = isinstance(value, str) and value.isprintable() and value.strip() and isinstance(loc[-1], str)
        fix = f" Write `{loc[-1]}: [{value}]`." if simple else ""
        return f"{where} must be a list, not {_describe(value)}.{fix or example}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if len(loc) == 2 and loc[0] == "kwargs":
            return (
                f"the variant {quote(loc[1])} under `kwargs` must be a mapping of keyword arguments, "
                f"e.g. `{loc[1]}: {{fused: true}}`, not {_describe(value)}."
            )
        model = _model_at(loc)
        keys = f" with keys such as {', '.join(model.model_fields)}" if model else ""
        return f"{where} must be a mapping{keys}, not {_describe(value)}.{example}"
    wanted = {
        "int": "a whole number",
        "float": "a number",
        "bool": "true or false",
        "string": "a string",
    }.get(kind.split("_")[0])
    if wanted and kind.endswith(("_type", "_parsing", "_from_float", "_fraction")):
        return f"{where} must be {wanted}, not {_describe(value)}."
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
    return f"{where}: {message}; got {_describe(value)}."


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


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        name = str(part) if str(part).isprintable() else repr(part)
        text += f"[{part}]" if isinstance(part, int) else (f".{name}" if text else name)
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


# --- checks across entries (need the whole matrix) -----------------------------------------------------


def _check_matrix(matrix: Matrix) -> None:
    _no_duplicates(matrix, "optimizers", [entry.name for entry in matrix.optimizers])
    for axis in ("devices", "dtypes", "builders", "scenarios"):
        _no_duplicates(matrix, axis, list(getattr(matrix, axis)))
    for section in ("exclude", "include"):
        for index, entry in enumerate(getattr(matrix, section)):
            _check_entry_keys(matrix, section, index, entry)
    for index, entry in enumerate(matrix.settings.bench.cells):
        unknown = [key for key in entry if key not in AXES]
        if unknown:
            raise MatrixError(
                f"`bench.cells[{index}]` names {quote(unknown[0])}, which is not an axis."
                f"{close_match(unknown[0], AXES)} Axes: {', '.join(AXES)}.",
                path=matrix.path,
                line=matrix.line_of("bench", "cells", index, unknown[0]),
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
                    f"`{section}[{index}].{key}` must be a string naming one {key}, not {_describe(value)}.",
                    path=matrix.path,
                    line=key_line,
                )
            continue
        # An include may carry extra keys; one that looks like a misspelt axis is almost surely a mistake.
        hint = close_match(key, AXES, cutoff=0.75)
        if section == "exclude" or hint:
            extra = " (include may add other keys, but not ones that look like an axis)" if section == "include" else ""
            raise MatrixError(
                f"`{section}[{index}]` names {quote(key)}, which is not an axis.{hint} Axes: {', '.join(AXES)}{extra}.",
                path=matrix.path,
                line=key_line,
            )
