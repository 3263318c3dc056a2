#!/usr/bin/env python
"""Time one bf16 training step of the fine-tune's model in variants of the step, on the same batches (CPU).

Each variant is a copy of the same model (with the trainer's dropout masks, `trainer.speed.install_fast_dropout`)
and its own fused AdamW, gradient clipping at 1.0 included (inside the fused step, as the trainer clips:
`trainer.speed.clip_in_fused_adam`; `bf16_master` clips its fp32 masters with the stock pass). Blocks of
`--steps-per-block` batches (length-grouped rows of the preprocess output, 16 a batch) run through every variant in
turn, the order rotated per block, so the variants meet the same batches at about the same moment of the host; the
first block is warm-up.

  autocast     what `ours_fast` runs on a bf16 CPU: fp32 weights, torch.autocast(bfloat16)
  bf16_master  bf16 weights and activations (no autocast casts), fp32 master weights in the optimizer
  fused_qkv    autocast, with the query/key/value projections of each attention layer as one matmul
  stock_clip   autocast, clipped by torch's own pass (`clip_grad_norm_`: the gradients multiplied, then AdamW)
  torch_masks  autocast, with the dropout masks of before 2026-12-04 (the same numpy SFC64 words, compared by
               torch and the bool mask cast to the activation dtype, instead of compared by numpy and cast via uint8)
  byte_masks   autocast, with dropout masks drawn 8 bits an element instead of 32: an element is dropped when its
               byte is below the threshold's top byte, kept when above, and only on a tie (1 in 256) are 24 more bits
               drawn, so the keep probability is the trainer's, 1 - round(p * 2**32) / 2**32 (a candidate)
  free_masks   autocast, with masks that cost nothing to draw: slices of one mask drawn before the steps (the same
               keep probability, the same mask every step): the ceiling of any faster draw of the masks
  stock_dropout  autocast, with torch's own dropout (`bernoulli_` per call, SDPA's in attention) instead of the masks
  compiled     stock_dropout under `torch.compile(dynamic=True)` (torch's dropout: the masks' numpy draws would break
               the graph at every dropout); its first step compiles, so see its `first_step_s`

Usage (the local pipeline's outputs):
  python bench/step_variants.py --run-dir RUN_DIR [--blocks 16] [--threads 2] [--variants autocast,...]
                                [--output FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from run_benchmark import cpu_model, emit_report  # noqa: E402
from trainer.labels import load_class_names  # noqa: E402
from trainer import speed  # noqa: E402
from trainer.speed import clip_in_fused_adam, install_fast_dropout, tune_cpu_allocator  # noqa: E402

VARIANTS = ("autocast", "bf16_master", "fused_qkv", "stock_clip", "torch_masks", "byte_masks", "free_masks",
            "stock_dropout", "compiled")
FREE_MASK_ELEMENTS = 1 << 24  # more than a step's largest mask (a flat step's ~290,000 elements, a padded one's more)


def batches(train_jsonl: Path, size: int = 16) -> list[dict]:
    rows = sorted((json.loads(line) for line in train_jsonl.open(encoding="utf-8")), key=lambda r: len(r["input_ids"]))
    groups = [rows[i:i + size] for i in range(0, len(rows), size)]
    random.Random(0).shuffle(groups)
    out = []
    for group in groups:
        width = max(len(r["input_ids"]) for r in group)
        pad = [width - len(r["input_ids"]) for r in group]
        out.append({"input_ids": torch.tensor([r["input_ids"] + [0] * p for r, p in zip(group, pad)]),
                    "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * p for r, p in zip(group, pad)]),
                    "labels": torch.tensor([r["labels"] + [-100] * p for r, p in zip(group, pad)])})
    return out


class _FusedQKV:
    """The three projections of one attention layer computed as one matmul (weights concatenated per call, so the
    parameters stay the model's own); `query` computes all three, `key` and `value` hand out their slices."""

    def __init__(self, attention: nn.Module):
        self.linears = (attention.query, attention.key, attention.value)
        self.out = None
        attention.query, attention.key, attention.value = (_Slot(self, i) for i in range(3))


class _Slot(nn.Module):
    def __init__(self, fused: _FusedQKV, index: int):
        super().__init__()
        self.linear, self.index, self.fused = fused.linears[index], index, [fused]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused[0]
        if self.index == 0:
            weight = torch.cat([linear.weight for linear in fused.linears])
            bias = torch.cat([linear.bias for linear in fused.linears])
            fused.out = F.linear(x, weight, bias).chunk(3, dim=-1)
        return fused.out[self.index]


def _torch_masks_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`trainer.speed.fast_dropout` as it was before 2026-12-04 (the same masks, made with torch's comparison and
    bool cast)."""
    if not training or p == 0.0:
        return x
    seed = int(torch.randint(0, 1 << 62, (1,)))
    words = np.random.SFC64(seed).random_raw((x.numel() + 1) // 2)
    uniform = torch.from_numpy(words.view(np.int32)[:x.numel()])
    keep = (uniform >= -(1 << 31) + round(p * (1 << 32))).view(x.shape)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def byte_keep_mask(shape, p: float) -> torch.Tensor:
    """`trainer.speed.keep_mask`'s distribution (keep with probability 1 - round(p * 2**32) / 2**32) from 8 random
    bits an element, and 24 more only where the 8 bits tie with the threshold's top byte."""
    numel = math.prod(shape)
    threshold = round(p * (1 << 32))  # drop iff a uniform 32-bit u < threshold; u = top byte * 2**24 + low 24 bits
    top, low = threshold >> 24, threshold & 0xFFFFFF
    generator = np.random.SFC64(int(torch.randint(0, 1 << 62, (1,))))
    byte = generator.random_raw((numel + 7) // 8).view(np.uint8)[:numel]
    keep = byte > top
    ties = np.flatnonzero(byte == top)
    if ties.size:
        keep[ties] = (generator.random_raw(ties.size) & 0xFFFFFF) >= low
    return torch.from_numpy(keep).view(shape)


def free_keep_mask_source():
    """A `keep_mask` at no cost per call: the first elements of one mask per dropout probability, drawn by the
    trainer's `keep_mask` at its first use (and again only if a later call needs more elements)."""
    pools, draw = {}, speed.keep_mask  # the trainer's, taken before a step swaps this one in for it

    def free_keep_mask(shape, p: float) -> torch.Tensor:
        numel = math.prod(shape)
        if p not in pools or pools[p].numel() < numel:
            pools[p] = draw((max(numel, FREE_MASK_ELEMENTS),), p)
        return pools[p][:numel].view(shape)

    return free_keep_mask


def make_step(base: nn.Module, variant: str):
    model = copy.deepcopy(base)
    model.train()
    if variant not in ("stock_dropout", "compiled"):
        install_fast_dropout(model)
    if variant == "fused_qkv":
        for module in model.modules():
            if all(hasattr(module, name) for name in ("query", "key", "value")):
                _FusedQKV(module)
    params = list(model.parameters())
    if variant == "bf16_master":
        master = [p.detach().float().clone() for p in params]
        for m in master:
            m.grad = torch.zeros_like(m)
        model.to(torch.bfloat16)
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(master, lr=5e-5, fused=True)

        def step(batch):
            model(**batch).loss.backward()
            for p, m in zip(params, master):
                m.grad.copy_(p.grad)
                p.grad = None
            nn.utils.clip_grad_norm_(master, 1.0)
            optimizer.step()
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        step.model = model
        return step

    optimizer = torch.optim.AdamW(params, lr=5e-5, fused=True)
    free_keep_mask = free_keep_mask_source()  # drawn at a free_masks step's first dropout only
    forward = torch.compile(model, dynamic=True) if variant == "compiled" else model

    def step(batch):
        # The trainer's dropout modules call trainer.speed.fast_dropout, which draws with trainer.speed.keep_mask:
        # the mask variants run the block with one of them swapped.
        swap = {"torch_masks": ("fast_dropout", _torch_masks_dropout),
                "byte_masks": ("keep_mask", byte_keep_mask),
                "free_masks": ("keep_mask", free_keep_mask)}.get(variant)
        with mock.patch.object(speed, *swap) if swap else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = forward(**batch).loss
        loss.backward()
        if variant == "stock_clip":
            nn.utils.clip_grad_norm_(params, 1.0)
        else:
            clip_in_fused_adam(optimizer, [p.grad for p in params], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step.model = model
    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a local pipeline run folder (its preprocess "
                        "and model-import outputs are read)")
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--steps-per-block", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; autocast is always run")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    variants = ["autocast"] + [v for v in args.variants.split(",") if v and v != "autocast"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    from transformers import AutoModelForTokenClassification

    torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    torch.manual_seed(0)
    data = batches(args.run_dir / "preprocess" / "preprocess_output" / "train.jsonl")
    classes = load_class_names(args.run_dir / "preprocess" / "preprocess_output", {})
    base = AutoModelForTokenClassification.from_pretrained(args.run_dir / "model-import" / "model_selector_output",
                                                           num_labels=len(classes), attn_implementation="sdpa")
    steps = {variant: make_step(base, variant) for variant in variants}
    times = {variant: [] for variant in variants}
    for block in range(args.blocks):
        chunk = [data[(block * args.steps_per_block + i) % len(data)] for i in range(args.steps_per_block)]
        for variant in variants[block % len(variants):] + variants[:block % len(variants)]:
            seconds = []
            for batch in chunk:
                started = time.perf_counter()
                steps[variant](batch)
                seconds.append(time.perf_counter() - started)
            times[variant].append(seconds)
    blocks = {v: t[1:] for v, t in times.items()}  # block 0 is warm-up
    result = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
              "blocks": len(blocks["autocast"]), "steps_per_block": args.steps_per_block, "variants": {}}
    for variant, timed in blocks.items():
        ratios = sorted(sum(v) / sum(a) for v, a in zip(timed, blocks["autocast"]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        result["variants"][variant] = {
            "first_step_s": round(times[variant][0][0], 2),
            "median_step_ms": round(1000 * statistics.median(s for b in timed for s in b), 1),
            "time_vs_autocast": {"median": round(q[1], 3), "q1": round(q[0], 3), "q3": round(q[2], 3)}}
    emit_report(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
