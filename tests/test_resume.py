"""Resume after a crash reproduces the uninterrupted run (weights, optimizer, scheduler and RNG restored)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

from trainer.checkpoints import choose_resume_checkpoint, list_checkpoints
from trainer.finetune import finetune


class Crash(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise RuntimeError("simulated node failure")


def test_resume_reproduces_the_uninterrupted_run(make_config):
    settings = dict(num_train_epochs=4, learning_rate=2e-3, metric_for_best_model="loss")
    straight = finetune(make_config("straight", **settings))

    config = make_config("crashed", **settings)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        finetune(config, callbacks=[Crash(at_step=25)])  # after checkpoint-20, before checkpoint-30
    root = Path(config.pytorch_model_folder)
    assert [c.name for c in list_checkpoints(root)] == ["checkpoint-10", "checkpoint-20"]
    assert not (root / "model.safetensors").exists() and not (root / "metrics.json").exists()
    assert not Path(config.mlflow_model_folder).exists()

    # A checkpoint half-written when the node died must be skipped and cleared, not resumed from.
    torn = root / "checkpoint-30"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    assert choose_resume_checkpoint(root).name == "checkpoint-20"

    resumed = finetune(make_config("crashed", resume_from_checkpoint="true", **settings))
    assert not torn.exists() or (torn / "trainer_state.json").exists()
    assert resumed.validation_metrics["eval_loss"] == pytest.approx(straight.validation_metrics["eval_loss"], rel=1e-5)
    assert resumed.validation_metrics["eval_f1"] == pytest.approx(straight.validation_metrics["eval_f1"])
    assert resumed.best_metric == pytest.approx(straight.best_metric, rel=1e-5)


def test_rerun_into_a_folder_with_checkpoints_needs_resume(make_config):
    from trainer.errors import InputError

    config = make_config("twice", num_train_epochs=1)
    finetune(config)
    with pytest.raises(InputError, match="resume_from_checkpoint"):
        finetune(make_config("twice", num_train_epochs=1, mlflow_model_folder=config.mlflow_model_folder + "2"))
