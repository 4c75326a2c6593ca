"""Imports that keep what a package prints to itself: into the record's environment, not onto the terminal.

Optimizer packages talk when they load: bitsandbytes logs "Failed to load CPU gemm_4bit_forward from
kernels-community" on some CPUs, others print banners or warn. `quiet_import` catches all of it (Python's
`sys.stdout`/`sys.stderr`, the file descriptors C code writes to, logging records and
warnings) and keeps it per module; `import_messages()` hands it to each record's `env["import_messages"]`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType

_MESSAGES: dict[str, str] = {}
_LIMIT = 4000
"""Characters kept per module: enough for a warning and its hint, never a whole log."""


def quiet_import(module_name: str) -> ModuleType:
    """`importlib.import_module`, with whatever the import prints kept for `import_messages()`."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    with captured_output(module_name):
        return importlib.import_module(module_name)


def import_messages() -> dict[str, str]:
    """What each quietly imported module printed while loading, by module name (empty when all were silent)."""
    return dict(_MESSAGES)


@contextlib.contextmanager
def captured_output(owner: str | None = None) -> Iterator[io.StringIO]:
    """Catch Python and C output, logging's last resort and warnings; with an `owner`, keep the text under it."""
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        # catch_warnings keeps the filters in force: only what would have been shown is kept.
        saved_streams = sys.stdout, sys.stderr
        for stream in saved_streams:
            with contextlib.suppress(Exception):
                stream.flush()
        saved_fds = _redirect_fds(sink.fileno())
        sys.stdout = sys.stderr = text
        # A root handler of our own: logging then neither falls back to stderr nor misses a record
        # because another handler (pytest's, say) took it.
        logged = logging.StreamHandler(text)
        logged.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(logged)
        try:
            yield text
        finally:
            logging.getLogger().removeHandler(logged)
            _flush_c_streams()
            sys.stdout, sys.stderr = saved_streams
            for fd, copy in saved_fds:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            parts = [sink.read().decode(errors="replace").strip(), text.getvalue().strip()]
            parts += [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
            message = "\n".join(part for part in parts if part)
            if message and owner:
                _MESSAGES[owner] = message[:_LIMIT]


def _redirect_fds(target: int) -> list[tuple[int, int]]:
    """Point file descriptors 1 and 2 at `target`; returns (fd, saved copy) pairs to put back."""
    saved = []
    for fd in (1, 2):
        try:
            copy = os.dup(fd)
        except OSError:  # no such descriptor (a daemon): nothing to catch there
            continue
        os.dup2(target, fd)
        saved.append((fd, copy))
    return saved


def _flush_c_streams() -> None:
    """C's stdio buffers what a library printed; flush it into the capture before the descriptors go back."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)
