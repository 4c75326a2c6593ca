"""Optimizers whose first step changes the process they run in, then train like plain SGD.

Each change once cost the innocent cell after it (or the polluting cell itself); run them only in a
runner. `Printer` is the innocent one: it prints on every step, as some optimizers do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from tests.faults.hostile import _Hostile


def _no_step(self: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> None:
    return None


class PatchAdamWStep(_Hostile):
    """Replaces `torch.optim.AdamW.step` (the class stays the same object) with a step that does nothing."""

    def attack(self) -> None:
        torch.optim.AdamW.step = _no_step  # type: ignore[method-assign]


class CloseStdout(_Hostile):
    """Closes `sys.stdout`, so the next `print` in the process raises."""

    def attack(self) -> None:
        sys.stdout.close()


class CloseStdFds(_Hostile):
    """Closes file descriptors 1 and 2 under Python's feet."""

    def attack(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.close(1)
        os.close(2)


class SetsidDaemon(_Hostile):
    """Starts a daemon that leaves its process group and session (`setsid`, then a second fork) and
    sleeps for 600 s; `marker` is its last argument, so a test can find it in /proc."""

    def attack(self) -> None:
        daemon = "import os, time\nos.setsid()\nif os.fork() == 0:\n    time.sleep(600)\nos._exit(0)"
        subprocess.run([sys.executable, "-c", daemon, self.harm["marker"]], check=True)


class SetsidDaemonThenDie(SetsidDaemon):
    """Starts the same daemon, then kills its own process (SIGKILL): the daemon is orphaned above it."""

    def attack(self) -> None:
        super().attack()
        os.kill(os.getpid(), signal.SIGKILL)


class RepeatingAlarm(_Hostile):
    """Starts a watchdog it never cancels: a SIGALRM handler and a repeating interval timer (every 10 ms)
    that raise `TimeoutError` once no step has run for 0.5 s, which is any time after its own cell."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        self.last_step = time.monotonic()
        return super().step(closure)

    def attack(self) -> None:
        def watchdog(signum: int, frame: object) -> None:
            if time.monotonic() - self.last_step > 0.5:
                raise TimeoutError("RepeatingAlarm's watchdog: no step for 0.5 s")

        signal.signal(signal.SIGALRM, watchdog)
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)


class Printer(torch.optim.AdamW):
    """Harms nothing: prints a line on every step."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        print("Printer: one more step")
        return super().step(closure)
