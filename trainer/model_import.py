"""Model import (the "model selector"): bring a local Hugging Face model into a model-import output folder.

Sources:
- `model_path`: a local HF model folder (config.json + weights + tokenizer), an earlier fine-tune output
  (its best model sits at the root; `checkpoint-*` folders are not copied), a LoRA adapter folder
  (adapter_config.json), an earlier model-import output, or any path already mounted in the container.
- `mlflow_model_path`: an MLflow `transformers` flavor model folder (MLmodel file; the HF files live in
  sub-folders such as `model/` and `components/tokenizer/`).

Output folder contract (the `model_selector_output` of the finetune component): the model files (and
tokenizer files when the source has them) at the root, plus `model_selector_args.json` =
{"model_name", "model_name_or_path", "model_family", "source", ...}.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from trainer.config import ModelImportConfig
from trainer.constants import MODEL_MARKERS, MODEL_SELECTOR_ARGS, TOKENIZER_FILES
from trainer.errors import InputError
from trainer.model_io import read_model_selector_args, resolve_model_dir
from trainer.publish import publish_dir, staging_dir

logger = logging.getLogger(__name__)

# Never copied from a source model folder: training state of an earlier fine-tune, caches, logs.
SKIP_DIRS_PREFIX = ("checkpoint-", ".", "runs", "__pycache__", "mlruns", "logs")
SKIP_FILES = (MODEL_SELECTOR_ARGS, "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth",
              "trainer_state.json")
EXTRA_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "merges.txt", "tokenizer.model",
                         "chat_template.jinja")


def _read_mlmodel(folder: Path) -> dict:
    path = folder / "MLmodel"
    if not path.exists():
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path} is not valid YAML: {err}") from None
    return data if isinstance(data, dict) else {}


def _find_dir_with(root: Path, names: tuple[str, ...], prefer: list[Path]) -> Optional[Path]:
    """The first of `prefer`, then the shallowest sub-folder of root, holding one of `names`."""
    for cand in prefer:
        if cand.is_dir() and any((cand / n).exists() for n in names):
            return cand
    found = sorted({p.parent for n in names for p in root.rglob(n) if p.is_file()},
                   key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return found[0] if found else None


def _copy_model_files(src: Path, dst: Path, *, overwrite: bool = True) -> list[str]:
    copied = []
    for item in sorted(src.iterdir()):
        if item.name in SKIP_FILES or any(item.name.startswith(p) for p in SKIP_DIRS_PREFIX):
            continue
        target = dst / item.name
        if target.exists() and not overwrite:
            continue
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
        copied.append(item.name)
    return copied


def _model_family(model_dir: Path) -> Optional[str]:
    cfg = model_dir / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise InputError(f"{cfg} is not valid JSON: {err}") from None
    adapter = model_dir / "adapter_config.json"
    if adapter.exists():
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except json.JSONDecodeError as err:
            raise InputError(f"{adapter} is not valid JSON: {err}") from None
        if base and (Path(base) / "config.json").exists():
            return json.loads((Path(base) / "config.json").read_text()).get("model_type")
    return None


def _locate_hf_model(model_path: Path) -> Path:
    if (model_path / MODEL_SELECTOR_ARGS).exists():
        return resolve_model_dir(model_path)
    if any((model_path / m).exists() for m in MODEL_MARKERS):
        return model_path
    raise InputError(f"no model found in {model_path}: expected config.json (or adapter_config.json for a LoRA "
                     f"adapter); found {sorted(p.name for p in model_path.iterdir())}")


def _locate_mlflow_model(root: Path) -> tuple[Path, Optional[Path], dict]:
    mlmodel = _read_mlmodel(root)
    if not mlmodel:
        raise InputError(f"{root} is not an MLflow model folder: no MLmodel file")
    flavor = (mlmodel.get("flavors") or {}).get("transformers") or {}
    if not flavor:
        logger.warning("%s/MLmodel has no 'transformers' flavor; searching the folder for HF files", root)
    prefer = [root / str(flavor.get("model_binary", "model")), root / "model", root / "data" / "model",
              root / "data" / "model" / "model"]
    model_dir = _find_dir_with(root, MODEL_MARKERS, prefer)
    if model_dir is None:
        hint = ""
        if flavor.get("source_model_name"):
            hint = (f" (the MLmodel references {flavor['source_model_name']!r} without saved weights: "
                    f"save it with save_pretrained=True; no hub access here)")
        raise InputError(f"no Hugging Face model (config.json) found inside MLflow model {root}{hint}")
    components = flavor.get("components") or []
    tok_prefer = [root / "components" / "tokenizer", root / "data" / "tokenizer", model_dir]
    tok_prefer += [root / "components" / str(c) for c in components]
    tok_dir = _find_dir_with(root, ("tokenizer.json", "tokenizer_config.json", "vocab.txt"), tok_prefer)
    return model_dir, tok_dir, flavor


def model_import(config: ModelImportConfig) -> dict:
    """Copy a local HF / MLflow model into `model_selector_output` with model_selector_args.json; returns the
    metadata."""
    model_path = config.model or config.model_path or None
    mlflow_model_path = config.mlflow_model_path or None
    model_name = config.model_name or None
    src = Path(model_path or mlflow_model_path)
    if not src.is_dir():
        raise InputError(f"model folder not found: {src}")

    flavor: dict = {}
    tok_dir: Optional[Path] = None
    if mlflow_model_path or (src / "MLmodel").exists():
        source = "mlflow_model_path" if mlflow_model_path else f"{'model' if config.model else 'model_path'} (MLflow)"
        model_dir, tok_dir, flavor = _locate_mlflow_model(src)
    else:
        source = "model" if config.model else "model_path"
        model_dir = _locate_hf_model(src)
    earlier = read_model_selector_args(src)
    is_adapter = (model_dir / "adapter_config.json").exists() and not (model_dir / "config.json").exists()
    family = _model_family(model_dir) or earlier.get("model_family")

    name = (model_name or earlier.get("model_name") or flavor.get("source_model_name")
            or (src.name if src.name not in ("model", "data", "") else src.resolve().parent.name))
    if "/" in str(name) and Path(str(name)).is_absolute():  # a local path, not a hub-style "org/name"
        name = Path(str(name)).name
    meta: dict[str, Any] = {
        "model_name": str(name),
        "model_name_or_path": str(src.resolve()),
        "model_family": family,
        "source": source,
        "is_lora_adapter": is_adapter,
    }
    if flavor:
        meta["mlflow_flavor"] = {k: flavor.get(k) for k in ("task", "source_model_name", "transformers_version")
                                 if flavor.get(k) is not None}

    out = Path(config.model_selector_output)
    stage = staging_dir(out)
    try:
        copied = _copy_model_files(model_dir, stage)
        if tok_dir is not None and tok_dir != model_dir:
            copied += [f"tokenizer/{n}" for n in _copy_model_files(tok_dir, stage, overwrite=False)]
        if not any((stage / m).exists() for m in MODEL_MARKERS):
            raise InputError(f"no config.json or adapter_config.json in {model_dir}")
        meta["has_tokenizer"] = any((stage / f).exists() for f in TOKENIZER_FILES)
        (stage / MODEL_SELECTOR_ARGS).write_text(json.dumps(meta, indent=2))
        publish_dir(stage, out, replace=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    logger.info("imported %s (%s) from %s into %s: %s", meta["model_name"], family, model_dir, out, copied)
    return meta
