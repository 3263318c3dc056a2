"""The fine-tune recipe: validate everything, train with the HF Trainer, publish the best model.

Order of work: (1) every input is checked (config, data, model folder, DeepSpeed JSON, LoRA family,
ORT stack, output folders) before the model is loaded; (2) training writes one checkpoint per
evaluation into `pytorch_model_folder`; (3) the best model is staged and published at the root of
`pytorch_model_folder` (weights last), then the MLflow model is staged and renamed into place.
Only the main process writes shared outputs; `save_model` runs on every rank (ZeRO-3 gathers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from trainer.config import UNFUSED_OPTIMIZER, ConfigError, FinetuneConfig
from trainer.model_io import BASE_MODEL_SUBDIR, InputError, load_token_classification_model, resolve_model_dir

logger = logging.getLogger("trainer")

FINETUNE_ARGS = "finetune_args.json"
METRICS_FILE = "metrics.json"


@dataclass
class FinetuneResult:
    pytorch_model_folder: str
    mlflow_model_folder: Optional[str]
    best_checkpoint: Optional[str]
    best_metric: Optional[float]
    validation_metrics: dict
    test_metrics: Optional[dict]
    per_entity: dict
    train_runtime: float
    train_samples: int
    train_tokens: int
    train_metrics: dict = field(default_factory=dict)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_ort_available() -> None:
    """apply_ort needs ORTModule (torch-ort); say exactly what is missing instead of training without it."""
    try:
        from torch_ort import ORTModule  # noqa: F401
    except Exception as err:  # ImportError, or a torch-ort built for another torch
        raise ConfigError(
            "apply_ort=true needs ONNX Runtime training (the `torch-ort` package providing ORTModule), which is "
            f"not usable in this environment ({type(err).__name__}: {err}). torch-ort does not build against "
            "torch 2.13: use the ORT trainer image (images/Dockerfile.ort) or set apply_ort=false.") from None


def ensure_process_group_env() -> None:
    """DeepSpeed without a launcher (one process, e.g. a single-pod KFP step) needs the env a launcher sets."""
    if "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})


def steps_per_epoch(num_examples: int, config: FinetuneConfig, num_processes: int) -> int:
    """Optimizer steps in one epoch, as the HF Trainer counts them."""
    batches = math.ceil(num_examples / (config.per_device_train_batch_size * num_processes))
    return max(1, batches // config.gradient_accumulation_steps)


def resolve_eval_steps(config: FinetuneConfig, num_examples: int, num_processes: int) -> int:
    """eval_steps, or evaluation_steps_interval × the real number of optimizer steps per epoch."""
    if config.evaluation_steps_interval > 0:
        return max(1, round(config.evaluation_steps_interval * steps_per_epoch(num_examples, config, num_processes)))
    return config.eval_steps


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def precision_flags(precision: str) -> dict:
    """precision 16: bf16 where the hardware has it, else fp16 (CPU autocast is bf16-only)."""
    if precision == "32":
        return {}
    import torch

    if not _has_cuda():
        return {"bf16": True}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


def build_training_args(config: FinetuneConfig, num_train_examples: int, deepspeed_config: Optional[dict]):
    from transformers import TrainingArguments

    eval_steps = resolve_eval_steps(config, num_train_examples, world_size())
    report_to = ["mlflow"] if os.environ.get("MLFLOW_TRACKING_URI") else "none"
    return TrainingArguments(
        output_dir=config.pytorch_model_folder,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        auto_find_batch_size=config.auto_find_batch_size,
        optim=UNFUSED_OPTIMIZER.get(config.hf_optim, config.hf_optim) if deepspeed_config else config.hf_optim,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        seed=config.seed,
        full_determinism=config.enable_full_determinism,
        dataloader_num_workers=config.dataloader_num_workers,
        max_grad_norm=config.max_grad_norm,
        eval_strategy=config.evaluation_strategy,
        eval_steps=eval_steps,
        save_strategy=config.evaluation_strategy,  # a checkpoint at every evaluation
        save_steps=eval_steps,
        logging_strategy=config.logging_strategy,
        logging_steps=config.logging_steps,
        metric_for_best_model=f"eval_{config.metric_for_best_model}",
        greater_is_better=config.greater_is_better,
        load_best_model_at_end=True,
        save_total_limit=None if config.save_total_limit == -1 else config.save_total_limit,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        deepspeed=deepspeed_config,
        report_to=report_to,
        disable_tqdm=True,
        dataloader_pin_memory=_has_cuda(),
        # On CPU, accelerate only treats a torchrun launch as distributed (gloo) with use_cpu.
        use_cpu=not _has_cuda(),
        **precision_flags(config.precision),
    )


def load_model(model_dir: Path, class_names: list[str], config: FinetuneConfig):
    """The base model with our label map; an earlier unmerged LoRA output is merged first."""
    from transformers import AutoModelForTokenClassification

    labels = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
              "label2id": {n: i for i, n in enumerate(class_names)},
              "ignore_mismatched_sizes": config.ignore_mismatched_sizes}
    if (model_dir / "adapter_config.json").exists():  # an earlier unmerged LoRA fine-tune: merge, then go on
        model = load_token_classification_model(model_dir)
        if model.config.num_labels != len(class_names):
            if not config.ignore_mismatched_sizes:
                raise InputError("the earlier fine-tune has a different label count; set ignore_mismatched_sizes=true")
            model = _reinit_head(model, class_names)
        model.config.id2label, model.config.label2id = labels["id2label"], labels["label2id"]
        return model
    try:
        # Under ZeRO-3 a resized head cannot load into partitioned weights (ignore_mismatched_sizes fails).
        with plain_loading(_head_changes(model_dir, len(class_names))):
            return AutoModelForTokenClassification.from_pretrained(model_dir, **labels)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise InputError(f"transformers has no token-classification head for the model in {model_dir}: "
                             f"{str(err).splitlines()[0]}") from None
        raise


@contextlib.contextmanager
def plain_loading(active: bool = True):
    """Load whole models (no ZeRO-3 partitioning) inside this block; DeepSpeed partitions them at engine init."""
    from transformers.integrations import deepspeed as hf_ds

    if not active or not hf_ds.is_deepspeed_zero3_enabled():
        yield
        return
    reference = hf_ds._hf_deepspeed_config_weak_ref()
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(reference)


def _head_changes(model_dir: Path, num_labels: int) -> bool:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).num_labels != num_labels


def _reinit_head(model, class_names: list[str]):
    """Swap the classifier for one sized to the new label set (continual fine-tuning, new labels)."""
    import torch

    head = model.classifier
    model.classifier = torch.nn.Linear(head.in_features, len(class_names))
    model.config.num_labels = len(class_names)
    model.num_labels = len(class_names)
    return model


def validate_outputs(config: FinetuneConfig) -> None:
    from trainer.checkpoints import list_checkpoints
    from trainer.outputs import ensure_empty_or_absent

    ensure_empty_or_absent(config.mlflow_model_folder, "mlflow_model_folder")
    if list_checkpoints(config.pytorch_model_folder) and not config.resume_from_checkpoint:
        raise InputError(f"pytorch_model_folder {config.pytorch_model_folder} already holds checkpoints; set "
                         "resume_from_checkpoint=true to continue them or give an empty folder")


def prepare(config: FinetuneConfig):
    """Every check that can fail, before any model is loaded. Returns (data, model_dir, deepspeed_config)."""
    from trainer.data import load_preprocess_output
    from trainer.deepspeed_config import load_deepspeed_config
    from trainer.lora import target_modules_for
    from transformers import AutoConfig

    data = load_preprocess_output(config.preprocess_output)
    model_dir = resolve_model_dir(config.model_selector_output)
    model_config_dir = model_dir / BASE_MODEL_SUBDIR if (model_dir / "adapter_config.json").exists() else model_dir
    try:
        model_type = AutoConfig.from_pretrained(model_config_dir).model_type
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the model config in {model_config_dir}: {err}") from None
    if config.apply_lora:
        target_modules_for(model_type, config.target_modules)
    deepspeed_config = load_deepspeed_config(config.deepspeed) if config.apply_deepspeed else None
    if config.apply_ort:
        check_ort_available()
    validate_outputs(config)
    return data, model_dir, deepspeed_config


def finetune(config: FinetuneConfig, callbacks: Optional[list] = None) -> FinetuneResult:
    """Fine-tune per `config`; returns the best model's metrics. Raises ConfigError/InputError on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data, model_dir, deepspeed_config = prepare(config)

    from transformers import (AutoTokenizer, DataCollatorForTokenClassification, EarlyStoppingCallback, Trainer,
                              enable_full_determinism, set_seed)

    from trainer.checkpoints import latest_complete_checkpoint
    from trainer.lora import apply_lora
    from trainer.metrics import argmax_logits, make_compute_metrics

    Path(config.pytorch_model_folder).mkdir(parents=True, exist_ok=True)
    if deepspeed_config is not None:
        ensure_process_group_env()
    args = build_training_args(config, len(data.train), deepspeed_config)
    _ = args.device  # initialise the process group now: ZeRO-3 partitions weights inside from_pretrained
    if deepspeed_config is not None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if _has_cuda() else "gloo")  # adopts the group above
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    # Seed before the model exists: a new classification head is initialised while loading.
    enable_full_determinism(config.seed) if config.enable_full_determinism else set_seed(config.seed)
    model = load_model(model_dir, data.class_names, config)
    if config.apply_lora:
        model = apply_lora(model, config)
        model.print_trainable_parameters()
    if config.apply_ort:
        from torch_ort import ORTModule

        model = ORTModule(model)
    from trainer import speed  # --- speed hooks (trainer/speed.py): CPU kernels, sampler, eval order ---

    sped = speed.prepare(model, config, data.train, use_cpu=not _has_cuda())

    all_callbacks = list(callbacks or [])
    if config.apply_early_stopping:
        all_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    # Multiples of 8 feed GPU tensor cores; on a CPU they are only padding (~9 % more positions on WNUT-17).
    collator = DataCollatorForTokenClassification(
        tokenizer, pad_to_multiple_of=8 if config.precision == "16" and _has_cuda() else None)
    trainer = speed.trainer_class(Trainer)(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.validation, processing_class=tokenizer,
        data_collator=collator, compute_metrics=make_compute_metrics(data.class_names),
        preprocess_logits_for_metrics=argmax_logits, callbacks=all_callbacks,
    )
    if config.group_by_length and os.environ.get("KFP_TOKEN_NORM", "1") == "1":  # --- speed hook: loss weights ---
        speed.enable_token_normalized_loss(trainer, data.train)

    resume = None
    if config.resume_from_checkpoint:
        resume = latest_complete_checkpoint(config.pytorch_model_folder, drop_incomplete=is_main_process())
        if resume is None:
            logger.warning("resume_from_checkpoint=true but no complete checkpoint in %s: starting fresh",
                           config.pytorch_model_folder)
        else:
            logger.info("resuming from %s", resume)
    started = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        sped.restore()  # --- speed hook: the stock modules back before evaluation and publishing ---
    train_runtime = time.perf_counter() - started

    validation_metrics = trainer.evaluate(data.validation, metric_key_prefix="eval")
    scored = data.test if data.test is not None else data.validation
    prediction = trainer.predict(scored, metric_key_prefix="test" if data.test is not None else "eval")
    per_entity = _per_entity(prediction, data.class_names)
    test_metrics = prediction.metrics if data.test is not None else None

    result = FinetuneResult(
        pytorch_model_folder=config.pytorch_model_folder,
        mlflow_model_folder=config.mlflow_model_folder,
        best_checkpoint=trainer.state.best_model_checkpoint,
        best_metric=trainer.state.best_metric,
        validation_metrics=validation_metrics,
        test_metrics=test_metrics,
        per_entity=per_entity,
        train_runtime=train_runtime,
        train_samples=len(data.train),
        train_tokens=data.train.num_tokens,
        train_metrics=train_output.metrics,
    )
    _publish(trainer, config, model_dir, data, result)
    return result


