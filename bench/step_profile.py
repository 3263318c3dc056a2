#!/usr/bin/env python
"""Where the time of one training step of the fine-tune goes (CPU): its phases, then its operators.

The step is the one the local pipeline's fine-tune runs (its recipe, pipelines/local_run.py: batch 16; bf16 autocast
on a bf16 CPU, as `ours_fast` in run_benchmark.py; ``--precision 32``: fp32, as `ours`): its model loaded by the
trainer (`trainer.modeling.load_model`) with the speed features the trainer installs for the run
(`trainer.speed.prepare`: allocator setting, trained-rows embedding, dropout masks; `trainer.packing.enable`: the
flat rows' attention), the fused AdamW with the clipping inside its step (`trainer.speed.clip_in_fused_adam`), on the
trainer's batches of the preprocess output: by default random batches, flat (`trainer.packing`), with the stock
per-batch mean loss; with ``group_by_length=true`` length-grouped ones (`trainer.sampling`) with the token-weighted
loss, and with ``padding_free=false`` padded by the stock collator (KEY=VALUE arguments: any FinetuneConfig value over
the local recipe). What the Trainer adds around a step (data loading, callbacks, the scheduler) is not in it.

1. phases: the forward pass (with the loss), the backward pass, the clipping norm and the optimizer step (with
   zero_grad), timed for each of ``--steps`` steps after ``--warmup`` steps (default: one epoch, so that oneDNN has
   generated its kernels for every batch shape, which it does at a shape's first matmul); medians and means in ms,
   and the share of the host's CPU that other processes took meanwhile.
2. operators: ``torch.profiler`` over ``--profile-steps`` further steps: the self time of every aten operator per
   step, grouped (the matmuls with their FLOP rate, copies and casts, the optimizer, the clipping norms, ...), the
   time in the dropout masks' draws (`trainer.speed.keep_mask`: numpy, not an aten operator), the rest of the
   step's wall time outside operators (Python, autograd bookkeeping), and the matmuls' rate against the square-matmul
   peak of the step's precision measured right after (`run_benchmark.matmul_peak`). The profiler's own cost makes
   these steps longer (1.2 to 1.3x on a 2-core Xeon): compare shares, and take the step time from the phases.

  python bench/step_profile.py --run-dir RUN_DIR [--precision 16|32] [--steps 60] [--warmup STEPS]
                               [--profile-steps 30] [--threads 2] [--output FILE] [KEY=VALUE ...]
RUN_DIR: a local pipeline run folder (its preprocess and model-import outputs are read).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

PHASES = ("forward", "backward", "clipping norm", "optimizer")
# aten operators by what they do in the step; operators not named here count as "other operators".
CATEGORIES = {
    "matmuls (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
    "copies and dtype casts (copy_)": ("aten::copy_",),
    "fused AdamW": ("aten::_fused_adamw_", "aten::_fused_adam_"),
    "clipping norms": ("aten::linalg_vector_norm", "aten::_foreach_norm"),
    "zero fills": ("aten::fill_", "aten::zero_"),
    "GELU and its backward": ("aten::gelu", "aten::gelu_backward"),
    "layer norm and its backward": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "softmax and its backward": ("aten::_softmax", "aten::_softmax_backward_data"),
    "element-wise mul / add": ("aten::mul", "aten::mul_", "aten::add", "aten::add_"),
    "flat rows: gathers and scatters (index_select, index_add, cat)": ("aten::index_select", "aten::index_add_",
                                                                       "aten::index_add", "aten::cat"),
}
MATMULS = CATEGORIES["matmuls (mm, addmm, bmm)"]


def load_run(run_dir: Path, **values):
    """`run_dir`'s preprocess output and its model-import's encoder with a new head, loaded as the fine-tune loads
    them under a FinetuneConfig of `values` (the head seeded by its `seed`; its output folders unused); returns
    (data, model, config)."""
    from transformers import set_seed

    from trainer.config import FinetuneConfig
    from trainer.data import load_preprocess_output
    from trainer.modeling import load_model

    pre, model_dir = run_dir / "preprocess" / "preprocess_output", run_dir / "model-import" / "model_selector_output"
    config = FinetuneConfig(preprocess_output=str(pre), model_selector_output=str(model_dir),
                            pytorch_model_folder=str(run_dir / "unused"), mlflow_model_folder=str(run_dir / "unused"),
                            **values)
    data = load_preprocess_output(pre)
    set_seed(config.seed)
    return data, load_model(model_dir, data.class_names, config), config


def build(run_dir: Path, precision: Optional[str], seed: int = 42, **overrides):
    """The fine-tune's model, optimizer, loss weighting and epoch-0 batches for `run_dir` under the local recipe
    (`overrides`: other FinetuneConfig values); see the docstring. Returns (model, params, optimizer, batches,
    tokens per batch, labelled tokens per step for the token-weighted loss (None: the stock per-batch mean), the
    undo of the speed features, config)."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForTokenClassification

    from trainer import packing, speed
    from trainer.sampling import length_grouped_batches

    from memory_profile import local_recipe

    data, model, config = load_run(run_dir, **{**local_recipe(), **({"precision": precision} if precision else {}),
                                               "seed": seed, **overrides})
    prepared = speed.prepare(model, config, data.train)
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    packed = packing.enable(model, data.train, tokenizer, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    collate = packed.collator or DataCollatorForTokenClassification(tokenizer)
    rows = [data.train[i] for i in range(len(data.train))]
    size = config.per_device_train_batch_size
    groups = config.length_group_batches if config.group_by_length else 1  # 1: random batches
    batches, tokens = [], []
    for batch in length_grouped_batches([len(r["input_ids"]) for r in rows], size, seed, 0, groups):
        if len(batch) == size:
            batches.append(collate([dict(rows[i]) for i in batch]))
            batches[-1].pop(packing.PADDING_KEY, None)
            tokens.append(sum(len(rows[i]["input_ids"]) for i in batch))
    labelled = sum(sum(1 for x in r["labels"] if x != -100) for r in rows) / len(rows) * size
    undo = lambda: (packed.restore(), prepared.restore())  # noqa: E731 - the order finetune.py undoes them in
    return (model, params, optimizer, batches, tokens, labelled if config.group_by_length else None, undo, config)


def make_step(model, params, optimizer, labelled: Optional[float], max_grad_norm: float, bf16: bool, timer=None):
    """One training step as the trainer runs it (`labelled`: the token-weighted loss's labelled tokens per step;
    None: the stock per-batch mean); `timer(phase)` (a context manager) wraps each phase."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from trainer.speed import clip_in_fused_adam

    timer = timer or (lambda phase: contextlib.nullcontext())

    def step(batch):
        with timer("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1)
            if labelled is None:
                loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
            else:
                loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum") / labelled
        with timer("backward"):
            loss.backward()
        with timer("clipping norm"):
            clip_in_fused_adam(optimizer, [p.grad for p in params], max_grad_norm)
        with timer("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _ms(seconds: list, digits: int) -> dict:
    return {"median": round(1000 * statistics.median(seconds), digits),
            "mean": round(1000 * statistics.mean(seconds), digits)}


class PhaseTimer:
    """`timer(phase)`: a context manager that appends the seconds spent inside it to ``seconds[phase]``."""

    def __init__(self):
        self.seconds = {phase: [] for phase in PHASES}

    def __call__(self, phase: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            started = time.perf_counter()
            yield
            self.seconds[phase].append(time.perf_counter() - started)
        return timed()


def group_operators(averages, steps: int, wall_s: float, masks_s: float) -> dict:
    """The profiler's per-operator averages grouped per CATEGORIES, in ms per step."""
    totals = {name: {"ms_per_step": 0.0, "calls_per_step": 0.0} for name in (*CATEGORIES, "other operators")}
    where = {op: name for name, ops in CATEGORIES.items() for op in ops}
    op_ms, matmul_flops, top = 0.0, 0, []
    for event in averages:
        ms, name = event.self_cpu_time_total / 1000 / steps, event.key
        if not name.startswith("aten::"):
            continue  # profiler ranges (Optimizer.step#..., autograd::engine::...): operators, no time of their own
        group = totals[where.get(name, "other operators")]
        group["ms_per_step"] += ms
        group["calls_per_step"] += event.count / steps
        op_ms += ms
        if name in MATMULS:
            matmul_flops += event.flops
        top.append((ms, name, event.count / steps))
    wall_ms = 1000 * wall_s / steps
    matmul_s = totals["matmuls (mm, addmm, bmm)"]["ms_per_step"] * steps / 1000
    for group in totals.values():
        group["share_of_wall"] = round(group["ms_per_step"] / wall_ms, 3)
        group["ms_per_step"] = round(group["ms_per_step"], 2)
        group["calls_per_step"] = round(group["calls_per_step"], 1)
    return {
        "wall_ms_per_step": round(wall_ms, 2),
        "operators_ms_per_step": round(op_ms, 2),
        "categories": totals,
        "outside_operators_ms_per_step": round(wall_ms - op_ms, 2),
        "dropout_mask_draws_ms_per_step": round(1000 * masks_s / steps, 2),
        "matmul_gflop_per_s": round(matmul_flops / matmul_s / 1e9, 1) if matmul_s else None,
        "top_operators": [{"op": name, "ms_per_step": round(ms, 2), "calls_per_step": round(calls, 1)}
                          for ms, name, calls in sorted(top, reverse=True)[:15]],
    }


def profile(run_dir: Path, precision: Optional[str] = None, steps: int = 60, warmup: Optional[int] = None,
            profile_steps: int = 30, threads: int = 2, overrides: Optional[dict] = None) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from run_benchmark import cpu_model, foreign_cpu_share, host_busy_seconds, matmul_peak
    from trainer import speed

    torch.set_num_threads(threads)
    model, params, optimizer, batches, tokens, labelled, undo, config = build(run_dir, precision, **(overrides or {}))
    timer = PhaseTimer()
    step = make_step(model, params, optimizer, labelled, config.max_grad_norm, config.precision == "16", timer)
    warmup = len(batches) if warmup is None else warmup
    needed = warmup + steps + profile_steps
    feed = [batches[i % len(batches)] for i in range(needed)]
    fed = [tokens[i % len(batches)] for i in range(needed)]
    for batch in feed[:warmup]:
        step(batch)
    timer.seconds = {phase: [] for phase in PHASES}
    walls, busy, cpu = [], host_busy_seconds(), time.process_time()
    for batch in feed[warmup:warmup + steps]:
        started = time.perf_counter()
        step(batch)
        walls.append(time.perf_counter() - started)
    foreign = foreign_cpu_share(host_busy_seconds() - busy if busy is not None else None,
                                time.process_time() - cpu, sum(walls))
    masks = {"s": 0.0}
    keep_mask = speed.keep_mask

    def timed_keep_mask(*args, **kwargs):
        started = time.perf_counter()
        try:
            return keep_mask(*args, **kwargs)
        finally:
            masks["s"] += time.perf_counter() - started

    try:
        with mock.patch.object(speed, "keep_mask", timed_keep_mask), \
                torch_profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            started = time.perf_counter()
            for batch in feed[warmup + steps:]:
                step(batch)
            wall = time.perf_counter() - started
    finally:
        undo()
    report = {
        "cpu": cpu_model(), "threads": threads, "torch": torch.__version__, "precision": config.precision,
        "batches": ("length groups of %d" % config.length_group_batches if config.group_by_length else "random")
        + (", flat" if "cu_seq_lens_q" in batches[0] else ", padded"),
        "loss": "token-weighted" if labelled else "per-batch mean",
        "steps": steps, "warmup_steps": warmup, "profile_steps": profile_steps,
        "tokens_per_step": round(statistics.mean(fed[warmup:warmup + steps]), 1),
        "positions_per_step": round(statistics.mean(b["input_ids"].numel() for b in feed[warmup:warmup + steps]), 1),
        "foreign_cpu_share": foreign,
        "step_ms": _ms(walls, 1),
        "phases_ms": {phase: _ms(seconds, 2) for phase, seconds in timer.seconds.items()},
        "profile": group_operators(prof.key_averages(), profile_steps, wall, masks["s"]),
    }
    # The square-matmul peak of the step's precision, measured now (as run_benchmark.py does before every arm).
    peak = matmul_peak("bfloat16" if config.precision == "16" else "float32", threads) / 1e9
    rate = report["profile"]["matmul_gflop_per_s"]
    report["profile"]["matmul_peak_gflop_per_s"] = round(peak, 1)
    report["profile"]["matmul_share_of_peak"] = round(rate / peak, 3) if rate and peak else None
    return report


def main(argv=None) -> int:
    from run_benchmark import emit_report, parse_key_values

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a local pipeline run folder")
    parser.add_argument("--precision", choices=("16", "32"), help="16: bf16 autocast; default: the local recipe's")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: one epoch's batches)")
    parser.add_argument("--profile-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="FinetuneConfig values over the local recipe (group_by_length=true padding_free=false: "
                        "the padded, length-grouped step of 2026-12-06)")
    args = parser.parse_args(argv)
    if min(args.steps, args.profile_steps) < 1 or (args.warmup or 0) < 0:
        parser.error("--steps and --profile-steps must be >= 1, --warmup >= 0")
    overrides = parse_key_values(parser, args.overrides)  # FinetuneConfig parses the values
    emit_report(profile(args.run_dir, args.precision, args.steps, args.warmup, args.profile_steps, args.threads,
                        overrides), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
