"""The typed parameter surfaces of the package's programs: fine-tune, preprocess, model import, evaluate.

Each class is the single source of truth of its program (see `trainer.params`): the CLI is generated from
its fields, the Python API takes it, and `scripts/compile_components.py` generates the KFP component's
signature and docstring from it. To add a parameter, add a field here and regenerate.

`FinetuneConfig` follows the reference spec (`shared/spec/token_classification_finetune.md`): names, types
and defaults of the fields marked `spec=True` are a contract (`tests/test_config_surface.py` checks them);
the spec's "true"/"false" strings are accepted wherever a bool is expected.
"""

from __future__ import annotations

from typing import Optional

from trainer.errors import ConfigError
from trainer.params import Params, param, path, surface

# Spec values that no longer exist upstream, mapped openly (README, "Parameters").
# transformers 5 removed its own AdamW (`adamw_hf`); torch's AdamW is the same algorithm. Both AdamW names run
# torch's fused kernel (`adamw_torch_fused`, the transformers 5 default): one optimizer step on a 22M-parameter
# model drops from ~300 ms to ~20 ms on 2 CPU cores (bench/README.md). Under DeepSpeed, plain `adamw_torch`.
OPTIMIZER_MAP = {
    "adamw_hf": "adamw_torch_fused",
    "adamw_torch": "adamw_torch_fused",
    "adafactor": "adafactor",
}
UNFUSED_OPTIMIZER = {"adamw_torch_fused": "adamw_torch"}
METRIC_GREATER_IS_BETTER = {"loss": False, "f1": True, "accuracy": True, "precision": True, "recall": True}
DEEPSPEED_PRESETS = ("zero2", "zero3")


def _spec(default, help, **kwargs):
    return param(default, help, spec=True, **kwargs)


