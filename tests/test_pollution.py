"""harness.forkserver: what a cell changes in its process is found, named in its record, and reaches no
later cell (the polluting optimizers are in `tests/faults/pollution.py`).

    python -m tests.test_pollution

prints each polluting cell's outcome and the next innocent cell's, against whichever harness is on the path.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from harness import forkserver
from harness.cells import Cell, Record
from harness.isolate import CellRunner
from harness.report.payload import payload
from harness.settings import Settings
from harness.vocabulary import STEPPED

ROOMY = Settings(
    train={"steps": 4, "timeout_s": 60},
    model={"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 8},
    bench={"enabled": False},
)
FAULTS = "tests.faults.pollution"


def cell(optimizer: str, **kwargs: object) -> Cell:
    return Cell(optimizer, "cpu", "float32", "plain", {"lr": 0.02, **kwargs}, "direct")


def processes_with(marker: str) -> list[int]:
    """The pids whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if entry.isdigit() and marker.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def runner() -> Iterator[CellRunner]:
    """One runner for the module, as a pytest worker has: each test's cells follow the last test's."""
    with CellRunner() as shared:
        yield shared


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argument for a daemon; whatever still carries it after the test is killed."""
    name = f"harness-test-daemon-{uuid.uuid4().hex}"
    yield name
    for pid in processes_with(name):
        os.kill(pid, signal.SIGKILL)


# Each polluting optimizer, the innocent cell it used to cost, and what its record must name.
CASES = {
    "patched AdamW.step": (f"{FAULTS}.PatchAdamWStep", "torch.optim.AdamW", ["torch.optim.AdamW.step"]),
    "closed sys.stdout": (f"{FAULTS}.CloseStdout", f"{FAULTS}.Printer", ["sys.stdout (closed)"]),
    "closed fds 1 and 2": (f"{FAULTS}.CloseStdFds", f"{FAULTS}.Printer", ["fd 1 (closed)", "fd 2 (closed)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_change_is_named_in_the_record_of_the_cell_that_made_it_and_the_next_cell_gets_a_clean_process(
    runner: CellRunner, case: str
) -> None:
    polluter, innocent, named = CASES[case]
    polluted = runner.run(cell(polluter), ROOMY)
    after = runner.run(cell(innocent), ROOMY)
    assert polluted.status in STEPPED, polluted.error_message  # the record reached the parent, whole
    assert set(named) <= set(polluted.process_changes)
    assert after.status == "ok", after.error_message
    assert after.process_changes == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds processes in /proc (Linux)")
@pytest.mark.parametrize("optimizer", ["SetsidDaemon", "SetsidDaemonThenDie"])
def test_a_daemon_that_left_the_cells_process_group_and_session_is_killed(
    runner: CellRunner, optimizer: str, marker: str
) -> None:
    started = runner.run(cell(f"{FAULTS}.{optimizer}", marker=marker), ROOMY)
    left = processes_with(marker)  # the runner is still up: nothing but the harness could have killed it
    after = runner.run(cell("torch.optim.AdamW"), ROOMY)
    assert left == []
    if optimizer == "SetsidDaemon":
        assert started.status in STEPPED and started.process_changes == ["1 process left running"]
    else:  # its own process died: the server, a subreaper, inherited the daemon and killed it
        assert started.status == "crashed" and "SIGKILL" in (started.error_message or "")
    assert after.status == "ok"


def test_a_timer_and_signal_handler_left_armed_go_off_in_no_later_cell(runner: CellRunner) -> None:
    armed = runner.run(cell(f"{FAULTS}.RepeatingAlarm"), ROOMY)
    later: list[Record] = []
    until = time.monotonic() + 1.0  # the watchdog goes off 0.5 s after the last step it saw
    while time.monotonic() < until:
        later.append(runner.run(cell("torch.optim.AdamW"), ROOMY))
    assert armed.status in STEPPED, armed.error_message
    assert {"an interval timer (ITIMER_REAL)", "the SIGALRM handler"} <= set(armed.process_changes)
    assert len(later) >= 2 and {r.status for r in later} == {"ok"}, {r.error_message for r in later}


def test_cells_that_change_nothing_are_not_told_they_did(runner: CellRunner) -> None:
    # torch wraps an optimizer class's `step` the first time it is built, bitsandbytes makes a singleton on
    # first use: neither is a change, or every such cell would pay for a fresh process.
    names = ["torch.optim.AdamW", "torch.optim.NAdam", "bitsandbytes.optim.AdamW8bit", f"{FAULTS}.Printer"]
    records = [runner.run(cell(name), ROOMY) for name in names * 2]
    assert [r.process_changes for r in records] == [[]] * len(records)
    assert {r.status for r in records} <= STEPPED


class _Owner:
    singleton: _Owner | None = None

    def step(self) -> None: ...


def test_attribute_changes_are_told_from_what_libraries_do_to_their_own_classes() -> None:
    original = vars(_Owner)["step"]

    def wrapped_step(self: _Owner) -> None: ...

    wrapped_step.__wrapped__ = original  # type: ignore[attr-defined]  # as torch's profiling wrapper has
    wrapped_step.hooked = True  # type: ignore[attr-defined]
    was = dict(vars(_Owner))
    try:
        _Owner.step = wrapped_step  # type: ignore[method-assign]
        _Owner.singleton = _Owner()
        assert forkserver._attribute_changes("_Owner", was, _Owner) == []
        assert was["step"] is wrapped_step  # taken into the baseline

        _Owner.step = lambda self: None  # type: ignore[method-assign]
        _Owner.__repr__ = lambda self: "patched"  # type: ignore[method-assign]
        _Owner.added = 1  # type: ignore[attr-defined]
        # a dunder a class gains is Python's own doing (`__slotnames__` when first copied): not a change
        assert sorted(forkserver._attribute_changes("_Owner", was, _Owner)) == ["_Owner.added (added)", "_Owner.step"]
    finally:
        for name in ("added", "__repr__"):
            if name in vars(_Owner):
                delattr(_Owner, name)
        _Owner.step = original  # type: ignore[method-assign]
        _Owner.singleton = None


def test_a_module_may_gain_attributes_but_not_lose_or_swap_them() -> None:
    module = SimpleNamespace(kept=1, swapped=torch.zeros(2), gone="x")
    was = dict(vars(module))
    module.swapped = torch.ones(2)  # `==` on tensors raises in a dict comparison: compared by identity
    del module.gone
    module.lazily_imported = object()
    assert sorted(forkserver._attribute_changes("m", was, module)) == ["m.gone (deleted)", "m.swapped"]
    assert "lazily_imported" in was


def test_the_report_payload_carries_what_a_cell_changed() -> None:
    record = Record.for_cell(cell("x.Y"), "ok").replace(process_changes=["torch.optim.AdamW.step"])
    (shown,) = payload([record], {})["cells"]
    assert shown["process_changes"] == ["torch.optim.AdamW.step"]


def main() -> None:
    """Each case's polluting cell and what the innocent cells after it got, as `case: polluter -> next`."""
    marker = f"harness-pollution-daemon-{uuid.uuid4().hex}"
    cases = {name: (polluter, innocent) for name, (polluter, innocent, _) in CASES.items()}
    cases["setsid daemon"] = (f"{FAULTS}.SetsidDaemon", "torch.optim.AdamW")
    cases["repeating SIGALRM watchdog"] = (f"{FAULTS}.RepeatingAlarm", "torch.optim.AdamW")
    for name, (polluter, innocent) in cases.items():
        kwargs = {"marker": marker} if "daemon" in name else {}
        with CellRunner() as runner:
            polluted = runner.run(cell(polluter, **kwargs), ROOMY)
            after = [runner.run(cell(innocent), ROOMY)]
            until = time.monotonic() + 1.0  # the watchdog goes off 0.5 s after the last step it saw
            while "watchdog" in name and time.monotonic() < until:
                after.append(runner.run(cell(innocent), ROOMY))
        failed = [r for r in after if r.status != "ok"]
        shown = failed[0] if failed else after[0]
        message = (shown.error_message or "").strip().splitlines()[:1]
        changes = getattr(polluted, "process_changes", "(no such field)")
        print(
            f"{name}: {polluted.status} {changes} -> {shown.status} {message[0][:70] if message else ''}"
            + (f" ({len(failed)} of {len(after)} later cells not ok)" if len(after) > 1 else "")
        )
    alive = processes_with(marker)
    print(f"setsid daemons alive after the runner closed: {len(alive)}")
    for pid in alive:
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
