"""Writing a report file whole or not at all: a failed write leaves the previous file, or none."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import HarnessError


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write `content` to a temporary file beside `path`, flush it to disk, then rename it over `path`.

    Text is written as UTF-8; a character no encoder takes (a lone surrogate some field still holds) becomes
    `?`, so a report is never lost to one. A write that fails (a full disk, a read-only folder) removes the
    temporary file and raises a `HarnessError` naming `path`; whatever was at `path` is left as it was.
    """
    path = Path(path)
    data = content.encode("utf-8", errors="replace") if isinstance(content, str) else content
    if path.parent.exists() and not path.parent.is_dir():
        raise HarnessError(f"Cannot write {path}: {path.parent} is a file, not a folder; choose a folder.")
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a full disk may only say so here, not at `write`
        os.chmod(tmp, 0o644)  # as an ordinary file, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = "the previous one is left as it was" if path.exists() else "no file was left there"
        raise HarnessError(
            f"Cannot write {path}: {exc.strerror or exc}; {kept}. Free some space or choose a writable folder."
        ) from exc
