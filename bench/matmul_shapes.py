#!/usr/bin/env python
"""How fast this CPU multiplies matrices of a training step's shapes, against the square-matmul peak (the
benchmark's MFU denominator, `run_benchmark.matmul_peak`).

One encoder layer's six linear maps (query, key, value, attention output: hidden x hidden; intermediate and output:
hidden x intermediate) at T tokens a batch, each as its three products of a training step (forward x·Wᵀ, input
gradient g·W, weight gradient gᵀ·x), timed with `torch.mm` on tensors of the training dtype. The rate of these
products is the ceiling of a step's MFU at that batch: the rest of the step (element-wise work, the optimizer,
casts, Python) only lowers it. The shapes default to MiniLM-L6 (hidden 384, intermediate 1536); T = 16 rows x ~31
sub-tokens is the benchmark's batch.

Usage:
  python bench/matmul_shapes.py [--threads 2] [--tokens 256,512,1024,2048,4096] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from run_benchmark import cpu_model, matmul_peak  # noqa: E402


def layer_products(tokens: int, hidden: int, intermediate: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every product of one layer's linear maps in a training step (forward, input and weight
    gradients)."""
    shapes = []
    for fan_in, fan_out in [(hidden, hidden)] * 4 + [(hidden, intermediate), (intermediate, hidden)]:
        shapes += [(tokens, fan_in, fan_out), (tokens, fan_out, fan_in), (fan_out, tokens, fan_in)]
    return shapes


def rate(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of running every product of `shapes` once, median over `repeats` rounds."""
    operands = [(torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in operands:  # warm-up: oneDNN picks and caches its kernels per shape
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for a, b in operands:
            torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return flops / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", default="256,512,1024,2048,4096", help="tokens a batch (rows x length)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"cpu_model": cpu_model(), "threads": args.threads, "torch": torch.__version__, "hidden": args.hidden,
              "intermediate": args.intermediate, "dtypes": {}}
    for name in ("bfloat16", "float32"):
        peak = matmul_peak(name, args.threads)
        rows = {}
        for tokens in (int(t) for t in args.tokens.split(",")):
            flops = rate(layer_products(tokens, args.hidden, args.intermediate), getattr(torch, name), args.repeats)
            rows[tokens] = {"gflops": round(flops / 1e9, 1), "of_peak": round(flops / peak, 3)}
            print(f"{name:9s} T={tokens:5d}: {flops / 1e9:7.1f} GFLOP/s = {100 * flops / peak:5.1f} % of the square "
                  f"peak ({peak / 1e9:.0f} GFLOP/s)", flush=True)
        result["dtypes"][name] = {"square_peak_gflops": round(peak / 1e9, 1), "by_tokens": rows}
    print(f"CPU: {result['cpu_model']}, {args.threads} threads, torch {torch.__version__}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
