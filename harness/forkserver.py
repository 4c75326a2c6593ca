"""The runner's side of `harness.isolate`: a warm server that forks the processes cells run in.

The server imports torch and the optimizer packages once, then forks a child in a process group of its
own. The child runs cells one after another, as long as none changes anything process-wide: after
each cell it compares what a cell could change with how it was before: the attributes of torch's
modules, of `torch.nn.Module`, of every optimizer class `torch.optim` exports and of every class in the
cell's optimizer module (by identity: a cheap fingerprint); the default dtype and device, grad and
anomaly modes, cwd, environment, `sys.path`, Python threads; `sys.stdin`/`sys.stdout`/`sys.stderr` and
file descriptors 0-2; signal handlers, blocked signals and interval timers; processes left running.
When something changed, the child puts what changed in the cell's record (`process_changes`) and
exits; the server forks a clean one for the next cell. A cell that dies or is killed takes only its
child (and its process group) with it. So a cell pays for a fork only after a cell that changed the
process, not every time (a fork and a first step in a fresh child cost ~0.1 s here, the cell itself
~0.03 s).

Timers are disarmed and signal handlers put back as soon as a cell returns, so nothing it armed goes
off while its record is sent; the record goes over a descriptor of its own, so a cell that closed
stdout or fds 1 and 2 still has one. The server and the child are child subreapers (Linux): a process
a cell started that left its process group and session (`setsid`, a daemon) is reparented to them,
and killed with the cell's other descendants.

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
import time
from types import ModuleType
from typing import Any

from harness.cells import Cell, Record
from harness.quiet import quiet_import
from harness.settings import Settings

# Imported once when a server starts, so no cell pays for them (bitsandbytes alone takes seconds).
_WARM_IMPORTS = ("torch", "bitsandbytes.optim", "timm.optim", "grokadamw")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def serve(reply_fd: int) -> None:
    """Fork a child to take requests from stdin; when it ends, report its exit and fork the next."""
    _die_with_parent()
    _become_subreaper()  # what a cell's process leaves behind when it dies is reparented here, and killed
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
        _kill_descendants()  # and what left that group (a daemon), reparented here when the child ended
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
    notes = 2
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()
        _become_subreaper()
        notes = os.dup(2)  # the runner's stderr, for the harness's own notes, whatever a cell does to fd 2
        requests = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # a cell that reads stdin reads nothing, never the next request
        from harness import exclusive

        exclusive.set_phase_listener(lambda phase: _send(reply_fd, {"phase": phase}))
        watch = _Watch()
        while (line := _read_request(requests)) is not None:
            _send(reply_fd, {"pid": os.getpid()})
            request = json.loads(line)
            cell = Cell.from_dict(request["cell"])
            record, finished = _run(cell, Settings.model_validate(request["settings"]), watch)
            changed = watch.reset_signals()  # first: nothing the cell armed may go off from here on
            broken = _device_error(cell.device) if finished else None
            if broken is not None:  # a CUDA error poisons the context for good: the next cell must not inherit it
                record = blame(record, broken)
            changed += watch.changes() + _kill_descendants()
            if broken is not None:
                changed.append("its device (an error left behind)")
            if changed:
                record = record.replace(process_changes=changed)
            _send(reply_fd, {"record": json.loads(record.to_json()), "last": bool(changed)})
            if changed:
                _note(notes, f"harness: {record.id} changed {', '.join(changed)}; the next cell gets a fresh process.")
                break
    except BaseException:
        import traceback

        _note(notes, traceback.format_exc())
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass  # a cell closed it, or the descriptor under it
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


def _run(cell: Cell, settings: Settings, watch: _Watch) -> tuple[Record, bool]:
    """`run_cell`, with anything that escapes it (an optimizer module raising on import) made a record;
    and whether `run_cell` returned (only then is its device checked)."""
    from harness.execute import environment, run_cell

    try:
        watch.add_module(_import_optimizer_module(cell.optimizer))
        return run_cell(cell, settings), True
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


def _import_optimizer_module(name: str) -> ModuleType | None:
    """Import the module an optimizer name lives in; an absent package is left for `run_cell` to skip."""

    if name.startswith("timm:"):
        module = "timm.optim"
    elif ":" in name:
        module = name.split(":", 1)[0]
    elif "." in name:
        module = name.rsplit(".", 1)[0]
    else:
        return None
    try:
        quiet_import(module)  # what it prints goes into the records' env, not onto the terminal
    except Exception:
        # run_cell tells a missing package (skipped) from a broken one (import_error) and a missing module
        return None
    return sys.modules.get(module)


# --- what a cell may change process-wide ----------------------------------------------------------

_MISSING = object()
_SIGNALS = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))
_TIMERS = {name: getattr(signal, name) for name in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")}
_STREAMS = ("stdin", "stdout", "stderr")
_KILL_ROUNDS = 50
"""Rounds of find-and-kill over a cell's descendants: a fork bomb is not chased for ever."""
_REAP_S = 5.0
"""How long the killing and reaping of a cell's descendants may take."""


