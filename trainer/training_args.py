"""`TrainingArguments` of a run, derived from FinetuneConfig (the spec's names mapped to transformers 5's)."""

from __future__ import annotations

import math
import os
from typing import Optional

from trainer.config import UNFUSED_OPTIMIZER, FinetuneConfig
from trainer.distributed import has_cuda, world_size
from trainer.precision import precision_flags


def steps_per_epoch(num_examples: int, config: FinetuneConfig, num_processes: int) -> int:
    """Optimizer steps in one epoch, as the HF Trainer counts them (transformers 5.24: a last, partial
    accumulation of batches is a step too)."""
    batches = math.ceil(num_examples / (config.per_device_train_batch_size * num_processes))
    return max(1, math.ceil(batches / config.gradient_accumulation_steps))


def resolve_eval_steps(config: FinetuneConfig, num_examples: int, num_processes: int) -> int:
    """eval_steps, or evaluation_steps_interval × the real number of optimizer steps per epoch."""
    if config.evaluation_steps_interval > 0:
        return max(1, round(config.evaluation_steps_interval * steps_per_epoch(num_examples, config, num_processes)))
    return config.eval_steps


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
        label_names=["labels"],  # named, not read from forward(): a wrapped model (apply_ort's ORTModule) hides it
        save_total_limit=None,  # trainer.checkpoints rotates, after the new checkpoint's manifest is written
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        deepspeed=deepspeed_config,
        report_to=report_to,
        disable_tqdm=True,  # trainer.progress logs a steady line instead (pod logs have no terminal)
        dataloader_pin_memory=has_cuda(),
        # On CPU, accelerate only treats a torchrun launch as distributed (gloo) with use_cpu.
        use_cpu=not has_cuda(),
        **precision_flags(config.precision),
    )
