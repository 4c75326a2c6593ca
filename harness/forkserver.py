"""The runner's side of `harness.isolate`: a warm server that forks the processes cells run in.

The server imports torch and the optimizer packages once, then forks a child in a process group of its
own. The child runs cells one after another, as long as none changes anything process-wide: after
each cell it compares what a cell could change (the attributes of torch's modules and classes, the
default dtype and device, grad and anomaly modes, cwd, environment, `sys.path`, Python threads, child
processes) with how it was before. When something changed, the child says so with the cell's record
and exits; the server forks a clean one for the next cell. A cell that dies or is killed takes only
its child (and its process group) with it. So a cell pays for a fork only after a cell that changed
the process, not every time (a fork and a first step in a fresh child cost ~0.1 s here, the cell
itself ~0.03 s).

The server ignores SIGTERM and SIGINT (a cell's `kill(getppid())` reaches the server, not pytest);
it dies with its parent (Linux), and its children die with it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
from typing import Any

from harness.cells import Cell, Record
from harness.quiet import quiet_import
from harness.settings import Settings

# Imported once when a server starts, so no cell pays for them (bitsandbytes alone takes seconds).
_WARM_IMPORTS = ("torch", "bitsandbytes.optim", "timm.optim", "grokadamw")
_PR_SET_PDEATHSIG = 1


def serve(reply_fd: int) -> None:
    """Fork a child to take requests from stdin; when it ends, report its exit and fork the next."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a cell's `kill(getppid())` must not end the server
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from harness.execute import run_cell  # noqa: F401  (imported once here, inherited by every child)

    _warm_up()
    import gc

    gc.freeze()  # what the server holds stays out of each child's garbage collections (and copies)
    _send(reply_fd, {"ready": True})
    while _stdin_open():
        pid = os.fork()
        if pid == 0:
            _child(reply_fd)  # never returns
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first, or is already gone
        _, status = os.waitpid(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)  # whatever the child's cells left running
        except (ProcessLookupError, PermissionError):
            pass
        _send(reply_fd, {"exit": os.waitstatus_to_exitcode(status), "pid": pid})


def _stdin_open() -> bool:
    """False once the parent closed the request pipe and no request is left in it."""
    ready = select.select([0], [], [], None)[0]
    if not ready:
        return True
    try:
        import array
        import fcntl
        import termios

        pending = array.array("i", [0])
        fcntl.ioctl(0, termios.FIONREAD, pending)
        return pending[0] > 0
    except OSError:
        return True


