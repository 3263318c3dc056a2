"""The fine-tune recipe: validate everything, train with the HF Trainer, publish the best model.

Order of work: (1) every input is checked (config, data, model folder, DeepSpeed JSON, LoRA family,
ORT stack, output folders) before the model is loaded; (2) training writes one checkpoint per
evaluation into `pytorch_model_folder`; (3) `trainer.outputs.publish` publishes the best model, the
MLflow model and `metrics.json` (last). Only the main process writes shared outputs; `save_model` runs on
every rank (ZeRO-3 gathers).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trainer.config import FinetuneConfig

logger = logging.getLogger("trainer")


@dataclass
class FinetuneResult:
    pytorch_model_folder: str
    mlflow_model_folder: Optional[str]
    best_checkpoint: Optional[str]
    best_metric: Optional[float]
    validation_metrics: dict
    test_metrics: Optional[dict]
    per_entity: dict
    train_runtime: float  # seconds of training of the whole run, resumed attempts included
    train_samples: int
    train_tokens: int
    train_metrics: dict = field(default_factory=dict)  # transformers' figures of the last attempt
    train_loss: Optional[float] = None  # the mean loss per optimizer step of the whole run, resumed attempts included
    tag_scheme: Optional[str] = None  # what precision/recall/f1 mean: trainer.metrics.describe(tag_scheme)
    # the window the model trained on (preprocess's max_seq_length as it took effect): what it is served in
    # (trainer.inference.recorded_window)
    max_seq_length: Optional[int] = None
    onnx_export: dict = field(default_factory=dict)  # filled when onnx_model_folder is given
    scored_splits: dict = field(default_factory=dict)  # split -> sha256 of the file scored above
    # the split the published model was scored on through the inference core (test, else validation): its
    # predictions file beside metrics.json, sentences, seconds and figures (trainer.evaluate.predict_split)
    predictions: dict = field(default_factory=dict)


def best_validation_metrics(trainer) -> Optional[dict]:
    """The validation figures of the best checkpoint, as logged when it was evaluated during training (the best
    model is that checkpoint reloaded: evaluating it again would only repeat the work)."""
    best = trainer.state.best_model_checkpoint
    if best is None:
        return None
    step = int(Path(best).name.rsplit("-", 1)[-1])
    entry = next((entry for entry in reversed(trainer.state.log_history)
                  if entry.get("step") == step and "eval_loss" in entry), None)
    return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"} if entry else None


def prepare(config: FinetuneConfig):
    """Every check that can fail, before anything is created or loaded (`trainer.validation`).
    Returns (data, model_dir, deepspeed_config)."""
    from trainer.validation import validate_finetune

    checked = validate_finetune(config)
    return checked.data, checked.model_dir, checked.deepspeed_config


def finetune(config: FinetuneConfig, callbacks: Optional[list] = None) -> FinetuneResult:
    """Fine-tune per `config`; returns the best model's metrics. Raises ConfigError/InputError on bad input."""
    import contextlib

    from trainer.distributed import defer_deepspeed_import, is_main_process, pin_deepspeed_accelerator
    from trainer.lock import FolderLock
    from trainer.outputs import validate_outputs

    pin_deepspeed_accelerator()
    defer_deepspeed_import()
    data, model_dir, deepspeed_config = prepare(config)
    # One run per output folder: the main process holds its lock until the outputs are published.
    with FolderLock(config.pytorch_model_folder) if is_main_process() else contextlib.nullcontext():
        validate_outputs(config)  # again, under the lock: another run may have written since prepare()
        resume = _resume_checkpoint(config, data.class_names)
        return _train_and_publish(config, data, model_dir, deepspeed_config, resume, callbacks)


def _drop_optimizer_state(trainer) -> None:
    """Nothing after training steps the optimizer (a resume reads the checkpoints), so its moments, twice the
    trained parameters, go before publishing loads the model again. DeepSpeed keeps its own partitions: left as
    they are."""
    if trainer.optimizer is not None and not trainer.is_deepspeed_enabled:
        getattr(trainer.optimizer, "optimizer", trainer.optimizer).state.clear()  # accelerate wraps the torch one


def _resume_checkpoint(config: FinetuneConfig, class_names: list[str]) -> Optional[Path]:
    from trainer.checkpoints import check_resumable, choose_resume_checkpoint
    from trainer.distributed import is_main_process

    if not config.resume_from_checkpoint:
        return None
    resume = choose_resume_checkpoint(config.pytorch_model_folder, remove_torn=is_main_process())
    if resume is None:
        logger.warning("resume_from_checkpoint=true but no usable checkpoint in %s: starting fresh",
                       config.pytorch_model_folder)
    else:
        check_resumable(resume, config.apply_lora, config.lora_r, class_names)
        logger.info("resuming from %s", resume)
    return resume


