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


def test_reported_validation_figures_are_the_published_models(make_config, tmp_path):
    """The validation figures come from the best checkpoint's evaluation during training (not a second pass):
    scoring the published model on the validation split again gives the same numbers."""
    from trainer.config import EvaluateConfig
    from trainer.evaluate import evaluate

    config = make_config(num_train_epochs=3, learning_rate=2e-3, metric_for_best_model="loss")
    result = finetune(config)
    step = int(Path(result.best_checkpoint).name.split("-")[1])
    again = evaluate(EvaluateConfig(model=config.pytorch_model_folder, preprocess_output=config.preprocess_output,
                                    predictions=str(tmp_path / "predictions.jsonl"), split="validation"))
    assert result.validation_metrics["eval_f1"] == pytest.approx(again.figures["f1"], abs=1e-9)
    assert result.validation_metrics["eval_accuracy"] == pytest.approx(again.figures["accuracy"], abs=1e-9)
    assert result.best_metric == pytest.approx(result.validation_metrics["eval_loss"])
    assert step in {10, 20, 30}


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


class _Observer(TrainerCallback):
    """What the training loop really ran with: optimizer, learning rates, step count, precision, determinism."""

    def __init__(self):
        self.lrs, self.evaluations, self.forward_dtypes = [], 0, set()

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.max_steps = state.max_steps
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        head = model.classifier
        head.register_forward_hook(lambda module, inputs, output: self.forward_dtypes.add(output.dtype)
                                   if module.training else None)

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.lrs.append(lr_scheduler.get_last_lr()[0])

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1


def test_early_stopping_stops_before_the_last_epoch(make_config):
    # lr ~0 never improves: patience 1 stops after the second evaluation of 8.
    observer = _Observer()
    config = make_config(learning_rate=1e-12, apply_early_stopping=True, early_stopping_patience=1,
                         early_stopping_threshold=0.01, metric_for_best_model="loss")
    finetune(config, callbacks=[observer])
    assert observer.evaluations == 2 and observer.max_steps == 80
    assert len(list_checkpoints(config.pytorch_model_folder)) == 2


def test_adafactor_with_constant_schedule(make_config):
    observer = _Observer()
    result = finetune(make_config(optim="adafactor", learning_rate=1e-2, lr_scheduler_type="constant"),
                      callbacks=[observer])
    assert type(observer.optimizer).__name__ == "Adafactor"
    assert observer.lrs == [1e-2] * 80
    assert result.validation_metrics["eval_f1"] > 0.5


def test_adamw_hf_runs_fused_adamw_with_warmup_cosine_and_weight_decay(make_config):
    observer = _Observer()
    result = finetune(make_config(optim="adamw_hf", lr_scheduler_type="cosine", warmup_steps=5, weight_decay=0.01),
                      callbacks=[observer])
    optimizer = observer.optimizer
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["fused"] is True
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 0.01]  # no decay on biases
    peak = 5e-3
    assert observer.lrs[:5] == pytest.approx([peak * i / 5 for i in range(1, 6)])  # linear warmup
    halfway = 5 + (80 - 5) // 2  # cosine: half the peak halfway through the decay
    assert observer.lrs[halfway - 1] == pytest.approx(peak / 2, rel=0.05) and observer.lrs[-1] < peak * 0.01
    assert result.validation_metrics["eval_f1"] > 0.5


def test_precision_16_trains_in_bf16_on_cpu_and_accumulates_gradients(make_config, monkeypatch):
    from trainer import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # a CPU with native bf16
    observer = _Observer()
    config = make_config(precision="16", gradient_accumulation_steps=2, learning_rate=1e-2)
    result = finetune(config, callbacks=[observer])
    assert observer.forward_dtypes == {torch.bfloat16}  # autocast: the head computes in bf16
    assert observer.max_steps == 40  # 160 rows / batch 16 / 2 accumulation steps = 5 steps per epoch, 8 epochs
    assert result.validation_metrics["eval_f1"] > 0.5
    # the test split is scored as the model is served: under the bf16 autocast it was trained and validated in
    recorded = json.loads((Path(config.pytorch_model_folder) / "metrics.json").read_text())["predictions"]
    assert recorded["compute_dtype"] == result.predictions["compute_dtype"] == "bfloat16"


