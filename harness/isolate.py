"""Runs cells in processes forked from a warm server, so a cell's faults and changes reach no other cell.

One server process per pytest worker imports torch and the optimizer packages once and forks the
processes cells run in (`harness.forkserver`), each in a process group of its own. A segfault, abort,
`os._exit` or hang costs that process alone; whatever a cell changes process-wide (a monkeypatched
`torch.optim.AdamW` or `AdamW.step`, the default dtype, grad mode, cwd, environment, a closed
`sys.stdout` or fd 1, a signal handler or interval timer, a process it left running, a daemon
included) is found after the cell and named in its record (`process_changes`), and the next cell
gets a freshly forked process.

The child speaks on a pipe of its own (never stdout, where an optimizer may print): the phases it
enters (`train`, `wait` for a lock, `bench`) and then its record. The parent keeps one clock per
phase: training has `train.timeout_s`, the benchmark `bench.timeout_s`, and waiting for a lock is
charged to neither (see `harness.exclusive`). A child past its phase's deadline is killed with its
whole process group, and its record says which phase ran out.
"""

from __future__ import annotations

import json
import math
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
from harness.forkserver import WARM_ENV
from harness.forkserver import blame as _blame  # noqa: F401  (kept importable from here)
from harness.settings import Settings

_STDERR_TAIL = 4000
_STARTUP_TIMEOUT_S = 300
_WAIT_LIMIT_S = 3600.0
"""A last resort only: a lock wait ends when the holder's own deadline kills it, long before this."""
_SELECT_CHUNK_S = 60.0


def warm_modules(cell: Cell) -> frozenset[str]:
    """What a cell's builder imports that is worth importing once per runner: a framework adapter's module, or a
    `package.module:function` builder's module."""
    from harness.frameworks import get_adapter, is_framework

    if is_framework(cell.builder):
        try:
            return frozenset({get_adapter(cell.builder).module})
        except HarnessError:
            return frozenset()  # the cell says why when it runs
    module, colon, _ = cell.builder.partition(":")
    return frozenset({module}) if colon and module else frozenset()


class RunnerError(HarnessError):
    """The runner could not be started or stopped answering: no cell can run, which fails the run."""

    exit_code = 1


