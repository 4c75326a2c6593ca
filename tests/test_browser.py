"""The HTML report driven in headless Chromium: filters, the detail view, escaping, no network at all.

Nothing is installed here: CI installs Debian's Chromium (`.ci/run`) and the `tests` nox session installs
`playwright`; where either is absent the browser tests skip, saying which. Playwright's own browser
download is never used: it needs a network that CI machines may not have.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.baseline import BaselineEntry
from harness.cells import Cell, Record
from harness.report import render_html
from harness.screenshot import CHROMIUM_ENV, LAUNCH_ARGS, find_chromium, take_screenshot
from harness.verdict import judge
from harness.vocabulary import STATUSES

RECORDS = Path(__file__).parent / "resources" / "records" / "every_status.jsonl"
XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright; the test skips, saying why, where either is absent."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the `playwright` package is not installed (`nox -s tests` installs it)"
    )
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium found: set {CHROMIUM_ENV} or install one (CI: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=list(LAUNCH_ARGS))
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
def test_the_mismatch_status_has_its_own_filter_colour_and_symbol(page):
    p = page.page
    for box in p.locator("input.f-status").all():
        if box.get_attribute("value") != "mismatch":
            box.uncheck()
    assert visible_statuses(p) == ["mismatch"]
    cell = p.locator("#matrix td.cell[data-status=mismatch]")
    assert " ".join(cell.inner_text().split()).startswith("≠ mismatch")
    colours = p.evaluate(
        "() => [...document.querySelectorAll('#matrix td.cell')].map(c => getComputedStyle(c).backgroundColor)"
    )
    mine = cell.evaluate("c => getComputedStyle(c).backgroundColor")
    assert colours.count(mine) == 1  # no other status shares its colour
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


def test_find_chromium_takes_the_named_executable_or_none(tmp_path, monkeypatch):
    named = tmp_path / "my-chromium"
    named.write_text("#!/bin/sh\n")
    monkeypatch.setenv(CHROMIUM_ENV, str(named))
    assert find_chromium() == named
    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "absent"))
    assert find_chromium() is None
    reason = take_screenshot(tmp_path / "r.html", tmp_path / "x.png")
    assert reason is not None and (CHROMIUM_ENV in reason or "playwright" in reason)


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


@pytest.fixture(scope="module")
def scenario_report(tmp_path_factory) -> tuple[Path, list[Record]]:
    """The default matrix's shape: train cells, and scenario cells that share the plain/safe slot."""
    records = []
    for optimizer in ("torch.optim.AdamW", "grokadamw.GrokAdamW"):
        for variant, builder in (("fused", "direct"), ("fused", "safe"), ("plain", "direct")):
            cell = Cell(optimizer, "cpu", "float32", variant, {"lr": 0.01}, builder)
            records.append(Record.for_cell(cell, "ok"))
        for scenario in ("groups", "resume", "amp", "schedule"):
            cell = Cell(optimizer, "cpu", "float32", "plain", {"lr": 0.01}, "safe", scenario=scenario)
            broken = optimizer.startswith("grokadamw") and scenario == "resume"
            judgement = "resumed after 10 of 20 steps, the parameters differ by 0.421" if broken else "held"
            records.append(Record.for_cell(cell, "mismatch" if broken else "ok", judgement=judgement))
    path = tmp_path_factory.mktemp("scenarios") / "report.html"
    path.write_text(render_html(records, None, title="scenarios"))
    return path, records


@pytest.mark.browser
def test_every_record_is_reachable_from_the_grid_with_every_filter_open(browser, scenario_report):
    path, records = scenario_report
    p = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    p.on("pageerror", lambda error: errors.append(str(error)))
    p.goto(path.as_uri(), wait_until="load")

    assert p.locator("#f-count").inner_text() == f"{len(records)} of {len(records)} cells shown"
    reachable = p.locator("#matrix td.cell:visible").evaluate_all("cells => cells.map(c => +c.dataset.i)")
    assert sorted(reachable) == list(range(len(records)))
    resume = p.locator("#matrix td.cell[title='grokadamw.GrokAdamW-cpu-float32-plain-safe-resume']")
    assert resume.is_visible() and resume.get_attribute("data-status") == "mismatch"
    p.select_option("#f-scenario", "resume")
    assert sorted(visible_statuses(p)) == ["mismatch", "ok"]
    p.select_option("#f-scenario", "")
    p.locator("#findings details.finding > summary").click()  # the finding opens; its cells open their details
    p.locator("#findings button.open").first.click()
    assert "grokadamw.GrokAdamW-cpu-float32-plain-safe-resume" in p.locator("#detail h2").inner_text()
    assert "resume" in p.locator("#detail").inner_text()
    assert errors == []
    p.close()
