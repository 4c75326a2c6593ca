"""Fixtures shared by the test modules."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/test_plugin.py runs the harness's pytest plugin in-process

RESOURCES = Path(__file__).parent / "resources"


@pytest.fixture
def resources() -> Path:
    """`tests/resources/`: odd and ordinary inputs kept as real files."""
    return RESOURCES


@pytest.fixture
def write_matrix(tmp_path: Path) -> Callable[[str], Path]:
    """Write a (dedented) matrix text to a file and return its path."""

    def write(text: str, name: str = "matrix-under-test.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
