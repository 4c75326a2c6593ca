"""Optimizers that attack the harness around them rather than fail themselves; run them only in a runner.

Each trains like plain SGD (so its own cell can end `ok`) after doing its harm on the first step.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


class _Hostile(torch.optim.SGD):
    def __init__(self, params: Iterable[Any], lr: float = 0.1, **harm: Any):
        super().__init__(params, lr=lr)
        self.harm = harm
        self.done = False

    def attack(self) -> None:
        raise NotImplementedError

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if not self.done:
            self.done = True
            self.attack()
        return super().step(closure)


class Polluter(_Hostile):
    """Changes everything process-wide it can, and leaves a `sleep 600` behind (its pid in `pidfile`)."""

    def attack(self) -> None:
        torch.optim.AdamW = torch.optim.SGD  # type: ignore[misc]
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(2)
        os.environ["HARNESS_POLLUTED"] = "1"
        os.chdir("/")
        child = subprocess.Popen(["sleep", "600"])
        Path(self.harm["pidfile"]).write_text(str(child.pid))
        torch.set_grad_enabled(False)


class KillParent(_Hostile):
    """Sends SIGTERM to the process that started it."""

    def attack(self) -> None:
        os.kill(os.getppid(), signal.SIGTERM)


class KillWorker(_Hostile):
    """Kills (SIGKILL) its grandparent: the pytest worker that runs its cell."""

    def attack(self) -> None:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        grandparent = int(stat.rsplit(")", 1)[1].split()[1])
        os.kill(grandparent, signal.SIGKILL)


class WriteEveryFd(_Hostile):
    """Writes a line that is not JSON to stdout and to every other descriptor it has open."""

    def attack(self) -> None:
        print("not json at all")
        for fd in range(3, 64):
            try:
                if not os.isatty(fd) and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("pipe:"):
                    os.write(fd, b"not json either\n")
            except OSError:
                pass


class DeleteResults(_Hostile):
    """Deletes the results file named by `path`."""

    def attack(self) -> None:
        Path(self.harm["path"]).unlink(missing_ok=True)


class Inspector(_Hostile):
    """Harms nothing: writes what its process looks like (dtype, threads, grad mode, cwd, env) to `path`."""

    def attack(self) -> None:
        import json

        state = {
            "adamw": torch.optim.AdamW.__name__,
            "dtype": str(torch.get_default_dtype()),
            "threads": torch.get_num_threads(),
            "grad": torch.is_grad_enabled(),
            "cwd": os.getcwd(),
            "polluted": os.environ.get("HARNESS_POLLUTED"),
        }
        Path(self.harm["path"]).write_text(json.dumps(state))
