"""DeepSpeed on CPU (gloo): one process, `torchrun --nproc_per_node 2` with ZeRO-2 and ZeRO-3, and a resume after a
crash.

Runs the same entry point the PyTorchJob pods use (`python -m trainer.cli`), each in fresh processes; the resume runs
`trainer.finetune.finetune` in fresh processes too (a crash callback cannot be passed on a command line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification

from conftest import figures, weights_digest
from trainer.checkpoints import choose_resume_checkpoint, list_checkpoints

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def _env() -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(cmd: list[str], tmp_path: Path, returncode: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _zero_stage(optim_states: Path) -> int:
    """The ZeRO stage a rank's optimizer shard records, read as the trainer's resume reads it: DeepSpeed's checkpoint
    engine made weights-only by trainer.safe_loading."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from trainer import safe_loading

    safe_loading.install()
    return TorchCheckpointEngine().load(str(optim_states), map_location="cpu")["optimizer_state_dict"]["zero_stage"]


def _fp32_masters(checkpoint: Path) -> dict:
    """The fp32 master weights a DeepSpeed checkpoint's optimizer shards hold, read by DeepSpeed's zero_to_fp32."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from trainer import safe_loading

    safe_loading.install()
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


def _trainer_flags(pre, model, out: Path, *extra: str) -> list[str]:
    return ["-m", "trainer.cli", "--preprocess_output", str(pre), "--model_selector_output", str(model),
            "--pytorch_model_folder", str(out / "pytorch"), "--mlflow_model_folder", str(out / "mlflow"),
            "--per_device_eval_batch_size", "16", "--learning_rate", "5e-3", "--metric_for_best_model", "f1",
            "--apply_deepspeed", "true", *extra]


def _check_outputs(out: Path, expected_steps: list[int], lora: bool = False) -> dict:
    metrics = json.loads((out / "pytorch" / "metrics.json").read_text())
    assert metrics["test_metrics"]["test_f1"] > 0.9, metrics["test_metrics"]
    steps = [int(c.name.split("-")[1]) for c in list_checkpoints(out / "pytorch")]
    assert steps == expected_steps
    model = AutoModelForTokenClassification.from_pretrained(out / "pytorch")
    assert model.classifier.out_features == 6  # ZeRO-3 gathered the full weights, not a shard
    # fp32 weights in every precision: under bf16 DeepSpeed keeps fp32 master weights beside a bf16 module, and the
    # published ones are those masters (the best checkpoint's, as DeepSpeed's own zero_to_fp32 reads them back)
    published = load_file(out / "pytorch" / "model.safetensors")
    assert {str(w.dtype) for w in published.values()} == {"torch.float32"}
    assert json.loads((out / "pytorch" / "config.json").read_text())["dtype"] == "float32"
    if lora:  # a merged LoRA model is not the optimizer's weights (base + B @ A)
        return metrics
    masters = _fp32_masters(Path(metrics["best_checkpoint"]))
    assert set(masters) <= set(published) and all(torch.equal(masters[k], published[k]) for k in masters)
    # self-contained (its tokenizer) and served alike: the MLflow model predicts as the folder does, word for word
    from test_serving import TEST_TEXTS, assert_self_contained_and_equal_to_mlflow

    assert_self_contained_and_equal_to_mlflow(out / "pytorch", out / "mlflow", TEST_TEXTS)
    return metrics


def test_a_run_without_deepspeed_never_imports_it(tmp_path, tiny_preprocess_output, tiny_model_selector):
    """accelerate 1.15 imports DeepSpeed in every Trainer.__init__ when it is installed (~3 s of each fine-tune);
    trainer.distributed.defer_deepspeed_import keeps a run without it from paying that."""
    flags = _trainer_flags(tiny_preprocess_output, tiny_model_selector, tmp_path, "--max_steps", "2")
    flags[flags.index("--apply_deepspeed") + 1] = "false"
    code = ("import sys\nfrom trainer.cli import finetune_main\nstatus = finetune_main(sys.argv[1:])\n"
            "print('deepspeed imported:', 'deepspeed' in sys.modules)\nsys.exit(status)")
    done = _run([sys.executable, "-c", code, *flags[2:]], tmp_path)
    assert "deepspeed imported: False" in done.stdout, done.stdout[-2000:]
    assert (tmp_path / "pytorch" / "metrics.json").is_file()


def test_deepspeed_single_process_default_config(tmp_path, tiny_preprocess_output, tiny_model_selector):
    done = _run([sys.executable, *_trainer_flags(tiny_preprocess_output, tiny_model_selector, tmp_path,
                                                 "--per_device_train_batch_size", "16", "--num_train_epochs", "8")],
                tmp_path)
    # stdout is the result alone (deepspeed 0.19.8 prints "DeepSpeed ... built successfully" there)
    assert set(json.loads(done.stdout)) >= {"test_f1", "test_precision"}, done.stdout[:500]
    _check_outputs(tmp_path, [10 * e for e in range(1, 9)])
    assert (tmp_path / "pytorch" / "checkpoint-10" / "global_step10" / "mp_rank_00_model_states.pt").exists()


@pytest.mark.parametrize("preset,extra", [
    ("zero2", []),
    ("zero3", ["--precision", "16"]),  # bf16: the published weights are the fp32 masters (_check_outputs)
    ("zero3", ["--apply_lora", "true", "--learning_rate", "5e-2", "--lora_alpha", "16", "--num_train_epochs", "12"]),
], ids=["zero2", "zero3-bf16", "zero3-lora"])
def test_torchrun_two_processes(tmp_path, tiny_preprocess_output, tiny_model_selector, preset, extra):
    # 160 rows / (batch 8 × 2 ranks) = 10 optimizer steps per epoch: both ranks share the data.
    epochs = 12 if extra else 8
    _run(["torchrun", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
          *_trainer_flags(tiny_preprocess_output, tiny_model_selector, tmp_path, "--deepspeed_preset", preset,
                          "--per_device_train_batch_size", "8", "--num_train_epochs", str(epochs), *extra)], tmp_path)
    _check_outputs(tmp_path, [10 * e for e in range(1, epochs + 1)], lora="--apply_lora" in extra)
    # DeepSpeed really ran at that ZeRO stage on 2 ranks: each rank saved its own optimizer shard, and ZeRO-3
    # also its own parameter shard (ZeRO-2 keeps one whole copy of the model states).
    shards = {p.name for p in (tmp_path / "pytorch" / "checkpoint-10").glob("global_step10/*.pt")}
    optim = "bf16_zero" if "--precision" in extra else "zero"  # DeepSpeed names bf16 optimizer shards apart
    assert {f"{optim}_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= shards, shards
    partitioned = {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)}
    assert (partitioned <= shards) if preset == "zero3" else ("mp_rank_00_model_states.pt" in shards), shards
    # ZeRO-1 writes the same file names as ZeRO-2: the stage the optimizer recorded tells them apart
    from deepspeed.runtime.zero.config import ZeroStageEnum

    shard = tmp_path / "pytorch" / "checkpoint-10" / "global_step10" / f"{optim}_pp_rank_1_mp_rank_00_optim_states.pt"
    assert _zero_stage(shard) == (ZeroStageEnum.weights if preset == "zero3" else ZeroStageEnum.gradients)


# A fine-tune in a fresh process: argv[1] its FinetuneConfig as JSON, argv[2] the step to crash at (0: none). It prints
# the step training started from and every torch.load it saw (file name, weights_only) as the last line.
DRIVER = """
import json, sys
from pathlib import Path
import torch
from conftest import Crash, StartStep
from trainer.config import FinetuneConfig
from trainer.finetune import finetune

