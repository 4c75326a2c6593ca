"""`python -m harness` (or `harness`): list cells, run them, render reports, merge shards, gate.

Each subcommand is a small function from parsed arguments to an exit status: 0 all is well, 1 the
gate failed, 2 the user's input was wrong (the message says what to fix; never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.pipeline import matrix_cells, render_and_gate, run_matrix
from harness.workdir import check_working_directory

if TYPE_CHECKING:
    from harness.cells import Record
    from harness.spec import Matrix

DEFAULT_MATRIX = "matrix.yaml"
DEFAULT_OUT = "reports"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # `run m.yaml --out d -- -x`: everything after `--` is pytest's
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.argv = [*argv, *(["--", *extra] if extra else [])]  # `run --env` re-runs them in the environment
    if extra:
        if args.command is not cmd_run:
            parser.error("only `run` passes arguments after `--` on to pytest")
        args.pytest_args = [*args.pytest_args, *extra]
    command: Callable[[argparse.Namespace], int] = args.command
    python_form, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        check_working_directory()
        return command(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `harness list | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; rerun with --resume to run the rest.", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = python_form  # `main` is called in-process too (tests, `run --env`)


_SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "matrix": (("matrix",), {"nargs": "?", "default": DEFAULT_MATRIX, "help": "matrix file (default: ./matrix.yaml)"}),
    "results": (
        ("results",),
        {"nargs": "?", "default": DEFAULT_OUT, "help": "results.jsonl or its directory (default: reports)"},
    ),
    "shard": (("--shard",), {"metavar": "I/N", "help": "only the I-th of N stable shares of the cells"}),
    "keyword": (("-k",), {"dest": "keyword", "help": "only cells whose id matches this pytest -k expression"}),
    "baselines": (
        ("--baselines",),
        {"default": DEFAULT_OUT, "help": "directory holding baselines/ (default: reports)"},
    ),
    "tolerance": (("--tolerance",), {"type": float, "help": "speed-up tolerance of the gate (default 0.2)"}),
    "screenshot": (("--screenshot",), {"action": "store_true", "help": "also save report.png (needs Chromium)"}),
    "strict": (
        ("--strict",),
        {"action": "store_true", "help": "a cell with no accepted outcome (`new`) fails the gate too"},
    ),
}
"""Options several commands take, each spelt once."""


def _shared(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        flags, options = _SHARED_OPTIONS[name]
        parser.add_argument(*flags, **options)


def _one_line_warning(message: Warning | str, *_: object, **__: object) -> str:
    """A warning as the user reads it (`warning: <file>:<line>: skipped ...`), not Python's two-line form."""
    return f"warning: {message}\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="print the cells of a matrix, one per line")
    _shared(p, "matrix")
    p.add_argument("--json", action="store_true", help="a JSON array of cells instead of ids")
    _shared(p, "shard")
    p.set_defaults(command=cmd_list)

    p = sub.add_parser("run", help="run the cells (pytest + xdist), write results, reports and the gate verdict")
    _shared(p, "matrix")
    p.add_argument("-n", "--workers", default="auto", help="pytest-xdist workers: a number, or auto (default)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: reports)")
    _shared(p, "keyword")
    p.add_argument("--resume", action="store_true", help="keep the results file and run only cells without a record")
    _shared(p, "shard", "baselines", "strict", "screenshot")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    p.add_argument("--env", metavar="NAME", help="run in the matrix's environment NAME (built, cached on demand)")
    p.set_defaults(command=cmd_run)

    p = sub.add_parser("report", help="render report.html and summary.md from a results file")
    p.add_argument("--out", help="output directory (default: the results file's directory)")
    _shared(p, "results", "baselines", "strict", "tolerance", "screenshot")
    p.set_defaults(command=cmd_report)

    p = sub.add_parser("merge", help="join shard results into one results file and one report")
    p.add_argument("dirs", nargs="+", help="shard output directories (or results.jsonl files)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: reports)")
    _shared(p, "baselines", "strict", "tolerance")
    p.set_defaults(command=cmd_merge)

    p = sub.add_parser("compare", help="one report with several runs' environments side by side")
    p.add_argument("results", nargs="+", help="results.jsonl files or their directories")
    p.add_argument("--out", default="reports/compare.html", help="output HTML file (default: reports/compare.html)")
    p.set_defaults(command=cmd_compare)

    p = sub.add_parser("repro", help="write a standalone script that reproduces one cell (torch and its package only)")
    p.add_argument("id", help="the cell's id, as results.jsonl and `list` name it")
    p.add_argument("--results", default=DEFAULT_OUT, help="results.jsonl or its directory (default: reports)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the script to FILE (default: print it)")
    p.add_argument("--matrix", help="the run's matrix, for its settings when the results folder has no settings.json")
    p.set_defaults(command=cmd_repro)

    p = sub.add_parser("environments", help="list the matrix's named environments, or build them (--build)")
    _shared(p, "matrix")
    p.add_argument("--build", action="store_true", help="build (or find in the cache) every environment listed")
    p.add_argument("--names", action="store_true", help="only the names, one per line (for scripts)")
    p.set_defaults(command=cmd_environments)

    p = sub.add_parser("bisect", help="find the release of a package that changed cells' outcomes")
    _shared(p, "matrix")
    p.add_argument("--package", required=True, help="the package whose releases are searched, e.g. bitsandbytes")
    p.add_argument("--from", dest="old", required=True, metavar="OLD", help="the release with the old outcome")
    p.add_argument("--to", dest="new", required=True, metavar="NEW", help="the release with the new outcome")
    _shared(p, "keyword")
    p.add_argument("--out", default="reports/bisect", help="output directory (default: reports/bisect)")
    p.add_argument("-n", "--workers", default="0", help="pytest-xdist workers per probe (default 0: none)")
    p.add_argument("--env", metavar="NAME", help="probe over the pins of the matrix's environment NAME")
    p.set_defaults(command=cmd_bisect)

    p = sub.add_parser("schema", help="print the JSON Schema of matrix files (what editors complete keys from)")
    p.add_argument("--check", metavar="FILE", help="instead, exit 1 when FILE differs from the generated schema")
    p.set_defaults(command=cmd_schema)

    p = sub.add_parser("baseline", help="manage the accepted outcome of every cell")
    bsub = p.add_subparsers(required=True, metavar="ACTION")
    b = bsub.add_parser("accept", help="accept a run's results as the baseline of its environment")
    _shared(b, "results", "baselines")
    b.set_defaults(command=cmd_baseline_accept)
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    from harness.spec import load_matrix

    cells = matrix_cells(load_matrix(args.matrix), args.shard, None)
    if args.json:
        print(json.dumps([cell.to_dict() for cell in cells], indent=2))
    else:
        for cell in cells:
            print(cell.id)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.records import lock_out_dir
    from harness.spec import load_matrix

    workers = _workers(args.workers)
    matrix = load_matrix(args.matrix)
    if getattr(args, "env", None):
        matrix_cells(matrix, args.shard, None)  # a bad matrix or shard fails here, before any environment is built
        return _run_in_environment(matrix, args)
    out = Path(args.out)
    lock = lock_out_dir(out)  # a second run into the same --out is refused here, with a sentence
    try:
        return run_matrix(
            args.matrix,
            matrix,
            out,
            workers,
            keyword=args.keyword,
            resume=args.resume,
            shard=args.shard,
            baselines=Path(args.baselines),
            screenshot=args.screenshot,
            strict=args.strict,
            pytest_args=args.pytest_args,
        )
    finally:
        os.close(lock)


