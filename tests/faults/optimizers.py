"""Optimizers that fail on purpose, each a `torch.optim.Optimizer` taking `lr`, so a cell can name them.

The first four kill or stop the process: only run them in a child process (the harness's runner).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch


class _Broken(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3):
        super().__init__(params, {"lr": lr})


class Segfault(_Broken):
    """Its step kills the process with SIGSEGV, as a bad native kernel would."""

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)


class Abort(_Broken):
    """Its step aborts the process (SIGABRT), as a failed C++ assertion would."""

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        os.abort()


class ExitNow(_Broken):
    """Its step ends the process at once with status 3, skipping every handler."""

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        os._exit(3)


class Hang(_Broken):
    """Its step never returns."""

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        while True:
            time.sleep(3600)


class RaiseInInit(_Broken):
    """Its constructor raises."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3):
        raise RuntimeError("RaiseInInit refuses to be built")


class RaiseInStep(_Broken):
    """Its step raises."""

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        raise RuntimeError("RaiseInStep refuses to step")


class SysExitInStep(_Broken):
    """Its step raises SystemExit(1), a BaseException that is not an Exception."""

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        raise SystemExit(1)


class NaNWriter(_Broken):
    """Its step evaluates the loss, then fills every parameter with NaN."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                p.fill_(float("nan"))
        return loss


class DoesNothing(_Broken):
    """Its step evaluates the loss and leaves the parameters as they were."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()
