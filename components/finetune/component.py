"""KFP component: fine-tune a Hugging Face encoder for token classification (the reference spec's surface).

Every parameter of the reference spec (shared/spec/token_classification_finetune.md) is an input with the spec's
name, type and default (string booleans stay strings "true"/"false"); `tests/test_config_surface.py` checks this
signature against `trainer.config.FinetuneConfig`.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import TRAINER_CPU_IMAGE

# Inputs/outputs that are artifact plumbing rather than FinetuneConfig values of the same kind.
ARTIFACT_IO = ("preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder",
               "metrics", "report", "deepspeed")


@dsl.component(base_image=TRAINER_CPU_IMAGE, install_kfp_package=False)
def finetune(
    preprocess_output: Input[Dataset],
    model_selector_output: Input[Model],
    pytorch_model_folder: Output[Model],
    mlflow_model_folder: Output[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
    apply_lora: str = 'false',
    merge_lora_weights: str = 'true',
    lora_alpha: int = 128,
    lora_r: int = 8,
    lora_dropout: float = 0.0,
    lora_target_modules: Optional[str] = None,
    num_train_epochs: int = 1,
    max_steps: int = -1,
    per_device_train_batch_size: int = 1,
    per_device_eval_batch_size: int = 1,
    auto_find_batch_size: str = 'false',
    optim: str = 'adamw_hf',
    learning_rate: float = 2e-05,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_epsilon: float = 1e-08,
    gradient_accumulation_steps: int = 1,
    lr_scheduler_type: str = 'linear',
    precision: str = '32',
    seed: int = 42,
    enable_full_determinism: str = 'false',
    dataloader_num_workers: int = 0,
    ignore_mismatched_sizes: str = 'true',
    max_grad_norm: float = 1.0,
    evaluation_strategy: str = 'epoch',
    evaluation_steps_interval: float = 0.0,
    eval_steps: int = 500,
    logging_strategy: str = 'epoch',
    logging_steps: int = 500,
    metric_for_best_model: str = 'loss',
    resume_from_checkpoint: str = 'false',
    save_total_limit: int = -1,
    group_by_length: str = 'true',
    apply_early_stopping: str = 'false',
    early_stopping_patience: int = 1,
    early_stopping_threshold: float = 0.0,
    apply_deepspeed: str = 'false',
    apply_ort: str = 'false',
    deepspeed: Optional[Input[Artifact]] = None,
):
    """Fine-tune a Hugging Face model for token classification (NER, POS, PII), with optional LoRA, DeepSpeed, ORT.

    Args:
        preprocess_output: Output folder of the preprocess component: encoded train/validation/test splits,
            class_names.json and the tokenizer.
        model_selector_output: Output folder of the model import component: model files and
            model_selector_args.json.
        pytorch_model_folder: Best model (by metric_for_best_model) at the root, one checkpoint per evaluation
            (weights, config, tokenizer, optimizer, scheduler, RNG states) and metrics.json.
        mlflow_model_folder: Best fine-tuned model in MLflow transformers format.
        metrics: Every validation (eval_*) and test (test_*) figure, plus best_metric and train_runtime.
        report: Markdown report: overall figures and the per-entity precision/recall/F1 table.
        apply_lora: If true, enables LoRA (peft). One of true, false.
        merge_lora_weights: If true, LoRA weights are merged into the base model before saving. One of true, false.
        lora_alpha: LoRA alpha.
        lora_r: LoRA rank.
        lora_dropout: LoRA dropout.
        lora_target_modules: Comma-separated module names for LoRA; defaults to our per-family map. (Extension, not in the reference spec.)
        num_train_epochs: Number of epochs.
        max_steps: If positive, total optimizer steps; overrides num_train_epochs.
        per_device_train_batch_size: Per-device training batch size.
        per_device_eval_batch_size: Per-device evaluation batch size.
        auto_find_batch_size: Halve the batch size on out-of-memory until it fits. One of true, false.
        optim: Optimizer (adamw_hf is mapped to adamw_torch). One of adamw_hf, adamw_torch, adafactor.
        learning_rate: Initial learning rate.
        warmup_steps: Learning-rate warmup steps.
        weight_decay: Weight decay (not on bias and LayerNorm weights).
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_epsilon: AdamW epsilon.
        gradient_accumulation_steps: Gradient accumulation steps.
        lr_scheduler_type: Learning-rate scheduler. One of linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup.
        precision: 16: mixed precision (bf16 where supported, else fp16); 32: full precision. One of 32, 16.
        seed: Random seed.
        enable_full_determinism: Deterministic algorithms (slower). One of true, false.
        dataloader_num_workers: Data-loading worker processes.
        ignore_mismatched_sizes: Re-initialise weights whose shape differs (e.g. a new head). One of true, false.
        max_grad_norm: Gradient clipping norm.
        evaluation_strategy: When to evaluate (and checkpoint). One of epoch, steps.
        evaluation_steps_interval: Evaluate every this fraction of an epoch's optimizer steps; overrides eval_steps if not 0.
        eval_steps: Optimizer steps between evaluations when evaluation_strategy=steps.
        logging_strategy: When to log. One of epoch, steps.
        logging_steps: Steps between logs when logging_strategy=steps.
        metric_for_best_model: Metric that picks the best checkpoint. One of loss, f1, accuracy, precision, recall.
        resume_from_checkpoint: Resume from the latest complete checkpoint in pytorch_model_folder (weights, optimizer, scheduler, RNG). One of true, false.
        save_total_limit: Keep at most this many checkpoints (the best is never deleted); -1 keeps all.
        group_by_length: Batch rows of similar length together (less padding, faster). One of true, false. (Extension, not in the reference spec.)
        apply_early_stopping: If true, enables early stopping. One of true, false.
        early_stopping_patience: Evaluations without improvement before stopping.
        early_stopping_threshold: Minimum improvement that counts.
        apply_deepspeed: If true, trains with DeepSpeed. One of true, false.
        apply_ort: If true, trains with ONNX Runtime (ORTModule); fails if unavailable. One of true, false.

        deepspeed: DeepSpeed JSON config file; used only with apply_deepspeed="true" (default: ZeRO-2 with 'auto').
    """
    _args = dict(locals())
    import dataclasses
    import json
    import logging
    import math

    from trainer.config import FinetuneConfig
    from trainer.finetune import finetune as run_finetune

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    plumbing = ("preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder",
                "metrics", "report", "deepspeed")
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    values = {k: v for k, v in _args.items() if k in names and k not in plumbing}
    values.update(preprocess_output=preprocess_output.path, model_selector_output=model_selector_output.path,
                  pytorch_model_folder=pytorch_model_folder.path, mlflow_model_folder=mlflow_model_folder.path,
                  deepspeed=deepspeed.path if deepspeed is not None else None)
    config = FinetuneConfig(**values)
    print(f"finetune config:\n{config.to_json()}")
    result = run_finetune(config)

    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    figures = {}
    figures.update(result.validation_metrics or {})
    figures.update(result.test_metrics or {})
    if finite(result.best_metric):
        figures["best_metric"] = result.best_metric
    if finite(result.train_runtime):
        figures["train_runtime"] = result.train_runtime
    for name, value in sorted(figures.items()):
        if finite(value):
            metrics.log_metric(name, float(value))
    for entity, scores in sorted((result.per_entity or {}).items()):
        if finite(scores.get("f1")):
            metrics.log_metric(f"entity_{entity}_f1", float(scores["f1"]))

    lines = ["# Token classification fine-tune", "",
             f"Best checkpoint: `{result.best_checkpoint}` "
             f"({config.metric_for_best_model} = {result.best_metric})", "",
             "| Metric | Validation | Test |", "| --- | --- | --- |"]
    keys = sorted({k[len("eval_"):] for k in (result.validation_metrics or {}) if k.startswith("eval_")}
                  | {k[len("test_"):] for k in (result.test_metrics or {}) if k.startswith("test_")})

    def fmt(value) -> str:
        return f"{value:.4f}" if finite(value) else ("-" if value is None else str(value))

    for key in keys:
        lines.append(f"| {key} | {fmt((result.validation_metrics or {}).get('eval_' + key))} "
                     f"| {fmt((result.test_metrics or {}).get('test_' + key))} |")
    split = "test" if result.test_metrics else "validation"
    lines += ["", f"## Per entity ({split} split)", "", "| Entity | Precision | Recall | F1 | Support |",
              "| --- | --- | --- | --- | --- |"]
    for entity, scores in sorted((result.per_entity or {}).items()):
        lines.append(f"| {entity} | {fmt(scores.get('precision'))} | {fmt(scores.get('recall'))} "
                     f"| {fmt(scores.get('f1'))} | {scores.get('number', '-')} |")
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")

    pytorch_model_folder.metadata.update(framework="transformers", best_checkpoint=str(result.best_checkpoint),
                                         metric_for_best_model=config.metric_for_best_model)
    if finite(result.best_metric):
        pytorch_model_folder.metadata["best_metric"] = float(result.best_metric)
    mlflow_model_folder.metadata.update(framework="mlflow.transformers")
    print(json.dumps({k: v for k, v in figures.items() if finite(v)}, indent=2, sort_keys=True))
