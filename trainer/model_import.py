"""Model import (the "model selector"): bring a Hugging Face model into a model-import output folder.

Where it comes from (`trainer.sources`): a path in the container (a PVC), an object store (s3://, minio://, gs://),
the Hugging Face hub (a repository id, revision pinned to a commit), or the `model` input artifact. What it is:
- `model_path` / `model`: an HF model folder (config.json + weights + tokenizer), an earlier fine-tune output
  (its best model sits at the root; `checkpoint-*` folders are not copied), a LoRA adapter folder
  (adapter_config.json), an earlier model-import output, or an MLflow model (recognised by its MLmodel file).
- `mlflow_model_path`: an MLflow `transformers` flavor model folder (MLmodel file; the HF files live in
  sub-folders such as `model/` and `components/tokenizer/`).

Symbolic links in the source are followed only inside it (`trainer.input_tree`); a link out of it is refused
before anything is written.

Output folder contract (the `model_selector_output` of the finetune component): the model files (and
tokenizer files when the source has them) at the root, plus `model_selector_args.json` =
{"model_name", "model_name_or_path", "model_family", "source", ...}.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from trainer.config import ModelImportConfig
from trainer.constants import MODEL_MARKERS, MODEL_SELECTOR_ARGS, TOKENIZER_FILES
from trainer.errors import InputError
from trainer.input_tree import boundary, iter_files
from trainer.model_io import read_model_selector_args, resolve_model_dir
from trainer.publish import new_output_folder, publish_dir, staging_dir
from trainer.sources import fetch, parse_source, workdir_beside
from trainer.validation import check_io

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


def _skipped(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in SKIP_FILES or any(top.startswith(p) for p in SKIP_DIRS_PREFIX)


def _copy_model_files(src: Path, dst: Path, *, within: Path, overwrite: bool = True, move: bool = False) -> list[str]:
    """Copy (or, for our own download, move) the model files of `src` into `dst`; links resolve inside `within`.
    Returns the top-level names taken."""
    taken = set()
    for rel, real in iter_files(src, within=within):
        target = dst / rel
        if _skipped(rel) or (target.exists() and not overwrite):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if move and not Path(src, rel).is_symlink():
            os.replace(real, target)
        else:
            shutil.copy2(real, target)
        taken.add(rel.split("/", 1)[0])
    return sorted(taken)


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
    """Bring the configured model into `model_selector_output` with model_selector_args.json; returns the
    metadata."""
    check_io(config)  # inputs exist, outputs are writable and never inside an input or each other
    given = config.model or config.model_path or config.mlflow_model_path
    what = "model" if config.model else ("model_path" if config.model_path else "mlflow_model_path")
    source = parse_source(given, what, revision=config.model_revision, s3_endpoint_url=config.s3_endpoint_url)
    out = Path(config.model_selector_output)
    with new_output_folder(out, "model_selector_output"):
        workdir = workdir_beside(out) if source.kind != "path" else None
        try:
            fetched = fetch(source, workdir or out.parent, hf_endpoint=config.hf_endpoint)
            return _import(config, fetched.path, what, fetched.provenance, move=fetched.downloaded)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)


def _import(config: ModelImportConfig, src: Path, what: str, provenance: dict, *, move: bool) -> dict:
    if not src.is_dir():
        raise InputError(f"model folder not found: {config.model or config.model_path or config.mlflow_model_path}"
                         + ("" if not src.exists() else " (it is a file, not a folder)"))
    within = boundary(src)
    list(iter_files(src, within=within))  # a link out of the source is refused before anything is written

    flavor: dict = {}
    tok_dir: Optional[Path] = None
    if config.mlflow_model_path or (src / "MLmodel").exists():
        source = "mlflow_model_path" if config.mlflow_model_path else f"{what} (MLflow)"
        model_dir, tok_dir, flavor = _locate_mlflow_model(src)
    else:
        source = what
        model_dir = _locate_hf_model(src)
    earlier = read_model_selector_args(src)
    is_adapter = (model_dir / "adapter_config.json").exists() and not (model_dir / "config.json").exists()
    family = _model_family(model_dir) or earlier.get("model_family")

    hub_repo = provenance.get("hub_repo")
    name = (config.model_name or earlier.get("model_name") or flavor.get("source_model_name") or hub_repo
            or _name_from(provenance.get("source_uri", ""), src))
    if "/" in str(name) and Path(str(name)).is_absolute():  # a local path, not a hub-style "org/name"
        name = Path(str(name)).name
    meta: dict[str, Any] = {
        "model_name": str(name),
        "model_name_or_path": hub_repo or (str(src.resolve()) if "://" not in provenance.get("source_uri", "")
                                           else provenance["source_uri"]),
        "model_family": family,
        "source": source,
        "is_lora_adapter": is_adapter,
        **{k: v for k, v in provenance.items() if k in ("source_uri", "revision", "hub_endpoint")},
    }
    if flavor:
        meta["mlflow_flavor"] = {k: flavor.get(k) for k in ("task", "source_model_name", "transformers_version")
                                 if flavor.get(k) is not None}

    out = Path(config.model_selector_output)
    stage = staging_dir(out)
    try:
        copied = _copy_model_files(model_dir, stage, within=within, move=move)
        if tok_dir is not None and tok_dir != model_dir:
            copied += [f"tokenizer/{n}" for n in _copy_model_files(tok_dir, stage, within=within, overwrite=False,
                                                                   move=move)]
        if not any((stage / m).exists() for m in MODEL_MARKERS):
            raise InputError(f"no config.json or adapter_config.json in {model_dir}")
        meta["has_tokenizer"] = any((stage / f).exists() for f in TOKENIZER_FILES)
        (stage / MODEL_SELECTOR_ARGS).write_text(json.dumps(meta, indent=2))
        publish_dir(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    logger.info("imported %s (%s) from %s into %s: %s", meta["model_name"], family, meta.get("source_uri", model_dir),
                out, copied)
    return meta


def _name_from(uri: str, src: Path) -> str:
    """A model name from where it came from: the last segment of a URI or path that is not a generic word."""
    parts = [p for p in (uri.split("://", 1)[-1] if "://" in uri else str(src.resolve())).split("/") if p]
    for part in reversed(parts):
        if part not in ("model", "data", "download", "pytorch_model_folder", "model_selector_output"):
            return part
    return src.name
