"""End-to-end fine-tunes on the tiny fixtures: the model learns, outputs load back, each option does its job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, TrainerCallback

from trainer.checkpoints import list_checkpoints
from trainer.finetune import finetune


def test_model_learns_and_outputs_load_back(make_config):
    config = make_config()
    result = finetune(config)

    # Learns: the synthetic entities are trivially separable; a random head scores ~0 entity F1.
    assert result.validation_metrics["eval_f1"] > 0.9
    assert result.test_metrics["test_f1"] > 0.9
    assert set(result.per_entity) == {"person", "location", "organization"}

    root = Path(config.pytorch_model_folder)
    model = AutoModelForTokenClassification.from_pretrained(root)
    assert model.config.id2label[0] == "O" and len(model.config.id2label) == 6
    tokenizer = AutoTokenizer.from_pretrained(root)
    with torch.no_grad():
        logits = model(**tokenizer("alice lives in paris .", return_tensors="pt")).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1)[0, 1:-1].tolist()]
    assert predicted == ["B-person", "O", "O", "B-location", "O"]

    # One checkpoint per evaluation (epoch), each resumable: optimizer, scheduler, RNG, trainer state.
    checkpoints = list_checkpoints(root)
    assert len(checkpoints) == config.num_train_epochs
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors"):
        assert (checkpoints[-1] / name).exists(), name
    assert json.loads((root / "finetune_args.json").read_text())["learning_rate"] == config.learning_rate
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["test_metrics"]["test_f1"] == result.test_metrics["test_f1"]
    assert result.best_checkpoint in {str(c) for c in checkpoints}
    assert not list(root.glob(".*incomplete*"))


def test_mlflow_model_serves_offline(make_config):
    import mlflow.pyfunc

    config = make_config()
    finetune(config)
    requirements = (Path(config.mlflow_model_folder) / "requirements.txt").read_text()
    assert "torchvision" not in requirements and "transformers==" in requirements
    predictions = mlflow.pyfunc.load_model(config.mlflow_model_folder).predict(
        ["alice lives in paris .", "bob works for globex in rome ."])
    assert [[e["label"] for e in p["entities"]] for p in predictions] == [
        ["person", "location"], ["person", "organization", "location"]]


def test_evaluation_steps_interval_is_a_fraction_of_real_epoch_steps(make_config):
    # 160 rows / batch 16 = 10 optimizer steps per epoch; 0.5 of an epoch = every 5 steps.
    config = make_config(evaluation_strategy="steps", evaluation_steps_interval=0.5, num_train_epochs=2)
    finetune(config)
    steps = [int(c.name.split("-")[1]) for c in list_checkpoints(config.pytorch_model_folder)]
    assert steps == [5, 10, 15, 20]


def test_save_total_limit_never_deletes_the_best(make_config):
    config = make_config(save_total_limit=1, num_train_epochs=4, metric_for_best_model="loss")
    result = finetune(config)
    kept = [str(c) for c in list_checkpoints(config.pytorch_model_folder)]
    assert result.best_checkpoint in kept and len(kept) <= 2  # the best plus the newest


class _Recorder(TrainerCallback):
    def __init__(self):
        self.evaluations = 0

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1


def test_early_stopping_stops_before_the_last_epoch(make_config):
    # lr 0 never improves: patience 1 stops after the second evaluation of 8.
    recorder = _Recorder()
    config = make_config(learning_rate=1e-12, apply_early_stopping=True, early_stopping_patience=1,
                         early_stopping_threshold=0.01, metric_for_best_model="loss")
    finetune(config, callbacks=[recorder])
    assert len(list_checkpoints(config.pytorch_model_folder)) == 2


@pytest.mark.parametrize("overrides", [
    {"optim": "adafactor", "learning_rate": 1e-2, "lr_scheduler_type": "constant"},
    {"optim": "adamw_hf", "lr_scheduler_type": "cosine", "warmup_steps": 5, "weight_decay": 0.01},
    {"precision": "16", "gradient_accumulation_steps": 2, "learning_rate": 1e-2},
    {"auto_find_batch_size": True, "lr_scheduler_type": "polynomial"},
], ids=["adafactor", "adamw_hf-cosine", "precision16-gradaccum", "auto-batch"])
def test_training_options_train_a_model(make_config, overrides):
    config = make_config(**overrides)
    result = finetune(config)
    assert result.validation_metrics["eval_f1"] > 0.5, result.validation_metrics


def test_full_determinism_reproduces_a_run(make_config):
    first = finetune(make_config("a", enable_full_determinism=True, num_train_epochs=2))
    second = finetune(make_config("b", enable_full_determinism=True, num_train_epochs=2))
    assert first.validation_metrics["eval_loss"] == second.validation_metrics["eval_loss"]


def test_max_steps_overrides_epochs(make_config):
    config = make_config(max_steps=7, num_train_epochs=50, evaluation_strategy="steps", eval_steps=7)
    result = finetune(config)
    assert result.train_metrics["epoch"] < 1
    assert [c.name for c in list_checkpoints(config.pytorch_model_folder)] == ["checkpoint-7"]


def test_continual_finetune_from_an_earlier_output(make_config, tiny_preprocess_output):
    first = make_config("first", num_train_epochs=3)
    finetune(first)
    second = make_config("second", model_selector_output=first.pytorch_model_folder, num_train_epochs=1,
                         learning_rate=1e-3)
    result = finetune(second)
    assert result.validation_metrics["eval_f1"] > 0.5


def test_mlflow_tracking_when_tracking_uri_is_set(make_config, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tokcls-test")
    finetune(make_config(num_train_epochs=2))
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tokcls-test")
    runs = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(runs[0].info.run_id, "eval_f1")
    assert history and 0.0 <= history[-1].value <= 1.0
    assert client.get_metric_history(runs[0].info.run_id, "eval_loss")
