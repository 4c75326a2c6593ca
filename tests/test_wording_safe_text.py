"""harness.wording.safe_text: any text an exception carries comes out storable, printable and bounded."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.wording import MESSAGE_LIMIT, safe_text

SURROGATE_BYTES = b"caf\xff\xfe".decode("utf-8", "surrogateescape")


def test_surrogate_escaped_bytes_become_their_escapes() -> None:
    assert safe_text(f"bad bytes: {SURROGATE_BYTES}") == "bad bytes: caf\\xff\\xfe"
    assert safe_text("lone \ud800 high") == "lone \ufffd high"


def test_control_characters_are_escaped_and_terminal_sequences_dropped() -> None:
    text = "before\x00after\x07bell\x1b[31mred\x1b[0m\x1b]0;title\x07\x7f\x85 10%\r 20%\r\n"
    assert safe_text(text) == "before\\x00after\\x07bellred\\x7f\\x85 10%\n 20%\n"


def test_newlines_tabs_and_ordinary_unicode_are_kept() -> None:
    text = "Traceback (most recent call last):\n\tline 1 — ünïcødé 😀\n"
    assert safe_text(text) == text


def test_a_megabyte_text_keeps_its_head_and_tail_around_a_marker() -> None:
    text = "HEAD" + "x" * 5_000_000 + "TAIL"
    kept = safe_text(text, limit=MESSAGE_LIMIT)
    assert len(kept) <= MESSAGE_LIMIT
    head, marker, tail = kept.split("\n")
    assert head.startswith("HEAD") and tail.endswith("TAIL") and len(tail) > len(head)
    assert marker == f"... {len(text) - len(head) - len(tail)} characters cut ..."


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=400), st.integers(min_value=64, max_value=300))
def test_any_text_comes_out_utf8_bounded_and_stable(text: str, limit: int) -> None:
    """Surrogates and control characters included (the alphabet excludes no category)."""
    kept = safe_text(text, limit=limit)
    kept.encode("utf-8")  # raises on a lone surrogate
    assert len(kept) <= limit
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", kept)
    assert safe_text(kept, limit=limit) == kept
