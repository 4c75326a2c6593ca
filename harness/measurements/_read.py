"""Reading a record's JSON values into typed fields: a wrong kind raises `MalformedResult` naming the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class MalformedResult(ValueError):
    """A record's `bench` or `env` holds a value of the wrong kind."""


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedResult(f"{where} must be an object; got {value!r}.")
    return value


def number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedResult(f"{where} must be a number or null; got {value!r}.")
    return float(value)


def whole(value: Any, where: str) -> int | None:
    return None if value is None else required_whole(value, where)


def required_whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedResult(f"{where} must be a whole number; got {value!r}.")
    return value


def text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedResult(f"{where} must be text or null; got {value!r}.")
    return value
