"""Reading a model-import (model selector) output folder and finding the model inside it."""

from __future__ import annotations

import json
from pathlib import Path

MODEL_SELECTOR_ARGS = "model_selector_args.json"
MODEL_MARKERS = ("config.json", "adapter_config.json")


class InputError(ValueError):
    """An input folder or file that does not satisfy its contract."""


def read_model_selector_args(folder: str | Path) -> dict:
    """The metadata of a model-import output; {} for a bare model folder (e.g. an earlier fine-tune)."""
    path = Path(folder) / MODEL_SELECTOR_ARGS
    if not path.exists():
        return {}
    try:
        args = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(args, dict):
        raise InputError(f"{path} must hold a JSON object")
    return args


def resolve_model_dir(folder: str | Path) -> Path:
    """The folder that holds the model files: the root, or the sub-folder the metadata names."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"model_selector_output folder not found: {root}")
    args = read_model_selector_args(root)
    candidates = [root]
    for key in ("model_name", "model_name_or_path"):
        name = args.get(key)
        if name:  # only sub-folders: model_name_or_path may be the absolute path the model came from
            candidates += [root / Path(str(name)).name] + ([] if Path(str(name)).is_absolute() else [root / name])
    inside = root.resolve()
    candidates = [c for c in candidates if c.resolve() == inside or inside in c.resolve().parents]
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / m).exists() for m in MODEL_MARKERS):
            return candidate
    raise InputError(
        f"no model found in {root}: expected config.json (or adapter_config.json) at its root or in the sub-folder "
        f"named by {MODEL_SELECTOR_ARGS} ('model_name'); found {sorted(p.name for p in root.iterdir())}")