def _per_entity(prediction, class_names: list[str]) -> dict:
    import numpy as np

    from trainer.metrics import align, entity_scores

    true, pred = align(np.asarray(prediction.predictions), np.asarray(prediction.label_ids), class_names)
    return entity_scores(true, pred, class_names)[1]


def _publish(trainer, config: FinetuneConfig, model_dir: Path, data, result: FinetuneResult) -> None:
    """Stage the best model on every rank (ZeRO-3 gathers), then publish from the main process only."""
    from trainer.lora import is_peft_model

    root = Path(config.pytorch_model_folder)
    stage = root / ".best_model.incomplete"
    if trainer.args.should_save and stage.exists():
        shutil.rmtree(stage)
    trainer.accelerator.wait_for_everyone()
    peft = is_peft_model(trainer.accelerator.unwrap_model(trainer.model))
    trainer.save_model(str(stage / "adapter" if peft else stage))
    trainer.accelerator.wait_for_everyone()
    if not trainer.args.should_save:
        return
    with plain_loading():  # the main process alone reloads the model: no collective partitioning
        _publish_main(stage, root, peft, config, model_dir, data, result)


def _publish_main(stage: Path, root: Path, peft: bool, config: FinetuneConfig, model_dir: Path, data,
                  result: FinetuneResult) -> None:
    from trainer.mlflow_model import save_mlflow_model
    from trainer.outputs import publish_dir, publish_into, staging_dir, write_json_atomic

    if peft:
        _finish_lora(stage, model_dir, data, config)
    write_json_atomic(stage / FINETUNE_ARGS, config.to_dict())
    publish_into(stage, root)
    mlflow_stage = staging_dir(config.mlflow_model_folder)
    shutil.rmtree(mlflow_stage)  # mlflow wants to create the folder itself
    save_mlflow_model(root, mlflow_stage)
    publish_dir(mlflow_stage, config.mlflow_model_folder)
    write_json_atomic(root / METRICS_FILE, asdict(result))  # last: its presence means the folder is complete
    logger.info("best model: %s (%s=%s); outputs in %s and %s", result.best_checkpoint,
                config.metric_for_best_model, result.best_metric, root, config.mlflow_model_folder)


def _finish_lora(stage: Path, model_dir: Path, data, config: FinetuneConfig) -> None:
    """Turn the saved adapter into a merged model, or into adapter + base_model/ that reload together."""
    from peft import PeftModel

    adapter_dir = stage / "adapter"
    base = load_model(model_dir, data.class_names, config)
    if config.merge_lora_weights:
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(stage)
    else:
        base.save_pretrained(stage / BASE_MODEL_SUBDIR)
        for item in adapter_dir.iterdir():
            os.replace(item, stage / item.name)
        base.config.save_pretrained(stage)  # config.json with id2label/label2id beside the adapter
    shutil.rmtree(adapter_dir, ignore_errors=True)