class _Watch:
    """What a cell could change process-wide, as it was before the first cell of this process.

    Attributes are kept as shallow copies of `vars()` and compared by identity (a patched attribute is a
    new object), which costs a dict comparison per namespace when nothing changed.
    """

    def __init__(self) -> None:
        import torch
        import torch.nn.functional

        self.watched: dict[str, Any] = {
            "torch": torch,
            "torch.optim": torch.optim,
            "torch.nn": torch.nn,
            "torch.nn.Module": torch.nn.Module,
            "torch.nn.functional": torch.nn.functional,
            "torch.Tensor": torch.Tensor,
            "torch.autograd": torch.autograd,
        }
        optimizers = {
            f"torch.optim.{name}": value
            for name, value in vars(torch.optim).items()
            if isinstance(value, type) and issubclass(value, torch.optim.Optimizer)
        }
        self._add(optimizers)
        self.attributes = {name: dict(vars(obj)) for name, obj in self.watched.items()}
        self.values = _values()
        self.streams = [getattr(sys, name) for name in _STREAMS]
        self.handlers = [signal.getsignal(signum) for signum in _SIGNALS]
        self.blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])

    def add_module(self, module: ModuleType | None) -> None:
        """Watch a cell's optimizer module and its classes too, from before the cell runs."""
        if module is None or module.__name__ in self.watched:
            return
        added: dict[str, Any] = {module.__name__: module}
        added.update({f"{module.__name__}.{name}": v for name, v in vars(module).items() if isinstance(v, type)})
        for name, obj in self._add(added).items():
            self.attributes[name] = dict(vars(obj))

    def _add(self, namespaces: dict[str, Any]) -> dict[str, Any]:
        known = {id(obj) for obj in self.watched.values()}
        new = {}
        for name, obj in namespaces.items():
            if id(obj) not in known:
                known.add(id(obj))
                new[name] = obj
        self.watched.update(new)
        return new

    def reset_signals(self) -> list[str]:
        """Disarm the interval timers a cell left armed, put back the signal handlers and the mask it
        changed; what it had changed."""
        changed = []
        for name, which in _TIMERS.items():
            if signal.getitimer(which) != (0.0, 0.0):
                signal.setitimer(which, 0)
                changed.append(f"an interval timer ({name})")
        for signum, handler in zip(_SIGNALS, self.handlers, strict=True):
            if signal.getsignal(signum) is not handler:
                if handler is not None:  # None: not set from Python, so it cannot be put back from Python
                    signal.signal(signum, handler)
                changed.append(f"the {_signal_name(signum)} handler")
        if signal.pthread_sigmask(signal.SIG_SETMASK, self.blocked) != self.blocked:
            changed.append("blocked signals")
        return changed

    def changes(self) -> list[str]:
        """What differs now from before; attributes a module gained (one imported lazily) are not changes."""
        changed = []
        for name, obj in self.watched.items():
            changed += _attribute_changes(name, self.attributes[name], obj)
        for stream, was in zip(_STREAMS, self.streams, strict=True):
            now = getattr(sys, stream)
            if now is not was:
                changed.append(f"sys.{stream} (replaced)")
            elif getattr(now, "closed", False):
                changed.append(f"sys.{stream} (closed)")
        values = _values()
        changed += [_describe(key, values.get(key)) for key, value in self.values.items() if values.get(key) != value]
        return changed


