"""Reading a model-import (model selector) output folder and finding the model inside it."""

from __future__ import annotations

from pathlib import Path

from trainer.constants import BASE_MODEL_SUBDIR, MODEL_MARKERS, MODEL_SELECTOR_ARGS
from trainer.errors import InputError
from trainer.jsonio import read_json


def read_model_selector_args(folder: str | Path) -> dict:
    """The metadata of a model-import output; {} for a bare model folder (e.g. an earlier fine-tune)."""
    path = Path(folder) / MODEL_SELECTOR_ARGS
    if not path.exists():
        return {}
    args = read_json(path)
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


def load_token_classification_model(model_dir: str | Path, **kwargs):
    """A `save_pretrained` model folder, or our unmerged LoRA output (adapter + base_model/) merged into one.

    kwargs go to `from_pretrained` of the plain model, or of the base model under an adapter.
    """
    from transformers import AutoModelForTokenClassification

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").exists():
        return AutoModelForTokenClassification.from_pretrained(model_dir, **kwargs)
    from peft import PeftModel

    base_dir = model_dir / BASE_MODEL_SUBDIR
    if not (base_dir / "config.json").exists():
        raise InputError(f"{model_dir} holds a LoRA adapter but no {BASE_MODEL_SUBDIR}/ folder with its base model; "
                         "import a merged model or our unmerged fine-tune output")
    base = AutoModelForTokenClassification.from_pretrained(base_dir, **kwargs)
    model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    return model.requires_grad_(True)  # peft loads adapters frozen for inference; a merged model trains again
