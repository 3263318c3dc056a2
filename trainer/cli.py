"""Command line of the trainer, generated from `FinetuneConfig` (one flag per field).

    token-classification-finetune --preprocess_output DIR --model_selector_output DIR \
        --pytorch_model_folder OUT --mlflow_model_folder OUT [--apply_lora true ...]

Flags accept underscores or dashes (`--apply-lora`). `--config FILE.json` supplies values that flags override.
Exit codes: 0 done, 2 bad input (message on stderr, nothing trained), 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence

from trainer.config import ConfigError, FinetuneConfig, field_base_type, spec_default
from trainer.model_io import InputError

GROUP_TITLES = {"io": "data and model inputs, outputs", "lora": "LoRA", "training": "training",
                "early_stopping": "early stopping", "deepspeed": "DeepSpeed", "ort": "ONNX Runtime"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token-classification-finetune", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON file of parameters (flags override it)")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in dataclasses.fields(FinetuneConfig):
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kind = field_base_type(f)
        metavar = "{true,false}" if kind is bool else None
        groups[f.metadata["group"]].add_argument(
            *flags, dest=f.name, default=None, help=f"{f.metadata['help']} (default: {spec_default(f)})",
            choices=f.metadata.get("choices"), metavar=metavar)
    return parser


def config_from_args(argv: Optional[Sequence[str]] = None) -> FinetuneConfig:
    args = vars(build_parser().parse_args(argv))
    values = {}
    config_file = args.pop("config")
    if config_file:
        try:
            with open(config_file) as handle:
                loaded = json.load(handle)
        except OSError as err:
            raise ConfigError(f"--config {config_file}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config {config_file} is not valid JSON: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {config_file} must hold a JSON object of parameters")
        values.update(loaded)
    values.update({k: v for k, v in args.items() if v is not None})
    return FinetuneConfig.from_dict(values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = config_from_args(argv)
        from trainer.finetune import finetune

        result = finetune(config)
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.test_metrics:
        print(json.dumps({k: v for k, v in result.test_metrics.items() if k.startswith("test_")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