def _train_and_publish(config: FinetuneConfig, data, model_dir: Path, deepspeed_config: Optional[dict],
                       resume: Optional[Path], callbacks: Optional[list]) -> FinetuneResult:
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, EarlyStoppingCallback
    from transformers import PrinterCallback, enable_full_determinism, set_seed

    from trainer.distributed import ensure_process_group_env, has_cuda, world_size
    from trainer.evaluate import split_digests
    from trainer.hf_trainer import CheckpointManifestCallback, TokenClassificationTrainer
    from trainer.lora import apply_lora
    from trainer.metrics import ids_and_losses, make_compute_metrics
    from trainer.modeling import load_model
    from trainer.outputs import publish
    from trainer.progress import ProgressCallback, ProgressMeter
    from trainer.training_args import build_training_args

    if deepspeed_config is not None:
        from trainer import safe_loading

        safe_loading.install()
        ensure_process_group_env()
    args = build_training_args(config, len(data.train), deepspeed_config)
    _ = args.device  # initialise the process group now: ZeRO-3 partitions weights inside from_pretrained
    if deepspeed_config is not None:
        import deepspeed

        # deepspeed 0.19.8 prints "DeepSpeed ... built successfully" to stdout on each rank, where the program's
        # result goes: to stderr with the logs
        with contextlib.redirect_stdout(sys.stderr):
            deepspeed.init_distributed(dist_backend="nccl" if has_cuda() else "gloo")  # adopts the group above
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    # Seed before the model exists: a new classification head is initialised while loading.
    enable_full_determinism(config.seed) if config.enable_full_determinism else set_seed(config.seed)
    model = load_model(model_dir, data.class_names, config, training_args=args)
    if config.apply_lora:
        model = apply_lora(model, config)
        trainable, total = model.get_nb_trainable_parameters()
        logger.info("LoRA: %s of %s parameters train (%.2f%%)", f"{trainable:,}", f"{total:,}",
                    100 * trainable / total)
    if config.apply_ort:
        from trainer.ort import wrap

        model = wrap(model)
    from trainer import speed  # speed hooks (trainer/speed.py): CPU allocator, trained-rows embedding, sampler, loss

    sped = speed.prepare(model, config, data.train, use_cpu=not has_cuda())
    from trainer import packing  # padding-free training batches (trainer/packing.py)

    packed = packing.enable(model, data.train, tokenizer, config)

    meter = ProgressMeter()
    all_callbacks = [CheckpointManifestCallback(config.save_total_limit),
                     ProgressCallback(meter, config.progress_seconds, world_size()), *(callbacks or [])]
    if config.apply_early_stopping:
        all_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    # Multiples of 8 feed GPU tensor cores; on a CPU they are only padding (~9 % more positions on WNUT-17).
    collator = DataCollatorForTokenClassification(
        tokenizer, pad_to_multiple_of=8 if config.precision == "16" and has_cuda() else None)
    trainer = speed.trainer_class(TokenClassificationTrainer)(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.validation, processing_class=tokenizer,
        data_collator=collator, compute_metrics=make_compute_metrics(data.class_names, data.tag_scheme),
        preprocess_logits_for_metrics=ids_and_losses, callbacks=all_callbacks, meter=meter,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; ProgressCallback formats them
    trainer.train_data_collator = packed.collator  # None: the padding collator, as for evaluation
    if config.group_by_length:  # length-grouped batches weigh every labelled token the same (trainer/speed.py)
        trainer.length_group_batches = config.length_group_batches
        speed.enable_token_normalized_loss(trainer, data.train)
    if sped.active:  # gradient clipping inside the fused AdamW step (trainer/speed.py)
        speed.enable_folded_clipping(trainer)

    started = time.perf_counter()
    try:
        train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        _drop_optimizer_state(trainer)
    finally:
        packed.restore()  # the model's own attention, then (speed hook) the stock modules and allocator back
        sped.restore()  # before evaluation and publishing
    train_runtime = time.perf_counter() - started
    # train_metrics are transformers' figures of this train() call (an attempt); train_loss and train_runtime cover
    # the whole run: every attempt up to the checkpoint this one resumed from, then this one
    train_metrics = {**train_output.metrics, "resumed_from_step": trainer._initial_global_step}
    train_loss = train_output.metrics.get("train_loss")
    if trainer.prior_totals["loss_sum"] is not None:
        train_loss = trainer.run_totals()["loss_sum"] / max(trainer.state.global_step, 1)
        train_runtime += trainer.prior_totals["train_seconds"]

    validation_metrics = best_validation_metrics(trainer) or trainer.evaluate(data.validation,
                                                                               metric_key_prefix="eval")
    result = FinetuneResult(
        pytorch_model_folder=config.pytorch_model_folder,
        mlflow_model_folder=config.mlflow_model_folder,
        best_checkpoint=trainer.state.best_model_checkpoint,
        best_metric=trainer.state.best_metric,
        validation_metrics=validation_metrics,
        test_metrics=None,  # publishing scores the published model on the test split (trainer.outputs)
        per_entity={},
        train_runtime=train_runtime,
        train_loss=train_loss,
        train_samples=len(data.train),
        train_tokens=data.train.num_tokens,
        train_metrics=train_metrics,
        tag_scheme=trainer.compute_metrics.scheme,
        max_seq_length=data.preprocess_args.get("effective_max_seq_length"),
        scored_splits=split_digests(config.preprocess_output, ["validation"] + (["test"] if data.test else [])),
        predictions={"split": "test" if data.test is not None else "validation"},
    )
    publish(trainer, config, model_dir, data.class_names, result)
    return result
