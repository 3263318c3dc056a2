"""The one typed config of a fine-tune run.

`FinetuneConfig` is the single source of truth: the CLI (`trainer.cli`) is generated from its fields,
the Python API (`trainer.finetune`) takes it, and the KFP component signature is checked against it
by `tests/test_config_surface.py`. Field names, defaults and enums follow the reference spec
(`shared/spec/token_classification_finetune.md`); string booleans "true"/"false" are accepted
wherever a bool is expected, as the spec passes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A parameter value that can never work; raised before any heavy work starts."""


# Spec values that no longer exist upstream, mapped openly (README, "Parameter notes").
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


def _param(default: Any, help: str, *, choices: Optional[tuple] = None, group: str, spec: bool = True):
    return field(default=default, metadata={"help": help, "choices": choices, "group": group, "spec": spec})


def _path(help: str):
    return field(metadata={"help": help, "group": "io", "spec": True})


@dataclass
class FinetuneConfig:
    """Every knob of one token-classification fine-tune (spec parameters plus a few of our own)."""

    # --- Data and model inputs, outputs -------------------------------------------------------
    preprocess_output: str = _path("Preprocess output folder: encoded splits, tokenizer, class_names.json.")
    model_selector_output: str = _path("Model import output folder: weights + model_selector_args.json.")
    pytorch_model_folder: str = _path("Output: best model at the root plus one checkpoint per evaluation.")
    mlflow_model_folder: str = _path("Output: best model as an MLflow transformers model.")

    # --- LoRA ---------------------------------------------------------------------------------
    apply_lora: bool = _param(False, "If true, enables LoRA (peft).", group="lora")
    merge_lora_weights: bool = _param(True, "If true, LoRA weights are merged into the base model before saving.",
                                      group="lora")
    lora_alpha: int = _param(128, "LoRA alpha.", group="lora")
    lora_r: int = _param(8, "LoRA rank.", group="lora")
    lora_dropout: float = _param(0.0, "LoRA dropout.", group="lora")
    lora_target_modules: Optional[str] = _param(
        None, "Comma-separated module names for LoRA; defaults to our per-family map.", group="lora", spec=False)

    # --- Training -----------------------------------------------------------------------------
    num_train_epochs: int = _param(1, "Number of epochs.", group="training")
    max_steps: int = _param(-1, "If positive, total optimizer steps; overrides num_train_epochs.", group="training")
    per_device_train_batch_size: int = _param(1, "Per-device training batch size.", group="training")
    per_device_eval_batch_size: int = _param(1, "Per-device evaluation batch size.", group="training")
    auto_find_batch_size: bool = _param(False, "Halve the batch size on out-of-memory until it fits.",
                                        group="training")
    optim: str = _param("adamw_hf", "Optimizer (adamw_hf and adamw_torch run torch's fused AdamW).",
                        choices=tuple(OPTIMIZER_MAP), group="training")
    learning_rate: float = _param(2e-5, "Initial learning rate.", group="training")
    warmup_steps: int = _param(0, "Learning-rate warmup steps.", group="training")
    weight_decay: float = _param(0.0, "Weight decay (not on bias and LayerNorm weights).", group="training")
    adam_beta1: float = _param(0.9, "AdamW beta1.", group="training")
    adam_beta2: float = _param(0.999, "AdamW beta2.", group="training")
    adam_epsilon: float = _param(1e-8, "AdamW epsilon.", group="training")
    gradient_accumulation_steps: int = _param(1, "Gradient accumulation steps.", group="training")
    lr_scheduler_type: str = _param(
        "linear", "Learning-rate scheduler.", group="training",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"))
    precision: str = _param("32", "16: mixed precision (bf16 where supported, else fp16); 32: full precision.",
                            choices=("32", "16"), group="training")
    seed: int = _param(42, "Random seed.", group="training")
    enable_full_determinism: bool = _param(False, "Deterministic algorithms (slower).", group="training")
    dataloader_num_workers: int = _param(0, "Data-loading worker processes.", group="training")
    ignore_mismatched_sizes: bool = _param(True, "Re-initialise weights whose shape differs (e.g. a new head).",
                                           group="training")
    max_grad_norm: float = _param(1.0, "Gradient clipping norm.", group="training")
    evaluation_strategy: str = _param("epoch", "When to evaluate (and checkpoint).", choices=("epoch", "steps"),
                                      group="training")
    evaluation_steps_interval: float = _param(
        0.0, "Evaluate every this fraction of an epoch's optimizer steps; overrides eval_steps if not 0.",
        group="training")
    eval_steps: int = _param(500, "Optimizer steps between evaluations when evaluation_strategy=steps.",
                             group="training")
    logging_strategy: str = _param("epoch", "When to log.", choices=("epoch", "steps"), group="training")
    logging_steps: int = _param(500, "Steps between logs when logging_strategy=steps.", group="training")
    metric_for_best_model: str = _param("loss", "Metric that picks the best checkpoint.",
                                        choices=tuple(METRIC_GREATER_IS_BETTER), group="training")
    resume_from_checkpoint: bool = _param(
        False, "Resume from the latest complete checkpoint in pytorch_model_folder (weights, optimizer, "
               "scheduler, RNG).", group="training")
    save_total_limit: int = _param(-1, "Keep at most this many checkpoints (the best is never deleted); -1 keeps all.",
                                   group="training")
    group_by_length: bool = _param(True, "Batch rows of similar length together (less padding, faster).",
                                   group="training", spec=False)
    cpu_speedups: bool = _param(
        True, "CPU training speed-ups that leave the results unchanged: glibc allocator thresholds, vectorised "
              "dropout masks (trainer/speed.py).", group="training", spec=False)

    # --- Early stopping -----------------------------------------------------------------------
    apply_early_stopping: bool = _param(False, "If true, enables early stopping.", group="early_stopping")
    early_stopping_patience: int = _param(1, "Evaluations without improvement before stopping.",
                                          group="early_stopping")
    early_stopping_threshold: float = _param(0.0, "Minimum improvement that counts.", group="early_stopping")

    # --- DeepSpeed / ORT ----------------------------------------------------------------------
    apply_deepspeed: bool = _param(False, "If true, trains with DeepSpeed.", group="deepspeed")
    deepspeed: Optional[str] = _param(
        None, "DeepSpeed JSON config file (or preset 'zero2'/'zero3'); default: ZeRO-2 with 'auto' values.",
        group="deepspeed")
    apply_ort: bool = _param(False, "If true, trains with ONNX Runtime (ORTModule); fails if unavailable.",
                             group="ort")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        self._validate()

    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not one of {list(choices)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs and max_steps are both non-positive: nothing to train; "
                              "set num_train_epochs >= 1 or max_steps >= 1")
        positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "lora_r", "eval_steps", "logging_steps", "early_stopping_patience")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.evaluation_steps_interval <= 1.0:
            raise ConfigError(f"evaluation_steps_interval is a fraction of an epoch in [0, 1], "
                              f"got {self.evaluation_steps_interval}")
        if self.save_total_limit == 0 or self.save_total_limit < -1:
            raise ConfigError(f"save_total_limit must be -1 (keep all) or >= 1, got {self.save_total_limit}")
        if self.dataloader_num_workers < 0 or self.warmup_steps < 0:
            raise ConfigError("dataloader_num_workers and warmup_steps must be >= 0")
        if self.deepspeed and not self.apply_deepspeed:
            raise ConfigError("a deepspeed config was given but apply_deepspeed is false; set apply_deepspeed=true "
                              "to use it (the spec requires both)")
        if self.apply_ort and self.apply_deepspeed:
            raise ConfigError("apply_ort and apply_deepspeed cannot be combined")

    # --- Conversions --------------------------------------------------------------------------
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s): {unknown}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
        return cls(**values)


