"""One phrasing for the user's mistakes: quoting, key paths, close matches and "unknown X" sentences.

Every stage that tells a user about a name it does not know says it the same way:

    unknown dtype 'flaot16': did you mean 'float16'? Available: float32, float16, bfloat16, float64.

A message names its key path once, at the front (`` `dtypes[1]`: unknown dtype ... ``), so the part that
says what is unknown never repeats where it is.

`safe_text` is how any text from an exception or an optimizer enters a record: valid Unicode, no control
characters, and capped, so the results file, every report and the terminal can take it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

MESSAGE_LIMIT = 16 * 1024
"""Characters kept of an exception's message, a judgement, or any one-part text a record carries."""
TRACEBACK_LIMIT = 64 * 1024
"""Characters kept of a traceback (its end, where the error is, gets most of them)."""
NAME_LIMIT = 1024
"""Characters kept of a name, such as an exception's type."""

_ANSI = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
"""Terminal escape sequences (colours, cursor moves, a window title): formatting, dropped whole."""
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters but newline and tab, and lone surrogates (no UTF-8 encoder takes them)."""


def quote(value: Any) -> str:
    """A user's value in single quotes, or its repr when quotes or unprintable characters would mislead."""
    text = str(value)
    if isinstance(value, str) and text.isprintable() and "'" not in text:
        return f"'{text}'"
    return repr(value)


def describe(value: Any) -> str:
    """What a value is, in words (`the string 'cpu'`, `a list`), for "must be X, not Y" sentences."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def dotted(path: Sequence[Any]) -> str:
    """A key path as a user writes it: `("include", 0, "device")` -> `include[0].device`."""
    text = ""
    for part in path:
        name = str(part) if str(part).isprintable() else repr(part)
        text += f"[{part}]" if isinstance(part, int) else (f".{name}" if text else name)
    return text


def first_line(message: str | None, *, limit: int = 200) -> str:
    """The first non-blank line of a message, cut to `limit` characters (with an ellipsis); "" for none."""
    lines = (message or "").strip().splitlines()
    line = lines[0].rstrip() if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def safe_text(text: str, *, limit: int = MESSAGE_LIMIT) -> str:
    """`text` fit to store, print and render: valid Unicode, no control characters but newline and tab, and
    at most `limit` (64 or more) characters.

    Terminal escape sequences are dropped and a carriage return ends a line; any other control character
    becomes its escape (`\\x00`), a lone surrogate the byte it escaped (`\\xff`, from `surrogateescape`) or
    `\\ufffd`. A longer text keeps its head and its tail (the larger part: a traceback's error is at its end)
    around a line `... N characters cut ...`. Applying it twice changes nothing.
    """
    if len(text) <= limit:
        cleaned = _clean(text)
        if len(cleaned) <= limit:
            return cleaned
    keep = max(limit - 48, 2)  # room for the marker
    head, tail = keep // 4, keep - keep // 4
    return (
        _clean(text[:head])[:head]
        + f"\n... {len(text) - head - tail} characters cut ...\n"
        + _clean(text[-tail:])[-tail:]
    )


def strip_control(text: str) -> str:
    """`text` without terminal escapes and control characters (newlines and tabs stay): for one terminal line."""
    return _UNSAFE.sub("", _ANSI.sub("", text))


def _clean(text: str) -> str:
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")  # a progress bar's `\r` starts a line
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by `surrogateescape`
        return f"\\x{code - 0xDC00:02x}"
    return "\ufffd" if code >= 0xD800 else f"\\x{code:02x}"


def close_matches(word: str, choices: Iterable[Any], *, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The choices a user most likely meant: a case-insensitive equal, then completions, then look-alikes.

    Completions (`signatur` -> `signature`) count only for words of three or more characters.
    """
    word = str(word).strip("*?[]")  # a glob is matched by its letters
    names = [str(choice) for choice in choices]
    lowered = word.lower()
    if not lowered:
        return []
    ranked = [name for name in names if name.lower() == lowered]
    if len(lowered) >= 3:
        completions = (name for name in names if name.lower().startswith(lowered) and name not in ranked)
        ranked += sorted(completions, key=len)
    ranked += [name for name in difflib.get_close_matches(word, names, n=n, cutoff=cutoff) if name not in ranked]
    return ranked[:n]


def did_you_mean(word: str, choices: Iterable[Any], *, n: int = 1, cutoff: float = 0.6) -> str:
    """`: did you mean 'x'?` (or `'x' or 'y'`) for the nearest choices, or "" when none is near."""
    near = close_matches(word, choices, n=n, cutoff=cutoff)
    return f": did you mean {' or '.join(quote(name) for name in near)}?" if near else ""


def unknown(
    kind: str,
    name: Any,
    choices: Sequence[Any],
    *,
    where: str = "",
    n: int = 1,
    cutoff: float = 0.6,
    shown: int | None = None,
    also: str = "",
) -> str:
    """The one sentence for a name that is not one of `choices`.

    `unknown {kind} {name}{where}: did you mean {near}? Available: {choices}{also}.` where `where` is
    e.g. " in module 'torch.optim'", at most `shown` choices are listed, and `also` adds to the list
    (", or a function written as 'package.module:function'"). Without a close match the sentence reads
    `unknown {kind} {name}{where}. Available: ...`.
    """
    listed = [str(choice) for choice in choices]
    more = f" and {len(listed) - shown} more" if shown is not None and len(listed) > shown else ""
    available = ", ".join(listed[:shown] if shown is not None else listed) or "none"
    hint = did_you_mean(str(name), listed, n=n, cutoff=cutoff)
    return f"unknown {kind} {quote(name)}{where}{hint or '.'} Available: {available}{more}{also}."