@surface
class FinetuneConfig(Params):
    """Every knob of one token-classification fine-tune (the spec's parameters plus a few of our own)."""

    GROUPS = {"io": "data and model inputs, outputs", "lora": "LoRA", "training": "training",
              "early_stopping": "early stopping", "deepspeed": "DeepSpeed", "ort": "ONNX Runtime"}
    SPEC = True

    # --- Data and model inputs, outputs -------------------------------------------------------------
    preprocess_output: str = path(
        "Output folder of the preprocess component: encoded train/validation/test splits, class_names.json and "
        "the tokenizer.", artifact="Dataset")
    model_selector_output: str = path(
        "Output folder of the model import component: model files and model_selector_args.json.",
        artifact="Model")
    pytorch_model_folder: str = path(
        "Best model (by metric_for_best_model) at the root, one checkpoint per evaluation (weights, config, "
        "tokenizer, optimizer, scheduler, RNG states), finetune_args.json and metrics.json.",
        output=True, artifact="Model")
    mlflow_model_folder: str = path("Best fine-tuned model in MLflow format.", output=True, artifact="Model")

    # --- LoRA ---------------------------------------------------------------------------------------
    apply_lora: bool = _spec(False, "If true, enables LoRA (peft).", group="lora")
    merge_lora_weights: bool = _spec(True, "If true, LoRA weights are merged into the base model before saving.",
                                     group="lora")
    lora_alpha: int = _spec(128, "LoRA alpha.", group="lora", minimum=1)
    lora_r: int = _spec(8, "LoRA rank.", group="lora", minimum=1)
    lora_dropout: float = _spec(0.0, "LoRA dropout.", group="lora", minimum=0, below=1)
    lora_target_modules: Optional[str] = param(
        None, "Comma-separated module names for LoRA; defaults to our per-family map.", group="lora")

    # --- Training -----------------------------------------------------------------------------------
    num_train_epochs: int = _spec(1, "Number of epochs.", group="training")
    max_steps: int = _spec(-1, "If positive, total optimizer steps; overrides num_train_epochs.", group="training")
    per_device_train_batch_size: int = _spec(1, "Per-device training batch size.", group="training", minimum=1)
    per_device_eval_batch_size: int = _spec(1, "Per-device evaluation batch size.", group="training", minimum=1)
    auto_find_batch_size: bool = _spec(False, "On out-of-memory, retry with a smaller batch until it fits "
                                       "(accelerate: 10% smaller each time).", group="training")
    optim: str = _spec("adamw_hf", "Optimizer (adamw_hf and adamw_torch run torch's fused AdamW; the unfused one "
                       "under DeepSpeed).", choices=tuple(OPTIMIZER_MAP), group="training")
    learning_rate: float = _spec(2e-5, "Initial learning rate.", group="training", above=0)
    warmup_steps: int = _spec(0, "Learning-rate warmup steps.", group="training", minimum=0)
    weight_decay: float = _spec(0.0, "Weight decay (not on bias and LayerNorm weights).", group="training",
                                minimum=0)
    adam_beta1: float = _spec(0.9, "AdamW beta1.", group="training", minimum=0, below=1)
    adam_beta2: float = _spec(0.999, "AdamW beta2.", group="training", minimum=0, below=1)
    adam_epsilon: float = _spec(1e-8, "AdamW epsilon.", group="training", above=0)
    gradient_accumulation_steps: int = _spec(1, "Gradient accumulation steps.", group="training", minimum=1)
    lr_scheduler_type: str = _spec(
        "linear", "Learning-rate scheduler.", group="training",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"))
    precision: str = _spec("32", "16: mixed precision (bf16 where supported, else fp16); 32: full precision.",
                           choices=("32", "16"), group="training")
    seed: int = _spec(42, "Random seed.", group="training", minimum=0, maximum=2**32 - 1)
    enable_full_determinism: bool = _spec(False, "Deterministic algorithms (slower).", group="training")
    dataloader_num_workers: int = _spec(0, "Data-loading worker processes.", group="training", minimum=0)
    ignore_mismatched_sizes: bool = _spec(True, "Re-initialise weights whose shape differs (e.g. a new head).",
                                          group="training")
    max_grad_norm: float = _spec(1.0, "Gradient clipping norm (0: no clipping).", group="training", minimum=0)
    evaluation_strategy: str = _spec("epoch", "When to evaluate (and checkpoint).", choices=("epoch", "steps"),
                                     group="training")
    evaluation_steps_interval: float = _spec(
        0.0, "Evaluate every this fraction of an epoch's optimizer steps; overrides eval_steps if not 0.",
        group="training", minimum=0, maximum=1)
    eval_steps: int = _spec(500, "Optimizer steps between evaluations when evaluation_strategy=steps.",
                            group="training", minimum=1)
    logging_strategy: str = _spec("epoch", "When to log.", choices=("epoch", "steps"), group="training")
    logging_steps: int = _spec(500, "Steps between logs when logging_strategy=steps.", group="training", minimum=1)
    metric_for_best_model: str = _spec("loss", "Metric that picks the best checkpoint.",
                                       choices=tuple(METRIC_GREATER_IS_BETTER), group="training")
    resume_from_checkpoint: bool = _spec(
        False, "Resume from the latest complete checkpoint in pytorch_model_folder (weights, optimizer, "
               "scheduler, RNG).", group="training")
    save_total_limit: int = _spec(-1, "Keep at most this many checkpoints (the best is never deleted); -1 keeps "
                                  "all.", group="training", minimum=-1)
    group_by_length: bool = param(True, "Batch rows of similar length together (less padding, faster).",
                                  group="training")
    progress_seconds: float = param(30.0, "Seconds between progress lines (step, loss, tokens/s, ETA) in the log; "
                                    "0 logs every optimizer step.", group="training", minimum=0)

    # --- Early stopping -----------------------------------------------------------------------------
    apply_early_stopping: bool = _spec(False, "If true, enables early stopping.", group="early_stopping")
    early_stopping_patience: int = _spec(1, "Evaluations without improvement before stopping.",
                                         group="early_stopping", minimum=1)
    early_stopping_threshold: float = _spec(0.0, "Minimum improvement that counts.", group="early_stopping",
                                            minimum=0)

    # --- DeepSpeed / ORT ----------------------------------------------------------------------------
    apply_deepspeed: bool = _spec(False, "If true, trains with DeepSpeed.", group="deepspeed")
    deepspeed: Optional[str] = path(
        "DeepSpeed JSON config file (or a folder holding one); used only with apply_deepspeed=true. Default: "
        "deepspeed_preset.", artifact="Artifact", optional=True, group="deepspeed")
    deepspeed_preset: str = param("zero2", "DeepSpeed config used when no deepspeed file is given: ZeRO-2 or "
                                  "ZeRO-3, every size 'auto'.", choices=DEEPSPEED_PRESETS, group="deepspeed")
    apply_ort: bool = _spec(False, "If true, trains with ONNX Runtime (ORTModule); fails if unavailable.",
                            group="ort")

    def validate(self) -> None:
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs and max_steps are both non-positive: nothing to train; "
                              "set num_train_epochs >= 1 or max_steps >= 1")
        if self.save_total_limit == 0:
            raise ConfigError("save_total_limit must be -1 (keep all) or >= 1, got 0")
        if self.deepspeed and not self.apply_deepspeed:
            raise ConfigError("a deepspeed config was given but apply_deepspeed is false; set apply_deepspeed=true "
                              "to use it (the spec requires both)")
        if self.apply_ort and self.apply_deepspeed:
            raise ConfigError("apply_ort and apply_deepspeed cannot be combined")
        if self.lora_target_modules is not None and not self.target_modules:
            raise ConfigError(f"lora_target_modules={self.lora_target_modules!r} names no module")

    # --- Conversions --------------------------------------------------------------------------------
    @property
    def greater_is_better(self) -> bool:
        return METRIC_GREATER_IS_BETTER[self.metric_for_best_model]

    @property
    def hf_optim(self) -> str:
        return OPTIMIZER_MAP[self.optim]

    @property
    def target_modules(self) -> Optional[list[str]]:
        if not self.lora_target_modules:
            return None
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]