def spec_fields() -> list[dataclasses.Field]:
    """Fields that the reference spec defines (the component must expose each with the spec default)."""
    return [f for f in dataclasses.fields(FinetuneConfig) if f.metadata.get("spec")]


def field_base_type(f: dataclasses.Field) -> type:
    """The Python type of a field, with Optional[...] unwrapped (annotations are strings here)."""
    name = str(f.type).replace("Optional[", "").rstrip("]")
    return {"bool": bool, "int": int, "float": float, "str": str}[name]


def spec_default(f: dataclasses.Field) -> Any:
    """A field's default as the spec writes it: bools as "true"/"false", everything else as is."""
    if f.default is dataclasses.MISSING:
        return None
    if field_base_type(f) is bool:
        return "true" if f.default else "false"
    return f.default


def parse_bool(value: Any, name: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ConfigError(f"{name}={value!r} is not one of ['true', 'false']")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    if value is None:
        if f.default is dataclasses.MISSING:
            raise ConfigError(f"{f.name} is required")
        return None
    kind = field_base_type(f)
    if kind is bool:
        return parse_bool(value, f.name)
    if kind is str:
        value = str(value)
        return None if (value == "" and f.default is None) else value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{f.name}={value!r} is not finite")
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{f.name}={value!r} is not an integer")
        return int(number)
    return number
