"""Expand optimizer entries (`torch.optim:*`, `timm:*`) in a child process, never in the harness's own.

Expanding a family needs its module's members, so the module must be imported; one that exits, hangs,
segfaults, raises or prints on import must cost only its own cells. The child answers on a pipe of
its own (what a module prints goes to stderr) one entry at a time; an entry whose import kills or
hangs the child expands to itself, and its cells meet the same fault in their own runner at run time
(`crashed`, `timeout` or `construct_error`). The answers are cached in a file for the rest of the run,
so pytest's workers do not import the modules again.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, UnknownOptimizerError

if TYPE_CHECKING:
    from harness.spec import Matrix

CACHE_ENV = "HARNESS_EXPANSION_CACHE"
TIMEOUT_ENV = "HARNESS_PROBE_TIMEOUT_S"
TIMEOUT_S = float(os.environ.get(TIMEOUT_ENV, "60"))
"""How long one entry may take, the child's own start (importing torch) included (`HARNESS_PROBE_TIMEOUT_S`)."""


def expand_all(names: Iterable[str], *, timeout_s: float = TIMEOUT_S) -> dict[str, list[str] | dict[str, str]]:
    """Each name's expansion: a list of concrete names, or `{"error": sentence}` for a user's mistake."""
    todo = list(dict.fromkeys(names))
    answers: dict[str, list[str] | dict[str, str]] = {}
    while todo:
        answers.update(_probe(todo, timeout_s))
        todo = [name for name in todo if name not in answers]
    return answers


def cached_expander(names: Iterable[str], cache: Path | None = None) -> Any:
    """An `expand_optimizer` for `expand_matrix`: answers from `cache` when it has them, else from a child."""
    wanted = list(dict.fromkeys(names))
    misspelt = {name: problem for name in wanted if (problem := misspelt_package(name)) is not None}
    wanted = [name for name in wanted if name not in misspelt]
    answers: dict[str, Any] = {}
    if cache is not None and cache.exists():
        try:
            answers = json.loads(cache.read_text())
        except (OSError, ValueError):
            answers = {}
    missing = [name for name in wanted if name not in answers]
    if missing:
        answers.update(expand_all(missing))
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(answers))
                os.replace(tmp, cache)
            except OSError as exc:
                raise HarnessError(f"Cannot write {cache}: {exc.strerror}. Choose a writable --out.") from exc

    def expand(name: str) -> list[str]:
        if name in misspelt:
            raise UnknownOptimizerError(misspelt[name])  # expand_matrix adds the entry's file:line
        if name not in answers:
            answers.update(expand_all([name]))
        answer = answers[name]
        if isinstance(answer, dict):
            raise UnknownOptimizerError(answer["error"])
        return list(answer)

    return expand


def optimizer_names(matrix: Matrix) -> list[str]:
    """The optimizer names a matrix's expansion will ask about: its entries and its includes' optimizers."""
    names = [entry.name for entry in matrix.optimizers]
    names += [str(rule["optimizer"]) for rule in matrix.include if "optimizer" in rule]
    return list(dict.fromkeys(names))


def misspelt_package(name: str) -> str | None:
    """A sentence when `name`'s top-level package is not installed but an installed one is close to it.

    Nothing is imported: `importlib.util.find_spec` on a top-level name only looks. A known optional
    package that is absent (bitsandbytes) is not a mistake: its cells are `skipped`.
    """
    import difflib
    import importlib.util
    import pkgutil

    from harness.resolve import OPTIMIZER_PACKAGES

    top = name.split(":", 1)[0].split(".")[0]
    if ("." not in name and ":" not in name) or not top.isidentifier() or top in OPTIMIZER_PACKAGES:
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        return None
    installed = {module.name for module in pkgutil.iter_modules()} | set(sys.builtin_module_names)
    near = difflib.get_close_matches(top, sorted(installed), n=1, cutoff=0.75)
    if not near:
        return None
    return (
        f"the optimizer {name!r} comes from package {top!r}, which is not installed; did you mean {near[0]!r}? "
        f"(A package that is really absent would leave its cells `skipped`.)"
    )


def _probe(names: list[str], timeout_s: float) -> dict[str, list[str] | dict[str, str]]:
    """Expand `names` in one child until it finishes, dies or hangs; the entry it was on expands to itself."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.probe", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
    answers: dict[str, list[str] | dict[str, str]] = {}
    buffer = b""
    current = names[0]
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(names).encode())
        proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        while len(answers) < len(names):
            left = deadline - time.monotonic()
            ready = select.select([read_fd], [], [], max(left, 0))[0] if left > 0 else []
            chunk = os.read(read_fd, 1 << 16) if ready else b""
            if not chunk:
                break  # the child died or hung on `current`
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                message = json.loads(line)
                if "start" in message:
                    current, deadline = message["start"], time.monotonic() + timeout_s
                else:
                    answers[message["name"]] = message["names"] if "names" in message else {"error": message["error"]}
    finally:
        os.close(read_fd)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if current not in answers:
        answers[current] = [current]  # its cells meet the same fault in their own runner
    return answers


def _serve(reply_fd: int) -> None:
    os.dup2(2, 1)  # what a module prints on import goes to stderr, never into the answers
    names = json.loads(sys.stdin.read())
    from harness.resolve import expand_optimizer

    for name in names:
        os.write(reply_fd, (json.dumps({"start": name}) + "\n").encode())
        try:
            answer: dict[str, Any] = {"name": name, "names": expand_optimizer(name)}
        except HarnessError as exc:
            answer = {"name": name, "error": str(exc)}
        except BaseException:  # a module raising on import: its cells will say so at run time
            answer = {"name": name, "names": [name]}
        os.write(reply_fd, (json.dumps(answer) + "\n").encode())


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
