"""DeepSpeed on CPU (gloo): one process, and `torchrun --nproc_per_node 2` with ZeRO-2 and ZeRO-3.

Runs the same entry point the PyTorchJob pods use (`python -m trainer.cli`), each in fresh processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForTokenClassification

from trainer.checkpoints import list_checkpoints

pytestmark = pytest.mark.slow


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _trainer_flags(pre, model, out: Path, *extra: str) -> list[str]:
    return ["-m", "trainer.cli", "--preprocess_output", str(pre), "--model_selector_output", str(model),
            "--pytorch_model_folder", str(out / "pytorch"), "--mlflow_model_folder", str(out / "mlflow"),
            "--per_device_eval_batch_size", "16", "--learning_rate", "5e-3", "--metric_for_best_model", "f1",
            "--apply_deepspeed", "true", *extra]


def _check_outputs(out: Path, expected_steps: list[int]) -> dict:
    metrics = json.loads((out / "pytorch" / "metrics.json").read_text())
    assert metrics["test_metrics"]["test_f1"] > 0.9, metrics["test_metrics"]
    steps = [int(c.name.split("-")[1]) for c in list_checkpoints(out / "pytorch")]
    assert steps == expected_steps
    model = AutoModelForTokenClassification.from_pretrained(out / "pytorch")
    assert model.classifier.out_features == 6  # ZeRO-3 gathered the full weights, not a shard
    # self-contained (its tokenizer) and served alike: the MLflow model predicts as the folder does, word for word
    from test_serving import TEST_TEXTS, assert_self_contained_and_equal_to_mlflow

    assert_self_contained_and_equal_to_mlflow(out / "pytorch", out / "mlflow", TEST_TEXTS)
    return metrics


def test_deepspeed_single_process_default_config(tmp_path, tiny_preprocess_output, tiny_model_selector):
    _run([sys.executable, *_trainer_flags(tiny_preprocess_output, tiny_model_selector, tmp_path,
                                          "--per_device_train_batch_size", "16", "--num_train_epochs", "8")], tmp_path)
    _check_outputs(tmp_path, [10 * e for e in range(1, 9)])
    assert (tmp_path / "pytorch" / "checkpoint-10" / "global_step10" / "mp_rank_00_model_states.pt").exists()


@pytest.mark.parametrize("preset,extra", [
    ("zero2", []),
    ("zero3", []),
    ("zero3", ["--apply_lora", "true", "--learning_rate", "5e-2", "--lora_alpha", "16", "--num_train_epochs", "12"]),
], ids=["zero2", "zero3", "zero3-lora"])
def test_torchrun_two_processes(tmp_path, tiny_preprocess_output, tiny_model_selector, preset, extra):
    # 160 rows / (batch 8 × 2 ranks) = 10 optimizer steps per epoch: both ranks share the data.
    epochs = 12 if extra else 8
    _run(["torchrun", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
          *_trainer_flags(tiny_preprocess_output, tiny_model_selector, tmp_path, "--deepspeed_preset", preset,
                          "--per_device_train_batch_size", "8", "--num_train_epochs", str(epochs), *extra)], tmp_path)
    _check_outputs(tmp_path, [10 * e for e in range(1, epochs + 1)])
    # DeepSpeed really ran at that ZeRO stage on 2 ranks: each rank saved its own optimizer shard, and ZeRO-3
    # also its own parameter shard (ZeRO-2 keeps one whole copy of the model states).
    shards = {p.name for p in (tmp_path / "pytorch" / "checkpoint-10").glob("global_step10/*.pt")}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= shards, shards
    partitioned = {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)}
    assert (partitioned <= shards) if preset == "zero3" else ("mp_rank_00_model_states.pt" in shards), shards