class CellRunner:
    """A warm fork server, (re)started on demand; use as a context manager or call `close()`."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._reply: int | None = None
        self._buffer = b""
        self._ready = False
        self._warm: frozenset[str] = frozenset()
        """Modules the server imports before it forks (a framework, a builder's module): grows with the cells."""
        self._cold: frozenset[str] = frozenset()
        """Modules a server could not start with (a module that kills or hangs its importer): imported per cell."""

    def __enter__(self) -> CellRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, cell: Cell, settings: Settings) -> Record:
        """Run one cell in a fresh child; never raises for anything the cell does (`RunnerError` if no server)."""
        try:
            request = json.dumps({"cell": cell.to_dict(), "settings": settings.model_dump(mode="json")}) + "\n"
        except (TypeError, ValueError) as exc:
            return Record.for_cell(
                cell,
                "construct_error",
                reason="invalid_value",
                error_type=type(exc).__name__,
                error_message=f"The cell's kwargs cannot be passed to its process ({exc}); "
                "write plain numbers, strings, booleans, lists and mappings in the matrix file.",
                env=_parent_env(cell),
            )
        wanted = warm_modules(cell) - self._cold
        if not wanted <= self._warm:  # a framework this server has not imported: restart it with it, once
            self._warm |= wanted
            if self._proc is not None:
                self._spawn()
        proc = self._ensure_warm_server()
        stderr_from = self._stderr_size()
        start = time.perf_counter()
        try:
            assert proc.stdin is not None
            proc.stdin.write(request.encode())
            proc.stdin.flush()
        except OSError:
            return self._crashed(cell, 0.0, None, "The cell runner died before it took the cell", stderr_from)
        clock = _Clock(settings.train.timeout_s, settings.bench.timeout_s)
        pid: int | None = None
        while True:
            message = self._read_message(clock.left())
            if message is None:
                if not clock.expired():
                    continue
                self._kill_group(pid)
                self._await_exit(pid)
                return _timeout(cell, clock, time.perf_counter() - start)
            if not isinstance(message, dict):  # "eof": the server and the child are gone
                return self._crashed(cell, time.perf_counter() - start, None, "The cell runner died", stderr_from)
            if "exit" in message:
                if pid is None or message.get("pid") != pid:
                    continue  # a process that ended after an earlier cell's record ("last")
                return self._crashed(
                    cell,
                    time.perf_counter() - start,
                    int(message["exit"]),
                    "The process running the cell died",
                    stderr_from,
                )
            if "pid" in message:
                pid = int(message["pid"])
            elif "phase" in message:
                clock.enter(str(message["phase"]))
            elif "record" in message:
                return Record.from_dict(message["record"])

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._ready = False
        if self._reply is not None:
            os.close(self._reply)
            self._reply = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def start(self) -> None:
        """Start the server now, without waiting: it imports torch while pytest collects the cells."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()

    def _ensure_warm_server(self) -> subprocess.Popen[bytes]:
        """The running server; one that cannot start with the extra modules starts without them (the cells then
        meet the module's fault in their own processes)."""
        try:
            return self._ensure_started()
        except RunnerError:
            if not self._warm:
                raise
            self._cold, self._warm = self._cold | self._warm, frozenset()
            self._spawn()
            return self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None and self._ready:
            return self._proc
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        assert self._proc is not None
        message = self._read_message(_STARTUP_TIMEOUT_S)
        if isinstance(message, dict) and message.get("ready"):
            self._ready = True
            return self._proc
        if message is not None:
            self._proc.wait()
        code = self._proc.poll()
        tail = self._stderr_tail(0)
        self._kill()
        last = tail.strip().splitlines()[-1] if tail.strip() else "it wrote nothing to stderr"
        if message is None:
            why = f"did not become ready within {_STARTUP_TIMEOUT_S} s"
        else:
            why = f"ended before it was ready ({_describe_exit(code)})"
        raise RunnerError(
            f"The cell runner ({sys.executable} -m harness.isolate) {why}; its last words: {last}. "
            "Run `python -m harness.isolate --check` to see its whole output."
        )

    def _spawn(self) -> None:
        self.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the server)
        self._buffer = b""
        self._ready = False
        reply_read, reply_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "harness.isolate", "--reply-fd", str(reply_write)],
                stdin=subprocess.PIPE,
                stdout=self._stderr,
                stderr=self._stderr,
                pass_fds=(reply_write,),
                start_new_session=True,  # the terminal's ^C goes to pytest, which then closes the server
                env={
                    **os.environ,
                    "PYTHONFAULTHANDLER": "1",
                    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
                    WARM_ENV: ",".join(sorted(self._warm)),
                },
            )
        except OSError as exc:
            os.close(reply_read)
            raise RunnerError(f"Cannot start the cell runner ({sys.executable}): {exc.strerror or exc}.") from exc
        finally:
            os.close(reply_write)
        self._reply = reply_read

    def _read_message(self, timeout_s: float) -> dict[str, Any] | str | None:
        """The next message on the reply pipe; "eof" when every writer is gone, None when time ran out."""
        assert self._reply is not None
        deadline = time.monotonic() + timeout_s if math.isfinite(timeout_s) else math.inf
        while b"\n" not in self._buffer:
            left = min(deadline - time.monotonic(), _SELECT_CHUNK_S)
            if left <= 0:
                return None
            ready, _, _ = select.select([self._reply], [], [], left)
            if not ready:
                if deadline == math.inf or time.monotonic() >= deadline:
                    return None
                continue
            chunk = os.read(self._reply, 1 << 16)
            if not chunk:
                return "eof"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            return {"unreadable": line[:200].decode(errors="replace")}
        return message if isinstance(message, dict) else {"unreadable": str(message)[:200]}

    def _await_exit(self, pid: int | None) -> None:
        """After killing a cell's process: the server reports its exit; a server that does not is replaced."""
        deadline = time.monotonic() + 10
        while (left := deadline - time.monotonic()) > 0:
            message = self._read_message(left)
            if not isinstance(message, dict):
                break
            if "exit" in message and message.get("pid") == pid:
                return
        self._kill()

    def _crashed(self, cell: Cell, elapsed: float, code: int | None, what: str, stderr_from: int) -> Record:
        server_died = code is None
        if server_died and self._proc is not None:
            try:
                code = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
        tail = self._stderr_tail(stderr_from)
        if server_died:
            self._kill()
        return Record.for_cell(
            cell,
            "crashed",
            reason="other",
            error_type="ProcessDied",
            error_message=f"{what} with {_describe_exit(code)}.",
            traceback=tail or None,
            duration_s=elapsed,
            env=_parent_env(cell),
        )

    def _stderr_size(self) -> int:
        if self._stderr is None:
            return 0
        return os.fstat(self._stderr.fileno()).st_size

    def _stderr_tail(self, start: int) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(start, size - _STDERR_TAIL))
        return self._stderr.read().decode(errors="replace").strip()

    @staticmethod
    def _kill_group(pid: int | None) -> None:
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.close()


class _Clock:
    """Seconds used per phase: `train` and `bench` each have their own budget; `wait` is charged to neither."""

    def __init__(self, train_s: float, bench_s: float) -> None:
        self.budget = {"train": train_s, "bench": bench_s, "wait": _WAIT_LIMIT_S}
        self.used = dict.fromkeys(self.budget, 0.0)
        self.phase = "train"
        self.since = time.monotonic()

    def enter(self, phase: str) -> None:
        now = time.monotonic()
        self.used[self.phase] += now - self.since
        self.phase, self.since = (phase if phase in self.budget else "train"), now

    def left(self) -> float:
        return self.budget[self.phase] - self.used[self.phase] - (time.monotonic() - self.since)

    def expired(self) -> bool:
        return self.left() <= 0


_SETTING = {"train": "train.timeout_s", "bench": "bench.timeout_s", "wait": "the lock-wait limit"}


def _timeout(cell: Cell, clock: _Clock, elapsed: float) -> Record:
    phase = clock.phase
    limit = clock.budget[phase]
    waited = clock.used["wait"] + (time.monotonic() - clock.since if phase == "wait" else 0.0)
    return Record.for_cell(
        cell,
        "timeout",
        reason="other",
        error_type="Timeout",
        error_message=(
            f"The cell's {phase} phase ran past {_SETTING[phase]} = {limit:g} s and was killed with its process "
            f"group ({waited:.1f} s spent waiting for the machine were not counted); raise {_SETTING[phase]} "
            "in the matrix file if the cell is only slow."
        ),
        duration_s=elapsed,
        env=_parent_env(cell),
    )


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


if __name__ == "__main__":
    from harness.forkserver import main

    main(sys.argv[1:])
