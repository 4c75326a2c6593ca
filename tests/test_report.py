"""The HTML report, the Markdown summary and the comparison page, read back with a real HTML parser."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.baseline import BaselineEntry
from harness.cells import STATUSES, Cell, Record
from harness.errors import HarnessError
from harness.report import (
    STATUS_SYMBOLS,
    render_compare_html,
    render_html,
    render_summary_md,
    status_counts,
    write_reports,
)
from harness.verdict import judge

RESOURCES = Path(__file__).parent / "resources" / "records"
XSS = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list["Node | str"] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str, **attrs: str) -> list["Node"]:
        """Elements with this tag whose attributes hold these values (`class_` matches one class)."""
        found = []
        for node in self.iter():
            if node.tag != tag:
                continue
            wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
            classes = (node.attrs.get("class") or "").split()
            if all((v in classes) if k == "class" else node.attrs.get(k) == v for k, v in wanted.items()):
                found.append(node)
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def load_records(name: str = "every_status.jsonl") -> list[Record]:
    return [Record.from_dict(json.loads(line)) for line in (RESOURCES / name).read_text().splitlines() if line]


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return load_records()


@pytest.fixture(scope="module")
def verdicts(records):
    by_id = {r.id: r for r in records}
    baseline = {
        "torch.optim.AdamW-cpu-float32-fused-direct": BaselineEntry("ok"),  # regression
        "grokadamw.GrokAdamW-cpu-float32-fused-direct": BaselineEntry("construct_error", "other"),  # changed
        "torch.optim.AdamW-cpu-float32-plain-direct": BaselineEntry("ok", speedup={"fused/foreach": 3.0}),  # slower
        "grokadamw.GrokAdamW-cpu-float32-fused-signature": BaselineEntry("construct_error", "unexpected_kwarg"),
    }
    assert set(baseline) <= set(by_id)
    return judge(records, baseline, speedup_tolerance=0.2)


@pytest.fixture(scope="module")
def html(records, verdicts) -> str:
    return render_html(records, verdicts, title="Matrix <b>&</b>", generated_at="2025-01-01T00:00:00Z")


def test_the_sample_results_hold_every_status(records):
    assert {r.status for r in records} == set(STATUSES)


def test_every_status_is_a_cell_with_a_colour_a_symbol_and_a_word(html, records):
    doc = parse(html)
    cells = doc.find_all("td", class_="cell")
    assert len(cells) == len(records)
    for status in STATUSES:
        [cell, *_] = [c for c in cells if c.attrs["data-status"] == status]
        assert f"s-{status}" in cell.attrs["class"].split()
        text = " ".join(cell.text.split())
        assert f"{STATUS_SYMBOLS[status]} {status}" in text
    assert len(set(STATUS_SYMBOLS.values())) == len(STATUSES)


def test_strings_from_optimizers_are_escaped_never_markup(html, records):
    doc = parse(html)
    scripts = doc.find_all("script")
    assert len(scripts) == 2 and all("src" not in s.attrs for s in scripts)
    assert not any(XSS in s.text or "<script>alert(2)" in s.text for s in scripts)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the changed verdict's detail, as text
    assert "<b>&</b>" not in html and "Matrix &lt;b&gt;&amp;&lt;/b&gt;" in html
    # The embedded data is still the exact message once parsed, so the page shows it as it was.
    [data] = doc.find_all("script", id="report-data")
    payload = json.loads(data.text, parse_constant=lambda name: pytest.fail(f"{name} in the report's JSON"))
    assert XSS in payload["strings"]
    assert any("</script><script>alert(2)</script>" in s for s in payload["strings"])


def test_the_page_references_nothing_outside_itself(html):
    doc = parse(html)
    for node in doc.iter():
        for name in ("src", "href", "action", "srcset", "poster", "data", "xlink:href", "background"):
            value = (node.attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (node.tag, name, value)
        assert not (node.tag == "link" and "stylesheet" in (node.attrs.get("rel") or ""))
    assert "http://" not in html and "https://" not in html  # the sample data holds no address either
    assert "@import" not in html and "url(" not in html
    [policy] = [m for m in doc.find_all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in policy.attrs["content"]


def test_counts_per_status_are_shown(html, records):
    doc = parse(html)
    expected = status_counts(records)
    assert expected["ok"] == 5 and sum(expected.values()) == len(records)
    for status, n in expected.items():
        [chip] = doc.find_all("button", class_="chip", data_status=status)
        assert chip.find_all("b")[0].text == str(n)


def test_verdicts_come_first_with_regressions_on_top(html):
    doc = parse(html)
    assert html.index('id="verdicts"') < html.index('id="counts"') < html.index('id="matrix"')
    [gate] = doc.find_all("div", id="gate")
    assert "FAILED" in gate.text and "1 regression" in gate.text
    [failing, *_] = doc.find_all("table", class_="verdict-table")
    order = [row.find_all("td")[0].text.strip("▼▲↔↘ ") for row in failing.find_all("tr", class_="v-row")]
    assert order == ["regression", "fixed", "changed", "slower"]
    [regressed] = [c for c in doc.find_all("td", class_="cell") if "v-regression" in c.attrs["class"]]
    assert regressed.attrs["title"] == "torch.optim.AdamW-cpu-float32-fused-direct"


def test_without_a_baseline_the_gate_is_not_checked(records):
    doc = parse(render_html(records, None, title="t"))
    assert "not checked" in doc.find_all("div", id="gate")[0].text
    assert doc.find_all("section", id="verdicts") == []


def test_the_matrix_has_grouped_headers_and_one_row_per_optimizer(html, records):
    doc = parse(html)
    [matrix] = doc.find_all("table", id="matrix")
    header_rows = matrix.find_all("thead")[0].find_all("tr")
    assert [r.attrs["class"] for r in header_rows] == ["level-device", "level-dtype", "level-variant", "level-builder"]
    assert [th.text for th in header_rows[0].find_all("th")[1:]] == ["cpu", "cuda"]
    assert len(matrix.find_all("tr", class_="row")) == len({r.optimizer for r in records})
    for select in ("f-device", "f-family", "f-builder", "f-text"):
        assert doc.find_all("select", id=select) or doc.find_all("input", id=select)
    family_options = [o.text for o in doc.find_all("select", id="f-family")[0].find_all("option")]
    assert family_options == ["all", "bitsandbytes", "grokadamw", "timm", "torch"]


def test_nonfinite_losses_become_null_in_the_embedded_data(html):
    [data] = parse(html).find_all("script", id="report-data")
    payload = json.loads(data.text)
    [lion] = [c for c in payload["cells"] if c["status"] == "nonfinite"]
    assert lion["losses"] == [4.2, 3.0, None, None]


def test_speedups_are_tabled_and_charted_per_device(html):
    doc = parse(html)
    [section] = doc.find_all("section", id="speedups")
    assert [h.text for h in section.find_all("h3")] == ["cpu"]
    assert "1.60×" in section.text and "3.20×" in section.text
    [row] = section.find_all("table", class_="speedup-table")[0].find_all("tbody")[0].find_all("tr")
    assert [td.text for td in row.find_all("td")[7:]] == ["1.6", "3.2", "fused 0.41, foreach 0.26, forloop 0.13",
                                                          "✓ within tolerance"]
    [chart] = section.find_all("svg", class_="speedup-chart")
    bars = [r for r in chart.find_all("rect") if r.attrs.get("class") in ("bar0", "bar1") and r.find_all("title")]
    assert len(bars) == 2 and float(bars[1].attrs["width"]) == pytest.approx(2 * float(bars[0].attrs["width"]))


def test_the_environment_is_shown(html):
    [section] = parse(html).find_all("section", id="environment")
    assert "2.14.1+cpu" in section.text and "NVIDIA H100 80GB HBM3" in section.text
    assert "11 cells on cpu" in section.text


def test_two_thousand_cells_stay_small_and_store_each_traceback_once(records):
    traceback = "Traceback (most recent call last):\n" + "  File 'deep.py', line 1, in f\n" * 200 + "TypeError: x\n"
    cells = []
    for i in range(2000):
        template = records[i % len(records)]
        cell = Cell(f"pkg.Opt{i // 40}", "cpu" if i % 2 else "cuda", template.dtype, f"v{i // 2 % 5}",
                    {}, ("direct", "signature", "safe", "pkg.mod:build")[i // 10 % 4])
        cells.append(Record.for_cell(cell, template.status, reason=template.reason, error_message=template.error_message,
                                     traceback=traceback if template.status != "ok" else None,
                                     losses=[4.0 - 0.1 * k for k in range(25)], env=template.env))
    started = time.perf_counter()
    big = render_html(cells, judge(cells, {}, speedup_tolerance=0.2), title="big")
    elapsed = time.perf_counter() - started
    assert len(big.encode()) < 5_000_000
    assert big.count("File 'deep.py', line 1, in f") == 200  # one copy of the traceback, not 2000
    assert elapsed < 10
    assert len(parse(big).find_all("td", class_="cell")) == 2000


def test_the_summary_leads_with_the_gate_and_the_changes(records, verdicts):
    md = render_summary_md(records, verdicts)
    assert md.startswith("**Gate: FAILED**")
    for status, n in status_counts(records).items():
        row = f"| {STATUS_SYMBOLS[status]} {status} | {n} |".replace("_", "\\_")
        assert row in md.splitlines()
    changes = md[md.index("## Changes against the baseline"):md.index("## Fused speed-ups")]
    rows = [line.split("|")[1].strip() for line in changes.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:5] == ["▼ regression", "▲ fixed", "↔ changed", "↘ slower"]
    assert "| cpu | torch.optim.AdamW | float32 | 1.60× | 3.20× |" in md
    failures = md[md.index("## Failing cells by reason"):]
    assert "**construct\\_error / unexpected\\_kwarg** (1)" in failures
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_the_summary_without_a_baseline_says_the_gate_was_not_checked(records):
    md = render_summary_md(records, None)
    assert md.startswith("**Gate: not checked**") and "## Changes" not in md


def test_write_reports_writes_both_files(tmp_path, records, verdicts):
    paths = write_reports(records, verdicts, tmp_path / "out", title="t")
    assert paths == {"report.html": tmp_path / "out" / "report.html", "summary.md": tmp_path / "out" / "summary.md"}
    assert paths["report.html"].read_text().startswith("<!DOCTYPE html>")
    assert paths["summary.md"].read_text() == render_summary_md(records, verdicts)


def test_write_reports_fails_loudly_when_it_cannot_write(tmp_path, records):
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    with pytest.raises(HarnessError, match="Cannot write the reports into"):
        write_reports(records, None, blocker, title="t")


def test_compare_lists_the_cells_that_differ_first(records):
    newer = [r.replace(env={**r.env, "torch": "2.15.0+cpu"}) for r in records]
    newer[0] = newer[0].replace(status="step_error", reason="other", error_message=XSS)
    newer = newer[:-1]  # the last cell did not run in the newer environment
    html = render_compare_html([("torch 2.14", records), ("torch 2.15", newer)], title="compare")
    doc = parse(html)
    ids = [row.attrs["data-id"] for row in doc.find_all("tr") if "data-id" in row.attrs]
    differing = sorted([records[0].id, records[-1].id])
    assert ids[:2] == differing and sorted(ids[2:]) == ids[2:]
    assert set(ids[2:]) == {r.id for r in records} - set(differing)
    assert [r.attrs["class"] for r in doc.find_all("tr") if "data-id" in r.attrs][:3] == ["differs", "differs", "same"]
    head = doc.find_all("thead")[0].text
    assert "torch 2.14" in head and "2.14.1" in head and "2.15.0" in head and "cuda" in head
    assert "— not in this run" in doc.find_all("tr", data_id=records[-1].id)[0].text
    assert XSS not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html
