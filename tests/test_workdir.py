"""The user's working directory cannot break a run (issue 16 item 8): one sentence before any cell runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli
from harness.report import write_reports
from harness.workdir import shadowing_sentence

SMALL = Path(__file__).parent / "resources" / "matrices" / "small.yaml"


@pytest.mark.parametrize("files", [["harness/__init__.py"], ["torch.py"], ["yaml.py", "harness/__init__.py"]])
def test_a_module_file_in_the_working_directory_is_one_sentence_before_any_cell(tmp_path, monkeypatch, capsys, files):
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("raise SystemExit('not the real one')\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["run", str(SMALL), "-n", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: The working directory {tmp_path} holds ") and err.count("\n") == 1
    for name in files:
        assert (name.split("/")[0] + "/" if "/" in name else name) in err
    assert not out.exists()  # refused before the run began


def test_the_harness_run_from_its_own_checkout_is_no_shadow():
    assert shadowing_sentence(Path(__file__).resolve().parents[1]) is None


def test_a_folder_named_harness_without_init_does_not_reach_the_report_templates(tmp_path, monkeypatch):
    (tmp_path / "harness" / "templates").mkdir(parents=True)  # a namespace folder, as a user's data might be
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    paths = write_reports([], [], tmp_path / "out", title="t")
    assert Path(paths["report.html"]).read_text().lower().startswith("<!doctype html>")
