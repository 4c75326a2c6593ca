"""The harness's fault cases, each driven through the real CLI, as one Markdown table.

    PYTHONPATH=. python benchmarks/gate_cases.py [--only SUBSTRING] [--keep DIR]

Every row runs `python -m harness ...` in a subprocess (cwd: the repository root) on a tiny matrix
(written to a temporary directory) or on a file under tests/resources/, then checks what the harness
promises for that case: the faulty cell's status, that the healthy cells beside it survive, the exit
status, the time it took. A row whose outcome breaks the promise says UNEXPECTED, and the script then
exits 1. `--only` runs the cases whose label holds SUBSTRING (case-insensitive); `--keep DIR` writes
the matrices and outputs under DIR (shown as /tmp/x in the commands) and leaves them there.

Benchmark locks go to a directory of the script's own ($HARNESS_LOCK_DIR), shared by its runs only, so
other jobs on the machine cannot hold the machine lock against these cells. The whole run takes about
three minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = Path("tests/resources")
MATRICES = RESOURCES / "matrices"
BAD = RESOURCES / "bad"
SHOWN_TMP = "/tmp/x"
STEPPED = frozenset({"ok", "no_learning", "nonfinite", "mismatch"})
PROBE_TIMEOUT_S = 8
HANG_S = 12
TINY = """devices: [cpu]
train: {steps: 4, timeout_s: 10}
model: {d_model: 16, n_layers: 1, n_heads: 2, seq_len: 8}
bench: {enabled: false}
"""


def cid(optimizer: str) -> str:
    return f"{optimizer}-cpu-float32-plain-direct"


ADAMW, ADAM, SGD = cid("torch.optim.AdamW"), cid("torch.optim.Adam"), cid("torch.optim.SGD")


@dataclass
class Done:
    """One finished CLI call."""

    args: list[str]
    env: dict[str, str]
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Started:
    """A CLI call in flight."""

    proc: subprocess.Popen[bytes]
    t0: float
    stdout: Path
    stderr: Path


@dataclass
class Row:
    case: str
    status: str
    seconds: float
    healthy: str
    code: int | None
    command: str
    problems: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, case: str, status: str, done: Done, healthy: str, command: str, problems: list[str]) -> Row:
        """The row of one CLI run: its seconds and exit code come from the run itself."""
        return cls(case, status, done.seconds, healthy, done.code, command, problems)


class Context:
    """Where the case's files go, and how its CLI calls are run and shown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.generated: list[Path] = []
        self.calls = 0
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HARNESS_LOCK_DIR": str(tmp / "locks"),
            "TERM": "dumb",
        }

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.generated.append(path)
        return path

    def matrix(self, name: str, optimizers: str, settings: str = TINY) -> Path:
        return self.write(f"m/{name}.yaml", f"optimizers:\n{optimizers}{settings}")

    def arg(self, value: str | Path) -> str:
        text = str(value)
        if text.startswith(str(self.tmp)):
            return SHOWN_TMP + text[len(str(self.tmp)) :]
        if text.startswith(str(ROOT) + os.sep):
            return text[len(str(ROOT)) + 1 :]
        return text

    def show(self, args: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
        prefix = " ".join(f"{k}={shlex.quote(self.arg(v))}" for k, v in (env or {}).items())
        command = "python -m harness " + " ".join(shlex.quote(self.arg(a)) for a in args)
        return f"{prefix} {command}" if prefix else command

    def clean(self, text: str) -> str:
        return text.replace(str(self.tmp), SHOWN_TMP).replace(str(ROOT) + os.sep, "")

    def start(self, args: Sequence[str | Path], env: dict[str, str] | None = None) -> Started:
        """Start one CLI call; its output goes to files (a pipe nobody reads could stall a long run)."""
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.calls += 1
        stdout, stderr = logs / f"{self.calls}.out", logs / f"{self.calls}.err"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harness", *map(str, args)],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return Started(proc, time.monotonic(), stdout, stderr)

    def finish(
        self, started: Started, args: Sequence[str | Path], env: dict[str, str] | None = None, timeout: float = 300
    ) -> Done:
        proc = started.proc
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, started.t0 + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        seconds = time.monotonic() - started.t0
        stdout = started.stdout.read_text(errors="replace")
        stderr = started.stderr.read_text(errors="replace")
        return Done([*map(str, args)], dict(env or {}), proc.returncode, stdout, stderr, seconds, timed_out)

    def cli(self, args: Sequence[str | Path], env: dict[str, str] | None = None, timeout: float = 300) -> Done:
        return self.finish(self.start(args, env), args, env, timeout)


def records(out: Path) -> dict[str, dict[str, Any]]:
    """The results file's records by id (the last line of an id wins), skipping lines that do not parse."""
    found: dict[str, dict[str, Any]] = {}
    for line in result_lines(out):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "id" in record:
            found[record["id"]] = record
    return found


def result_lines(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def first_line(text: str | None, width: int = 150) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def benchmarked(record: dict[str, Any]) -> bool:
    bench = record.get("bench")
    if not isinstance(bench, dict) or bench.get("not_measured"):
        return False
    step_ms = bench.get("step_ms")
    return isinstance(step_ms, dict) and any(isinstance(v, (int, float)) for v in step_ms.values())


def healthy(
    found: dict[str, dict[str, Any]], expect: dict[str, Iterable[str]], *, bench: bool = False
) -> tuple[str, list[str]]:
    """'yes (k/k ok)' when every healthy cell has an allowed status (and a benchmark, if asked), else 'no (...)'."""
    wrong = []
    statuses = []
    for cell_id, allowed in expect.items():
        record = found.get(cell_id)
        if record is None:
            wrong.append(f"{cell_id}: no record")
            continue
        statuses.append(record["status"])
        if record["status"] not in set(allowed):
            wrong.append(f"{cell_id}: {record['status']}")
        elif bench and not benchmarked(record):
            wrong.append(f"{cell_id}: no bench figures ({(record.get('bench') or {}).get('not_measured')})")
    k = len(expect)
    if wrong:
        return f"no ({'; '.join(wrong)})", [f"healthy cell {w}" for w in wrong]
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    what = "ok" if set(counts) == {"ok"} else ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"yes ({k}/{k} {what}{', benchmarked' if bench else ''})", []


def describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "no record"
    text = record["status"]
    if record.get("reason") and record["status"] not in STEPPED:
        text += f" ({record['reason']})"
    message = first_line(record.get("error_message"), 110)
    return f"{text}: {message}" if message else text


class Check:
    """Collects the ways a case broke its promise."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def need(self, condition: object, problem: str) -> bool:
        if not condition:
            self.problems.append(problem)
        return bool(condition)

    def exit(self, done: Done, code: int) -> None:
        if done.timed_out:
            self.problems.append(f"did not finish within {done.seconds:.0f} s (killed)")
        else:
            self.need(done.code == code, f"exit {done.code}, expected {code}")
        self.need("Traceback" not in done.stderr, "a traceback on stderr")


# ---------------------------------------------------------------------------------------------- the cases


def case_lost(ctx: Context) -> list[Row]:
    out = ctx.path("c1")
    args = ["run", MATRICES / "kill_worker.yaml", "-n", "2", "--out", out, "--baselines", out]
    done = ctx.cli(args)
    check = Check()
    check.exit(done, 1)
    victim = cid("tests.faults.hostile.KillWorker")
    gate = gate_line(done)
    check.need("gate: FAILED" in gate and "1 lost" in gate, f"gate line: {gate!r}")
    check.need(f"lost: {victim}" in done.stdout, "the lost cell is not named on stdout")
    lost_path = out / "lost.json"
    lost = json.loads(lost_path.read_text()) if lost_path.exists() else []
    check.need([e.get("id") for e in lost] == [victim], f"lost.json holds {[e.get('id') for e in lost]}")
    check.need(victim not in records(out), "the killed worker's cell has a record")
    said = [line for line in (lost[0]["error"] if lost else "").splitlines() if "crashed" in line] or [""]
    error = first_line(ctx.clean(said[0]), 110)
    summary = (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
    verdict = first_line(summary, 60)
    check.need(
        "passed" not in verdict.lower() and "lost" in summary,
        "summary.md says the gate passed and names no lost cell (the CLI says FAILED, exit 1)",
    )
    text, bad = healthy(records(out), {ADAMW: ["ok"]})
    return [
        Row.of(
            "1 lost cell (pytest worker SIGKILLed) fails the gate",
            f"lost (lost.json: {error!r}); {gate}; summary.md: {verdict!r}",
            done,
            text,
            ctx.show(args),
            check.problems + bad,
        )
    ]


def gate_line(done: Done) -> str:
    """The gate's verdict line, its counts cut to those that are not zero."""
    line = next((x for x in done.stdout.splitlines() if x.startswith("gate:")), "no gate line")
    head, _, counts = line.partition(" (")
    kept = [part for part in counts.rstrip(")").split(", ") if part and not part.startswith("0 ")]
    return f"{head} ({', '.join(kept)})" if kept else head


def _hostile_run(
    ctx: Context, label: str, name: str, optimizers: str, workers: str, fault: str, expect: dict[str, Iterable[str]]
) -> tuple[Done, Check, Row, dict[str, dict[str, Any]]]:
    out = ctx.path(name)
    matrix = ctx.matrix(name, optimizers.replace("RESULTS", str(out / "results.jsonl")))
    args = ["run", matrix, "-n", workers, "--out", out, "--baselines", out]
    done = ctx.cli(args)
    check = Check()
    check.exit(done, 0)
    found = records(out)
    check.need(found.get(fault, {}).get("status") in STEPPED, f"fault cell: {describe(found.get(fault))}")
    text, bad = healthy(found, expect)
    check.problems += bad
    row = Row.of(label, describe(found.get(fault)), done, text, ctx.show(args), check.problems)
    return done, check, row, found


def case_sigterm(workers: str) -> Callable[[Context], list[Row]]:
    def run(ctx: Context) -> list[Row]:
        optimizers = "  - tests.faults.hostile.KillParent\n  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n"
        fault = cid("tests.faults.hostile.KillParent")
        label = f"2{'a' if workers == '2' else 'b'} step sends SIGTERM to its parent, -n {workers}"
        done, _, row, _ = _hostile_run(ctx, label, f"c2_n{workers}", optimizers, workers, fault, {ADAMW: ["ok"]})
        row.status = f"KillParent {row.status}; {gate_line(done)}"
        return [row]

    return run


def case_delete_results(ctx: Context) -> list[Row]:
    optimizers = (
        "  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n"
        "  - {name: tests.faults.hostile.DeleteResults, defaults: {path: RESULTS}}\n"
        "  - {name: torch.optim.Adam, defaults: {lr: 0.01}}\n"
    )
    fault = cid("tests.faults.hostile.DeleteResults")
    done, check, row, _ = _hostile_run(
        ctx, "3 step deletes results.jsonl", "c3", optimizers, "0", fault, {ADAMW: ["ok"], ADAM: STEPPED}
    )
    rewritten = "were written again" in done.stderr
    lines = result_lines(ctx.path("c3"))
    ids = [json.loads(line)["id"] for line in lines]
    check.need(rewritten, "no 'were written again' on stderr")
    check.need(sorted(ids) == sorted({ADAMW, ADAM, fault}), f"results.jsonl holds {ids}")
    row.problems = check.problems
    note = first_line(ctx.clean(next((x for x in done.stderr.splitlines() if "were written again" in x), "")), 120)
    row.status = f"DeleteResults {row.status}; {len(lines)}/3 records in the file, once each; stderr: {note!r}"
    return [row]


def case_write_every_fd(ctx: Context) -> list[Row]:
    optimizers = "  - tests.faults.hostile.WriteEveryFd\n  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n"
    fault = cid("tests.faults.hostile.WriteEveryFd")
    _, _, row, found = _hostile_run(
        ctx, "4 step writes into the reply pipe / every fd", "c4", optimizers, "2", fault, {ADAMW: ["ok"]}
    )
    row.status = f"WriteEveryFd {row.status} (its record kept)" if fault in found else row.status
    return [row]


def one_line_refusal(
    ctx: Context, label: str, args: list[str | Path], words: str, out: Path | None = None, *, lines: int = 1
) -> Row:
    """A user mistake: exit 2, one `error:` line holding `words`, nothing on stdout, no cell run."""
    done = ctx.cli(args)
    check = Check()
    check.exit(done, 2)
    err = [line for line in done.stderr.splitlines() if line.strip()]
    check.need(len(err) == lines, f"{len(err)} lines on stderr, expected {lines}")
    check.need(err and err[-1].startswith("error:"), "stderr does not end with an 'error:' sentence")
    check.need(words in done.stderr, f"stderr lacks {words!r}")
    check.need(done.stdout.strip() == "", f"stdout: {first_line(done.stdout)!r}")
    if out is not None:
        check.need(not (out / "results.jsonl").exists(), "a results file was written")
    message = ctx.clean(err[-1] if err else "(nothing on stderr)")
    if len(err) > 1:
        message += f" (after {len(err) - 1} warning lines)"
    return Row.of(label, message, done, "n/a", ctx.show(args), check.problems)


def expected_message(path: Path) -> str:
    """The `# expect:` text of a bad file, as it follows `error: <path>` on stderr."""
    first = (ROOT / path).read_text(encoding="utf-8").splitlines()[0]
    return f"error: {path}{first.removeprefix('# expect: ')}"


def bad_file(label: str, name: str) -> Callable[[Context], list[Row]]:
    def run(ctx: Context) -> list[Row]:
        path = BAD / f"{name}.yaml"
        out = ctx.path(f"bad_{name}")
        args: list[str | Path] = ["run", path, "-n", "0", "--out", out, "--baselines", out]
        return [one_line_refusal(ctx, label, args, expected_message(path), out)]

    return run


def case_infinite_timeout(ctx: Context) -> list[Row]:
    out = ctx.path("c5b")
    matrix = ctx.matrix(
        "infinite_timeout",
        "  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n",
        TINY.replace("timeout_s: 10", "timeout_s: .inf"),
    )
    args = ["run", matrix, "-n", "0", "--out", out, "--baselines", out]
    done = ctx.cli(args)
    check = Check()
    found = records(out)
    refused = done.code == 2 and not found and done.stderr.strip().count("\n") == 0
    check.need(refused, f"not a one-line refusal: exit {done.code}, {describe(found.get(ADAMW))}")
    check.need("finite" in done.stderr, "the message does not say the deadline must be finite")
    check.need("Traceback" not in done.stderr, "a traceback on stderr")
    status, text = ctx.clean(first_line(done.stderr)), "n/a"
    return [Row.of("5b `timeout_s: .inf`", status, done, text, ctx.show(args), check.problems)]


IMPORT_FAULTS = [
    ("6b module calls os._exit on import", "tests.faults.import_exit:*", {"crashed"}),
    ("6c module hangs on import", "tests.faults.import_hang:*", {"timeout"}),
    ("6d module segfaults on import", "tests.faults.import_segfault:*", {"crashed"}),
    ("6e module raises on import", "tests.faults.import_raise:*", {"construct_error"}),
    ("6f module prints on import", "tests.faults.import_print.Chatty", STEPPED),
]


def case_import_faults(ctx: Context) -> list[Row]:
    env = {"HARNESS_PROBE_TIMEOUT_S": str(PROBE_TIMEOUT_S)}
    matrix = MATRICES / "import_faults.yaml"
    rows = []
    list_args: list[str | Path] = ["list", "--json", matrix]
    listed = ctx.cli(list_args, env)
    check = Check()
    check.exit(listed, 0)
    try:
        cells = json.loads(listed.stdout)
    except ValueError as exc:
        cells = None
        check.need(False, f"stdout is not JSON ({exc})")
    check.need(isinstance(cells, list) and len(cells) == 6, f"{len(cells) if isinstance(cells, list) else '?'} cells")
    check.need(
        listed.seconds < PROBE_TIMEOUT_S + 15, f"took {listed.seconds:.1f} s (probe timeout {PROBE_TIMEOUT_S} s)"
    )
    rows.append(
        Row(
            "6a import faults: `list --json`",
            f"valid JSON, {len(cells) if isinstance(cells, list) else '?'} cells; the hang costs the probe timeout "
            f"({PROBE_TIMEOUT_S} s); stderr {len(listed.stderr.splitlines())} lines",
            listed.seconds,
            "n/a",
            listed.code,
            ctx.show(list_args, env),
            check.problems,
        )
    )
    out = ctx.path("c6")
    args: list[str | Path] = ["run", matrix, "-n", "2", "--out", out, "--baselines", out]
    done = ctx.cli(args, env)
    found = records(out)
    text, bad = healthy(found, {ADAMW: ["ok"]})
    for label, name, allowed in IMPORT_FAULTS:
        check = Check()
        check.exit(done, 0)
        record = found.get(cid(name))
        check.need(record is not None and record["status"] in allowed, f"{name}: {describe(record)}")
        if name.endswith("import_raise:*") and record is not None:
            check.need(record.get("error_type") == "RuntimeError", f"error_type {record.get('error_type')}")
        rows.append(Row.of(label, describe(record), done, text, ctx.show(args, env), check.problems + bad))
    return rows


def case_hang_and_second_runs(ctx: Context) -> list[Row]:
    """7 a hang beside benchmarking cells, 8 a second run into its --out, 9 a second run into another --out."""
    # The tests' own matrix, with a hang long enough that the second run (~5 s to start) meets it.
    text = (ROOT / MATRICES / "stuck_cell_beside_benchmarks.yaml").read_text()
    assert "train: {steps: 4, timeout_s: 6}" in text, "stuck_cell_beside_benchmarks.yaml changed"
    matrix = ctx.write("m/stuck_cell_beside_benchmarks.yaml", text.replace("timeout_s: 6}", f"timeout_s: {HANG_S}}}"))
    first_out, second_out = ctx.path("c7"), ctx.path("c9")
    first_args: list[str | Path] = ["run", matrix, "-n", "2", "--out", first_out, "--baselines", first_out]
    clash_args: list[str | Path] = ["run", matrix, "-n", "0", "--out", first_out, "--baselines", first_out]
    second_args: list[str | Path] = ["run", matrix, "-n", "0", "-k", "not Hang", "--out", second_out]
    second_args += ["--baselines", second_out]
    arrivals: dict[tuple[str, str], float] = {}  # (run, cell id) -> when its record appeared

    def watch() -> None:
        for run, out in (("first", first_out), ("second", second_out)):
            for cell_id in records(out):
                arrivals.setdefault((run, cell_id), time.monotonic())

    first = ctx.start(first_args)
    deadline = time.monotonic() + 120
    while not (first_out / ".harness.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    clash = ctx.cli(clash_args)
    first_running = first.proc.poll() is None
    snapshot = result_lines(first_out)
    # Start the second run once the hung cell is training: one process holding the machine lock shared for 1 s.
    machine = ctx.path("locks") / ".machine.lock"
    held_since: dict[int, float] = {}
    detected = False
    deadline = time.monotonic() + 90
    while first.proc.poll() is None and time.monotonic() < deadline and not detected:
        watch()
        now = time.monotonic()
        readers = flock_holders(machine, "READ")
        held_since = {pid: held_since.get(pid, now) for pid in readers}
        detected = any(now - since >= 1.0 for since in held_since.values())
        time.sleep(0.02)
    second = ctx.start(second_args)
    while first.proc.poll() is None or second.proc.poll() is None:
        watch()
        time.sleep(0.05)
    watch()
    first_done = ctx.finish(first, first_args, timeout=400)
    second_done = ctx.finish(second, second_args, timeout=400)
    healthy_ids = {ADAMW: STEPPED, ADAM: STEPPED, SGD: STEPPED}
    hang = cid("tests.faults.optimizers.Hang")

    check = Check()
    check.exit(first_done, 0)
    found = records(first_out)
    record = found.get(hang) or {}
    message = record.get("error_message") or ""
    check.need(record.get("status") == "timeout", f"Hang: {describe(found.get(hang))}")
    words = f"train phase ran past train.timeout_s = {HANG_S} s"
    check.need(words in message, f"the message does not say {words!r}")
    match = re.search(r"\(([\d.]+) s spent waiting", message)
    waited = float(match[1]) if match else 0.0
    killed_after = float(record.get("duration_s") or 0.0) - waited
    check.need(
        HANG_S <= killed_after < HANG_S + 10,
        f"killed after {killed_after:.1f} s of its own time (train.timeout_s {HANG_S}, bench.timeout_s 30)",
    )
    text, bad = healthy(found, healthy_ids, bench=True)
    rows = [
        Row(
            f"7 hang (train.timeout_s {HANG_S}, bench.timeout_s 30) beside benchmarking cells",
            f"timeout, train phase: killed after {killed_after:.1f} s of its own time "
            f"(+{waited:.1f} s waiting for the machine, not counted; {HANG_S} + 30 = {HANG_S + 30} would be the wrong "
            "deadline)",
            first_done.seconds,
            text,
            first_done.code,
            ctx.show(first_args),
            check.problems + bad,
        )
    ]

    check = Check()
    check.exit(clash, 2)
    check.need("Another run is writing to" in clash.stderr, "no 'Another run is writing to' sentence")
    check.need(clash.stderr.strip().count("\n") == 0, "more than one line on stderr")
    check.need(first_running, "the first run had already ended when the second was refused")
    after = result_lines(first_out)
    check.need(after[: len(snapshot)] == snapshot, "the first run's earlier records changed")
    check.need(len(found) == 4, f"the first run has {len(found)} records, expected 4")
    rows.append(
        Row(
            "8 second concurrent run into the same --out",
            f"{ctx.clean(first_line(clash.stderr, 200))} (first run: {len(found)}/4 records, intact)",
            clash.seconds,
            f"{'yes' if len(found) == 4 else 'no'} (the first run's {len(found)}/4 records kept)",
            clash.code,
            ctx.show(clash_args),
            check.problems,
        )
    )

    check = Check()
    check.exit(second_done, 0)
    found2 = records(second_out)
    check.need(set(found2) == set(healthy_ids), f"the second run has {sorted(found2)}")
    check.need(second.t0 < first.t0 + first_done.seconds, "the second run did not start before the first ended")
    text, bad = healthy(found2, healthy_ids, bench=True)
    hang_end = arrivals.get(("first", hang))
    hang_window = (hang_end - killed_after - waited, hang_end) if hang_end is not None else (0.0, 0.0)
    during = []
    for cell_id, record2 in found2.items():
        end = arrivals.get(("second", cell_id))
        if end is not None and end - float(record2.get("duration_s") or 0.0) < hang_window[1] and end > hang_window[0]:
            during.append(cell_id)
    slowest = max((float(r.get("duration_s") or 0.0) for r in found2.values()), default=0.0)
    check.need(during, "none of the second run's cells ran while the hung cell was alive (timing: rerun)")
    rows.append(
        Row(
            "9 second concurrent run into another --out while the first has a hung cell",
            f"{len(found2)}/3 cells, each with bench step_ms; {len(during)}/3 ran while the hung cell was alive "
            f"(started when it had held the machine lock 1 s: {detected}); the slowest cell took {slowest:.1f} s, "
            "its wait for the machine uncharged",
            second_done.seconds,
            text,
            second_done.code,
            ctx.show(second_args),
            check.problems + bad,
        )
    )
    return rows


def flock_holders(path: Path, kind: str) -> set[int]:
    """Pids holding a flock of `kind` (READ or WRITE) on `path`, from /proc/locks (Linux); empty elsewhere."""
    try:
        inode = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return set()
    pids = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == kind and parts[5].endswith(f":{inode}"):
            pids.add(int(parts[4]))  # a waiter's line has "->" as its second field, so it never matches
    return pids


def sleepers(lock_dir: Path) -> set[int]:
    """Pids of `sleep 600` processes (`pgrep -f`) started under this script (their environment names its lock dir)."""
    done = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True, text=True)
    mine = set()
    for pid in map(int, done.stdout.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"HARNESS_LOCK_DIR={lock_dir}".encode() in environ:
            mine.add(pid)
    return mine


def case_polluter(ctx: Context) -> list[Row]:
    out, pidfile, seen = ctx.path("c10"), ctx.path("c10_sleeper.pid"), ctx.path("c10_inspector.json")
    optimizers = (
        f"  - {{name: tests.faults.hostile.Polluter, defaults: {{pidfile: {pidfile}}}}}\n"
        "  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n"
        f"  - {{name: tests.faults.hostile.Inspector, defaults: {{path: {seen}}}}}\n"
    )
    matrix = ctx.matrix("polluter", optimizers)
    args: list[str | Path] = ["run", matrix, "-n", "0", "--out", out, "--baselines", out]
    before = sleepers(ctx.path("locks"))
    done = ctx.cli(args)
    left = sleepers(ctx.path("locks")) - before
    check = Check()
    check.exit(done, 0)
    found = records(out)
    polluter = found.get(cid("tests.faults.hostile.Polluter"))
    check.need(polluter is not None and polluter["status"] in STEPPED, f"Polluter: {describe(polluter)}")
    state = json.loads(seen.read_text()) if seen.exists() else {}
    clean = {"adamw": "AdamW", "dtype": "torch.float32", "grad": True, "cwd": str(ROOT), "polluted": None}
    dirty = {k: state.get(k) for k, v in clean.items() if state.get(k) != v}
    check.need(not dirty, f"the next cell's process saw {dirty or 'nothing'}")
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    alive = pid is not None and Path(f"/proc/{pid}").exists()
    check.need(pid is not None, "the Polluter wrote no pidfile")
    check.need(not alive and not left, f"`sleep 600` survived the run: pid {pid} alive={alive}, new by pgrep {left}")
    text, bad = healthy(found, {ADAMW: ["ok"], cid("tests.faults.hostile.Inspector"): STEPPED})
    status = (
        f"Polluter {describe(polluter)}; next cell's process: torch.optim.AdamW is {state.get('adamw')}, "
        f"dtype {state.get('dtype')}, grad {state.get('grad')}, cwd kept {state.get('cwd') == str(ROOT)}, "
        f"env clean {state.get('polluted') is None}; its `sleep 600` (pid {pid}) gone, `pgrep -f` finds none new"
    )
    return [
        Row.of(
            "10 step monkeypatches AdamW, sets float64, leaves `sleep 600`",
            status,
            done,
            text,
            ctx.show(args),
            check.problems + bad,
        )
    ]


def case_torn_line(ctx: Context) -> list[Row]:
    out = ctx.path("c11")
    optimizers = (
        "  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n"
        "  - {name: torch.optim.Adam, defaults: {lr: 0.01}}\n"
        "  - {name: torch.optim.SGD, defaults: {lr: 0.1, momentum: 0.9}}\n"
    )
    matrix = ctx.matrix("torn", optimizers)
    first = ctx.cli(["run", matrix, "-n", "0", "--out", out, "--baselines", out])
    check = Check()
    check.need(first.code == 0, f"the first run exited {first.code}")
    results = out / "results.jsonl"
    lines = result_lines(out)
    torn_id = json.loads(lines[-1])["id"] if lines else "?"
    if lines:
        data = results.read_bytes()
        keep = data.rstrip(b"\n").rfind(b"\n") + 1
        last = data[keep:]
        results.write_bytes(data[:keep] + last[: len(last) // 2])  # a torn last line, no newline
    kept = lines[:-1]
    args: list[str | Path] = ["run", matrix, "-n", "0", "--out", out, "--baselines", out, "--resume"]
    done = ctx.cli(args)
    check.exit(done, 0)
    after = result_lines(out)
    parsed = []
    for line in after:
        try:
            parsed.append(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            check.need(False, f"a line does not parse: {line[:60]!r}")
    cut = first_line(ctx.clean(next((x for x in done.stderr.splitlines() if "torn" in x), "")), 120)
    check.need("cut a torn last line" in done.stderr, "no 'cut a torn last line' on stderr")
    check.need(after[: len(kept)] == kept, "the finished records before the torn line changed")
    check.need(sorted(parsed) == sorted({ADAMW, ADAM, SGD}), f"after --resume the file holds {parsed}")
    check.need(parsed[len(kept) :] == [torn_id], f"rerun: {parsed[len(kept) :]}, expected [{torn_id}]")
    text, bad = healthy(records(out), {ADAMW: ["ok"], ADAM: STEPPED, SGD: STEPPED})
    status = f"{cut!r}; {torn_id.split('-')[0]} rerun; {len(parsed)}/3 records, once each, first {len(kept)} untouched"
    return [
        Row.of(
            "11 torn last line in results.jsonl, then `run --resume`",
            status + " (after a first run whose last line the script cut in half)",
            done,
            text,
            ctx.show(args),
            check.problems + bad,
        )
    ]


def case_unreadable_results(label: str, name: str, content: bytes, *command: str) -> Callable[[Context], list[Row]]:
    """`report` or `baseline accept` on a results file with no record: one `error:` line, exit 2, nothing written."""

    def run(ctx: Context) -> list[Row]:
        out = ctx.path(name)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.jsonl").write_bytes(content)
        args: list[str | Path] = [*command, out, "--baselines", out]
        done = ctx.cli(args)
        check = Check()
        check.exit(done, 2)
        err = [line for line in done.stderr.splitlines() if line.strip()]
        check.need(len(err) == 1 and err[0].startswith("error:"), f"{len(err)} lines on stderr, not one 'error:' line")
        check.need(any("holds no" in line for line in err), "the sentence does not say the file holds no record")
        check.need(not (out / "report.html").exists() and not (out / "baselines").exists(), "something was written")
        shown = ctx.clean(err[-1] if err else "(nothing on stderr)")
        return [Row.of(label, shown, done, "n/a", ctx.show(args), check.problems)]

    return run


def case_out_is_a_file(ctx: Context) -> list[Row]:
    target = ctx.write("a_file.txt", "not a directory\n")
    args: list[str | Path] = ["run", MATRICES / "small.yaml", "-n", "0", "--out", target]
    return [one_line_refusal(ctx, "12k `--out` names an existing file", args, "is a file; name a directory")]


def case_negative_workers(ctx: Context) -> list[Row]:
    out = ctx.path("c12l")
    args: list[str | Path] = ["run", MATRICES / "small.yaml", "-n", "-1", "--out", out]
    return [one_line_refusal(ctx, "12l `-n -1`", args, "-n takes a number of workers", out)]


def case_pytest_args(ctx: Context) -> list[Row]:
    out = ctx.path("c12m")
    matrix = ctx.matrix(
        "pytest_args",
        "  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n  - {name: torch.optim.Adam, defaults: {lr: 0.01}}\n",
    )
    args: list[str | Path] = ["run", matrix, "--out", out, "--baselines", out, "--", "-x"]
    done = ctx.cli(args)
    check = Check()
    check.exit(done, 0)
    found = records(out)
    text, bad = healthy(found, {ADAMW: ["ok"], ADAM: STEPPED})
    gate = gate_line(done)
    status = f"accepted and run: {len(found)} records; {gate}"
    return [
        Row.of(
            "12m `run m.yaml --out d -- -x` (must run)",
            status,
            done,
            text,
            ctx.show(args),
            check.problems + bad,
        )
    ]


def case_alias_bomb(ctx: Context) -> list[Row]:
    path = BAD / "alias_bomb.yaml"
    row = one_line_refusal(ctx, "13 YAML alias bomb: `list --json`", ["list", "--json", path], expected_message(path))
    if row.seconds > 10:
        row.problems.append(f"took {row.seconds:.1f} s")
    return [row]


SHOUTY = '''"""An optimizer whose step fails with a huge message full of ANSI escapes and control characters."""

import torch

MESSAGE = "\\x1b[31mred\\x1b[0m \\x07bell\\r\\n" + "\\n".join(
    f"line {i} \\x1b[1mbold\\x1b[0m \\x1b]0;title\\x07" for i in range(5000)
) + "\\n" + "x" * 100_000


class Shouty(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError(MESSAGE)
'''


def case_ansi(ctx: Context) -> list[Row]:
    ctx.write("mod/shouty.py", SHOUTY)
    env = {"PYTHONPATH": str(ctx.path("mod"))}
    out = ctx.path("c14")
    matrix = ctx.matrix("shouty", "  - shouty.Shouty\n  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n")
    args: list[str | Path] = ["run", matrix, "-n", "0", "--out", out, "--baselines", out]
    full_env = {"PYTHONPATH": os.pathsep.join([str(ctx.path("mod")), ctx.env["PYTHONPATH"]])}
    check = Check()
    first = ctx.cli(args, full_env)
    check.need(first.code == 0, f"the first run exited {first.code}")
    accepted = ctx.cli(["baseline", "accept", out, "--baselines", out])
    check.need(accepted.code == 0, f"baseline accept exited {accepted.code}")
    shouty = cid("shouty.Shouty")
    for baseline in (out / "baselines").glob("*.json"):  # pretend it once worked: today's failure is a regression
        data = json.loads(baseline.read_text())
        if shouty in data.get("cells", {}):
            data["cells"][shouty] = {"status": "ok"}
            baseline.write_text(json.dumps(data))
    done = ctx.cli(args, full_env)
    check.exit(done, 1)
    raw = done.output
    found = records(out)
    message_lines = [line for line in raw.splitlines() if re.search(r"\bline \d+ ", line)]
    widest = max((len(line) for line in raw.splitlines()), default=0)
    check.need("\x1b" not in raw and "\x07" not in raw, "ESC or BEL bytes reached the terminal")
    check.need(len(message_lines) <= 12, f"{len(message_lines)} lines of the message reached the terminal")
    check.need(widest <= 400, f"a terminal line of {widest} characters")
    check.need("regression" in done.stdout, "the gate does not name the regression")
    esc = {}
    for name in ("summary.md", "report.html"):
        path = out / name
        esc[name] = path.read_text(errors="replace").count("\x1b") if path.exists() else -1
        check.need(esc[name] == 0, f"{name}: {esc[name]} ESC bytes (-1: missing)")
    record = found.get(shouty)
    size = len((record or {}).get("error_message") or "")
    status = (
        f"{describe(record).split(':')[0]} → regression; the {size}-character, 5002-line message showed "
        f"{len(message_lines)} of its lines on the terminal (widest line {widest} chars), "
        f"ESC bytes: terminal {raw.count(chr(27))}, summary.md {esc['summary.md']}, report.html {esc['report.html']} "
        "(after a first run, `baseline accept` and its entry set to ok)"
    )
    text, bad = healthy(found, {ADAMW: ["ok"]})
    return [
        Row.of(
            "14 failure with a huge message full of ANSI escapes",
            status,
            done,
            text,
            ctx.show(args, env),
            check.problems + bad,
        )
    ]


def case_bench_no_learning(ctx: Context) -> list[Row]:
    out = ctx.path("c15")
    settings = TINY.replace(
        "bench: {enabled: false}\n",
        "bench:\n  cells: [{optimizer: torch.optim.SGD}]\n"
        "  d_model: 16\n  n_layers: 1\n  vocab_size: 64\n  seq_len: 8\n  warmup: 1\n  repeats: 3\n"
        "  parity_steps: 1\n  timeout_s: 60\n",
    )
    matrix = ctx.matrix(
        "sgd_tiny_lr",
        "  - {name: torch.optim.SGD, defaults: {lr: 1.0e-9}}\n  - {name: torch.optim.AdamW, defaults: {lr: 0.01}}\n",
        settings,
    )
    args: list[str | Path] = ["run", matrix, "-n", "0", "--out", out, "--baselines", out]
    done = ctx.cli(args)
    check = Check()
    check.exit(done, 0)
    found = records(out)
    sgd = found.get(SGD) or {}
    check.need(sgd.get("status") == "no_learning", f"SGD: {describe(found.get(SGD))}")
    check.need(benchmarked(sgd), f"SGD bench: {sgd.get('bench')}")
    step_ms = (sgd.get("bench") or {}).get("step_ms") or {}
    figures = ", ".join(f"{k} {v:.3f} ms" for k, v in step_ms.items() if isinstance(v, (int, float)))
    text, bad = healthy(found, {ADAMW: ["ok"]})
    status = f"SGD lr 1e-9: {sgd.get('status')}, bench step_ms: {figures or 'none'}"
    return [
        Row.of(
            "15 a cell ending `no_learning` is still benchmarked",
            status,
            done,
            text,
            ctx.show(args),
            check.problems + bad,
        )
    ]


NOT_UTF8 = b'\xff\xfe{"id": "x\xc3\x28"}\n\x80\x81 not text\n'
NOT_OBJECTS = b'[1, 2, 3]\n"a string"\n42\n'

CASES: list[tuple[list[str], Callable[[Context], list[Row]]]] = [
    (["1 lost cell (pytest worker SIGKILLed) fails the gate"], case_lost),
    (["2a step sends SIGTERM to its parent, -n 2"], case_sigterm("2")),
    (["2b step sends SIGTERM to its parent, -n 0"], case_sigterm("0")),
    (["3 step deletes results.jsonl"], case_delete_results),
    (["4 step writes into the reply pipe / every fd"], case_write_every_fd),
    (["5a `lr: 2001-12-14` (a YAML date)"], bad_file("5a `lr: 2001-12-14` (a YAML date)", "date_lr")),
    (["5b `timeout_s: .inf`"], case_infinite_timeout),
    (["6a import faults: `list --json`", *(label for label, _, _ in IMPORT_FAULTS)], case_import_faults),
    (
        [
            f"7 hang (train.timeout_s {HANG_S}, bench.timeout_s 30) beside benchmarking cells",
            "8 second concurrent run into the same --out",
            "9 second concurrent run into another --out while the first has a hung cell",
        ],
        case_hang_and_second_runs,
    ),
    (["10 step monkeypatches AdamW, sets float64, leaves `sleep 600`"], case_polluter),
    (["11 torn last line in results.jsonl, then `run --resume`"], case_torn_line),
    (["12a 500 nested `[`"], bad_file("12a 500 nested `[`", "nested_too_deep")),
    (["12b optimizer `.AdamW`"], bad_file("12b optimizer `.AdamW`", "optimizer_leading_dot")),
    (["12c optimizer `../x`"], bad_file("12c optimizer `../x`", "optimizer_relative_path")),
    (["12d `speedup_tolerance: 5`"], bad_file("12d `speedup_tolerance: 5`", "speedup_tolerance_5")),
    (["12e `model: {d_model: 97, n_heads: 4}`"], bad_file("12e `model: {d_model: 97, n_heads: 4}`", "model_heads")),
    (['12f `lr: "abc"`'], bad_file('12f `lr: "abc"`', "lr_not_a_number")),
    (["12g `devices: [cpu, gpu]`"], bad_file("12g `devices: [cpu, gpu]`", "device_gpu")),
    (["12h misspelt `torhc.optim.AdamW`"], bad_file("12h misspelt `torhc.optim.AdamW`", "misspelt_package")),
    (
        ["12i `report` on a non-UTF-8 results file"],
        case_unreadable_results("12i `report` on a non-UTF-8 results file", "c12i", NOT_UTF8, "report"),
    ),
    (
        ["12j `report` on results whose JSON lines are not objects"],
        case_unreadable_results(
            "12j `report` on results whose JSON lines are not objects", "c12j", NOT_OBJECTS, "report"
        ),
    ),
    (["12k `--out` names an existing file"], case_out_is_a_file),
    (["12l `-n -1`"], case_negative_workers),
    (["12m `run m.yaml --out d -- -x` (must run)"], case_pytest_args),
    (
        ["12n `baseline accept` on an empty results file"],
        case_unreadable_results("12n `baseline accept` on an empty results file", "c12n", b"", "baseline", "accept"),
    ),
    (
        ["12o `baseline accept` on a garbage results file"],
        case_unreadable_results(
            "12o `baseline accept` on a garbage results file", "c12o", b"not json\n\xff\xfe\n", "baseline", "accept"
        ),
    ),
    (["13 YAML alias bomb: `list --json`"], case_alias_bomb),
    (["14 failure with a huge message full of ANSI escapes"], case_ansi),
    (["15 a cell ending `no_learning` is still benchmarked"], case_bench_no_learning),
]


# ---------------------------------------------------------------------------------------------- the table


def cell_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def code_text(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`" if "`" not in text else "``" + text.replace("|", "\\|") + "``"


def table(rows: list[Row]) -> str:
    lines = [
        "| case | status or message | seconds | healthy cells survived | exit code | command |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for row in rows:
        status = row.status if not row.problems else f"**UNEXPECTED** ({'; '.join(row.problems)}): {row.status}"
        code = "killed" if row.code is None else str(row.code)
        lines.append(
            f"| {cell_text(row.case)} | {cell_text(status)} | {row.seconds:.1f} | {cell_text(row.healthy)} | {code} "
            f"| {code_text(row.command)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="SUBSTRING", help="run only the cases whose label holds SUBSTRING")
    parser.add_argument("--keep", metavar="DIR", help="write matrices and outputs under DIR and keep them")
    args = parser.parse_args(argv)
    chosen = [
        (labels, run)
        for labels, run in CASES
        if not args.only or any(args.only.lower() in label.lower() for label in labels)
    ]
    if not chosen:
        print(f"no case label holds {args.only!r}", file=sys.stderr)
        return 2
    if args.keep:
        tmp = Path(args.keep).resolve()
        if tmp.exists() and any(tmp.iterdir()):
            print(f"--keep {tmp}: the directory is not empty", file=sys.stderr)
            return 2
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="gate_cases_"))
    ctx = Context(tmp)
    started = time.monotonic()
    rows: list[Row] = []
    try:
        for labels, run in chosen:
            t0 = time.monotonic()
            try:
                got = run(ctx)
            except Exception as exc:  # a broken case is a row, not the end of the table
                got = [
                    Row(
                        labels[0],
                        f"the case itself failed: {type(exc).__name__}: {exc}",
                        time.monotonic() - t0,
                        "?",
                        None,
                        "",
                        [f"{type(exc).__name__}: {exc}"],
                    )
                ]
            for row in got:
                mark = "UNEXPECTED" if row.problems else "as promised"
                print(f"[{time.monotonic() - started:6.1f} s] {row.case}: {mark}", file=sys.stderr, flush=True)
            rows += got
        total = time.monotonic() - started
        print(table(rows))
        unexpected = [row for row in rows if row.problems]
        print()
        print(f"Commands run from the repository root; {SHOWN_TMP} stands for the script's working directory")
        print("(`--keep /tmp/x` writes the matrices there). HARNESS_LOCK_DIR pointed at a lock directory of the")
        print("script's own. The files it wrote:")
        for path in ctx.generated:
            body = ctx.clean(path.read_text()).strip().replace("\n", "\n    ")
            print(f"\n    # {ctx.arg(path)}\n    {body}")
        if unexpected:
            print(f"\n{len(unexpected)} UNEXPECTED rows:")
            for row in unexpected:
                print(f"- {row.case}: {'; '.join(row.problems)}")
        print(f"\ntotal wall time: {total:.1f} s ({len(rows)} rows, {len(unexpected)} UNEXPECTED)")
        return 1 if unexpected else 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
