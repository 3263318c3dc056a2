#!/usr/bin/env python
"""Training tokens/s of one model in several batch layouts, step by step on the same host moments (CPU).

A layout is a sampler and a collator: random batches (``random``, the stock recipe's) or length-grouped ones
(``groupN``: `trainer.sampling` with groups of N batches), each padded (the stock collator) or flat
(`trainer.packing`: padding-free, attention per row). One model, with the trainer's CPU speed features
(`trainer.speed.prepare`) and the flat layout's attention installed (it runs padded batches unchanged), and one fused
AdamW train through every layout in turn: step i of every layout runs back to back, the order rotated per step, so
the layouts meet the host's slow and fast moments alike (2-core hosts here swing by 10 % within minutes). The first
`--warmup` steps are not counted. tokens/s counts real tokens over the seconds of forward, backward and optimizer
step (collation not included). With one layout per process (``--layouts random:flat``), ``peak_rss_mb`` is that
layout's resident high-water mark, and ``--align`` sets the flat row's filling (0: none).

Usage (RUN_DIR: a local pipeline run folder, whose preprocess and model-import outputs are read):
  python bench/batch_layouts.py --run-dir RUN_DIR [--layouts random:padded,random:flat,group4:padded,...]
                                [--steps 60] [--precision 16] [--threads 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from run_benchmark import cpu_model, emit_report  # noqa: E402

LAYOUTS = "random:padded,random:flat,group4:padded,group4:flat,group32:padded,group32:flat"


def _peak_rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--layouts", default=LAYOUTS, help=f"comma-separated SAMPLER:COLLATOR (default {LAYOUTS})")
    parser.add_argument("--steps", type=int, default=60, help="counted steps per layout")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=("16", "32"), default="16", help="16: bf16 autocast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--align", type=int, default=None, help="fill flat rows to a multiple of this many tokens "
                        "(default: trainer.packing's; 0: no filling)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    layouts = [tuple(x.split(":")) for x in args.layouts.split(",") if x]
    for sampler, collator in layouts:
        if collator not in ("padded", "flat") or not (sampler == "random" or sampler.startswith("group")):
            parser.error(f"unknown layout {sampler}:{collator}")

    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

    from trainer import packing, speed
    from trainer.data import load_preprocess_output
    from trainer.sampling import length_grouped_batches

    torch.set_num_threads(args.threads)
    data = load_preprocess_output(args.run_dir / "preprocess" / "preprocess_output")
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        args.run_dir / "model-import" / "model_selector_output", num_labels=len(data.class_names),
        ignore_mismatched_sizes=True)  # a new head for the label map, as the fine-tune makes one
    model.train()
    config = SimpleNamespace(cpu_speedups=True, apply_lora=False, apply_deepspeed=False, apply_ort=False,
                             weight_decay=0.0, hf_optim="adamw_torch_fused", padding_free=True)
    speed.prepare(model, config, data.train)
    flat = packing.enable(model, data.train, tokenizer, config)
    if flat.collator is None:
        parser.error(f"flat batches are off for this model: {flat.reason}")
    if args.align is not None:
        flat.collator.pad_to_multiple_of = args.align or None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, fused=True)
    collators = {"padded": DataCollatorForTokenClassification(tokenizer), "flat": flat.collator}
    rows = data.train.rows
    lengths = [len(r["input_ids"]) for r in rows]
    orders = {}
    for sampler, _ in layouts:
        groups = 1 if sampler == "random" else int(sampler[len("group"):])
        orders[sampler] = [b for b in length_grouped_batches(lengths, args.batch_size, args.seed, 0, groups)
                           if len(b) == args.batch_size]
    steps = min(args.warmup + args.steps, *(len(o) for o in orders.values()))
    spent = {layout: [0, 0.0, 0] for layout in layouts}  # tokens, seconds, positions
    started_rss = _peak_rss_mb()
    for step in range(steps):
        for layout in layouts[step % len(layouts):] + layouts[:step % len(layouts)]:
            sampler, collator = layout
            batch = collators[collator]([dict(rows[i]) for i in orders[sampler][step]])
            batch.pop(packing.PADDING_KEY, None)  # the flat row's alignment positions: counted as padding below
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "16"):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= args.warmup:
                spent[layout][0] += sum(lengths[i] for i in orders[sampler][step])
                spent[layout][1] += time.perf_counter() - started
                spent[layout][2] += batch["input_ids"].numel()
    base = spent[layouts[0]][0] / spent[layouts[0]][1]
    result = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "precision": args.precision,
              "batch_size": args.batch_size, "steps": steps - args.warmup, "chunk_cost": packing.CHUNK_COST,
              "align": flat.collator.pad_to_multiple_of, "layouts": {},
              # the process's resident high-water mark: per layout when one layout runs in its own process
              "peak_rss_mb": {"before_steps": started_rss, "after_steps": _peak_rss_mb()}}
    for layout, (tokens, seconds, positions) in spent.items():
        result["layouts"][":".join(layout)] = {
            "tokens_per_s": round(tokens / seconds), f"x_{':'.join(layouts[0])}": round(tokens / seconds / base, 3),
            "padding_pct": round(100 * (1 - tokens / positions), 1)}
    emit_report(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
