"""A JSON Schema for matrix files, generated from the pydantic models that check them (`python -m harness schema`).

Editors that speak the YAML language server read it through the comment on a matrix file's first line,
`# yaml-language-server: $schema=./matrix.schema.json`, and then complete and check keys as they are typed.
The loader stays the judge: the schema says what a well-formed file looks like, and the loader also checks
what a schema cannot (duplicates, tags, cell ids that collide, names that must import).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.cells import AXES

SCHEMA_FILE = "matrix.schema.json"
"""The committed copy's name; it sits beside the default matrix."""

SCHEMA_ID = "https://optimizer-matrix-harness.invalid/matrix.schema.json"

_NULL = {"type": "null"}
_SECTIONS_THAT_MAY_BE_EMPTY = ("train", "model", "bench", "exclude", "include")
"""Keys whose value may be left empty (every entry commented out): the loader reads that as the defaults."""


def matrix_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a matrix file, from `harness.spec`'s models plus what they check by code."""
    # The patterns are the loader's own, so the schema and the loader agree on what a name may be.
    from harness.checks import BUILDER_FUNCTION, DEVICE, VARIANT_NAME
    from harness.spec import _MatrixSpec
    from harness.vocabulary import BUILDERS, DTYPES

    schema = _MatrixSpec.model_json_schema(mode="validation")
    definitions = schema.setdefault("$defs", {})
    definitions["OptimizerEntry"] = _optimizer_entry(definitions.pop("_OptimizerSpec"))
    properties = schema["properties"]
    properties["optimizers"]["items"] = {"$ref": "#/$defs/OptimizerEntry"}
    properties["optimizers"]["description"] = (
        "import paths (torch.optim.AdamW), short torch names (AdamW) or families (torch.optim:*, timm:*), "
        "each a name or {name, defaults}"
    )
    properties["devices"]["items"].update(
        pattern=_anchored(DEVICE.pattern), examples=["cpu", "cuda", "cuda:1", "mps"], description="a torch device"
    )
    properties["devices"]["description"] = "an absent device gives `skipped`, never a failure"
    properties["dtypes"]["items"] = {"enum": list(DTYPES)}
    properties["dtypes"]["description"] = "parameter dtypes"
    properties["builders"]["items"] = {
        "anyOf": [
            {"enum": list(BUILDERS)},
            {"type": "string", "pattern": _anchored(BUILDER_FUNCTION.pattern)},
        ],
        "description": "direct, signature, safe, or a framework's function written as 'package.module:function'",
    }
    definitions["Environment"] = {**definitions.pop("_EnvironmentSpec"), "title": "Environment"}
    properties["environments"]["additionalProperties"]["anyOf"][0] = {"$ref": "#/$defs/Environment"}
    properties["environments"]["description"] = "named sets of package pins, each built into a cached venv"
    properties["kwargs"]["propertyNames"] = {"pattern": _anchored(VARIANT_NAME.pattern)}
    properties["kwargs"]["description"] = "named variants of keyword arguments, applied on top of each entry's defaults"
    properties["exclude"]["items"]["propertyNames"] = {"enum": list(AXES)}
    properties["exclude"]["description"] = "GitHub Actions strategy.matrix semantics: partial match on axes"
    properties["include"]["description"] = "extend matching combinations, or add new ones (naming every axis)"
    for key in _SECTIONS_THAT_MAY_BE_EMPTY:
        properties[key] = {"anyOf": [_without_default(properties[key]), _NULL], **_kept(properties[key])}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Optimizer compatibility matrix",
        "description": "matrix.yaml of optimizer-matrix-harness: optimizers x devices x dtypes x kwargs x builders.",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def schema_text() -> str:
    """The schema as the committed file holds it: sorted keys, two-space indent, a final newline."""
    return json.dumps(matrix_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_schema(path: Path) -> str | None:
    """Why the committed schema at `path` differs from the generated one (a sentence), or None when it matches."""
    try:
        written = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} is missing; write it with `python -m harness schema > {path}`."
    if written != schema_text():
        return f"{path} is stale: the models changed. Regenerate it with `python -m harness schema > {path}`."
    return None


def _optimizer_entry(model_schema: dict[str, Any]) -> dict[str, Any]:
    """An optimizer entry is a bare name or a `{name, defaults}` mapping (the model reads a string as a name)."""
    mapping = {**model_schema, "title": "OptimizerEntry"}
    mapping["properties"]["defaults"] = {"anyOf": [mapping["properties"]["defaults"], _NULL]}
    mapping["properties"]["name"]["pattern"] = r"^\S+$"
    return {"anyOf": [{"type": "string", "pattern": r"^\S+$"}, mapping]}


def _kept(section: dict[str, Any]) -> dict[str, Any]:
    return {key: section[key] for key in ("title", "description", "default") if key in section}


def _without_default(section: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in section.items() if key not in ("title", "description", "default")}


def _anchored(pattern: str) -> str:
    """A `re.fullmatch` pattern as a JSON Schema (ECMA-262) one: anchored, and without Python's named groups."""
    return "^(?:" + re.sub(r"\(\?P<\w+>", "(", pattern) + ")$"
