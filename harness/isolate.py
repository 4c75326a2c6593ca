"""Runs each cell in a fresh process forked from a warm server, so nothing a cell does reaches another.

One server process per pytest worker imports torch and the optimizer packages once; for each cell it
forks a child in a process group of its own, which runs the cell and exits. A segfault, abort,
`os._exit` or hang costs that child alone, and whatever a cell changes process-wide (a monkeypatched
`torch.optim.AdamW`, the default dtype, threads, grad mode, cwd, environment, a child process it
left running) dies with its process group. Forking costs tens of milliseconds a cell, against the
seconds a fresh interpreter would take to import torch.

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
from harness.settings import Settings

_STDERR_TAIL = 4000
_STARTUP_TIMEOUT_S = 300
_WAIT_LIMIT_S = 3600.0
"""A last resort only: a lock wait ends when the holder's own deadline kills it, long before this."""
_SELECT_CHUNK_S = 60.0
# Imported once when a server starts, so no cell pays for them (bitsandbytes alone takes seconds).
_WARM_IMPORTS = ("torch", "bitsandbytes.optim", "timm.optim", "grokadamw")
_PR_SET_PDEATHSIG = 1


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
        proc = self._ensure_started()
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
        record: Record | None = None
        while True:
            message = self._read_message(clock.left())
            if message is None:
                if not clock.expired():
                    continue
                self._kill_group(pid)
                self._await_exit()
                return _timeout(cell, clock, time.perf_counter() - start)
            if not isinstance(message, dict):  # "eof": the server and the child are gone
                return self._crashed(cell, time.perf_counter() - start, None, "The cell runner died", stderr_from)
            if "pid" in message:
                pid = int(message["pid"])
            elif "phase" in message:
                clock.enter(str(message["phase"]))
            elif "record" in message:
                record = Record.from_dict(message["record"])
            elif "exit" in message:
                self._kill_group(pid)  # whatever the cell left running dies with it
                if record is not None:
                    return record
                code = int(message["exit"])
                return self._crashed(
                    cell, time.perf_counter() - start, code, "The process running the cell died", stderr_from
                )

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
                env={**os.environ, "PYTHONFAULTHANDLER": "1", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"},
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

    def _await_exit(self) -> None:
        """After killing a cell: the server reports its exit; a server that does not is replaced."""
        deadline = time.monotonic() + 10
        while (left := deadline - time.monotonic()) > 0:
            message = self._read_message(left)
            if message is None or message == "eof":
                break
            if isinstance(message, dict) and "exit" in message:
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


# --- the server's side ------------------------------------------------------------------------------


def serve(reply_fd: int) -> None:
    """Read a request per line; fork a child per request; tell the parent its pid and exit status."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a cell's `kill(getppid())` must not end the server
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from harness.execute import run_cell  # noqa: F401  (imported once here, inherited by every child)

    _warm_up()
    import gc

    gc.freeze()  # what the server holds stays out of each child's garbage collections (and copies)
    _send(reply_fd, {"ready": True})
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            _child(line, reply_fd)  # never returns
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first, or is already gone
        _send(reply_fd, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)  # what the cell left running
        except (ProcessLookupError, PermissionError):
            pass
        _send(reply_fd, {"exit": os.waitstatus_to_exitcode(status)})


def _child(line: str, reply_fd: int) -> None:
    code = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        from harness import exclusive

        exclusive.set_phase_listener(lambda phase: _send(reply_fd, {"phase": phase}))
        request = json.loads(line)
        cell = Cell.from_dict(request["cell"])
        record = _run(cell, Settings.model_validate(request["settings"]))
        _send(reply_fd, {"record": json.loads(record.to_json())})
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(cell: Cell, settings: Settings) -> Record:
    """`run_cell`, with anything that escapes it (an optimizer module raising on import) made a record."""
    from harness.execute import environment, run_cell

    try:
        _import_optimizer_module(cell.optimizer)
        record = run_cell(cell, settings)
    except BaseException as exc:
        import traceback

        from harness.classify import classify_error

        return Record.for_cell(
            cell,
            "construct_error",
            reason=classify_error(exc, device=cell.device, dtype=cell.dtype),
            error_type=type(exc).__name__,
            error_message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            env=environment(cell.device, None),
        )
    broken = _device_error(cell.device)
    return _blame(record, broken) if broken is not None else record


def _import_optimizer_module(name: str) -> None:
    """Import the module an optimizer name lives in; an absent package is left for `run_cell` to skip."""
    import importlib

    if name.startswith("timm:"):
        module = "timm.optim"
    elif ":" in name:
        module = name.split(":", 1)[0]
    elif "." in name:
        module = name.rsplit(".", 1)[0]
    else:
        return
    try:
        importlib.import_module(module)
    except ImportError:
        pass  # run_cell tells a missing package (skipped) from a missing module (construct_error)


def _send(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _die_with_parent() -> None:
    """Linux: this process is killed when its parent dies, so no cell outlives its run."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


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
    if record.status in ("ok", "no_learning", "nonfinite", "mismatch"):
        return record.replace(status="step_error", reason="other", error_type=type(error).__name__, error_message=note)
    return record.replace(error_message=f"{record.error_message or ''}\n{note}".strip())


def _warm_up() -> None:
    import importlib

    import torch

    # No OpenMP thread pool in the server: a child forked from a process whose pool ran hangs in its
    # first parallel region (libgomp). Children set their own thread count (train.threads, bench.threads).
    torch.set_num_threads(1)
    for module in _WARM_IMPORTS:
        if module.startswith("bitsandbytes") and torch.cuda.is_available():
            continue  # it initialises CUDA on import, and a forked child cannot use a CUDA its parent set up
        try:
            importlib.import_module(module)
        except Exception:
            pass
    # The first optimizer step imports torch's lazy machinery (dynamo hooks); pay for it here.
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.ones(4)
    torch.optim.AdamW([param]).step()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print("harness.isolate: CUDA was initialised while warming up; CUDA cells will fail.", file=sys.stderr)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--check"]:
        _warm_up()
        print("the cell runner imports and warms up fine")
        return
    if argv[:1] != ["--reply-fd"] or len(argv) != 2:
        raise SystemExit("usage: python -m harness.isolate --reply-fd FD | --check")
    os.dup2(2, 1)  # anything printed goes to stderr; replies go to their own descriptor
    serve(int(argv[1]))


if __name__ == "__main__":
    _main(sys.argv[1:])
