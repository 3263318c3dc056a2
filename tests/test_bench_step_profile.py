"""bench/step_profile.py: it profiles the trainer's own step, names every phase and accounts for the operators."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import step_profile  # noqa: E402


def test_the_profiled_step_is_the_trainers_default_step(tiny_run_dir):
    """The model carries the speed features the trainer installs (dropout masks, the flat rows' attention), the
    batches are the default's random flat batches of the local recipe's 16 rows, and the step's loss is the stock
    per-batch mean the model computes itself, under the same random draws."""
    from trainer.packing import PACKED_PREFIX
    from trainer.speed import FastDropout

    model, params, optimizer, batches, tokens, labelled, undo, config = step_profile.build(tiny_run_dir, "32")
    try:
        assert config.per_device_train_batch_size == 16 and config.precision == "32" and labelled is None
        assert any(isinstance(m, FastDropout) for m in model.modules())
        assert model.config._attn_implementation.startswith(PACKED_PREFIX)
        assert batches and all(b["input_ids"].shape[0] == 1 and len(b["cu_seq_lens_q"]) >= 17 for b in batches)
        assert all(int(b["cu_seq_lens_q"][16]) == n for b, n in zip(batches, tokens))  # 16 rows, then the filling
        batch = dict(batches[0])
        torch.manual_seed(5)
        expected = model(**batch).loss
        step = step_profile.make_step(model, params, optimizer, labelled, config.max_grad_norm, bf16=False)
        before = [p.detach().clone() for p in params]
        torch.manual_seed(5)
        loss = step(batches[0])
        assert torch.allclose(loss, expected, rtol=1e-6)
        assert any(not torch.equal(a, p) for a, p in zip(before, params))  # the optimizer stepped
    finally:
        undo()
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert not model.config._attn_implementation.startswith(PACKED_PREFIX)


def test_the_grouped_padded_step_is_the_trainers_step_with_those_options(tiny_run_dir):
    """group_by_length=true, padding_free=false: the trainer's length-grouped batches, padded, and its
    token-weighted loss (`SpeedTrainerMixin.compute_loss`) under the same random draws."""
    from trainer.speed import SpeedTrainerMixin

    model, params, optimizer, batches, tokens, labelled, undo, config = step_profile.build(
        tiny_run_dir, "32", group_by_length=True, padding_free=False)
    try:
        assert labelled is not None and all(b["input_ids"].shape[0] == 16 for b in batches)
        widths = [b["input_ids"].shape[1] for b in batches]
        assert all(b["attention_mask"].sum(1).max() == w for b, w in zip(batches, widths))  # padded to the longest
        assert [int(b["attention_mask"].sum()) for b in batches] == tokens
        trainer = SimpleNamespace(label_tokens_per_step=labelled, compute_loss_func=None, label_smoother=None)
        torch.manual_seed(5)
        expected = SpeedTrainerMixin.compute_loss(trainer, model, dict(batches[0]))
        step = step_profile.make_step(model, params, optimizer, labelled, config.max_grad_norm, bf16=False)
        torch.manual_seed(5)
        assert torch.allclose(step(batches[0]), expected, rtol=1e-6)
    finally:
        undo()


def test_profile_times_every_phase_and_accounts_for_the_operators(tiny_run_dir):
    from trainer import speed

    keep_mask = speed.keep_mask
    report = step_profile.profile(tiny_run_dir, precision="32", steps=3, warmup=1, profile_steps=2, threads=1)
    assert speed.keep_mask is keep_mask  # the draws' timer is taken off again
    assert list(report["phases_ms"]) == list(step_profile.PHASES)
    assert all(phase["median"] > 0 for phase in report["phases_ms"].values())
    profile = report["profile"]
    categories = profile["categories"]
    assert list(categories) == [*step_profile.CATEGORIES, "other operators"]
    assert categories["matmuls (mm, addmm, bmm)"]["calls_per_step"] > 0
    assert categories["fused AdamW"]["calls_per_step"] == 1
    assert sum(c["ms_per_step"] for c in categories.values()) == pytest.approx(profile["operators_ms_per_step"],
                                                                             abs=0.1)
    assert profile["operators_ms_per_step"] + profile["outside_operators_ms_per_step"] == pytest.approx(
        profile["wall_ms_per_step"], abs=0.02)
    assert profile["dropout_mask_draws_ms_per_step"] > 0  # the tiny model has dropout: its masks were drawn
    assert profile["matmul_gflop_per_s"] > 0 and 0 < profile["matmul_share_of_peak"]
    assert report["tokens_per_step"] > 0 and report["precision"] == "32"
    assert report["batches"] == "random, flat" and report["loss"] == "per-batch mean"
    assert categories["flat rows: gathers and scatters (index_select, index_add, cat)"]["calls_per_step"] > 0
