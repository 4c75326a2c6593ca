"""Report files: any text renders, and each file is written whole or not at all (harness.report.files)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from harness.cells import Cell, Record
from harness.cli import main
from harness.errors import HarnessError
from harness.records import append_record, write_records
from harness.report import write_atomically, write_reports

CELL = Cell("pkg.Opt", "cpu", "float32", "plain", {}, "direct")


def failing(message: str, **fields) -> Record:
    return Record.for_cell(
        CELL, "step_error", reason="other", error_type="RuntimeError", error_message=message, **fields
    )


def report_of(tmp_path: Path, *records: Record) -> Path:
    write_records(tmp_path / "results.jsonl", records)
    assert main(["report", str(tmp_path), "--baselines", str(tmp_path)]) == 0
    return tmp_path


def fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every file opened for writing takes half of what is written, then the disk is full."""
    real = os.fdopen

    class Full:
        def __init__(self, handle: io.BufferedWriter) -> None:
            self.handle = handle

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: Full(real(fd, *args, **kwargs)))


def test_a_message_with_surrogate_escaped_bytes_renders_every_time(tmp_path: Path) -> None:
    # An older results file holds the surrogates as JSON escapes: the reader cleans them.
    line = failing("x").to_json().replace('"error_message": "x"', '"error_message": "bad bytes: caf\\udcff\\udcfe"')
    (tmp_path / "results.jsonl").write_text(line + "\n")
    for _ in range(2):  # a second `harness report` works too
        assert main(["report", str(tmp_path), "--baselines", str(tmp_path)]) == 0
        html = (tmp_path / "report.html").read_bytes().decode("utf-8")
        assert "bad bytes: caf\\\\xff\\\\xfe" in html  # the bytes, shown as escapes, in the page's JSON
        assert "caf\\xff\\xfe" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_a_surrogate_in_a_field_no_one_cleaned_still_renders(tmp_path: Path) -> None:
    odd = failing("x").replace(optimizer="pkg.Opt\udcff", extra={"note\udcfe": "v\udcfd"})
    write_reports([odd], None, tmp_path, title="t")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "pkg.Opt?" in html and "note?" in html


def test_a_megabyte_message_is_stored_capped_and_rendered(tmp_path: Path) -> None:
    message = "HEAD " + "x" * 3_000_000 + " TAIL"
    append_record(tmp_path / "results.jsonl", failing(message, traceback="Traceback\n" + message))
    assert (tmp_path / "results.jsonl").stat().st_size < 200_000
    assert main(["report", str(tmp_path), "--baselines", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "HEAD x" in html and "x TAIL" in html and "characters cut" in html
    assert len(html) < 500_000


def test_nul_and_control_characters_never_reach_a_file(tmp_path: Path) -> None:
    report_of(tmp_path, failing("before\x00after\x07bell\x1b[31mred"))
    for name in ("results.jsonl", "report.html", "summary.md"):
        data = (tmp_path / name).read_bytes()
        assert b"\x00" not in data and b"\\u0000" not in data and b"\x1b" not in data and b"\\u001b" not in data
    assert "before\\x00after\\x07bellred" in (tmp_path / "summary.md").read_text()


def test_a_full_disk_leaves_the_previous_report_and_says_so_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    report_of(tmp_path, failing("first"))
    previous = {name: (tmp_path / name).read_bytes() for name in ("report.html", "summary.md")}
    write_records(tmp_path / "results.jsonl", [failing("second")])
    fill_disk(monkeypatch)
    capsys.readouterr()

    code = main(["report", str(tmp_path), "--baselines", str(tmp_path)])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"error: Cannot write {tmp_path / 'report.html'}: No space left on device; the previous one is left as it "
        "was. Free some space or choose a writable folder."
    ]
    assert {name: (tmp_path / name).read_bytes() for name in previous} == previous
    names = ["findings.md", "report.html", "results.jsonl", "summary.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temp


def test_a_failed_first_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    fill_disk(monkeypatch)
    with pytest.raises(HarnessError, match=r"Cannot write .*summary\.md: No space left on device; no file was left"):
        write_atomically(tmp_path / "summary.md", "# summary\n")
    assert list(tmp_path.iterdir()) == []


def test_write_atomically_replaces_whole_files_with_ordinary_permissions(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "report.html"
    write_atomically(path, "old")
    write_atomically(path, "new ✓")
    write_atomically(tmp_path / "shot.png", b"\x89PNG")
    assert path.read_text(encoding="utf-8") == "new ✓" and (tmp_path / "shot.png").read_bytes() == b"\x89PNG"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_a_screenshot_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    import playwright.sync_api

    from harness.screenshot import take_screenshot

    class Page:
        def goto(self, *args: object, **kwargs: object) -> None:
            pass

        def screenshot(self, **kwargs: object) -> bytes:
            assert "path" not in kwargs  # the bytes come back here, and are written atomically
            return b"\x89PNG new"

    class Browser:
        def new_page(self, **kwargs: object) -> Page:
            return Page()

        def close(self) -> None:
            pass

    class Playwright:
        chromium = type("Chromium", (), {"launch": staticmethod(lambda **kwargs: Browser())})

        def __enter__(self) -> Playwright:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(playwright.sync_api, "sync_playwright", Playwright)
    (tmp_path / "report.html").write_text("<p>report</p>")
    (tmp_path / "chromium").write_text("")
    png = tmp_path / "report.png"
    png.write_bytes(b"\x89PNG old")
    fill_disk(monkeypatch)
    reason = take_screenshot(tmp_path / "report.html", png, executable=tmp_path / "chromium")
    assert reason is not None and reason.startswith(f"Cannot write {png}: No space left on device")
    assert png.read_bytes() == b"\x89PNG old"
    monkeypatch.undo()
    monkeypatch.setattr(playwright.sync_api, "sync_playwright", Playwright)
    assert take_screenshot(tmp_path / "report.html", png, executable=tmp_path / "chromium") is None
    assert png.read_bytes() == b"\x89PNG new"
