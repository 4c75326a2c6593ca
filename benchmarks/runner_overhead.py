"""What the runner costs per cell: wall time of `CellRunner.run` less the time the cell spent in `run_cell`.

    PYTHONPATH=. python benchmarks/runner_overhead.py [CELLS]

Runs CELLS (default 40) tiny AdamW cells one after another through one runner, after one warm-up cell
(the runner's start), and prints the median and mean overhead per cell in milliseconds, and how many
cells were found to change their process (each makes the next cell pay for a fork). The same script
runs against any version of the harness whose `CellRunner` has `run(cell, settings)`, so a before/after
comparison is two invocations with different PYTHONPATHs.
"""

from __future__ import annotations

import statistics
import sys
import time

from harness.cells import Cell
from harness.isolate import CellRunner
from harness.settings import Settings

TINY = Settings(
    train={"steps": 4, "timeout_s": 120},
    model={"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 8},
    bench={"enabled": False},
)


def main(count: int) -> None:
    cell = Cell("torch.optim.AdamW", "cpu", "float32", "plain", {"lr": 0.02}, "direct")
    overheads, walls, changed = [], [], 0
    with CellRunner() as runner:
        runner.run(cell, TINY)  # starts the runner: not a per-cell cost
        for _ in range(count):
            started = time.perf_counter()
            record = runner.run(cell, TINY)
            wall = time.perf_counter() - started
            walls.append(wall)
            overheads.append(wall - record.duration_s)
            changed += bool(getattr(record, "process_changes", None))  # a field older harnesses lack
    ms = [1000 * o for o in overheads]
    print(
        f"{count} cells: wall per cell median {1000 * statistics.median(walls):.1f} ms; "
        f"runner overhead per cell median {statistics.median(ms):.1f} ms, mean {statistics.fmean(ms):.1f} ms, "
        f"min {min(ms):.1f} ms; {changed} changed the process"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
