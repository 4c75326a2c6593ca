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
    "weights_only_load",
    "import_error",
    "other",
]
"""Why a failing cell failed, classified from its exception (`harness.classify`).

`import_error`: the package (or a builder's module) is installed but raises while importing, what a torch
upgrade does to a compiled extension; an absent package is `missing_dependency` and its cells are skipped.
`weights_only_load`: the optimizer's `state_dict()` loads only with `torch.load(weights_only=False)`
(the `resume` scenario), which `torch.load` no longer does by default.
"""

Verdict = Literal["lost", "regression", "not_run", "fixed", "changed", "slower", "new", "no_device", "as_expected"]
"""A cell's outcome judged against the baseline, most severe first. `lost`: selected but left no record.
`not_run`: it ran in the baseline and did not run now (its package is gone); `no_device`: skipped for what this
machine lacks (its device), while the baseline holds another machine's outcome."""

Scenario = Literal["train", "groups", "resume", "amp", "schedule", "compile", "frozen", "unfreeze"]
"""What a framework does around the optimizer (the `scenarios` axis); `train` is the plain loop, the default."""

Builder = Literal["direct", "signature", "safe"]
"""The built-in builders; any `package.module:function` is a builder too."""

Dtype = Literal["float32", "float16", "bfloat16", "float64"]
"""The parameter dtypes a matrix runs (`harness.dtypes.parse_dtype` turns one into a `torch.dtype`)."""

STATUSES: tuple[Status, ...] = get_args(Status)
REASONS: tuple[Reason, ...] = get_args(Reason)
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
BUILDERS: tuple[Builder, ...] = get_args(Builder)
DTYPES: tuple[Dtype, ...] = get_args(Dtype)
SCENARIOS: tuple[Scenario, ...] = get_args(Scenario)

GATE_FAILING: frozenset[Verdict] = frozenset({"lost", "regression", "not_run", "fixed", "changed", "slower"})
"""Verdicts that fail the gate (exit status 1); `--strict` adds `new` (`STRICT_FAILING`)."""

STRICT_FAILING: frozenset[Verdict] = GATE_FAILING | {"new"}
"""Verdicts that fail the gate under `--strict`, for CI that commits its baseline: a cell nobody accepted fails."""

STEPPED: frozenset[Status] = frozenset({"ok", "no_learning", "nonfinite", "mismatch"})
"""Statuses of a cell whose optimizer took its steps: these cells are benchmarked."""

FAILING_STATUSES: tuple[Status, ...] = tuple(s for s in STATUSES if s not in ("ok", "skipped"))

ACCELERATION_HINTS: tuple[str, ...] = ("fused", "foreach", "capturable")
"""Optional implementation choices a framework adds: the safe builder may drop them, the bench varies them."""

IMPLEMENTATION_HINTS: tuple[str, ...] = ("fused", "foreach")
"""The hints that pick one of an optimizer's implementations (fused / foreach / for-loop)."""
