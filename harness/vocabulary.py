"""The project's words, each defined once: statuses, reasons, verdicts, builders, dtypes, hints.

Every other module imports these; sets derived from them (what fails the gate, what counts as a
known incompatibility) live here beside them, so a new word is added in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

Status = Literal[
    "ok",
    "construct_error",
    "step_error",
    "no_learning",
    "nonfinite",
    "mismatch",
    "skipped",
    "crashed",
    "timeout",
]
"""Exactly one per cell. `mismatch`: the cell ran but broke its scenario's invariant."""

Reason = Literal[
    "unexpected_kwarg",
    "conflicting_kwargs",
    "unsupported_device",
    "unsupported_dtype",
    "invalid_value",
    "missing_dependency",
    "other",
]
"""Why a failing cell failed, classified from its exception (`harness.classify`)."""

Verdict = Literal["lost", "regression", "fixed", "changed", "slower", "new", "not_run", "as_expected"]
"""A cell's outcome judged against the baseline, most severe first. `lost`: selected but left no record."""

Builder = Literal["direct", "signature", "safe"]
"""The built-in builders; any `package.module:function` is a builder too."""

Dtype = Literal["float32", "float16", "bfloat16", "float64"]
"""The parameter dtypes a matrix runs (`harness.dtypes.parse_dtype` turns one into a `torch.dtype`)."""

STATUSES: tuple[Status, ...] = get_args(Status)
REASONS: tuple[Reason, ...] = get_args(Reason)
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
BUILDERS: tuple[Builder, ...] = get_args(Builder)
DTYPES: tuple[Dtype, ...] = get_args(Dtype)

GATE_FAILING: frozenset[Verdict] = frozenset({"lost", "regression", "fixed", "changed", "slower"})
"""Verdicts that fail the gate (exit status 1)."""

STEPPED: frozenset[Status] = frozenset({"ok", "no_learning", "nonfinite", "mismatch"})
"""Statuses of a cell whose optimizer took its steps: these cells are benchmarked."""

FAILING_STATUSES: tuple[Status, ...] = tuple(s for s in STATUSES if s not in ("ok", "skipped"))

ACCELERATION_HINTS: tuple[str, ...] = ("fused", "foreach", "capturable")
"""Optional implementation choices a framework adds: the safe builder may drop them, the bench varies them."""

IMPLEMENTATION_HINTS: tuple[str, ...] = ("fused", "foreach")
"""The hints that pick one of an optimizer's implementations (fused / foreach / for-loop)."""
