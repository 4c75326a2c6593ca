"""The HTML report, the Markdown summary and the comparison page, read back with a real HTML parser."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.baseline import BaselineEntry
from harness.cells import Cell, Record
from harness.errors import HarnessError
from harness.report import (
    STATUS_SYMBOLS,
    render_compare_html,
    render_html,
    render_summary_md,
    status_counts,
    write_reports,
)
from harness.verdict import Verdict, judge
from harness.vocabulary import STATUSES

RESOURCES = Path(__file__).parent / "resources" / "records"
XSS = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
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


def test_a_lost_cell_fails_the_gate_and_heads_the_verdicts(records, verdicts):
    lost = Verdict("torch.optim.Adam-cuda-float32-plain-direct", "lost", "ok", "no record", "Selected, left no record.")
    with_lost = [*verdicts, lost]
    doc = parse(render_html(records, with_lost, title="t"))
    [gate] = doc.find_all("div", id="gate")
    assert "FAILED" in gate.text and "∅ 1 lost" in gate.text
    [failing, *_] = doc.find_all("table", class_="verdict-table")
    [first, *_] = failing.find_all("tr", class_="v-row")
    assert first.find_all("td")[0].text == "∅lost" and first.find_all("td")[1].text == lost.id  # no cell to open
    md = render_summary_md(records, with_lost)
    changes = md[md.index("## Changes against the baseline") : md.index("## Fused speed-ups")]
    assert [line for line in changes.splitlines() if line.startswith("| ∅")] == [
        "| ∅ lost | torch.optim.Adam-cuda-float32-plain-direct | ok | no record | Selected, left no record. |"
    ]
    assert changes.index("∅ lost") < changes.index("▼ regression")


def test_every_status_of_the_vocabulary_is_a_filter_and_mismatch_fails(html, records):
    doc = parse(html)
    assert [box.attrs["value"] for box in doc.find_all("input", class_="f-status")] == list(STATUSES)
    md = render_summary_md(records, None)
    assert "≠ **mismatch / other** (1): torch.optim.Adam-cpu-float32-plain-direct" in md


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
    assert [td.text for td in row.find_all("td")[7:]] == [
        "1.6",
        "3.2",
        "fused 0.41, foreach 0.26, forloop 0.13",
        "✓ within tolerance",
    ]
    [chart] = section.find_all("svg", class_="speedup-chart")
    bars = [r for r in chart.find_all("rect") if r.attrs.get("class") in ("bar0", "bar1") and r.find_all("title")]
    assert len(bars) == 2 and float(bars[1].attrs["width"]) == pytest.approx(2 * float(bars[0].attrs["width"]))


def test_the_environment_is_shown(html):
    [section] = parse(html).find_all("section", id="environment")
    assert "2.14.1+cpu" in section.text and "NVIDIA H100 80GB HBM3" in section.text
    assert "12 cells on cpu" in section.text


def test_two_thousand_cells_stay_small_and_store_each_traceback_once(records):
    traceback = "Traceback (most recent call last):\n" + "  File 'deep.py', line 1, in f\n" * 200 + "TypeError: x\n"
    cells = []
    for i in range(2000):
        template = records[i % len(records)]
        cell = Cell(
            f"pkg.Opt{i // 40}",
            "cpu" if i % 2 else "cuda",
            template.dtype,
            f"v{i // 2 % 5}",
            {},
            ("direct", "signature", "safe", "pkg.mod:build")[i // 10 % 4],
        )
        cells.append(
            Record.for_cell(
                cell,
                template.status,
                reason=template.reason,
                error_message=template.error_message,
                traceback=traceback if template.status != "ok" else None,
                losses=[4.0 - 0.1 * k for k in range(25)],
                env=template.env,
            )
        )
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
    changes = md[md.index("## Changes against the baseline") : md.index("## Fused speed-ups")]
    rows = [line.split("|")[1].strip() for line in changes.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:5] == ["▼ regression", "▲ fixed", "↔ changed", "↘ slower"]
    assert "| cpu | torch.optim.AdamW | float32 | 1.60× | 3.20× |" in md
    failures = md[md.index("## Failing cells by reason") :]
    assert "**construct\\_error / unexpected\\_kwarg** (1)" in failures
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_the_summary_without_a_baseline_says_the_gate_was_not_checked(records):
    md = render_summary_md(records, None)
    assert md.startswith("**Gate: not checked**") and "## Changes" not in md


def test_a_first_run_summary_counts_new_cells_instead_of_listing_them(records):
    md = render_summary_md(records, judge(records, {}, speedup_tolerance=0.2))
    assert md.startswith("**Gate: passed**")
    assert f"{len(records)} cells have no accepted outcome yet (`new`)" in md
    assert "## Changes against the baseline" not in md


def test_write_reports_writes_the_report_the_summary_and_the_findings(tmp_path, records, verdicts):
    paths = write_reports(records, verdicts, tmp_path / "out", title="t")
    names = ("report.html", "summary.md", "findings.md")
    assert paths == {name: tmp_path / "out" / name for name in names}
    assert paths["report.html"].read_text().startswith("<!DOCTYPE html>")
    assert paths["summary.md"].read_text() == render_summary_md(records, verdicts)


def test_write_reports_fails_loudly_when_it_cannot_write(tmp_path, records):
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    with pytest.raises(HarnessError, match=r"Cannot write .*report\.html: .* is a file, not a folder"):
        write_reports(records, None, blocker, title="t")


def test_compare_lists_the_cells_that_differ_first(records):
    newer = [r.replace(env=dataclasses.replace(r.env, torch="2.15.0+cpu")) for r in records]
    newer[0] = newer[0].replace(status="step_error", reason="other", error_message=XSS)
    newer = newer[:-1]  # the last cell did not run in the newer environment
    html = render_compare_html([("torch 2.14", records), ("torch 2.15", newer)], title="compare")
    doc = parse(html)
    ids = [row.attrs["data-id"] for row in doc.find_all("tr") if "data-id" in row.attrs]
    differing = [records[0].id, records[-1].id]  # changed outcome first, then the one missing from a run
    assert ids[:2] == differing and sorted(ids[2:]) == ids[2:]
    assert set(ids[2:]) == {r.id for r in records} - set(differing)
    assert [r.attrs["class"] for r in doc.find_all("tr") if "data-id" in r.attrs][:3] == ["differs", "differs", "same"]
    head = doc.find_all("thead")[0].text
    assert "torch 2.14" in head and "2.14.1" in head and "2.15.0" in head and "cuda" in head
    assert "— not in this run" in doc.find_all("tr", data_id=records[-1].id)[0].text
    assert XSS not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html


# ------------------------------------------------------------------- order, environment, big runs, bench

MACHINE_ENV = {
    "python": "3.11.7",
    "torch": "2.14.1+cu130",
    "packages": {"torch": "2.14.1", "bitsandbytes": "0.50.2", "grokadamw": "0.1.2", "timm": "1.0.31"},
    "device_name": "AMD EPYC",
}
PACKAGE_OF = {"torch": "2.14.1", "bitsandbytes": "0.50.2", "grokadamw": "0.1.2", "timm": "1.0.31"}


def make_record(
    optimizer, device="cpu", dtype="float32", variant="plain", builder="direct", status="ok", env=None, **fields
) -> Record:
    """A record as the harness writes it: the machine's env plus the optimizer's own package."""
    if env is None:
        family = optimizer.split(":")[0].split(".")[0]
        env = {**MACHINE_ENV, "optimizer_package": family, "optimizer_package_version": PACKAGE_OF.get(family, "9.9")}
    return Record.for_cell(Cell(optimizer, device, dtype, variant, {}, builder), status, env=env, **fields)


def column_keys(matrix: Node) -> list[tuple[str, ...]]:
    """(device, dtype, variant, builder) of every matrix column, read back from the grouped headers."""
    levels = matrix.find_all("thead")[0].find_all("tr")
    ncols = len([th for th in levels[-1].find_all("th") if "data-col" in th.attrs])
    keys: list[list[str]] = [[] for _ in range(ncols)]
    for level in levels:
        for th in level.find_all("th"):
            if "opt" in (th.attrs.get("class") or "").split():
                continue
            first = int(th.attrs.get("data-first", th.attrs.get("data-col")))
            last = int(th.attrs.get("data-last", th.attrs.get("data-col")))
            for col in range(first, last + 1):
                keys[col].append(th.text)
    return [tuple(k) for k in keys]


def test_matrix_rows_and_columns_follow_a_fixed_order_whatever_the_arrival_order():
    devices, dtypes = ["cuda:1", "cuda", "cpu"], ["float16", "bfloat16", "float32"]
    variants = ["zeta_variant", "fused_false", "custom", "foreach", "plain", "fused"]
    builders = ["pkg.mod:build", "safe", "signature", "direct"]
    records = [make_record("torch.optim.SGD", *axes) for axes in itertools.product(devices, dtypes, variants, builders)]
    names = [
        "timm:adan",
        "zeta.Opt",
        "grokadamw.GrokAdamW",
        "bitsandbytes.optim.Adam8bit",
        "torch.optim.ASGD",
        "torch.optim.AdamW",
        "torch.optim.Adam",
        "apex.optimizers.FusedAdam",
        "bitsandbytes.optim.AdamW",
    ]
    records += [make_record(name, "cuda", "bfloat16", "foreach", "safe") for name in names]
    random.Random(7).shuffle(records)

    html = render_html(records, None, title="order")
    [matrix] = parse(html).find_all("table", id="matrix")
    rows = [tr.find_all("th")[0].text for tr in matrix.find_all("tr", class_="row")]
    assert rows == [
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.ASGD",
        "torch.optim.SGD",
        "bitsandbytes.optim.Adam8bit",
        "bitsandbytes.optim.AdamW",
        "grokadamw.GrokAdamW",
        "timm:adan",
        "apex.optimizers.FusedAdam",
        "zeta.Opt",
    ]
    keys = column_keys(matrix)
    assert keys == list(
        itertools.product(
            ["cpu", "cuda", "cuda:1"],
            ["float32", "bfloat16", "float16"],
            ["plain", "fused", "foreach", "fused_false", "custom", "zeta_variant"],
            ["direct", "signature", "safe", "pkg.mod:build"],
        )
    )
    # Every cell sits under the headers of its own device, dtype, variant and builder.
    for tr in matrix.find_all("tr", class_="row"):
        optimizer = tr.find_all("th")[0].text
        for td in tr.find_all("td", class_="cell"):
            assert td.attrs["title"] == "-".join((optimizer, *keys[int(td.attrs["data-col"])]))
    assert len(matrix.find_all("td", class_="cell")) == len(records)
    # Another arrival order gives the same page.
    random.Random(8).shuffle(records)
    assert _matrix_html(render_html(records, None, title="order")) == _matrix_html(html)
    doc = parse(html)
    assert [o.text for o in doc.find_all("select", id="f-device")[0].find_all("option")] == [
        "all",
        "cpu",
        "cuda",
        "cuda:1",
    ]
    assert [o.text for o in doc.find_all("select", id="f-builder")[0].find_all("option")] == [
        "all",
        "direct",
        "signature",
        "safe",
        "pkg.mod:build",
    ]


def _matrix_html(html: str) -> str:
    start = html.index('<table id="matrix">')
    section = html[start : html.index("</table>", start)]
    return re.sub(r' data-i="\d+"', "", section)  # the index into the records follows the arrival order


def test_environment_is_one_group_per_machine_with_package_versions_shown_once():
    records = [
        make_record("torch.optim.AdamW"),
        make_record("bitsandbytes.optim.Adam8bit"),
        make_record("timm:adan"),
        make_record("timm:adopt", dtype="bfloat16"),
        # The runner died: the parent only knows python, torch (no local suffix) and the device.
        make_record("timm:lamb", status="timeout", env={"python": "3.11.7", "torch": "2.14.1", "device": "cpu"}),
        make_record(
            "torch.optim.AdamW",
            device="cuda",
            env={
                **MACHINE_ENV,
                "device_name": "NVIDIA H100 <80GB>",
                "optimizer_package": "torch",
                "optimizer_package_version": "2.14.1",
            },
        ),
        make_record(
            "timm:lamb",
            device="cuda:1",
            status="crashed",
            env={"python": "3.11.7", "torch": "2.14.1", "device": "cuda:1"},
        ),
        make_record(
            "grokadamw.GrokAdamW", status="crashed", env={"python": "3.11.7", "torch": "2.15.0", "device": "cpu"}
        ),
    ]
    html = render_html(records, None, title="env")
    [section] = parse(html).find_all("section", id="environment")
    groups = section.find_all("div", class_="env-group")
    assert [g.find_all("h3")[0].text for g in groups] == ["5 cells on cpu", "2 cells on cuda, cuda:1", "1 cells on cpu"]
    cpu, cuda, other = groups
    items = {
        tr.find_all("th")[0].text: tr.find_all("td")[0].text
        for tr in cpu.find_all("table", class_="env")[0].find_all("tr")
    }
    assert items == {"device kind": "cpu", "python": "3.11.7", "torch": "2.14.1+cu130", "device_name": "AMD EPYC"}
    packages = [
        [c.text for c in tr.children if isinstance(c, Node)]
        for tr in cpu.find_all("table", class_="env-packages")[0].find_all("tbody")[0].find_all("tr")
    ]
    assert packages == [
        ["torch", "2.14.1", "1"],
        ["bitsandbytes", "0.50.2", "1"],
        ["grokadamw", "0.1.2", "0"],
        ["timm", "1.0.31", "2"],
    ]
    assert "1 of these cells" in cpu.find_all("p", class_="env-reduced")[0].text
    assert "optimizer_package" not in section.text
    assert "NVIDIA H100 <80GB>" in cuda.text and "&lt;80GB&gt;" in html
    assert "1 of these cells" in cuda.text
    assert "2.15.0" in other.text and not other.find_all("table", class_="env-packages")


BENCH_ADAMW = {
    "device": "cpu",
    "device_name": "AMD EPYC",
    "dtype": "float32",
    "timer": "perf_counter",
    "threads": 1,
    "params": 3454464,
    "model": {"d_model": 256, "n_layers": 4, "vocab_size": 1024, "seq_len": 128},
    "warmup": 5,
    "repeats": 30,
    "implementations": {
        "fused": {"lr": 0.01, "fused": True, "foreach": False},
        "foreach": {"lr": 0.01, "foreach": True, "fused": False},
        "forloop": {"lr": 0.01, "fused": False, "foreach": False},
    },
    "unavailable": {},
    "step_ms": {"fused": 2.6393875, "foreach": 7.6942555, "forloop": 6.950163},
    "spread_ms": {
        "fused": {"p25": 2.57863, "p75": 2.668358, "min": 2.465405, "max": 2.872859},
        "foreach": {"p25": 7.598456, "p75": 7.797997, "min": 7.475231, "max": 12.069631},
        "forloop": {"p25": 6.873401, "p75": 7.026093, "min": 6.812358, "max": 7.15693},
    },
    "speedup": {"fused/foreach": 2.915167, "fused/forloop": 2.633248, "foreach/forloop": 0.903292},
    "bytes_per_step": {"fused": 96724992, "foreach": 96724992, "forloop": 96724992},
    "achieved_gbs": {"fused": 36.646757, "foreach": 12.571066, "forloop": 13.916939},
    "device_bandwidth_gbs": 45.751853,
    "device_bandwidth_method": "median of in-place dst.add_(src) on float32 tensors, counting 2 reads + 1 write",
    "bandwidth_fraction": {"fused": 0.800990, "foreach": 0.274766, "forloop": 0.304183},
    "parity": {
        "fused": {"max_abs": 1.4901161e-08, "max_rel": 0.327869, "ok": True},
        "foreach": {"max_abs": 0.0, "max_rel": 0.0, "ok": True},
        "tolerance": {"atol": 1e-05, "rtol": 0.0001},
    },
    "parity_reference": "forloop",
    "parity_steps": 3,
    "parity_ok": True,
    "parity_breach": [],
    "state_bytes_per_param": {"fused": 8.0000602, "foreach": 8.0000602, "forloop": 8.0000602},
    "peak_memory_bytes": {"fused": None, "foreach": None, "forloop": None},
    "step_extra_memory_bytes": {"fused": None, "foreach": None, "forloop": None},
    "peak_memory_method": None,
}


def _bench_records() -> list[Record]:
    adafactor = {
        **BENCH_ADAMW,
        "implementations": {k: v for k, v in BENCH_ADAMW["implementations"].items() if k != "fused"},
        "speedup": {"foreach/forloop": 0.873893},
        "device_bandwidth_gbs": 44.494159,
        **{
            key: {k: v for k, v in BENCH_ADAMW[key].items() if k != "fused"}
            for key in (
                "step_ms",
                "spread_ms",
                "bytes_per_step",
                "achieved_gbs",
                "bandwidth_fraction",
                "parity",
                "state_bytes_per_param",
                "peak_memory_bytes",
                "step_extra_memory_bytes",
            )
        },
    }
    bf16 = {
        **BENCH_ADAMW,
        "dtype": "bfloat16",
        "unavailable": {"fused": f"RuntimeError: {XSS}"},
        "speedup": {"foreach/forloop": 1.02},
        "parity_ok": False,
        "parity_breach": ["foreach"],
        "parity": {"foreach": {"max_abs": 0.5, "max_rel": 2.0, "ok": False}, "tolerance": {"atol": 0.05, "rtol": 0.05}},
        "new_figure": 1.5,
        **{
            key: {k: v for k, v in BENCH_ADAMW[key].items() if k != "fused"}
            for key in (
                "step_ms",
                "spread_ms",
                "bytes_per_step",
                "achieved_gbs",
                "bandwidth_fraction",
                "state_bytes_per_param",
                "peak_memory_bytes",
                "step_extra_memory_bytes",
            )
        },
    }
    cuda = {
        **BENCH_ADAMW,
        "device": "cuda",
        "device_name": "NVIDIA H100",
        "timer": "cuda_event",
        "threads": None,
        "peak_memory_bytes": {"fused": 3 * 2**30, "foreach": 2**31, "forloop": 2**31},
        "step_extra_memory_bytes": {"fused": 0, "foreach": 512 * 2**20, "forloop": 0},
        "peak_memory_method": "torch.cuda.max_memory_allocated",
    }
    return [
        make_record("torch.optim.AdamW", device="cuda", bench=cuda),
        make_record("torch.optim.Adafactor", bench=adafactor),
        make_record("torch.optim.AdamW", dtype="bfloat16", bench=bf16),
        make_record("torch.optim.AdamW", bench=BENCH_ADAMW),
    ]


def _texts(tr: Node) -> list[str]:
    return [" ".join(c.text.split()) for c in tr.children if isinstance(c, Node)]


def test_speedups_show_every_figure_of_a_real_bench_per_implementation():
    html = render_html(_bench_records(), None, title="bench")
    [section] = parse(html).find_all("section", id="speedups")
    groups = section.find_all("div", class_="bench-group")
    assert [g.attrs["data-device"] for g in groups] == ["cpu", "cuda"]
    cpu = groups[0]
    summary = [
        _texts(tr) for tr in cpu.find_all("table", class_="speedup-table")[0].find_all("tbody")[0].find_all("tr")
    ]
    assert [row[:2] for row in summary] == [
        ["torch.optim.Adafactor", "float32"],
        ["torch.optim.AdamW", "float32"],
        ["torch.optim.AdamW", "bfloat16"],
    ]
    assert summary[0][4:7] == ["—", "—", "—"]
    assert summary[1][4:9] == ["2.92×", "2.63×", "2.64", "7.69", "6.95"]
    assert summary[2][6] == "unavailable" and summary[2][10] == "✗ off: foreach"

    impl_rows = cpu.find_all("table", class_="bench-impl-table")[0].find_all("tbody")[0].find_all("tr")
    assert len(impl_rows) == 2 + 3 + 3
    assert [_texts(tr)[:2] for tr in impl_rows[:2]] == [
        ["torch.optim.Adafactor · float32", "foreach"],
        ["forloop", '{"foreach": false, "fused": false, "lr": 0.01}'],
    ]
    fused, foreach, forloop = (_texts(tr) for tr in impl_rows[2:5])
    assert fused[0] == "torch.optim.AdamW · float32" and fused[1] == "fused"
    # median ms, p25 – p75, × vs for-loop, moved / step, GB/s, bandwidth fraction, state bytes / param, parity
    assert fused[3:] == [
        "2.64",
        "2.58 – 2.67",
        "2.63×",
        "92.2 MiB",
        "36.6",
        "80.1%",
        "8",
        "✓ max_abs 1.49e-08, max_rel 0.328",
    ]
    assert foreach[2:] == ["7.69", "7.6 – 7.8", "0.90×", "92.2 MiB", "12.6", "27.5%", "8", "✓ max_abs 0, max_rel 0"]
    assert forloop[2:] == ["6.95", "6.87 – 7.03", "", "92.2 MiB", "13.9", "30.4%", "8", "reference"]
    assert '"fused": true' in fused[2]
    bf16_fused = _texts(impl_rows[5])
    assert bf16_fused[1] == "fused" and bf16_fused[3] == f"unavailable: RuntimeError: {XSS}"
    assert "breach" in impl_rows[6].find_all("td")[-1].attrs["class"] and _texts(impl_rows[6])[-1].startswith("✗")
    assert XSS not in html and "RuntimeError: &lt;script&gt;" in html
    assert "peak memory" not in cpu.find_all("table", class_="bench-impl-table")[0].text  # CPU: never measured

    setup = dict(_texts(tr) for tr in cpu.find_all("details", class_="bench-setup")[0].find_all("tr"))
    assert setup["device bandwidth (GB/s)"] == "44.5 – 45.8 (median 45.8)"
    assert setup["timed steps"] == "30" and setup["warm-up steps"] == "5" and setup["parity reference"] == "forloop"
    assert setup["parity tolerance"] == "float32: atol 1e-05, rtol 0.0001; bfloat16: atol 0.05, rtol 0.05"
    assert setup["new_figure"] == "1.5"  # a figure this page does not know still shows

    [chart] = cpu.find_all("svg", class_="speedup-chart")
    widths = {
        r.find_all("title")[0].text: float(r.attrs["width"]) for r in chart.find_all("rect") if r.find_all("title")
    }
    assert set(widths) == {
        "2.92× fused/foreach",
        "2.63× fused/forloop",
        "0.90× foreach/forloop",
        "1.02× foreach/forloop",
        "0.87× foreach/forloop",
    }
    assert widths["2.92× fused/foreach"] == pytest.approx(
        widths["0.90× foreach/forloop"] * 2.915167 / 0.903292, rel=0.01
    )
    notes = [t.text for t in chart.find_all("text", class_="note")]
    assert notes == ["no fused implementation", f"fused unavailable: RuntimeError: {XSS}"]

    cuda = groups[1]
    head = _texts(cuda.find_all("table", class_="bench-impl-table")[0].find_all("thead")[0].find_all("tr")[0])
    assert "peak memory" in head and "step extra memory" in head
    cuda_fused = _texts(cuda.find_all("table", class_="bench-impl-table")[0].find_all("tbody")[0].find_all("tr")[0])
    assert cuda_fused[-3:-1] == ["3.0 GiB", "0 B"]
    assert _texts(cuda.find_all("table", class_="bench-impl-table")[0].find_all("tbody")[0].find_all("tr")[1])[
        -3:-1
    ] == ["2.0 GiB", "512.0 MiB"]


def _big_run(n_optimizers: int = 60) -> list[Record]:
    """3600 cells shaped like a real run: 60 optimizers x 60 columns, failures with their own tracebacks."""
    columns = list(
        itertools.product(
            ("cpu", "cuda"),
            ("float32", "bfloat16"),
            ("plain", "fused", "foreach", "fused_false", "capturable"),
            ("direct", "signature", "safe"),
        )
    )
    records = []
    for o in range(n_optimizers):
        family = ("torch", "bitsandbytes", "timm", "grokadamw")[o % 4]
        name = f"timm:opt{o}" if family == "timm" else f"{family}.optim.Opt{o}"
        traceback = "Traceback (most recent call last):\n" + f'  File "{family}/opt{o}.py", line {o}, in step\n' * 40
        for c, (device, dtype, variant, builder) in enumerate(columns):
            failing = (o + c) % 4 == 0
            bench = (
                {**BENCH_ADAMW, "device": device, "dtype": dtype}
                if (variant, builder) == ("plain", "direct") and o % 2 == 0
                else None
            )
            records.append(
                make_record(
                    name,
                    device,
                    dtype,
                    variant,
                    builder,
                    status="construct_error" if failing else "ok",
                    reason="unexpected_kwarg" if failing else None,
                    error_type="TypeError" if failing else None,
                    error_message=f"Opt{o}.__init__() got an unexpected keyword argument '{variant}'"
                    if failing
                    else None,
                    traceback=traceback + f"TypeError: {variant}\n" if failing else None,
                    losses=[] if failing else [4.0 - 0.05 * k for k in range(25)],
                    bench=bench,
                    num_params=3454464,
                    state_bytes=27635712,
                    state_bytes_per_param=8.0,
                    construct_s=0.0012,
                    steps_s=0.35,
                    duration_s=0.4,
                )
            )
    return records


def test_a_3600_cell_run_renders_small_and_fast_with_a_60_column_matrix():
    records = _big_run()
    assert len(records) == 3600
    started = time.perf_counter()
    html = render_html(records, judge(records, {}, speedup_tolerance=0.2), title="big")
    elapsed = time.perf_counter() - started
    size = len(html.encode())
    assert size < 10_000_000, f"{size / 1e6:.1f} MB"
    assert elapsed < 6, f"{elapsed:.1f} s"  # about 0.6 s on an idle CPU; room for a busy CI runner
    doc = parse(html)
    [matrix] = doc.find_all("table", id="matrix")
    assert len(column_keys(matrix)) == 60 and len(matrix.find_all("tr", class_="row")) == 60
    assert len(matrix.find_all("td", class_="cell")) == 3600
    [section] = doc.find_all("section", id="speedups")
    assert [g.attrs["data-device"] for g in section.find_all("div", class_="bench-group")] == ["cpu", "cuda"]
    assert len(section.find_all("table", class_="speedup-table")[0].find_all("tbody")[0].find_all("tr")) == 60
