"""Name why a cell failed: one of `harness.vocabulary.REASONS`, read from the exception's type and message.

The rules are data: the first row whose exception types and pattern match wins, else `other`. A pattern
may say `{device}` (the cell's device type) and `{dtype}` (every spelling of the cell's dtype: `bfloat16`,
`BFloat16`, `bf16`), so a message blames the device or dtype only when it names the one the cell uses.
tests/test_execute.py pins the rows on the messages real optimizers and kernels raise.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from harness.resolve import BrokenImport
from harness.vocabulary import REASONS, Reason

_DTYPE_SPELLINGS = {
    "float32": ("float32", "Float", "fp32", "float"),
    "float64": ("float64", "Double", "fp64", "double"),
    "float16": ("float16", "Half", "fp16", "half"),
    "bfloat16": ("bfloat16", "BFloat16", "bf16"),
}


@dataclass(frozen=True)
class Rule:
    """Exceptions of `types` whose `type: message` matches `pattern` failed for `reason`."""

    types: tuple[type[BaseException], ...]
    pattern: str
    reason: Reason


_ANY = (BaseException,)

RULES: tuple[Rule, ...] = (
    # `harness.resolve.BrokenImport` (installed, raises on import) and `MissingDependency` are ImportErrors too.
    Rule((BrokenImport,), r"", "import_error"),
    Rule((ImportError,), r"", "missing_dependency"),
    Rule(
        (TypeError,),
        r"(unexpected|unknown|invalid) keyword argument|takes no keyword arguments",
        "unexpected_kwarg",
    ),
    Rule(
        _ANY,
        r"`?fused`? and `?foreach`? cannot|cannot both be|cannot be `?True`? together|mutually exclusive"
        r"|`?fused`? does not support `?differentiable",
        "conflicting_kwargs",
    ),
    # torch's fused check names the supported devices, then the param's dtype and device: the device is
    # at fault when it is not in the list (the `{device}'` before `]` would be there if it were).
    Rule(
        (RuntimeError,),
        r"floating point Tensors of supported devices: \[(?![^\]]*'{device}')[^\]]*\] but",
        "unsupported_device",
    ),
    Rule((RuntimeError,), r"floating point Tensors of supported devices: .* but torch\.\w+ and", "unsupported_dtype"),
    Rule(
        _ANY,
        r"not implemented for '({dtype})'|\b({dtype})\b[^.]*\bnot (supported|implemented)"
        r"|(unsupported|does not support|only supports?)[^.]*\b({dtype})\b|unsupported (d)?type"
        r"|dtypes? (are )?not supported\W+got ({dtype})\b",
        "unsupported_dtype",
    ),
    # A CPU-only machine with a CUDA build of torch: an optimizer that calls `.cuda()` meets "no NVIDIA driver",
    # or, in a process forked after bitsandbytes probed CUDA, "Cannot re-initialize CUDA in forked subprocess".
    Rule((RuntimeError,), r"Cannot re-initialize CUDA in forked subprocess", "unsupported_device"),
    Rule(
        _ANY,
        r"supported devices|not supported on (the )?{device}|\b{device}\b[^.]*\bnot supported"
        r"|only supports? (cuda|gpu|cpu|mps|xpu)|requires? (a )?(cuda|gpu)|cuda (is )?(not available|required)"
        r"|not compiled with (cuda|mps)|no (cuda )?gpus? (are )?available|found no nvidia driver",
        "unsupported_device",
    ),
    Rule(
        (ValueError,),
        r"invalid|must be|should be|out of range|requires a|didn't specify a value of required",
        "invalid_value",
    ),
    Rule(
        (TypeError,),
        r"not supported between instances of|must be real number|could not convert|missing \d+ required",
        "invalid_value",
    ),
)


def classify_error(exc: BaseException, *, device: str, dtype: str) -> Reason:
    """The reason a cell on `device` (e.g. `cuda:0`) in `dtype` (e.g. `bfloat16`) failed with `exc`."""
    message = f"{type(exc).__name__}: {exc}"
    for rule, pattern in zip(RULES, _compiled(device.split(":")[0], dtype), strict=False):
        if isinstance(exc, rule.types) and pattern.search(message):
            return rule.reason
    return "other"


@functools.lru_cache(maxsize=64)
def _compiled(device: str, dtype: str) -> tuple[re.Pattern[str], ...]:
    spellings = _DTYPE_SPELLINGS.get(dtype, (dtype,))
    fill = {"device": re.escape(device), "dtype": "|".join(re.escape(s) for s in spellings)}
    return tuple(
        re.compile(rule.pattern.replace("{device}", fill["device"]).replace("{dtype}", fill["dtype"]), re.I)
        for rule in RULES
    )


def _check_rules() -> None:
    for rule in RULES:
        if rule.reason not in REASONS:
            known = ", ".join(REASONS)
            raise ValueError(f"Rule for {rule.pattern!r} names reason {rule.reason!r}, not one of {known}.")


_check_rules()
