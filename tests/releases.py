"""A package index made on the spot: tiny wheels of `tinyopt`, whose optimizer breaks at a known release.

`tinyopt.TinyOpt` is SGD; from `BROKEN_FROM` on its `step` raises, the kind of regression `harness bisect`
exists to find. The wheels lie in one folder that pip reads with `--find-links` and no index, so the
tests need no network and see nothing of the machine's own pip configuration.
"""

from __future__ import annotations

import base64
import hashlib
import os
import textwrap
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

RELEASES = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9", "1.10", "1.11")
BROKEN_FROM = "1.7"

MATRIX = """\
optimizers:
  - {name: tinyopt.TinyOpt, defaults: {lr: 0.1, momentum: 0.9}}
devices: [cpu]
dtypes: [float32]
kwargs: {plain: {}}
builders: [direct]
train: {steps: 8, timeout_s: 120}
model: {d_model: 16, n_layers: 1, n_heads: 2, seq_len: 8, vocab_size: 16}
bench: {enabled: false}
environments:
  current: {}
  tiny-old: {tinyopt: "1.0"}
  tiny-new: {tinyopt: "1.11"}
  tiny-missing: {tinyopt: "9.9"}
"""


def _source(version: str) -> str:
    broken = tuple(int(p) for p in version.split(".")) >= tuple(int(p) for p in BROKEN_FROM.split("."))
    body = f"raise RuntimeError('tinyopt {version} cannot step')" if broken else "return super().step(closure)"
    return textwrap.dedent(
        f'''\
        import torch

        __version__ = "{version}"


        class TinyOpt(torch.optim.SGD):
            def step(self, closure=None):
                {body}
        '''
    )


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel of `files` (path -> text), written by hand: no build backend, no network."""
    dist_info = f"{name}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(path, data) for path, data in contents.items()] + [f"{dist_info}/RECORD,,"]
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def build_index(folder: Path, releases: Iterable[str] = RELEASES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for version in releases:
        build_wheel(folder, "tinyopt", version, {"tinyopt/__init__.py": _source(version)})
    return folder


def use_local_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """pip sees only the tiny index (no config file, no index, find-links); environments cache under tmp."""
    wheels = build_index(tmp_path / "wheels")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("HARNESS_ENV_CACHE", str(tmp_path / "envs"))
    return wheels
