"""One value of a matrix at a time: is this a device, a dtype, a builder, an optimizer name, a number?

Each `check_*` returns the sentence that says what is wrong (naming the close match), or None. The
schema (`harness.spec`) turns them into pydantic validators; `harness.expand` and `harness.build` call
them on values that come from elsewhere (an include rule, a framework's call).
"""

from __future__ import annotations

import re
from typing import Any

from harness.vocabulary import BUILDERS, DTYPES
from harness.wording import close_matches, describe, quote, unknown

DEVICE_TYPES = (
    "cpu", "cuda", "mps", "xpu", "meta", "hip", "xla", "lazy", "hpu", "mtia", "ipu", "maia", "ve",
    "fpga", "mkldnn", "opengl", "opencl", "ideep", "vulkan", "metal", "privateuseone",
)  # fmt: skip
"""torch's built-in device types; a device of another type is accepted (a custom backend) unless it looks misspelt."""

VARIANT_NAME = re.compile(r"[A-Za-z0-9_.+]+")
BUILDER_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
DEVICE = re.compile(r"(?P<type>[^:\s]+)(:(?P<index>\d+))?")


def check_device(device: str) -> str | None:
    """Why `device` cannot be a torch device (a sentence), or None when it can."""
    match = DEVICE.fullmatch(device)
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
    if kind.lower() in _DEVICE_WORDS:  # a word for a device that torch spells otherwise
        return (
            f"unknown device type {quote(kind)}: did you mean {quote(_DEVICE_WORDS[kind.lower()])}? "
            f"Available: {', '.join(DEVICE_TYPES[:6])} and {len(DEVICE_TYPES) - 6} more."
        )
    if close_matches(kind, DEVICE_TYPES, cutoff=0.75):  # else a custom backend's device type
        return unknown("device type", kind, DEVICE_TYPES, cutoff=0.75, shown=6)
    return None


_DEVICE_WORDS = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "rocm": "cuda", "amd": "cuda", "apple": "mps"}
"""What people call a device, against torch's device type for it (ROCm builds of torch call theirs `cuda`)."""
_OPTIMIZER_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[\w*?\[\]!.-]+)?")
NUMERIC_KWARGS = ("lr", "momentum", "weight_decay", "eps", "dampening", "alpha", "rho", "lr_decay")
"""Keyword arguments every optimizer takes as a number: a string there would fail every cell at run time."""


def check_optimizer_name(name: str) -> str | None:
    if check_name(name) is not None:
        return check_name(name)
    if _OPTIMIZER_NAME.fullmatch(name):
        return None
    return (
        f"{quote(name)} is not an optimizer name: write an import path ('torch.optim.AdamW'), a short torch "
        "name ('AdamW'), or a family ('torch.optim:*', 'timm:*adam*')."
    )


def check_numeric_kwargs(kwargs: dict[str, Any]) -> str | None:
    """Why a kwarg that must be a number is not one (a sentence naming the key), or None."""
    for key in NUMERIC_KWARGS:
        value = kwargs.get(key)
        if key in kwargs and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{quote(key)} must be a number, not {describe(value)}."
    betas = kwargs.get("betas")
    if "betas" in kwargs and not (
        isinstance(betas, (list, tuple)) and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
    ):
        return f"'betas' must be a list of numbers such as [0.9, 0.999], not {describe(betas)}."
    return None


def check_builder(builder: str) -> str | None:
    """Why `builder` is not a builder name (a sentence), or None when its form is right."""
    from harness.frameworks import framework_names, is_framework

    if builder in BUILDERS or BUILDER_FUNCTION.fullmatch(builder) or is_framework(builder):
        return None
    known = [*BUILDERS, *framework_names()]
    return unknown("builder", builder, known, also=", or a function written as 'package.module:function'")


def check_dtype(dtype: str) -> str | None:
    """Why `dtype` is not a dtype the matrix runs (a sentence), or None when it is one."""
    return None if dtype in DTYPES else unknown("dtype", dtype, DTYPES)


def check_variant_name(name: str) -> str | None:
    if VARIANT_NAME.fullmatch(name):
        return None
    return (
        f"the variant name {quote(name)} may hold only letters, digits, '_', '.' and '+', so cell ids stay usable "
        f"with `pytest -k`; e.g. '{re.sub(r'[^A-Za-z0-9_.+]+', '_', name) or 'plain'}'."
    )


def check_name(name: str) -> str | None:
    if name and not any(ch.isspace() for ch in name):
        return None
    return f"{quote(name)} is not a name: write it without spaces, e.g. 'torch.optim.AdamW' or 'cpu'."


def check_device_entry(device: str) -> str | None:
    return check_name(device) or check_device(device)