def _attribute_changes(name: str, was: dict[str, Any], owner: Any) -> list[str]:
    """The attributes of one module or class that are no longer the same objects; `was` takes in what
    is not a change (an attribute a module gained, one imported lazily; see `_expected`)."""
    now = vars(owner)
    try:
        if was == now:  # identical values compare equal without calling `__eq__`: the cheap common case
            return []
    except Exception:
        pass  # a replaced value whose `==` raises (a tensor): compared one by one below
    is_class = isinstance(owner, type)
    changed = []
    for attr, value in list(was.items()):
        new = now.get(attr, _MISSING)
        if new is value:
            continue
        if new is not _MISSING and is_class and _expected(owner, value, new):
            was[attr] = new
        else:
            changed.append(f"{name}.{attr}" + (" (deleted)" if new is _MISSING else ""))
    for attr in now.keys() - was.keys():
        new = now[attr]
        if not is_class or (attr.startswith("__") and attr.endswith("__")) or _expected(owner, _MISSING, new):
            was[attr] = new
        else:
            changed.append(f"{name}.{attr} (added)")  # shadows what the class inherited
    return changed


def _expected(cls: type, old: Any, new: Any) -> bool:
    """Whether a class attribute changed the way libraries change their own classes on first use:
    the profiling wrapper `torch.optim.Optimizer` puts around a class's `step` when the class is first
    instantiated (over `old`, or over the inherited `step`), or a singleton made on first use
    (bitsandbytes' `GlobalOptimManager._instance`: None, then an instance of the class)."""
    if getattr(new, "hooked", None) is True:
        wrapped = getattr(new, "__wrapped__", _MISSING)
        return wrapped is old or (old is _MISSING and wrapped is not _MISSING)
    return old is None and isinstance(new, cls)


def _values() -> dict[str, Any]:
    import torch

    return {
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
        **{f"fd {fd}": _file_identity(fd) for fd in (0, 1, 2)},
    }


def _file_identity(fd: int) -> tuple[int, int] | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _describe(key: str, now: Any) -> str:
    if key.startswith("fd "):
        return f"{key} (closed)" if now is None else f"{key} (now another file)"
    return key


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _kill_descendants() -> list[str]:
    """Kill and reap every process left running below this one: the cell's children and theirs, and
    those that left the process group and session (as a subreaper, this process inherits them when
    their parent exits). A note of how many, if any."""
    killed: set[int] = set()
    until = time.monotonic() + _REAP_S
    for _ in range(_KILL_ROUNDS):
        found = _descendants(os.getpid())
        if not found or time.monotonic() > until:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed.update(found)
        _reap(found, until)  # a killed grandchild is reaped in a later round, once it is reparented here
    if not killed:
        return []
    return [f"{len(killed)} process{'es' if len(killed) > 1 else ''} left running"]


def _reap(pids: list[int], until: float) -> None:
    """Wait for those of `pids` that are this process's children, but not past `until`: a process stuck
    in the kernel (a driver call) dies late, and must not stall the runner."""
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    left.discard(pid)
            except ChildProcessError:
                left.discard(pid)  # not a child (yet)
        if left:
            if time.monotonic() > until:
                return
            time.sleep(0.001)


def _descendants(root: int) -> list[int]:
    """The pids below `root` (Linux: read from /proc; elsewhere none are found)."""
    found: list[int] = []
    queue = [root]
    while queue:
        children = _children(queue.pop())
        found += children
        queue += children
    return found


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children += [int(child) for child in handle.read().split()]
        except FileNotFoundError:
            if task == str(pid) and not children:  # a kernel without CONFIG_PROC_CHILDREN
                return _children_from_stat(pid)
        except OSError:
            continue
    return children


def _children_from_stat(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            children.append(int(entry))
    return children


def _note(fd: int, text: str) -> None:
    """A line for the runner's stderr; never raises (a cell may have closed what it writes to)."""
    try:
        os.write(fd, (text.rstrip("\n") + "\n").encode(errors="replace"))
    except OSError:
        pass


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
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _become_subreaper() -> None:
    """Linux: orphans among this process's descendants (a daemon that called `setsid` and forked) are
    reparented to it rather than to init, so they can be found and killed."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


WARM_ENV = "HARNESS_WARM_IMPORTS"
"""Modules the runner imports once before it forks, beside `_WARM_IMPORTS`: the frameworks and builder modules
of the cells it has been given (`harness.isolate.CellRunner`), so no cell pays for importing them."""


def _warm_up() -> None:

    import torch

    # No OpenMP thread pool in the server: a child forked from a process whose pool ran hangs in its
    # first parallel region (libgomp). Children set their own thread count (train.threads, bench.threads).
    torch.set_num_threads(1)
    extra = [name for name in os.environ.get(WARM_ENV, "").split(",") if name]
    for module in (*_WARM_IMPORTS, *extra):
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
