#!/usr/bin/env python
"""The trainer's evaluation loop under bf16 autocast: each weight cast once per loop against once per batch.

The fine-tune's evaluation (`trainer.hf_trainer.TokenClassificationTrainer`, the loop every epoch's validation runs)
keeps autocast's casts of the weights for the whole loop (`trainer.speed.autocast_casts_kept`); the stock Trainer
casts every weight again in every batch. Both variants run the trainer's own loop on a local pipeline run's
validation split (its preprocess output, the model-import's encoder with a seeded new head, as the fine-tune loads
it), at each ``--batch-sizes`` (1 is the spec's `per_device_eval_batch_size`, 32 the local run's): one untimed loop
per batch size, then ``--repeats`` loops of each variant, their order alternated per repeat. Reported: the seconds
of each `Trainer.predict`, their medians and ratio, and whether the two variants' figures are identical (they must
be: the same casts, made once). glibc's malloc thresholds are raised as the trainer raises them for training
(`trainer.speed.tune_cpu_allocator`; the validation passes run inside `Trainer.train()`); ``--stock-allocator``
leaves them as they are.

  python bench/eval_casts.py --run-dir RUN_DIR [--batch-sizes 1,32] [--repeats 5] [--threads 2] [--stock-allocator]
                             [--output FILE]
RUN_DIR: a local pipeline run folder (its preprocess and model-import outputs are read).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

VARIANTS = ("kept", "per_batch")  # kept: what the trainer runs; per_batch: the stock Trainer's casts
FIGURES = ("eval_loss", "eval_f1", "eval_precision", "eval_recall", "eval_accuracy")


def measure(run_dir: Path, batch_sizes: list[int], repeats: int = 5, threads: int = 2,
            allocator_tuned: bool = True) -> dict:
    import torch
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, TrainingArguments

    import trainer.hf_trainer as hf_trainer
    from run_benchmark import cpu_model, foreign_cpu_share, host_busy_seconds
    from step_profile import load_run
    from trainer import speed
    from trainer.metrics import ids_and_losses, make_compute_metrics

    torch.set_num_threads(threads)
    data, model, _ = load_run(run_dir)
    collator = DataCollatorForTokenClassification(AutoTokenizer.from_pretrained(data.tokenizer_dir))
    seconds = {(size, variant): [] for size in batch_sizes for variant in VARIANTS}
    figures: dict = {}
    busy, cpu, wall = host_busy_seconds(), time.process_time(), 0.0
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as undo:
        # The validation passes run inside Trainer.train(), where the trainer has raised glibc's thresholds.
        allocator = speed.tune_cpu_allocator() if allocator_tuned else False
        if allocator:
            undo.callback(speed.restore_cpu_allocator)

        def predict(size: int, variant: str) -> tuple[float, dict]:
            # A new Trainer per loop; accelerate wraps the model's forward in bf16 autocast once, for all of them.
            args = TrainingArguments(output_dir=work, per_device_eval_batch_size=size, bf16=True, use_cpu=True,
                                     report_to="none", disable_tqdm=True)
            trainer = hf_trainer.TokenClassificationTrainer(
                model=model, args=args, data_collator=collator,
                compute_metrics=make_compute_metrics(data.class_names, data.tag_scheme),
                preprocess_logits_for_metrics=ids_and_losses)
            patch = (mock.patch.object(hf_trainer, "autocast_casts_kept", contextlib.nullcontext)
                     if variant == "per_batch" else contextlib.nullcontext())
            with patch:
                started = time.perf_counter()
                metrics = trainer.predict(data.validation, metric_key_prefix="eval").metrics
                return time.perf_counter() - started, {key: metrics[key] for key in FIGURES}

        for size in batch_sizes:  # untimed: oneDNN generates its kernels at a shape's first matmul
            predict(size, "kept")
        for repeat in range(repeats):
            for size in batch_sizes:
                for variant in (VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]):
                    took, figures.setdefault(size, {})[variant] = predict(size, variant)
                    wall += took
                    seconds[(size, variant)].append(took)
    foreign = foreign_cpu_share(host_busy_seconds() - busy if busy is not None else None,
                                time.process_time() - cpu, wall)
    rows = []
    for size in batch_sizes:
        kept, per_batch = (statistics.median(seconds[(size, v)]) for v in VARIANTS)
        rows.append({"batch_size": size, "batches": -(-len(data.validation) // size),
                     "seconds_kept": [round(s, 3) for s in seconds[(size, "kept")]],
                     "seconds_per_batch": [round(s, 3) for s in seconds[(size, "per_batch")]],
                     "median_kept": round(kept, 3), "median_per_batch": round(per_batch, 3),
                     "per_batch_over_kept": round(per_batch / kept, 3),
                     "figures_identical": figures[size]["kept"] == figures[size]["per_batch"],
                     "figures": figures[size]["kept"]})
    return {"cpu": cpu_model(), "threads": threads, "torch": torch.__version__, "rows_scored": len(data.validation),
            "repeats": repeats, "allocator_tuned": allocator, "foreign_cpu_share": foreign, "batch_sizes": rows}


def main(argv=None) -> int:
    from run_benchmark import emit_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a local pipeline run folder")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated evaluation batch sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stock-allocator", action="store_true",
                        help="leave glibc's malloc thresholds as they are (default: raised, as during training)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
    except ValueError:
        parser.error("--batch-sizes: comma-separated integers")
    if args.repeats < 1 or min(sizes) < 1:
        parser.error("--repeats and every batch size must be >= 1")
    emit_report(measure(args.run_dir, sizes, args.repeats, args.threads, not args.stock_allocator), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
