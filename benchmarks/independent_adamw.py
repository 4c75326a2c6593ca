"""Check the harness's fused speed-up against an independent measurement of the same thing.

Times torch AdamW fused against the for-loop on CPU with `torch.utils.benchmark.Timer` in alternating
short rounds, on parameter shapes built here (not taken from the harness), then runs
`harness.bench.run_bench` for AdamW with the same sizes and threads, prints both fused/forloop
speed-ups and their relative difference, and exits 1 when they differ by more than `--max-rel-diff`.

    python benchmarks/independent_adamw.py [--d-model 256 --n-layers 4 --threads 1 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Timer

IMPLEMENTATIONS = {"fused": {"fused": True, "foreach": False}, "forloop": {"fused": False, "foreach": False}}


def gpt_shapes(d_model: int, n_layers: int, vocab_size: int, seq_len: int) -> list[tuple[int, ...]]:
    """GPT-2 parameter shapes with a tied head: embeddings, per block two layernorms, qkv, proj, mlp."""
    d = d_model
    block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return [(vocab_size, d), (seq_len, d), *block * n_layers, (d,), (d,)]


def independent_step_ms(args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds per AdamW step for each implementation, by torch.utils.benchmark."""
    shapes = gpt_shapes(args.d_model, args.n_layers, args.vocab_size, args.seq_len)
    generator = torch.Generator().manual_seed(args.seed)
    params = [torch.randn(shape, generator=generator) * 0.02 for shape in shapes]
    grads = [torch.randn(shape, generator=generator) * 0.01 for shape in shapes]
    optimizers = {}
    for name, flags in IMPLEMENTATIONS.items():
        copies = [p.clone().requires_grad_(True) for p in params]
        for copy, grad in zip(copies, grads, strict=False):
            copy.grad = grad.clone()
        optimizers[name] = torch.optim.AdamW(copies, **flags)
        for _ in range(args.warmup):
            optimizers[name].step()
    timers = {
        name: Timer("optimizer.step()", globals={"optimizer": optimizer}, num_threads=args.threads)
        for name, optimizer in optimizers.items()
    }
    per_round: dict[str, list[float]] = {name: [] for name in timers}
    # Alternate the implementations in short rounds, so a busy spell on a shared machine hits both.
    for _ in range(args.rounds):
        for name, timer in timers.items():
            per_round[name].append(timer.timeit(args.steps_per_round).median * 1e3)
    return {name: statistics.median(values) for name, values in per_round.items()}


def harness_step_ms(args: argparse.Namespace) -> dict[str, float]:
    """The same measurement through the harness's `run_bench` for torch AdamW on cpu/float32."""
    from harness.bench import run_bench
    from harness.cells import Cell
    from harness.settings import BenchSettings, Settings

    @dataclass(frozen=True)
    class Resolved:
        name: str
        factory: Callable[..., torch.optim.Optimizer]
        cls: type

    bench = BenchSettings(
        d_model=args.d_model,
        n_layers=args.n_layers,
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    cell = Cell("torch.optim.AdamW", "cpu", "float32", "plain", {})
    result = run_bench(Resolved("torch.optim.AdamW", torch.optim.AdamW, torch.optim.AdamW), cell, Settings(bench=bench))
    if result is None or "fused/forloop" not in result.speedups():
        unavailable = result and {i.name: i.unavailable for i in result.implementations if i.unavailable}
        raise SystemExit(f"The harness measured no fused/forloop speed-up: {unavailable}")
    return {i.name: i.step_ms for i in result.implementations if i.step_ms is not None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both measurements")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per implementation in the harness")
    parser.add_argument("--rounds", type=int, default=20, help="alternating Timer rounds per implementation")
    parser.add_argument("--steps-per-round", type=int, default=5, help="steps each Timer round averages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rel-diff", type=float, default=0.2, help="exit 1 beyond this relative difference")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        independent = independent_step_ms(args)
    finally:
        torch.set_num_threads(previous)
    harness = harness_step_ms(args)
    ours = independent["forloop"] / independent["fused"]
    theirs = harness["forloop"] / harness["fused"]
    rel_diff = abs(theirs - ours) / ours
    print(f"shapes: d_model={args.d_model} n_layers={args.n_layers} vocab={args.vocab_size} seq={args.seq_len}")
    print(f"threads: {args.threads}")
    for label, step_ms in (("independent", independent), ("harness", harness)):
        times = "  ".join(f"{name} {step_ms[name]:.3f} ms" for name in IMPLEMENTATIONS)
        print(f"{label:<12} {times}")
    print(f"fused/forloop speed-up: independent {ours:.3f}  harness {theirs:.3f}  relative difference {rel_diff:.1%}")
    agree = rel_diff <= args.max_rel_diff
    print("agree" if agree else f"DISAGREE: more than {args.max_rel_diff:.0%} apart")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
