"""The HTML report driven in headless Chromium: filters, the detail view, escaping, no network at all.

The test installs what it needs (the `playwright` package with pip, Debian's Chromium with apt-get when
run as root) and skips, saying why, only when no browser can be had. Playwright's own browser download
is never used: it needs a network that CI machines may not have.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.baseline import BaselineEntry
from harness.cells import STATUSES, Cell, Record
from harness.report import render_html
from harness.screenshot import CHROMIUM, LAUNCH_ARGS, take_screenshot
from harness.verdict import judge

RECORDS = Path(__file__).parent / "resources" / "records" / "every_status.jsonl"
XSS = "<script>alert(1)</script>"
_LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "harness-test-browser-install.lock"


@contextlib.contextmanager
def _install_lock():
    """One installer at a time when pytest-xdist runs this module in several workers."""
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing to install with apt-get anyway
        yield
        return
    with open(_LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], timeout: int) -> str | None:
    """None when the command succeeded, else the tail of what it printed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-300:]


def _ensure_playwright() -> str | None:
    if importlib.util.find_spec("playwright") is not None:
        return None
    with _install_lock():
        if importlib.util.find_spec("playwright") is None:
            failure = _run([sys.executable, "-m", "pip", "install", "--quiet", "playwright"], timeout=600)
            importlib.invalidate_caches()
            if importlib.util.find_spec("playwright") is None:
                return f"The `playwright` package is missing and `pip install playwright` failed: {failure}"
    return None


def _ensure_chromium() -> str | None:
    if CHROMIUM.is_file():
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"No Chromium at {CHROMIUM}, and installing it needs root and apt-get (apt-get install chromium)."
    with _install_lock():
        failure = None
        if not CHROMIUM.is_file():
            failure = _run(["apt-get", "install", "-y", "-qq", "chromium"], timeout=900)
        if not CHROMIUM.is_file():  # a fresh machine may have no package lists yet
            failure = _run(["apt-get", "update", "-qq"], timeout=300) or _run(
                ["apt-get", "install", "-y", "-qq", "chromium"], timeout=900
            )
    return None if CHROMIUM.is_file() else f"No Chromium at {CHROMIUM}; apt-get install chromium failed: {failure}"


@pytest.fixture(scope="module")
def browser():
    reason = _ensure_playwright() or _ensure_chromium()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(LAUNCH_ARGS))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    records = [Record.from_dict(json.loads(line)) for line in RECORDS.read_text().splitlines() if line]
    assert {r.status for r in records} == set(STATUSES)
    # One more ok cell, so that a filtered-out cell can sit in a row and a column that stay shown.
    [no_learning] = [r for r in records if r.status == "no_learning"]
    extra_cell = Cell(no_learning.optimizer, "cpu", "float32", "fused", {"fused": True}, "signature")
    records.append(Record.for_cell(extra_cell, "ok", env=no_learning.env))
    baseline = {"torch.optim.AdamW-cpu-float32-fused-direct": BaselineEntry("ok")}
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(records, judge(records, baseline, speedup_tolerance=0.2), title="browser test"))
    return path


@pytest.fixture
def page(browser, report):
    # CSP bypassed: the test must catch a stray reference itself, not rely on the page's policy to block it.
    page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    seen = SimpleNamespace(page=page, requests=[], dialogs=[], errors=[], url=report.as_uri())
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.goto(seen.url, wait_until="load")
    yield seen
    page.close()


def visible_statuses(page) -> list[str]:
    return page.locator("#matrix td.cell:visible").evaluate_all("cells => cells.map(c => c.dataset.status)")


def assert_offline_and_clean(seen) -> None:
    assert seen.requests == [seen.url], "the report made a request beyond loading itself"
    assert seen.errors == [] and seen.dialogs == []


