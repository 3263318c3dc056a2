"""Resume after a crash reproduces the uninterrupted run bit for bit, from any step: mid-epoch after the first
epoch too, in one process and under torchrun. Every resumed run is checked to start at its checkpoint's step — a
resume that silently restarted from step 0 would reach the same weights (same seed) and pass otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import Crash, StartStep, figures, weights_digest

from trainer.checkpoints import MANIFEST, choose_resume_checkpoint, list_checkpoints
from trainer.finetune import finetune

LENGTH_GROUPED = pytest.param(True, id="length-grouped")  # seeded per epoch: trainer/sampling.py




@pytest.mark.parametrize("group_by_length", [pytest.param(False, id="default-random-sampler"), LENGTH_GROUPED])
def test_resume_mid_epoch_after_the_first_is_bit_identical(make_config, group_by_length):
    # 160 rows / batch 16 = 10 optimizer steps per epoch; a checkpoint every 4 steps: 4, 8, 12, 16, ...
    settings = dict(num_train_epochs=3, learning_rate=2e-3, metric_for_best_model="loss", evaluation_strategy="steps",
                    eval_steps=4, group_by_length=group_by_length)
    straight = finetune(make_config("straight", **settings))

    config = make_config("crashed", **settings)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        finetune(config, callbacks=[Crash(at_step=15)])  # in epoch 2, after checkpoint-12 (step 2 of that epoch)
    root = Path(config.pytorch_model_folder)
    assert [c.name for c in list_checkpoints(root)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert not (root / "model.safetensors").exists() and not (root / "metrics.json").exists()
    assert not Path(config.mlflow_model_folder).exists()

    # A checkpoint half-written when the node died is skipped and cleared, not resumed from.
    torn = root / "checkpoint-16"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    assert choose_resume_checkpoint(root).name == "checkpoint-12"

    start = StartStep()
    resumed = finetune(make_config("crashed", resume_from_checkpoint="true", **settings), callbacks=[start])
    assert start.step == 12  # from the checkpoint: not from step 0, not from the torn one
    assert (torn / MANIFEST).exists()  # written again, whole, when training reached step 16
    assert weights_digest(root) == weights_digest(straight.pytorch_model_folder)
    assert figures(resumed.validation_metrics) == figures(straight.validation_metrics)
    assert resumed.best_metric == straight.best_metric and resumed.best_checkpoint.endswith(
        Path(straight.best_checkpoint).name)
    # The run's training loss and time span both attempts (transformers' own figures cover the resumed steps only)
    assert resumed.train_metrics["resumed_from_step"] == 12 and straight.train_metrics["resumed_from_step"] == 0
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=1e-6)
    assert straight.train_loss == straight.train_metrics["train_loss"]  # one attempt: transformers' own figure
    first_attempt = json.loads((root / "checkpoint-12" / "run_totals.json").read_text())["train_seconds"]
    assert first_attempt > 0 and resumed.train_runtime > first_attempt + resumed.train_metrics["train_runtime"] * 0.9


def test_resuming_a_run_that_trained_all_its_steps_trains_no_more(make_config):
    """max_steps ending mid-epoch: the resumed run publishes the same model from the last checkpoint (stock
    transformers 5.24 trained one step more, to checkpoint-3, and published that)."""
    values = dict(max_steps=2, per_device_train_batch_size=4, num_train_epochs=1, lr_scheduler_type="constant",
                  export_onnx=False)
    first = finetune(make_config("done", **values))
    root = Path(first.pytorch_model_folder)
    published = weights_digest(root)
    assert [p.name for p in root.glob("checkpoint-*")] == ["checkpoint-2"]
    again = finetune(make_config("done", resume_from_checkpoint=True, **values))
    assert [p.name for p in root.glob("checkpoint-*")] == ["checkpoint-2"]
    assert weights_digest(root) == published and again.best_checkpoint == first.best_checkpoint
    # nothing trained in the second attempt: the run's loss is still the first attempt's (transformers: 0.0)
    assert first.train_loss > 0 and again.train_metrics["train_loss"] == 0.0  # transformers': this attempt
    assert again.train_loss == pytest.approx(first.train_loss, rel=1e-6)
    assert json.loads((root / "metrics.json").read_text())["train_loss"] == pytest.approx(first.train_loss, rel=1e-6)


def test_a_resume_with_settings_its_checkpoint_cannot_take_is_refused_before_loading(make_config, tmp_path,
                                                                                   tiny_preprocess_output, monkeypatch):
    """LoRA switched on or off, another LoRA rank, other classes: one line naming the checkpoint and the setting,
    before the model is loaded (loading it failed half way with a traceback)."""
    import shutil

    import transformers

    from trainer.errors import InputError

    values = dict(max_steps=2, per_device_train_batch_size=4, export_onnx=False)
    finetune(make_config("full", **values))
    finetune(make_config("lora", apply_lora=True, lora_r=4, **values))
    other = tmp_path / "other_classes"
    shutil.copytree(tiny_preprocess_output, other)
    names = json.loads((other / "class_names.json").read_text())["class_names"]
    (other / "class_names.json").write_text(json.dumps({"class_names": names + ["B-weapon"]}))

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers.AutoModelForTokenClassification, "from_pretrained", loaded)
    for run, changed, message in [("full", dict(apply_lora=True), "holds a full model but apply_lora=true"),
                                  ("lora", dict(apply_lora=True, lora_r=8), "rank 4 but lora_r=8"),
                                  ("lora", {}, "holds a LoRA adapter but apply_lora=false"),
                                  ("full", dict(preprocess_output=str(other)), "B-weapon differ")]:
        with pytest.raises(InputError, match=message):
            finetune(make_config(run, resume_from_checkpoint=True, **{**values, **changed}))


def test_rerun_into_a_folder_with_checkpoints_needs_resume(make_config):
    from trainer.errors import InputError

    config = make_config("twice", num_train_epochs=1)
    finetune(config)
    with pytest.raises(InputError, match="resume_from_checkpoint"):
        finetune(make_config("twice", num_train_epochs=1, mlflow_model_folder=config.mlflow_model_folder + "2"))


# --- under torchrun -------------------------------------------------------------------------------------------------
def _torchrun(pre, model, out: Path, *extra: str) -> list[str]:
    return ["torchrun", "--nproc_per_node", "2", "--master_port", str(29400 + os.getpid() % 500), "-m", "trainer.cli",
            "--preprocess_output", str(pre), "--model_selector_output", str(model),
            "--pytorch_model_folder", str(out / "pytorch"), "--mlflow_model_folder", str(out / "mlflow"),
            "--per_device_train_batch_size", "8", "--num_train_epochs", "2", "--learning_rate", "2e-3",
            "--evaluation_strategy", "steps", "--eval_steps", "4", "--group_by_length", "true",
            "--progress_seconds", "0", *extra]


@pytest.mark.slow
def test_resume_under_torchrun_is_bit_identical(tmp_path, tiny_preprocess_output, tiny_model_selector):
    """Two processes (gloo on CPU): killed (SIGKILL to every process) right after a mid-epoch checkpoint of the second
    epoch, resumed from it, the same weights as the uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    straight = tmp_path / "straight"
    done = subprocess.run(_torchrun(tiny_preprocess_output, tiny_model_selector, straight), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = tmp_path / "crashed"
    log = (tmp_path / "first.log").open("w")
    run = subprocess.Popen(_torchrun(tiny_preprocess_output, tiny_model_selector, crashed), env=env, cwd=tmp_path,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (crashed / "pytorch" / "checkpoint-12" / MANIFEST).exists():  # 10 steps per epoch: epoch 2, step 2
        assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.005)
    # SIGKILL the agent and every worker at once (torchrun's workers may sit in sessions of their own)
    workers = psutil.Process(run.pid).children(recursive=True)
    os.killpg(run.pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    run.wait()
    psutil.wait_procs(workers, timeout=30)
    latest = choose_resume_checkpoint(crashed / "pytorch")
    step = int(latest.name.split("-")[1])
    assert step > 10 and step % 10, f"not a mid-epoch checkpoint of epoch 2: {latest}"

    done = subprocess.run(_torchrun(tiny_preprocess_output, tiny_model_selector, crashed, "--resume_from_checkpoint",
                                    "true"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [int(s) for s in re.findall(r"step (\d+)/20 ", done.stderr)]
    assert steps and steps[0] == step + 1, (f"resumed run logged steps {steps[:3]}, expected {step + 1} first",
                                            done.stderr[-3000:])
    assert weights_digest(crashed / "pytorch") == weights_digest(straight / "pytorch")
    # and what both published is their best checkpoint, whole: the trained-rows embedding (cpu_speedups) once put
    # the trained rows back into a copy that DDP had made of the table, publishing untrained embeddings
    for run in (straight, crashed):
        best = json.loads((run / "pytorch" / "metrics.json").read_text())["best_checkpoint"]
        assert weights_digest(run / "pytorch") == weights_digest(best), run.name
    # the run's mean loss spans both attempts: the unlogged steps before the checkpoint count as their mean over the
    # ranks, as in the uninterrupted run (rank 0's own loss once made it differ in the fourth decimal)
    losses = [json.loads((run / "pytorch" / "metrics.json").read_text())["train_loss"] for run in (straight, crashed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
