#!/usr/bin/env python
"""Where one fine-tune's memory goes: the peak resident set (RSS) of each phase of `trainer.finetune.finetune`.

The fine-tune step's pod is sized by its peak, and that peak may come after training: publishing loads the model
again to score the test split, saves the MLflow model and exports ONNX. A thread samples the process's RSS
(/proc/self/statm) every 5 ms; trainer callbacks and wrappers around the publishing functions name the phase:

  load              process start to the start of training (imports, input checks, model load)
  training steps    the optimizer steps
  evaluation        the evaluations at the end of each epoch (the recipe's evaluation_strategy) inside training
  checkpoint        saving a checkpoint, and what follows until publishing (the end of training: the best model's
                    reload where it is needed, letting go of the optimizer state and the training-time settings)
  publish           trainer.outputs.publish: saving the best model into pytorch_model_folder, and the rest of
                    publishing outside the three phases below
  test scoring      the published model scored on the test split (trainer.outputs.score_published)
  mlflow            the MLflow model (trainer.mlflow_model.save_mlflow_model)
  onnx              the ONNX export and its parity check (trainer.outputs.export_onnx_output)

The result also has `ru_maxrss` (the kernel's own peak of the process). Linux only (reads /proc).

  python bench/memory_profile.py --run-dir RUN_DIR [--runs 3] [--output FILE] [KEY=VALUE ...]
RUN_DIR: a local pipeline run folder (its preprocess and model-import outputs are read); KEY=VALUE: FinetuneConfig
fields over the local pipeline's recipe (pipelines/local_run.py: batch 16, eval batch 32, lr 1e-4, precision 16
where the CPU has bf16, metric f1; the spec's 1 epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

PHASES = ("load", "training steps", "evaluation", "checkpoint", "publish", "test scoring", "mlflow", "onnx")


class Sampler:
    """Peak RSS (MB) per named phase, sampled by a daemon thread."""

    def __init__(self, interval_s: float = 0.005):
        self.phase, self.peaks, self.interval_s = "load", {}, interval_s
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def sample(self):
        phase, rss = self.phase, self.rss_mb()
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), rss)

    def enter(self, phase: str):
        self.sample()  # the phase that ends gets its last sample; the next one is sampled from the next tick
        self.phase = phase

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def instrument(sampler: Sampler):
    """Trainer callbacks and wrappers of the publishing functions that name the phases; returns (callback, undo)."""
    from transformers import TrainerCallback

    import trainer.mlflow_model as mlflow_model
    import trainer.outputs as outputs

    class Phases(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sampler.enter("training steps")

        def on_step_begin(self, args, state, control, **kwargs):
            sampler.enter("training steps")

        def on_epoch_end(self, args, state, control, **kwargs):
            sampler.enter("evaluation")

        def on_evaluate(self, args, state, control, **kwargs):
            sampler.enter("checkpoint")

    def phase(name, fn, back):
        def wrapped(*args, **kwargs):
            sampler.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                sampler.enter(back)
        return wrapped

    originals = [(outputs, "publish", outputs.publish),
                 (outputs, "score_published", outputs.score_published),
                 (outputs, "export_onnx_output", outputs.export_onnx_output),
                 (mlflow_model, "save_mlflow_model", mlflow_model.save_mlflow_model)]
    names = {"publish": ("publish", "done"), "score_published": ("test scoring", "publish"),
             "export_onnx_output": ("onnx", "publish"), "save_mlflow_model": ("mlflow", "publish")}
    for module, attr, fn in originals:
        name, back = names[attr]
        setattr(module, attr, phase(name, fn, back))

    def undo():
        for module, attr, fn in originals:
            setattr(module, attr, fn)

    return Phases(), undo


def local_recipe() -> dict:
    """The local pipeline's fine-tune settings (pipelines/local_run.py) that a FinetuneConfig takes."""
    from pipelines.local_run import LOCAL_RECIPE
    from trainer.config import FinetuneConfig

    fields = FinetuneConfig.__dataclass_fields__
    return {key: value for key, (value, _) in LOCAL_RECIPE.items() if key in fields}


def profile(run_dir: Path, work: Path, overrides: dict) -> dict:
    """One fine-tune of RUN_DIR's inputs into `work`, with the peak RSS of each phase (MB)."""
    from trainer.config import FinetuneConfig
    from trainer.finetune import finetune

    fields = {**local_recipe(), **overrides}
    config = FinetuneConfig(
        preprocess_output=str(run_dir / "preprocess" / "preprocess_output"),
        model_selector_output=str(run_dir / "model-import" / "model_selector_output"),
        pytorch_model_folder=str(work / "pytorch_model_folder"), mlflow_model_folder=str(work / "mlflow_model_folder"),
        onnx_model_folder=str(work / "onnx_model_folder"), **fields)
    with Sampler() as sampler:
        callback, undo = instrument(sampler)
        try:
            result = finetune(config, callbacks=[callback])
        finally:
            undo()
    peaks = {p: round(sampler.peaks[p], 1) for p in PHASES if p in sampler.peaks}
    return {"peak_rss_mb_by_phase": peaks, "peak_rss_mb": max(peaks.values()),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "training_peak_mb": max(v for p, v in peaks.items() if p in PHASES[:4]),
            "after_training_peak_mb": max((v for p, v in peaks.items() if p in PHASES[4:]), default=None),
            "train_runtime_s": round(result.train_runtime, 2),
            "config": {key: getattr(config, key) for key in fields}}


def _one_run_in_a_fresh_process(args, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="memory-profile-run-") as tmp:
        out = Path(tmp) / "run.json"
        subprocess.run([sys.executable, __file__, "--run-dir", str(args.run_dir), "--threads", str(args.threads),
                        "--output", str(out), *overrides], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a local pipeline run folder")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="fine-tunes, each in a fresh process; medians reported")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from run_benchmark import cpu_model, emit_report, parse_key_values

    overrides = parse_key_values(parser, args.overrides)  # FinetuneConfig parses the values, as for the benchmark's

    command = " ".join(["python", "bench/memory_profile.py", *(sys.argv[1:] if argv is None else argv)])
    if args.runs > 1:
        runs = [_one_run_in_a_fresh_process(args, args.overrides) for _ in range(args.runs)]
        phases = [p for p in PHASES if all(p in r["peak_rss_mb_by_phase"] for r in runs)]
        median = {"peak_rss_mb_by_phase": {p: statistics.median(r["peak_rss_mb_by_phase"][p] for r in runs)
                                           for p in phases},
                  **{k: statistics.median(r[k] for r in runs) for k in
                     ("peak_rss_mb", "ru_maxrss_mb", "training_peak_mb", "after_training_peak_mb", "train_runtime_s")}}
        result = {"cpu": cpu_model(), "threads": args.threads, "run_dir": str(args.run_dir), "command": command,
                  "median": median, "runs": runs}
    else:
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="memory-profile-") as work:
            result = {"cpu": cpu_model(), "threads": args.threads, "run_dir": str(args.run_dir), "command": command,
                      **profile(args.run_dir, Path(work), overrides)}
    emit_report(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