loads, real_load = [], torch.load
def load(f, *args, **kwargs):
    loads.append([Path(str(f)).name, kwargs.get("weights_only", "default")])
    return real_load(f, *args, **kwargs)
torch.load = load
start, crash = StartStep(), int(sys.argv[2])
try:
    finetune(FinetuneConfig.from_dict(json.loads(sys.argv[1])), callbacks=[start] + ([Crash(crash)] if crash else []))
finally:
    print(json.dumps({"start": start.step, "loads": loads}))
"""


def _finetune_process(config, crash_at: int = 0) -> dict:
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", DRIVER, config.to_json(), str(crash_at)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=TESTS.parent)
    assert (done.returncode != 0) == bool(crash_at), done.stdout[-3000:] + done.stderr[-5000:]
    if crash_at:
        assert "simulated node failure" in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_deepspeed_resume_after_a_crash(make_config):
    """ZeRO-2 in one process, crashed mid-epoch after a checkpoint, resumed from it through DeepSpeed's checkpoint
    engine (weights-only, trainer.safe_loading): it starts from that step and ends with the uninterrupted run's
    weights and figures."""
    # 160 rows / batch 16 = 10 optimizer steps per epoch; a checkpoint every 4 steps: 4, 8, 12, 16, 20
    settings = dict(apply_deepspeed=True, num_train_epochs=2, learning_rate=2e-3, metric_for_best_model="loss",
                    evaluation_strategy="steps", eval_steps=4, progress_seconds=0.0)
    straight = make_config("straight", **settings)
    assert _finetune_process(straight)["start"] == 0

    crashed = make_config("crashed", **settings)
    _finetune_process(crashed, crash_at=14)  # in epoch 2, two steps after checkpoint-12
    root = Path(crashed.pytorch_model_folder)
    assert choose_resume_checkpoint(root).name == "checkpoint-12" and not (root / "model.safetensors").exists()

    resumed = _finetune_process(make_config("crashed", resume_from_checkpoint=True, **settings))
    assert resumed["start"] == 12
    deepspeed_files = {name: weights_only for name, weights_only in resumed["loads"] if name.endswith("_states.pt")}
    assert deepspeed_files == {"mp_rank_00_model_states.pt": True, "zero_pp_rank_0_mp_rank_00_optim_states.pt": True}
    assert weights_digest(root) == weights_digest(straight.pytorch_model_folder)
    metrics = [json.loads((Path(c.pytorch_model_folder) / "metrics.json").read_text()) for c in (crashed, straight)]
    assert figures(metrics[0]["test_metrics"]) == figures(metrics[1]["test_metrics"])