@pytest.mark.browser
def test_the_status_filter_leaves_only_the_chosen_cells(page):
    p = page.page
    assert sorted(visible_statuses(p)) == sorted(["ok"] * 6 + [s for s in STATUSES if s != "ok"])
    for box in p.locator("input.f-status").all():
        if box.get_attribute("value") != "ok":
            box.uncheck()
    assert visible_statuses(p) == ["ok"] * 6
    assert p.locator("#f-count").inner_text() == "6 of 14 cells shown"
    assert p.locator("tr.row", has_text="AdamW8bit").is_visible()  # its ok cell keeps the row ...
    assert p.locator("td.cell[data-status=no_learning]").is_hidden()  # ... but not its no_learning cell
    assert p.locator("tr.row", has_text="torch.optim.SGD").is_hidden()  # a row with no ok cell goes
    assert p.locator("#matrix thead th", has_text="cuda").is_hidden()  # and so does a column
    p.click("#f-reset")
    assert len(visible_statuses(p)) == 14
    assert_offline_and_clean(page)


@pytest.mark.browser
def test_free_text_and_axis_filters_hide_and_show_cells(page):
    p = page.page
    p.fill("#f-text", "grokadamw")
    titles = p.locator("#matrix td.cell:visible").evaluate_all("cells => cells.map(c => c.title)")
    assert len(titles) == 3 and all(t.startswith("grokadamw.GrokAdamW-") for t in titles)
    p.fill("#f-text", "alert")  # matches the error message, not only the id
    assert visible_statuses(p) == ["construct_error"]
    p.fill("#f-text", "adamw8bit")
    assert visible_statuses(p) == ["no_learning", "ok"]
    p.fill("#f-text", "adamw8bit learning")  # every word must match
    assert visible_statuses(p) == ["no_learning"]
    p.fill("#f-text", "")
    p.select_option("#f-device", "cuda")
    assert visible_statuses(p) == ["skipped"]
    p.select_option("#f-device", "")
    p.select_option("#f-family", "bitsandbytes")
    assert sorted(visible_statuses(p)) == ["crashed", "no_learning", "ok"]
    p.select_option("#f-family", "")
    p.select_option("#f-builder", "signature")
    assert visible_statuses(p) == ["ok", "ok", "ok"]
    p.select_option("#f-builder", "")
    p.select_option("#f-verdict", "regression")
    assert visible_statuses(p) == ["step_error"]
    p.select_option("#f-verdict", "")
    assert len(visible_statuses(p)) == 14
    assert_offline_and_clean(page)


@pytest.mark.browser
def test_a_click_opens_the_detail_view_and_the_script_message_is_only_text(page):
    p = page.page
    assert p.locator("#detail").is_hidden()
    p.click("#matrix td.cell[data-status=construct_error]")
    detail = p.locator("#detail")
    assert detail.is_visible()
    assert "grokadamw.GrokAdamW-cpu-float32-fused-direct" in detail.locator("h2").inner_text()
    message = detail.locator("pre.error-message")
    assert message.is_visible() and message.inner_text() == XSS
    assert "TypeError" in detail.inner_text() and "unexpected_kwarg" in detail.inner_text()
    detail.locator("summary", has_text="traceback").click()
    assert "</script><script>alert(2)</script>" in detail.locator("pre.traceback").inner_text()
    assert p.locator("script").count() == 2 and detail.locator("script").count() == 0
    p.keyboard.press("Escape")
    assert detail.is_hidden()
    assert_offline_and_clean(page)


@pytest.mark.browser
def test_the_detail_view_draws_the_loss_curve_timings_and_bench(page):
    p = page.page
    p.click("#matrix td.cell[title='torch.optim.AdamW-cpu-float32-plain-direct']")
    detail = p.locator("#detail")
    assert detail.locator("svg.loss-chart polyline").count() == 1
    points = detail.locator("svg.loss-chart polyline").get_attribute("points").split()
    assert len(points) == 6  # one per loss
    text = detail.inner_text()
    for words in ("initial loss", "construct", "optimizer state", "937.5 KiB", "fused/foreach", "1.6", "parity"):
        assert words in text
    p.click("#detail-close")
    p.click("#verdicts button.open")  # the regression listed at the top opens the same view
    assert "torch.optim.AdamW-cpu-float32-fused-direct" in detail.locator("h2").inner_text()
    assert_offline_and_clean(page)


