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
    benched = sorted((r for r in records if r.bench), key=lambda r: (r.device, r.dtype, r.optimizer))
    if not benched:
        print("no record holds benchmark figures")
    for r in benched:
        b = r.bench or {}
        steps = ", ".join(f"{k} {v:.3f} ms" for k, v in (b.get("step_ms") or {}).items())
        speedup = ", ".join(f"{k} {v:.2f}x" for k, v in (b.get("speedup") or {}).items())
        bandwidth = ", ".join(f"{k} {v:.0%}" for k, v in (b.get("bandwidth_fraction") or {}).items() if v is not None)
        parity = b.get("parity") or {}
        parity_text = ", ".join(
            f"{k} max_abs {v['max_abs']:.2e} max_rel {v['max_rel']:.2e} {'ok' if v.get('ok') else 'BREACH'}"
            for k, v in parity.items()
            if isinstance(v, dict) and "max_abs" in v
        )
        print(f"{r.optimizer} {r.device} ({b.get('device_name')}) {r.dtype} threads={b.get('threads')}")
        print(f"    step: {steps}")
        print(
            f"    speed-up: {speedup or '-'}; bandwidth fraction: {bandwidth or '-'} "
            f"of {b.get('device_bandwidth_gbs', 0):.0f} GB/s"
        )
        print(f"    parity vs forloop: {parity_text or '-'}")
        if b.get("unavailable"):
            print(f"    unavailable: {b['unavailable']}")
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
