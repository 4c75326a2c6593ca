"""Print the benchmark figures of a results file: step times, speed-ups, bandwidth, parity, state memory.

python benchmarks/bench_figures.py reports/results.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.records import read_records, results_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="reports")
    args = parser.parse_args()
    records = read_records(results_path(args.results))
    benched = sorted((r for r in records if r.bench is not None), key=lambda r: (r.device, r.dtype, r.optimizer))
    if not benched:
        print("no record holds benchmark figures")
    for r in benched:
        b = r.bench
        if b is None:
            continue
        steps = ", ".join(f"{i.name} {i.step_ms:.3f} ms" for i in b.implementations if i.step_ms is not None)
        speedup = ", ".join(f"{k} {v:.2f}x" for k, v in b.speedups().items())
        fractions = {i.name: i.timing.bandwidth_fraction for i in b.implementations if i.timing}
        bandwidth = ", ".join(f"{k} {v:.0%}" for k, v in fractions.items() if v is not None)
        parity_text = ", ".join(
            f"{i.name} max_abs {i.parity.max_abs:.2e} max_rel {i.parity.max_rel:.2e} "
            f"{'ok' if i.parity.ok else 'BREACH'}"
            for i in b.implementations
            if i.parity is not None and i.parity.max_abs is not None and i.parity.max_rel is not None
        )
        unavailable = {i.name: i.unavailable for i in b.implementations if i.unavailable is not None}
        print(f"{r.optimizer} {r.device} ({b.device_name}) {r.dtype} threads={b.threads}")
        print(f"    step: {steps}")
        print(
            f"    speed-up: {speedup or '-'}; bandwidth fraction: {bandwidth or '-'} "
            f"of {b.device_bandwidth_gbs or 0:.0f} GB/s"
        )
        print(f"    parity vs forloop: {parity_text or '-'}")
        if unavailable:
            print(f"    unavailable: {unavailable}")
    state = [
        (r.optimizer, r.device, r.state_bytes_per_param)
        for r in records
        if r.state_bytes_per_param is not None
        and r.variant == "plain"
        and r.builder == "direct"
        and r.dtype == "float32"
    ]
    if state:
        print("optimizer state, bytes per parameter (plain, direct, float32):")
        for name, device, per_param in sorted(state, key=lambda s: (s[1], s[0])):
            print(f"    {device:5s} {name:45s} {per_param:6.2f}")


if __name__ == "__main__":
    main()
