"""A compatibility test matrix for PyTorch optimizers: optimizer x device x dtype x kwargs x builder."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_optimizer"]


def __getattr__(name: str):
    # Lazy, so `import harness` stays cheap and does not import torch.
    if name == "build_optimizer":
        from harness.build import build_optimizer

        return build_optimizer
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
