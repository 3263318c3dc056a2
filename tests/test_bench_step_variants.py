"""bench/step_variants.py: the variants it times compute the step they are named after."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_token_classifier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import step_variants  # noqa: E402


def _tiny_bert(dropout: float):
    return tiny_token_classifier(num_labels=3, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                                 attn_implementation="sdpa")


BATCH = {"input_ids": torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
         "labels": torch.tensor([[-100, 1, 2, 0, -100], [-100, 1, -100, -100, -100]])}


def test_clipping_inside_adamw_and_torchs_clipping_pass_make_the_same_step(monkeypatch):
    """Without dropout, `autocast` (clipping inside the fused AdamW step, as the trainer clips) and `stock_clip`
    (torch's clip_grad_norm_ pass) leave the same weights after two steps; both moved them."""
    passes = {"autocast": 0, "stock_clip": 0}
    clip = torch.nn.utils.clip_grad_norm_
    base = _tiny_bert(0.0)
    steps = {name: step_variants.make_step(base, name) for name in passes}
    for _ in range(2):
        for name, step in steps.items():
            monkeypatch.setattr(step_variants.nn.utils, "clip_grad_norm_",
                                lambda *a, name=name, **k: passes.__setitem__(name, passes[name] + 1) or clip(*a, **k))
            step(dict(BATCH))
    assert passes == {"autocast": 0, "stock_clip": 2}
    weights = {name: step.model.state_dict() for name, step in steps.items()}
    start = base.state_dict()
    for key, value in weights["stock_clip"].items():
        assert torch.allclose(weights["autocast"][key], value, rtol=1e-4, atol=1e-6), key
    assert not torch.equal(weights["autocast"]["classifier.weight"], start["classifier.weight"])


def test_the_earlier_masks_are_the_trainers_masks_made_by_torch():
    """`torch_masks` times the same dropout as the trainer's (same words, same threshold), only the comparison and
    the cast are torch's: under one seed both give the same output, in bf16 and fp32."""
    from trainer import speed

    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(7, 33, 65).to(dtype)
        torch.manual_seed(3)
        ours = speed.fast_dropout(x, 0.2)
        torch.manual_seed(3)
        earlier = step_variants._torch_masks_dropout(x, 0.2)
        assert earlier.dtype == dtype and torch.equal(ours, earlier)
        assert abs(float((ours != 0).float().mean()) - 0.8) < 0.02
    assert step_variants._torch_masks_dropout(x, 0.2, training=False) is x


@pytest.mark.parametrize("variant, swapped, spied", [("torch_masks", "fast_dropout", "_torch_masks_dropout"),
                                                     ("byte_masks", "keep_mask", "byte_keep_mask")])
def test_mask_variants_run_their_masks_and_put_the_trainers_back(monkeypatch, variant, swapped, spied):
    from trainer import speed

    calls = []
    trainers = getattr(speed, swapped)
    original = getattr(step_variants, spied)
    monkeypatch.setattr(step_variants, spied, lambda x, p, *a: calls.append(p) or original(x, p, *a))
    step_variants.make_step(_tiny_bert(0.1), variant)(dict(BATCH))
    # per layer: attention probabilities, attention output, FFN output; plus the embeddings' and the classifier's
    assert len(calls) == 2 * 3 + 2
    assert getattr(speed, swapped) is trainers


def test_free_masks_draw_one_mask_per_probability_and_serve_every_dropout_from_it(monkeypatch):
    """`free_masks` draws with the trainer's `keep_mask` once (per dropout probability) and serves every later
    dropout of every step the first elements of that mask, so the steps pay nothing for their masks; the trainer's
    `keep_mask` is back after each step."""
    from trainer import speed

    draws, served = [], []
    original = speed.keep_mask
    trainers = lambda shape, p: draws.append((tuple(shape), p)) or original(shape, p)  # noqa: E731
    monkeypatch.setattr(speed, "keep_mask", trainers)
    source = step_variants.free_keep_mask_source

    def spied_source():
        free = source()
        return lambda shape, p: served.append(tuple(shape)) or free(shape, p)

    monkeypatch.setattr(step_variants, "free_keep_mask_source", spied_source)
    step = step_variants.make_step(_tiny_bert(0.1), "free_masks")
    step(dict(BATCH))
    step(dict(BATCH))
    assert len(served) == 2 * (2 * 3 + 2)  # two steps of the dropouts counted above
    assert draws == [((step_variants.FREE_MASK_ELEMENTS,), 0.1)]
    assert speed.keep_mask is trainers
    free = source()
    first, again = free((4, 8), 0.1), free((4, 8), 0.1)
    assert torch.equal(first, again) and first.shape == (4, 8)
    assert draws[-1] == ((step_variants.FREE_MASK_ELEMENTS,), 0.1) and len(draws) == 2
    free((2, 3), 0.5)
    assert draws[-1] == ((step_variants.FREE_MASK_ELEMENTS,), 0.5)


def test_stock_dropout_keeps_torchs_dropout_and_compiled_compiles_that_step(monkeypatch):
    """`stock_dropout` and `compiled` leave torch's dropout in place (no trainer masks); `compiled` runs its forward
    through torch.compile(dynamic=True), the others do not."""
    from trainer.speed import FastDropout

    compiled = []

    def fake_compile(model, **kwargs):
        compiled.append(kwargs)
        return lambda **batch: (compiled.append("forward"), model(**batch))[1]

    monkeypatch.setattr(step_variants.torch, "compile", fake_compile)
    for name in ("autocast", "stock_dropout", "compiled"):
        step = step_variants.make_step(_tiny_bert(0.1), name)
        step(dict(BATCH))
        masks = [m for m in step.model.modules() if isinstance(m, FastDropout)]
        assert bool(masks) == (name == "autocast"), name
    assert compiled == [{"dynamic": True}, "forward"]


def test_byte_masks_keep_with_the_trainers_probability_ties_included():
    """8 random bits an element plus 24 more on a tie give the trainer's keep probability, 1 - round(p * 2**32) /
    2**32: at p = 1 / 512 every drop comes from a tie (the threshold's top byte is 0), half of the ties dropping."""
    import math

    n = 4_000_000
    for p in (0.1, 0.37, 1 / 512):
        torch.manual_seed(11)
        keep = step_variants.byte_keep_mask((n // 1000, 1000), p)
        assert keep.shape == (n // 1000, 1000) and keep.dtype == torch.bool
        drop = 1 - int(keep.sum()) / n
        expected = round(p * 2**32) / 2**32
        assert abs(drop - expected) < 5 * math.sqrt(expected * (1 - expected) / n), (p, drop)
    torch.manual_seed(11)
    assert torch.equal(step_variants.byte_keep_mask((n // 1000, 1000), 1 / 512), keep)  # torch's seed governs it
