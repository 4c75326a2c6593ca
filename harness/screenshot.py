"""A PNG of the HTML report, taken in headless Chromium; a missing browser is a reason, never an error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.report.files import write_atomically

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium: Playwright's own browser download cannot be relied on (offline CI machines)."""
CHROMIUM_ENV = "HARNESS_CHROMIUM"
"""Names the Chromium (or Chrome) executable to use instead of looking for one."""
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

LAUNCH_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_TIMEOUT_MS = 60_000


def find_chromium() -> Path | None:
    """`$HARNESS_CHROMIUM` if set, else the first Chromium or Chrome on PATH, else Debian's; None if none is there."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return Path(named) if Path(named).is_file() else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return CHROMIUM if CHROMIUM.is_file() else None


def take_screenshot(html_path: Path, png_path: Path, *, executable: Path | None = None) -> str | None:
    """Save a full-page PNG of the report; None on success, else a sentence saying why there is none."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "The `playwright` Python package is not installed (pip install playwright)."
    if executable is None:
        executable = find_chromium()
        if executable is None:
            return f"No Chromium found: set {CHROMIUM_ENV}, or install one (on Debian: apt-get install chromium)."
    if not Path(executable).is_file():
        return f"No Chromium at {executable} (on Debian: apt-get install chromium)."
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        return f"The report {html_path} does not exist."
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(executable), args=list(LAUNCH_ARGS))
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(html_path.as_uri(), wait_until="load", timeout=_TIMEOUT_MS)
                png = page.screenshot(full_page=True, timeout=_TIMEOUT_MS)
            finally:
                browser.close()
    except (PlaywrightError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"Chromium at {executable} failed: {first_line}"
    try:
        write_atomically(Path(png_path), png)  # whole or not at all, as the report it shows
    except HarnessError as exc:
        return str(exc)
    return None
