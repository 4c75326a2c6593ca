"""What one cell costs in each scenario on CPU, and what the default matrix's scenario cells cost in all.

Runs a few optimizers through every scenario in this process (`run_cell`, the same code a runner runs),
`--repeats` times each, and prints per scenario the median of the cells' `duration_s`, then the number
of the default matrix's CPU cells in that scenario and their estimated wall time at `-n WORKERS`
(cells x median / workers; an estimate from the medians, not a measured run).

    python benchmarks/scenario_cost.py
    python benchmarks/scenario_cost.py --optimizers torch.optim.AdamW --repeats 5 --scenarios groups resume
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.cells import Cell
from harness.execute import run_cell
from harness.expand import expand_matrix
from harness.spec import load_matrix
from harness.vocabulary import SCENARIOS

DEFAULT_OPTIMIZERS = {
    "torch.optim.AdamW": {"lr": 0.01},
    "torch.optim.SGD": {"lr": 0.1, "momentum": 0.9},
    "bitsandbytes.optim.AdamW8bit": {"lr": 0.01},
    "timm:lion": {"lr": 0.01},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="matrix.yaml")
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    matrix = load_matrix(args.matrix)
    cells = [cell for cell in expand_matrix(matrix) if cell.device == "cpu"]
    settings = matrix.settings.model_copy(update={"bench": matrix.settings.bench.model_copy(update={"enabled": False})})
    print(
        f"{'scenario':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'runs':>5} {'cpu cells':>10} {'est. wall s':>12}"
    )
    total = 0.0
    for scenario in args.scenarios:
        durations: list[float] = []
        statuses: set[str] = set()
        for optimizer in args.optimizers:
            kwargs = DEFAULT_OPTIMIZERS.get(optimizer, {"lr": 0.01})
            cell = Cell(optimizer, "cpu", "float32", "plain", kwargs, "safe", scenario=scenario)
            for _ in range(args.repeats):
                started = time.perf_counter()
                record = run_cell(cell, settings)
                durations.append(time.perf_counter() - started)
                statuses.add(record.status)
        median = statistics.median(durations)
        count = sum(1 for cell in cells if cell.scenario == scenario)
        estimate = count * median / args.workers
        total += estimate if scenario != "train" else 0.0
        print(
            f"{scenario:<10} {median:>9.2f} {min(durations):>7.2f} {max(durations):>7.2f} {len(durations):>5} "
            f"{count:>10} {estimate:>12.0f}   statuses: {', '.join(sorted(statuses))}"
        )
    print(f"estimated wall time of the default matrix's non-train CPU cells at -n {args.workers}: {total:.0f} s")


if __name__ == "__main__":
    main()
