"""LoRA (peft) with our own target-module map: peft has no defaults for several families we support."""

from __future__ import annotations

from typing import Optional

from trainer.config import FinetuneConfig
from trainer.errors import ConfigError

# Attention projections per model_type; the classifier head is always trained and saved (modules_to_save).
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "t5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "mbart": ["q_proj", "v_proj"],
}
FAN_IN_FAN_OUT = {"gpt2"}  # Conv1D layers store weights transposed
HEAD_MODULES = ["classifier", "score"]


def target_modules_for(model_type: str, override: Optional[list[str]] = None) -> list[str]:
    """Target modules for a family, or a clear error naming what to pass instead."""
    if override:
        return override
    if model_type not in LORA_TARGET_MODULES:
        raise ConfigError(
            f"apply_lora: no default LoRA target modules for model type {model_type!r} (supported: "
            f"{sorted(LORA_TARGET_MODULES)}); pass lora_target_modules, e.g. 'query,value'")
    return LORA_TARGET_MODULES[model_type]


def apply_lora(model, config: FinetuneConfig):
    """Wrap a token-classification model with LoRA adapters; only adapters and the head train."""
    from peft import LoraConfig, TaskType, get_peft_model

    model_type = model.config.model_type
    targets = target_modules_for(model_type, config.target_modules)
    present = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ConfigError(f"LoRA target module(s) {missing} not found in the {model_type} model")
    lora_config = LoraConfig(
        task_type=TaskType.TOKEN_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, target_modules=targets, fan_in_fan_out=model_type in FAN_IN_FAN_OUT,
        modules_to_save=[m for m in HEAD_MODULES if m in present],
    )
    return get_peft_model(model, lora_config)


def is_peft_model(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
