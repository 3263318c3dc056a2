"""bench/matmul_shapes.py: the products it times are exactly a training step's matmuls of an encoder layer."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import matmul_shapes  # noqa: E402


def test_the_products_are_a_layers_six_n_t_flops():
    """Forward, input-gradient and weight-gradient products of the six linear maps: 6 x weights x tokens FLOPs
    (the rule the benchmark's MFU counts with), and each product's inner size is one of the operands' shared side."""
    tokens, hidden, intermediate = 496, 384, 1536
    shapes = matmul_shapes.layer_products(tokens, hidden, intermediate)
    weights = 4 * hidden * hidden + 2 * hidden * intermediate
    assert len(shapes) == 18
    assert sum(2 * m * k * n for m, k, n in shapes) == 6 * weights * tokens
    assert sorted({m for m, _, _ in shapes} | {k for _, k, _ in shapes}) == [hidden, tokens, intermediate]


def test_a_rate_is_flops_over_the_median_round(monkeypatch):
    """rate() divides the products' FLOPs by the median time of a round of all of them."""
    import torch

    clock = iter([0.0, 1.0, 10.0, 12.0, 20.0, 26.0])  # rounds of 1 s, 2 s, 6 s: median 2 s (mean 3 s)
    monkeypatch.setattr(matmul_shapes.time, "perf_counter", lambda: next(clock))
    shapes = [(4, 8, 2)]
    assert matmul_shapes.rate(shapes, torch.float32, repeats=3) == 2 * 4 * 8 * 2 / 2.0
