"""bench/eval_casts.py: its two variants are the trainer's evaluation loop with the weights cast once per loop and
the stock per-batch casts, both under bf16 autocast, with identical figures."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import WeightCasts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import eval_casts  # noqa: E402


def test_variants_cast_once_per_loop_and_once_per_batch_under_bf16(tiny_run_dir, monkeypatch):
    import trainer.modeling

    casts, load_model = WeightCasts(), trainer.modeling.load_model

    def watched(*args, **kwargs):
        model = load_model(*args, **kwargs)
        casts.watch(m.weight for m in model.modules() if isinstance(m, torch.nn.Linear))
        return model

    monkeypatch.setattr(trainer.modeling, "load_model", watched)
    with casts.mode:
        report = eval_casts.measure(tiny_run_dir, [2], repeats=1, threads=1)
    (row,) = report["batch_sizes"]
    assert row["batch_size"] == 2 and row["batches"] > 3
    assert len(row["seconds_kept"]) == len(row["seconds_per_batch"]) == 1
    assert row["figures_identical"] and set(row["figures"]) == set(eval_casts.FIGURES)
    # the untimed loop and the "kept" loop: one cast each; the "per_batch" loop: one per batch
    assert set(casts.counts.values()) == {row["batches"] + 2}