@pytest.mark.browser
def test_take_screenshot_saves_a_png(report, tmp_path, browser):
    png = tmp_path / "shots" / "report.png"
    # Its own Playwright in another thread: a sync Playwright (the `browser` fixture's) cannot nest.
    with ThreadPoolExecutor(max_workers=1) as pool:
        reason = pool.submit(take_screenshot, report, png).result(timeout=120)
    assert reason is None
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_take_screenshot_explains_a_missing_browser_instead_of_raising(report, tmp_path):
    reason = take_screenshot(report, tmp_path / "x.png", executable=tmp_path / "no-chromium")
    assert reason is not None and ("no-chromium" in reason or "playwright" in reason)
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory) -> Path:
    """40 optimizers x 60 columns: far wider and taller than the window."""
    columns = list(
        itertools.product(
            ("cpu", "cuda"),
            ("float32", "bfloat16"),
            ("plain", "fused", "foreach", "fused_false", "capturable"),
            ("direct", "signature", "safe"),
        )
    )
    records = [
        Record.for_cell(
            Cell(f"torch.optim.Opt{o:02d}", *axes[:3], {}, axes[3]),
            "ok" if (o + c) % 3 else "construct_error",
            reason=None if (o + c) % 3 else "unexpected_kwarg",
            losses=[4.0, 3.0, 2.0],
        )
        for o in range(40)
        for c, axes in enumerate(columns)
    ]
    path = tmp_path_factory.mktemp("wide") / "report.html"
    path.write_text(render_html(records, None, title="wide"))
    return path


def _box(page, selector: str) -> dict[str, float]:
    return page.locator(selector).first.evaluate(
        "e => { const r = e.getBoundingClientRect(); return {left: r.left, top: r.top, right: r.right}; }"
    )


@pytest.mark.browser
def test_a_wide_matrix_scrolls_in_its_box_with_the_optimizer_names_and_headers_kept_in_view(browser, wide_report):
    p = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    p.on("pageerror", lambda error: errors.append(str(error)))
    p.goto(wide_report.as_uri(), wait_until="load")
    sizes = p.evaluate(
        "() => { const w = document.querySelector('.matrix-wrap');"
        " return {scroll: w.scrollWidth, client: w.clientWidth, page: document.documentElement.scrollWidth,"
        " view: window.innerWidth, tall: w.scrollHeight > w.clientHeight}; }"
    )
    assert sizes["scroll"] > sizes["client"] + 2000 and sizes["tall"]  # the table overflows its box ...
    assert sizes["page"] <= sizes["view"]  # ... but not the page
    wrap = _box(p, ".matrix-wrap")
    name = "#matrix tbody tr.row th.opt"
    before = _box(p, name)
    first_cell = _box(p, "#matrix tbody tr.row td.cell")
    p.locator(".matrix-wrap").evaluate("w => { w.scrollLeft = 1500; w.scrollTop = 1200; }")
    after = _box(p, name)
    assert abs(after["left"] - before["left"]) < 2  # the row header did not move with the cells ...
    assert _box(p, "#matrix tbody tr.row td.cell")["left"] < first_cell["left"] - 1000  # ... which did
    assert abs(_box(p, "#matrix thead tr")["top"] - wrap["top"]) < 3  # the column headers stay on top
    assert abs(_box(p, "#matrix thead th.opt")["left"] - before["left"]) < 2  # and the corner in its corner
    # The label of the column group scrolled into stays readable, just right of the optimizer names.
    label = _box(p, "#matrix thead tr.level-device .grp")
    assert after["right"] - 2 <= label["left"] <= after["right"] + 10
    visible_name = p.evaluate(
        "() => { const th = document.querySelector('#matrix tbody tr.row th.opt');"
        " const r = th.getBoundingClientRect();"
        " return document.elementFromPoint(r.left + 5, r.top + 5) === th; }"
    )
    assert visible_name is False  # the first row has scrolled up under the sticky header
    row_name = p.evaluate(
        "() => { const w = document.querySelector('.matrix-wrap').getBoundingClientRect();"
        " const e = document.elementFromPoint(w.left + 10, w.top + w.height / 2);"
        " return e && e.closest('th.opt') ? e.closest('th.opt').textContent : null; }"
    )
    assert row_name is not None and row_name.startswith("torch.optim.Opt")  # names cover the cells scrolled under them
    p.select_option("#f-device", "cuda")
    assert p.locator("#f-count").inner_text() == "1200 of 2400 cells shown"
    assert errors == []
    p.close()
