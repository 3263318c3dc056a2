"""DeepSpeed configs: a preset (ZeRO-2 or ZeRO-3, "auto" values resolved by the HF Trainer) or the user's JSON.

No optimizer/scheduler block by default, so the HF Trainer builds them from our parameters (`optim`,
`lr_scheduler_type`, ...) and DeepSpeed wraps them; a custom JSON that has them takes precedence.
Precision stays "auto": it follows `precision`, never hard-coded fp16.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from trainer.config import DEEPSPEED_PRESETS
from trainer.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "deepspeed_configs"
GATHER_ON_SAVE = "stage3_gather_16bit_weights_on_model_save"
logger = logging.getLogger(__name__)


def load_deepspeed_config(source: Optional[str], preset: str = "zero2") -> dict:
    """The config dict of a JSON file (or a folder holding one), else of the preset ('zero2', 'zero3')."""
    if preset not in DEEPSPEED_PRESETS:
        raise ConfigError(f"deepspeed_preset={preset!r} is not one of {list(DEEPSPEED_PRESETS)}")
    path = Path(source) if source else PRESET_DIR / f"{preset}.json"
    if path.is_dir():  # a KFP artifact folder holding one JSON file
        files = sorted(path.glob("*.json"))
        if len(files) != 1:
            raise ConfigError(f"deepspeed: folder {path} must hold exactly one .json file, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise ConfigError(f"deepspeed config not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"deepspeed config {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"deepspeed config {path} is not UTF-8 text: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"deepspeed config {path} must be a JSON object")
    if not isinstance(config.get("zero_optimization", {}), dict):
        raise ConfigError(f"deepspeed config {path}: zero_optimization must be a JSON object")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed config {path}: zero_optimization.stage must be 0-3, got {stage!r}")
    if stage == 3 and not config["zero_optimization"].get(GATHER_ON_SAVE):
        # The published model is whole: ZeRO-3 must gather its shards when the model is saved. DeepSpeed's default
        # (false) left transformers 5.24 to save a sharded checkpoint and accelerate 1.15 to refuse the state dict,
        # after the whole training.
        logger.info("deepspeed config %s: %s set to true (the published model is gathered whole)", path,
                    GATHER_ON_SAVE)
        config["zero_optimization"][GATHER_ON_SAVE] = True
    return config