class _LogObserver(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_gradient_accumulation_reports_and_steps_on_the_mean_loss(make_config):
    """Two accumulated batches of 8 make the step one batch of 16 makes, from the same weights and rows: the loss
    and grad_norm logged at the first step agree (transformers 5.24 summed the two batch means: twice as large)."""
    def first_step(**values) -> dict:
        config = make_config(f"ga{values['gradient_accumulation_steps']}", max_steps=1, logging_steps=1,
                             logging_strategy="steps", export_onnx=False, **values)
        observer = _LogObserver()
        finetune(config, callbacks=[observer])
        return next(entry for entry in observer.logs if "loss" in entry)

    whole = first_step(per_device_train_batch_size=16, gradient_accumulation_steps=1)
    halves = first_step(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert halves["loss"] == pytest.approx(whole["loss"], rel=0.15)
    assert halves["grad_norm"] == pytest.approx(whole["grad_norm"], rel=0.15)


def test_precision_32_trains_in_fp32(make_config):
    observer = _Observer()
    result = finetune(make_config(num_train_epochs=1), callbacks=[observer])
    assert observer.forward_dtypes == {torch.float32}
    assert result.predictions["compute_dtype"] == "float32"


def test_auto_find_batch_size_shrinks_the_batch_until_it_fits(make_config, monkeypatch):
    from trainer.hf_trainer import TokenClassificationTrainer
    from trainer.packing import PADDING_KEY

    original, seen = TokenClassificationTrainer.training_step, []

    def training_step(self, model, inputs, *args, **kwargs):
        # rows of the batch: a flat batch (the default, trainer.packing) holds them in one row, bounded by
        # cu_seq_lens_q, plus an alignment row when it is filled up
        rows = (len(inputs["cu_seq_lens_q"]) - 1 - bool(inputs.get(PADDING_KEY)) if "cu_seq_lens_q" in inputs
                else len(inputs["input_ids"]))
        seen.append(rows)
        if rows > 8:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GiB")
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(TokenClassificationTrainer, "training_step", training_step)
    config = make_config(auto_find_batch_size=True, lr_scheduler_type="polynomial", num_train_epochs=2)
    result = finetune(config)
    state = json.loads((list_checkpoints(config.pytorch_model_folder)[-1] / "trainer_state.json").read_text())
    # accelerate 1.15 retries 10% smaller each time (the spec says halving): 16, 14, 12, 10, 9, then 8 fits
    assert seen[:5] == [16, 14, 12, 10, 9] and max(seen[5:]) == 8 and state["train_batch_size"] == 8
    assert result.validation_metrics["eval_f1"] > 0.3


def test_full_determinism_reproduces_a_run(make_config):
    observers = [_Observer(), _Observer()]
    first = finetune(make_config("a", enable_full_determinism=True, num_train_epochs=2), callbacks=[observers[0]])
    second = finetune(make_config("b", enable_full_determinism=True, num_train_epochs=2), callbacks=[observers[1]])
    assert observers[0].deterministic and observers[1].deterministic  # torch's deterministic algorithms were on
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


class _BestAt(TrainerCallback):
    """Makes the evaluation at `step` the best by loss: the test's choice of the best checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_loss"] = 0.0 if state.global_step == self.step else 1.0 + state.global_step


@pytest.mark.parametrize("best_step, rereads", [(20, 0), (10, 1)], ids=["best-is-last", "best-is-earlier"])
def test_best_model_is_read_again_only_when_it_is_not_the_last_steps(make_config, monkeypatch, best_step, rereads):
    """The best checkpoint is the model published either way; its weights are read back from disk only when they
    are not the ones in memory (a second copy of the model at the step's memory peak otherwise)."""
    from conftest import weights_digest
    from transformers import Trainer

    reads = []
    stock = Trainer._load_best_model
    monkeypatch.setattr(Trainer, "_load_best_model", lambda self: reads.append(1) or stock(self))
    config = make_config(num_train_epochs=2, metric_for_best_model="loss")  # 10 steps an epoch: checkpoints 10, 20
    result = finetune(config, callbacks=[_BestAt(best_step)])
    root = Path(config.pytorch_model_folder)
    assert Path(result.best_checkpoint).name == f"checkpoint-{best_step}"
    assert len(reads) == rereads
    assert weights_digest(root) == weights_digest(root / f"checkpoint-{best_step}")
    assert weights_digest(root) != weights_digest(root / f"checkpoint-{30 - best_step}")


def test_publishing_starts_without_the_optimizer_moments(make_config, monkeypatch):
    """After training nothing steps the optimizer: its state (2x the trained parameters) is gone before publishing
    loads, scores and exports the model again."""
    import trainer.outputs as outputs

    class Moments(TrainerCallback):
        during = 0

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            Moments.during = len(getattr(optimizer, "optimizer", optimizer).state)

    at_publish = []
    publish = outputs.publish

    def spy(hf_trainer, *args, **kwargs):
        at_publish.append(len(getattr(hf_trainer.optimizer, "optimizer", hf_trainer.optimizer).state))
        return publish(hf_trainer, *args, **kwargs)

    monkeypatch.setattr(outputs, "publish", spy)
    finetune(make_config(num_train_epochs=1), callbacks=[Moments()])
    assert Moments.during > 0 and at_publish == [0]


def test_a_deberta_v3_config_without_token_types_trains(tmp_path, conll_dir, make_config):
    """microsoft/deberta-v3-* configs have type_vocab_size 0 (no token-type embedding): the fine-tune refused them
    as a config needing a positive size."""
    from transformers import DebertaV2Config, DebertaV2ForTokenClassification

    from conftest import build_tokenizer, run_preprocess

    model = tmp_path / "deberta_model"
    tokenizer = build_tokenizer(model)
    DebertaV2ForTokenClassification(DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=0, position_biased_input=False, relative_attention=True,
        num_labels=2)).save_pretrained(model)
    pre = tmp_path / "pre"
    run_preprocess(train_data=str(conll_dir / "train.conll"), validation_data=str(conll_dir / "validation.conll"),
                   test_data=str(conll_dir / "test.conll"), model_selector_output=str(model),
                   preprocess_output=str(pre), max_seq_length=64)
    config = make_config("deberta", preprocess_output=str(pre), model_selector_output=str(model), max_steps=2)
    result = finetune(config)
    assert result.train_metrics["train_loss"] > 0 and "test_f1" in result.test_metrics