def _workers(value: str) -> str:
    """`-n`: a whole number of workers (0 runs in this process), `auto` or `logical`."""
    text = str(value).strip()
    if text in ("auto", "logical") or (text.isdigit() and int(text) >= 0):
        return str(int(text)) if text.isdigit() else text
    raise HarnessError(f"-n takes a number of workers (0 or more), `auto` or `logical`, not {value!r}.")


def cmd_report(args: argparse.Namespace) -> int:
    from harness.records import results_path

    results = results_path(args.results)
    out = Path(args.out) if args.out else results.parent
    tolerance = _tolerance(args.tolerance)
    return render_and_gate(results, out, Path(args.baselines), tolerance, args.screenshot, strict=args.strict)


def cmd_merge(args: argparse.Namespace) -> int:
    from harness.pipeline import read_lost
    from harness.plugin import LOST_NAME
    from harness.records import readable_records, results_path, write_records
    from harness.shards import missing_shards, read_shard_info

    sources = [results_path(source) for source in args.dirs]
    shards = [info for source in sources if (info := read_shard_info(source.parent))]
    lost = missing_shards(shards)  # a shard of the run that is not here: its cells are `lost`
    merged: dict[str, Record] = {}
    for source in sources:
        if not source.exists() and (info := read_shard_info(source.parent)):  # it stopped before any cell ended
            lost.update(dict.fromkeys(info.cells, f"shard {info.name} left no results file (see its job's log)."))
            continue
        merged.update((record.id, record) for record in readable_records(source))
    lost.update((cell, error) for source in sources for cell, error in read_lost(source.parent / LOST_NAME).items())
    out = Path(args.out)
    write_records(results_path(out), merged.values())
    print(f"merged {len(merged)} records from {len(args.dirs)} results files into {results_path(out)}")
    if shards and (absent := sorted(set(range(1, shards[0].count + 1)) - {info.index for info in shards})):
        print(f"missing shards: {', '.join(f'{i}/{shards[0].count}' for i in absent)} (their cells are lost)")
    tolerance = _tolerance(args.tolerance)
    return render_and_gate(
        results_path(out), out, Path(args.baselines), tolerance, False, lost=lost, strict=args.strict
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.records import readable_records, results_path
    from harness.report import render_compare_html
    from harness.report.releases import render_compare_md, run_name

    runs = []
    for source in args.results:
        records = readable_records(results_path(source))
        runs.append((run_name(records, _run_label(records, source)), records))
    out = Path(args.out)
    _write_text(out, render_compare_html(runs, title="Optimizer matrix: comparison"))
    print(f"wrote {out}")
    summary = out.with_suffix(".md")  # the same comparison for a CI job page: compare.html -> compare.md
    _write_text(summary, render_compare_md(runs))
    print(f"wrote {summary}")
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    from harness.repro import write_repro

    out = Path(args.output) if args.output else None
    command = f"python -m harness repro {args.id} --results {args.results}"
    script, _ = write_repro(
        Path(args.results), args.id, out=out, matrix=Path(args.matrix) if args.matrix else None, command=command
    )
    if out is None:
        sys.stdout.write(script)
    else:
        print(f"wrote {out}: run it with `python {out}` (torch and the optimizer's package are all it needs)")
    return 0


def _run_in_environment(matrix: Matrix, args: argparse.Namespace) -> int:
    """`run --env NAME`: build (or reuse) the environment, then run this same command inside it."""
    from harness.environments import ensure_environment, find_environment, without_env_option

    built = ensure_environment(find_environment(matrix, args.env))
    where = f"cached at {built.path}" if built.path else "the current interpreter"
    print(f"environment {args.env}: {built.environment.describe()} ({where})", flush=True)
    return built.run_harness(without_env_option(args.argv))


def cmd_environments(args: argparse.Namespace) -> int:
    from harness.environments import ensure_environment, environment_path, environments_of
    from harness.spec import load_matrix

    environments = environments_of(load_matrix(args.matrix))
    failed = 0
    for name, environment in environments.items():
        if args.names:
            print(name)
            continue
        if args.build:
            try:
                built = ensure_environment(environment)
            except HarnessError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
                continue
            where = str(built.path or built.python)
            print(f"{name}: {environment.describe()} -> {where} ({'reused' if built.reused else 'built'})")
        else:
            where = "current interpreter" if environment.is_current else str(environment_path(environment))
            print(f"{name}: {environment.describe()} ({where})")
    return 2 if failed else 0


def cmd_bisect(args: argparse.Namespace) -> int:
    from harness.bisect import bisect_command

    return bisect_command(args)


def cmd_baseline_accept(args: argparse.Namespace) -> int:
    from harness.baseline import accept
    from harness.records import readable_records, results_path

    results = results_path(args.results)
    records = readable_records(results)
    if not records:
        raise HarnessError(f"{results} holds no record to accept; run the matrix first, or pass the right path.")
    for path in accept(records, Path(args.baselines)):
        print(f"accepted {path}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.schema import schema_text, stale_schema

    if args.check:
        problem = stale_schema(Path(args.check))
        print(problem or f"{args.check} is up to date.", file=sys.stderr if problem else sys.stdout)
        return 1 if problem else 0
    sys.stdout.write(schema_text())
    return 0


def _tolerance(value: float | None) -> float:
    from harness.settings import BenchSettings

    return BenchSettings().speedup_tolerance if value is None else value


def _run_label(records: list[Record], source: str) -> str:
    torch_versions = sorted({r.env.torch for r in records if r.env.torch})
    return f"torch {', '.join(torch_versions) or '?'} ({source})"


def _write_text(path: Path, text: str) -> None:
    from harness.report.files import write_atomically

    write_atomically(path, text)  # a failed write leaves the previous report, and says so in one line
