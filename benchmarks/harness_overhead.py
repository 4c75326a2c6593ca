"""The harness's own cost: wall time of `harness run` against the sum of the cells' `duration_s`.

For each worker count it runs the same cells through the real CLI, then prints the wall time, the
sum of the cells' own time, the overhead (wall x workers over that sum, minus one), cells per second,
and the speed-up of the largest worker count over one worker.

    python benchmarks/harness_overhead.py                 # the default matrix's CPU cells, -n 1 and -n 2
    python benchmarks/harness_overhead.py -k "torch.optim and cpu" --workers 1 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.records import read_records, results_path


def measure(matrix: str, keyword: str, workers: int, out: Path) -> tuple[float, float, int, dict[str, int]]:
    command = [
        sys.executable,
        "-m",
        "harness",
        "run",
        matrix,
        "-n",
        str(workers),
        "--out",
        str(out),
        "-k",
        keyword,
        "--baselines",
        str(out),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"`{' '.join(command)}` failed with exit status {done.returncode}:\n{done.stderr}")
    records = read_records(results_path(out))
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record.status] = statuses.get(record.status, 0) + 1
    # A benchmark holds the machine alone (harness.exclusive): meanwhile the other workers wait.
    bench_s = sum(r.duration_s - (r.construct_s or 0) - (r.steps_s or 0) for r in records if r.bench)
    return wall, sum(r.duration_s for r in records), len(records), statuses, bench_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="matrix.yaml")
    parser.add_argument(
        "-k", dest="keyword", default="cpu", help="pytest -k expression choosing the cells (default: cpu)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            wall, cells_s, count, statuses, bench_s = measure(
                args.matrix, args.keyword, workers, Path(tmp) / f"n{workers}"
            )
            walls[workers] = wall
            overhead = wall * workers / cells_s - 1 if cells_s else float("nan")
            waiting = (workers - 1) * bench_s
            harness_only = (wall * workers - waiting) / cells_s - 1 if cells_s else float("nan")
            print(
                f"-n {workers}: {count} cells in {wall:.1f} s wall; cells' own time {cells_s:.1f} s; "
                f"overhead {overhead:+.1%} (wall x workers / cells' time - 1); {count / wall:.1f} cells/s; "
                f"statuses {dict(sorted(statuses.items()))}"
            )
            print(
                f"    benchmarks held the machine alone for {bench_s:.1f} s, idling {workers - 1} other worker(s) "
                f"for {waiting:.1f} s; overhead without that wait {harness_only:+.1%}"
            )
    if len(walls) > 1:
        low, high = min(walls), max(walls)
        print(f"speed-up of -n {high} over -n {low}: {walls[low] / walls[high]:.2f}x")


if __name__ == "__main__":
    main()
