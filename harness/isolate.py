"""Runs cells in a separate Python process, so a segfault, abort, `os._exit` or hang costs one cell.

One long-lived runner process per pytest worker takes cells one at a time over a pipe (JSON lines);
starting Python and importing torch once per worker rather than once per cell keeps the harness's
overhead small. When the runner dies the cell is `crashed`; when it outlives the cell's timeout it is
killed and the cell is `timeout`. Either way the next cell gets a fresh runner.
"""

from __future__ import annotations

import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

from harness.cells import Cell, Record
from harness.errors import HarnessError
from harness.settings import Settings

_STDERR_TAIL = 4000
_STARTUP_TIMEOUT_S = 300
_READY = b'{"ready": true}'
# Imported once when a runner starts, so no cell pays for them (bitsandbytes alone takes seconds).
_WARM_IMPORTS = ("torch", "bitsandbytes.optim", "timm.optim", "grokadamw")


class CellRunner:
    """A runner process that is (re)started on demand; use as a context manager or call `close()`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._buffer = b""
        self._ready = False

    def __enter__(self) -> CellRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, cell: Cell, settings: Settings) -> Record:
        """Run one cell in the runner process; never raises for anything the cell does."""
        proc = self._ensure_started()
        request = json.dumps({"cell": cell.to_dict(), "settings": settings.model_dump(mode="json")}) + "\n"
        start = time.perf_counter()
        try:
            assert proc.stdin is not None
            proc.stdin.write(request.encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._crashed(cell, time.perf_counter() - start)
        limit, which = settings.train.timeout_s, "train.timeout_s"
        if settings.bench.selects(cell):
            limit, which = limit + settings.bench.timeout_s, "train.timeout_s + bench.timeout_s"
        line = self._read_line(limit)
        elapsed = time.perf_counter() - start
        if line is None:
            self._kill()
            return Record.for_cell(
                cell,
                "timeout",
                reason="other",
                error_type="Timeout",
                error_message=(
                    f"The cell ran past {which} = {limit:g} s and was killed; "
                    "raise it in the matrix file if the cell is only slow."
                ),
                duration_s=elapsed,
                env=_parent_env(cell),
            )
        if line == b"":
            return self._crashed(cell, elapsed)
        reply = json.loads(line)
        if reply.get("restart"):
            self.close()  # the runner is going away (its CUDA context is broken); the next cell gets a new one
        return Record.from_dict(reply["record"])

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._kill()
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def start(self) -> None:
        """Start the runner now, without waiting: it imports torch while pytest collects the cells."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        """A runner that has imported torch and the optimizer packages, so a cell's time is its own."""
        if self._proc is not None and self._proc.poll() is None and self._ready:
            return self._proc
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        assert self._proc is not None
        if self._read_line(_STARTUP_TIMEOUT_S) != _READY:
            tail = self._stderr_tail()
            self._kill()
            raise HarnessError(
                f"The cell runner process (python -m harness.isolate) did not start within {_STARTUP_TIMEOUT_S} s; "
                f"check that torch imports in this environment.\n{tail}"
            )
        self._ready = True
        return self._proc

    def _spawn(self) -> None:
        self.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the runner; closed by close()
        self._buffer = b""
        self._ready = False
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "harness.isolate"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )

    def _read_line(self, timeout_s: float) -> bytes | None:
        """The runner's next reply; b"" when it died, None when it ran out of time."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _crashed(self, cell: Cell, elapsed: float) -> Record:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self._proc.returncode if self._proc else None  # type: ignore[assignment]  # None: no exit code
        tail = self._stderr_tail()
        self.close()
        return Record.for_cell(
            cell,
            "crashed",
            reason="other",
            error_type="ProcessDied",
            error_message=f"The process running the cell died with {_describe_exit(code)}.",
            traceback=tail or None,
            duration_s=elapsed,
            env=_parent_env(cell),
        )

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - _STDERR_TAIL))
        return self._stderr.read().decode(errors="replace").strip()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name} ({code})"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _parent_env(cell: Cell) -> dict[str, Any]:
    """What the parent knows of the environment without importing torch (the runner died)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"python": platform.python_version(), "torch": torch_version, "device": cell.device}


def serve() -> None:
    """The runner's side: read a request per line, answer a record per line, until stdin closes."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a cell prints goes to stderr, never into the protocol
    from harness.execute import run_cell

    _warm_up()
    reply.write(_READY.decode() + "\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        cell = Cell.from_dict(request["cell"])
        record = run_cell(cell, Settings.model_validate(request["settings"]))
        broken = _device_error(cell.device)
        if broken is not None:
            record = _blame(record, broken)
        reply.write(json.dumps({"record": json.loads(record.to_json()), "restart": broken is not None}) + "\n")
        reply.flush()
        if broken is not None:
            return  # a CUDA error poisons the context for good: the next cell must not inherit it


def _device_error(device: str) -> BaseException | None:
    """The error a cell left on its device (an illegal instruction, say), found by synchronising."""
    if not device.startswith("cuda"):
        return None
    import torch

    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except Exception as exc:
        return exc
    return None


def _blame(record: Record, error: BaseException) -> Record:
    """The cell that left its device broken fails, even if its own steps seemed to finish."""
    note = f"The cell left a device error behind: {type(error).__name__}: {str(error).splitlines()[0]}"
    if record.status in ("ok", "no_learning", "nonfinite"):
        return record.replace(status="step_error", reason="other", error_type=type(error).__name__, error_message=note)
    return record.replace(error_message=f"{record.error_message or ''}\n{note}".strip())


def _warm_up() -> None:
    from harness.quiet import quiet_import

    for module in _WARM_IMPORTS:
        try:
            quiet_import(module)  # what it prints goes to each record's env["import_messages"]
        except Exception:
            pass
    import torch

    # The first optimizer step imports torch's lazy machinery (dynamo hooks); pay for it here.
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.ones(4)
    torch.optim.AdamW([param]).step()


if __name__ == "__main__":
    serve()