@surface
class PreprocessConfig(Params):
    """Read labelled data, split it, tokenize it with the imported model's tokenizer and align the labels."""

    GROUPS = {"io": "data and model inputs, output", "data": "data", "encoding": "encoding", "split": "splits"}

    train_data: str = path(
        "Training data: a CoNLL file (token<TAB>tag, blank line between sentences), a JSON Lines file (token and "
        "tag list columns), or a folder holding train.* and optionally validation.*/dev.* and test.* files (used "
        "when validation_data/test_data are not given).", artifact="Dataset")
    model_selector_output: str = path(
        "Model import output (or any folder with tokenizer files); its tokenizer is used and saved into the "
        "output.", artifact="Model")
    preprocess_output: str = path(
        "Folder with train/validation/test.jsonl (input_ids, attention_mask, labels, tokens, tags), "
        "class_names.json, preprocess_args.json and the tokenizer.", output=True, artifact="Dataset")
    validation_data: Optional[str] = path("Validation data (same formats); if absent, split off the training data.",
                                          artifact="Dataset", optional=True)
    test_data: Optional[str] = path("Test data (same formats); if absent, split off the training data.",
                                    artifact="Dataset", optional=True)
    token_column: str = param("tokens", "JSON Lines column holding the words.", group="data")
    tag_column: str = param("ner_tags", "JSON Lines column holding the tags.", group="data")
    max_seq_length: int = param(512, "Rows are truncated to this many tokens (capped at the tokenizer's maximum).",
                                group="encoding", minimum=2)
    label_all_tokens: bool = param(False, "true: continuation sub-tokens get the word's label (B- turned into I-); "
                                   "false: they are not scored (-100).", group="encoding")
    add_prefix_space: str = param("auto", "Prefix words with a space before tokenizing: auto (true for byte-level "
                                  "BPE tokenizers such as RoBERTa/GPT-2/DeBERTa), true or false.",
                                  choices=("auto", "true", "false"), group="encoding")
    validation_ratio: float = param(0.1, "Fraction of the training data split off as validation when "
                                    "validation_data is absent.", group="split", minimum=0, below=1)
    test_ratio: float = param(0.1, "Fraction of the training data split off as test when test_data is absent (when "
                              "exactly one split is missing it gets validation_ratio + test_ratio, i.e. 80/20).",
                              group="split", minimum=0, below=1)
    split_seed: int = param(42, "Seed of the split shuffle.", group="split", minimum=0)

    def validate(self) -> None:
        if self.validation_ratio + self.test_ratio >= 1:
            raise ConfigError(f"validation_ratio + test_ratio must be < 1, got "
                              f"{self.validation_ratio} + {self.test_ratio}")


@surface
class ModelImportConfig(Params):
    """Bring a Hugging Face model (folder, LoRA adapter, earlier fine-tune output, MLflow model) into a
    model-import output folder."""

    GROUPS = {"io": "inputs, output", "source": "model source"}
    INPUT_VALUES = ("model_path", "mlflow_model_path")

    model_selector_output: str = path(
        "Folder with the model (and tokenizer) files at its root and model_selector_args.json "
        "({\"model_name\", \"model_name_or_path\", \"model_family\", \"source\"}).", output=True, artifact="Model")
    model: Optional[str] = path(
        "The model as an input artifact (an HF folder or an MLflow transformers model folder); alternative to "
        "model_path / mlflow_model_path.", artifact="Model", optional=True)
    model_path: str = param("", "A Hugging Face model folder already in the container (e.g. on a mounted PVC): "
                            "config.json (or adapter_config.json), weights, tokenizer.", group="source")
    mlflow_model_path: str = param("", "An MLflow transformers model folder in the container (MLmodel + model/ + "
                                   "components/tokenizer/).", group="source")
    model_name: str = param("", "Name recorded in model_selector_args.json (default: derived from the source).",
                            group="source")

    def validate(self) -> None:
        given = [name for name in ("model", "model_path", "mlflow_model_path") if getattr(self, name)]
        if len(given) != 1:
            raise ConfigError(f"give exactly one model source: model, model_path or mlflow_model_path "
                              f"(got {given or 'none'})")


@surface
class EvaluateConfig(Params):
    """Score a fine-tuned model on one split of a preprocess output (entity-level seqeval and token figures)."""

    GROUPS = {"io": "inputs, outputs", "evaluation": "evaluation"}

    model: str = path("A fine-tuned model folder (the finetune component's pytorch_model_folder: the best model at "
                      "its root; unmerged LoRA output too) or a model-import output.", artifact="Model")
    preprocess_output: str = path("Output folder of the preprocess component (encoded splits, class_names.json, "
                                  "tokenizer).", artifact="Dataset")
    predictions: str = path("JSON Lines, one sentence a line: {\"tokens\", \"tags\", \"predicted_tags\"}.",
                            output=True, artifact="Dataset")
    split: str = param("test", "Which split to evaluate.", choices=("test", "validation", "train"),
                       group="evaluation")
    batch_size: int = param(16, "Evaluation batch size.", group="evaluation", minimum=1)
