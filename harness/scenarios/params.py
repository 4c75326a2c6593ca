"""Parameter snapshots and how far parameters moved: the numbers most scenario invariants are checked with."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def snapshot(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `params` as they are now."""
    with torch.no_grad():
        return [p.detach().clone() for p in params]


def moved_by(now: Iterable[torch.Tensor], before: Sequence[torch.Tensor]) -> float:
    """The largest absolute change of any element between `before` and `now` (inf where either is not finite).

    Zero means bit-identical (as `identical` says), up to the sign of zero.
    """
    largest = 0.0
    with torch.no_grad():
        for a, b in zip(now, before, strict=True):
            if a.numel() == 0:
                continue
            diff = (a.detach().double() - b.detach().double()).abs()
            diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
            largest = max(largest, float(diff.max()))
    return largest


def identical(now: Iterable[torch.Tensor], before: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor is bit for bit what it was (NaN is never identical)."""
    return all(torch.equal(a.detach(), b) for a, b in zip(now, before, strict=True))
