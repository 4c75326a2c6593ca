"""Typed results that pass from measuring to reporting: a cell's `BenchResult` and its `Environment`.

A record keeps both as plain JSON, in the shape the README documents; `to_dict` writes exactly that
shape and `from_dict` reads it back, so what `harness.bench` and `harness.execute` write reads back
equal. Reading is lenient where records differ in age: a key the writer did not write reads as missing
(None, or no entry), and a key this version does not know is kept in `extra` and written back. A value
of the wrong kind raises `MalformedResult` (a `ValueError`) naming the key, so a results file skips
that line with a warning instead of reporting nonsense.
"""

from __future__ import annotations

from harness.measurements._read import MalformedResult
from harness.measurements.bench import (
    GATE_SPEEDUP_KEYS,
    IMPLEMENTATION_ORDER,
    REFERENCE,
    SPEEDUP_KEYS,
    BenchResult,
    ImplMemory,
    ImplResult,
    ImplTiming,
    ParityCheck,
    ParityTolerance,
    SpeedupKey,
    Spread,
)
from harness.measurements.environment import Environment

__all__ = [
    "GATE_SPEEDUP_KEYS",
    "IMPLEMENTATION_ORDER",
    "REFERENCE",
    "SPEEDUP_KEYS",
    "BenchResult",
    "Environment",
    "ImplMemory",
    "ImplResult",
    "ImplTiming",
    "MalformedResult",
    "ParityCheck",
    "ParityTolerance",
    "SpeedupKey",
    "Spread",
]
