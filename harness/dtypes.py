"""A cell's dtype name (`harness.vocabulary.DTYPES`) as a `torch.dtype`: the one place that parses it."""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.vocabulary import DTYPES
from harness.wording import unknown


def parse_dtype(name: str) -> torch.dtype:
    """The torch floating dtype a cell's `dtype` names (`float32`, `bfloat16`, ...); anything else raises."""
    dtype = getattr(torch, name, None) if name in DTYPES else None
    if not isinstance(dtype, torch.dtype):
        raise HarnessError(unknown("dtype", name, DTYPES))
    return dtype