def _child(reply_fd: int) -> None:
    code = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()
        requests = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # a cell that reads stdin reads nothing, never the next request
        from harness import exclusive

        exclusive.set_phase_listener(lambda phase: _send(reply_fd, {"phase": phase}))
        before = _process_state()
        while (line := _read_request(requests)) is not None:
            _send(reply_fd, {"pid": os.getpid()})
            request = json.loads(line)
            record, device_broken = _run(Cell.from_dict(request["cell"]), Settings.model_validate(request["settings"]))
            changed = _changes(before, _process_state()) + _kill_leftovers()
            if device_broken:  # a CUDA error poisons the context for good: the next cell must not inherit it
                changed.append("its device (an error left behind)")
            if changed:
                print(f"harness: {record.id} changed {', '.join(changed)}; the next cell gets a fresh process.")
            _send(reply_fd, {"record": json.loads(record.to_json()), "last": bool(changed)})
            if changed:
                break
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_request(fd: int) -> bytes | None:
    """One request line; the parent sends the next only after this one's record, so nothing is read ahead."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        data += chunk
    return data


def _run(cell: Cell, settings: Settings) -> tuple[Record, bool]:
    """`run_cell`, with anything that escapes it (an optimizer module raising on import) made a record;
    and whether the cell left its device broken."""
    from harness.execute import environment, run_cell

    try:
        _import_optimizer_module(cell.optimizer)
        record = run_cell(cell, settings)
    except BaseException as exc:
        import traceback

        from harness.classify import classify_error

        failed = Record.for_cell(
            cell,
            "construct_error",
            reason=classify_error(exc, device=cell.device, dtype=cell.dtype),
            error_type=type(exc).__name__,
            error_message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            env=environment(cell.device, None),
        )
        return failed, False
    broken = _device_error(cell.device)
    return (blame(record, broken), True) if broken is not None else (record, False)


def _import_optimizer_module(name: str) -> None:
    """Import the module an optimizer name lives in; an absent package is left for `run_cell` to skip."""

    if name.startswith("timm:"):
        module = "timm.optim"
    elif ":" in name:
        module = name.split(":", 1)[0]
    elif "." in name:
        module = name.rsplit(".", 1)[0]
    else:
        return
    try:
        quiet_import(module)  # what it prints goes into the records' env, not onto the terminal
    except ImportError:
        pass  # run_cell tells a missing package (skipped) from a missing module (construct_error)


# --- what a cell may change process-wide ----------------------------------------------------------


def _watched() -> dict[str, Any]:
    import torch
    import torch.nn.functional

    return {
        "torch": torch,
        "torch.optim": torch.optim,
        "torch.optim.Optimizer": torch.optim.Optimizer,
        "torch.nn": torch.nn,
        "torch.nn.Module": torch.nn.Module,
        "torch.nn.functional": torch.nn.functional,
        "torch.Tensor": torch.Tensor,
        "torch.autograd": torch.autograd,
    }


def _process_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {
        f"{name}.{attr}": id(value) for name, obj in _watched().items() for attr, value in vars(obj).items()
    }
    state.update(
        {
            "default dtype": torch.get_default_dtype(),
            "default device": str(torch.get_default_device()),
            "grad mode": torch.is_grad_enabled(),
            "inference mode": torch.is_inference_mode_enabled(),
            "anomaly mode": torch.is_anomaly_enabled(),
            "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
            "cwd": os.getcwd(),
            "environment": dict(os.environ),
            "sys.path": list(sys.path),
            "threads": threading.active_count(),
        }
    )
    return state


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs; attributes a cell added (a module imported lazily) are not changes."""
    return [key for key, value in before.items() if after.get(key, value) != value or key not in after]


def _kill_leftovers() -> list[str]:
    """Kill the processes a cell left running (Linux: read from /proc); a note for each kind found."""
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as handle:
                children += [int(pid) for pid in handle.read().split()]
        except OSError:
            continue
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return [f"{len(children)} child processes left running"] if children else []


# --- the device and the server's start ------------------------------------------------------------


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


def blame(record: Record, error: BaseException) -> Record:
    """The cell that left its device broken fails, even if its own steps seemed to finish."""
    note = f"The cell left a device error behind: {type(error).__name__}: {str(error).splitlines()[0]}"
    if record.status in ("ok", "no_learning", "nonfinite", "mismatch"):
        return record.replace(status="step_error", reason="other", error_type=type(error).__name__, error_message=note)
    return record.replace(error_message=f"{record.error_message or ''}\n{note}".strip())


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


def _warm_up() -> None:

    import torch

    # No OpenMP thread pool in the server: a child forked from a process whose pool ran hangs in its
    # first parallel region (libgomp). Children set their own thread count (train.threads, bench.threads).
    torch.set_num_threads(1)
    for module in _WARM_IMPORTS:
        if module.startswith("bitsandbytes") and torch.cuda.is_available():
            continue  # it initialises CUDA on import, and a forked child cannot use a CUDA its parent set up
        try:
            quiet_import(module)
        except Exception:
            pass
    # The first optimizer step imports torch's lazy machinery (dynamo hooks); pay for it here.
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.ones(4)
    torch.optim.AdamW([param]).step()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print("harness: CUDA was initialised while the runner warmed up; CUDA cells will fail.", file=sys.stderr)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--check"]:
        _warm_up()
        print("the cell runner imports and warms up fine")
        return
    if argv[:1] != ["--reply-fd"] or len(argv) != 2:
        raise SystemExit("usage: python -m harness.isolate --reply-fd FD | --check")
    os.dup2(2, 1)  # anything printed goes to stderr; replies go to their own descriptor
    serve(int(argv[1]))
