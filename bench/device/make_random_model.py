#!/usr/bin/env python
"""Write a randomly initialised encoder (speed runs only: its figures say nothing about accuracy) from a folder that
holds a config.json and tokenizer files, with optional config overrides, so that a GPU machine that cannot reach a
hub or take a large upload gets a MiniLM-shaped or bert-base-shaped model. The output is a plain save_pretrained
folder (weights, config, tokenizer) that model_import reads like any other model folder.

  python bench/device/make_random_model.py --source .device/minilm --output /tmp/models/bert-base \
      --set hidden_size=768 num_hidden_layers=12 num_attention_heads=12 intermediate_size=3072
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set takes KEY=VALUE, got {item!r}")
        out[key] = json.loads(value)
    return out


def make(source: Path, output: Path, overrides: dict, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise SystemExit(f"error: {type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(source).save_pretrained(output)
    print(f"{output}: {config.model_type}, hidden {config.hidden_size}, {config.num_hidden_layers} layers")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="a folder with config.json and tokenizer files")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config fields (JSON values)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.source / "config.json").is_file():
        raise SystemExit(f"error: {args.source} has no config.json")
    make(args.source, args.output, parse_overrides(args.set), args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
