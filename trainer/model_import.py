"""Model import (the "model selector"): bring a Hugging Face model into a model-import output folder.

Where it comes from (`trainer.sources`): a path in the container (a PVC), an object store (s3://, minio://, gs://),
the Hugging Face hub (a repository id, revision pinned to a commit), or the `model` input artifact. What it is:
- `model_path` / `model`: an HF model folder (config.json + weights + tokenizer), an earlier fine-tune output
  (its best model sits at the root; `checkpoint-*` folders are not copied), a LoRA adapter folder
  (adapter_config.json; the base model it names comes along as `base_model/`), an earlier model-import output, or
  an MLflow model (recognised by its MLmodel file).
- `mlflow_model_path`: an MLflow `transformers` flavor model folder (MLmodel file; the HF files live in
  sub-folders such as `model/` and `components/tokenizer/`).

Symbolic links in the source are followed only inside it (`trainer.input_tree`); a link out of it is refused
before anything is written.

Output folder contract (the `model_selector_output` of the finetune component): the model files (and
tokenizer files when the source has them) at the root, plus `model_selector_args.json` =
{"model_name", "model_name_or_path", "model_family", "source", ...}.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from trainer.config import ModelImportConfig
from trainer.constants import BASE_MODEL_SUBDIR, MODEL_MARKERS, MODEL_SELECTOR_ARGS, TOKENIZER_FILES
from trainer.errors import ConfigError, InputError, preview
from trainer.input_tree import boundary, iter_files
from trainer.jsonio import read_json
from trainer.model_io import read_model_selector_args, resolve_model_dir
from trainer.publish import new_output_folder, publish_dir, staging_dir, write_json_atomic
from trainer.sources import Fetched, fetch, parse_source, workdir_beside
from trainer.validation import ADAPTER_WEIGHTS_PREFIX, check_family, check_io, weight_files

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


def _json_object(path: Path, shown: str) -> dict:
    """config.json / adapter_config.json: UTF-8 JSON holding an object; InputError naming the file as `shown`."""
    try:
        value = read_json(path)
    except InputError as err:
        raise InputError(str(err).replace(str(path), shown)) from None
    if not isinstance(value, dict):
        raise InputError(f"{shown} must hold a JSON object, not {type(value).__name__}")
    return value


def _check_weights(model_dir: Path, adapter: bool, shown: str, skipped: Sequence[str] = ()) -> None:
    """The model root holds PyTorch weights finetune can load (`trainer.validation.weight_files`); whether they are
    intact is finetune's check. `skipped`: the source's files in `model_dir` that were not downloaded."""
    if not any(weight_files(model_dir, adapter)):
        prefix = ADAPTER_WEIGHTS_PREFIX if adapter else ""
        found = sorted([p.name for p in model_dir.iterdir()] + [f"{name} (not downloaded)" for name in skipped])
        raise InputError(f"no PyTorch weights ({prefix}*.safetensors or {prefix}*.bin) in {shown}: found "
                         f"{preview(found, 8)}; TensorFlow / Flax / ONNX weights are not loaded: give the model "
                         "saved from PyTorch (save_pretrained)")


def _skipped_in(fetched: Fetched, folder: Path) -> list[str]:
    """The names of the source's files directly in `folder` that were not downloaded (hub TF / Flax / ONNX)."""
    try:
        rel = folder.relative_to(fetched.path).as_posix()  # "." at the root
    except ValueError:
        return []
    return [name for parent, _, name in (f.rpartition("/") for f in fetched.skipped) if (parent or ".") == rel]


def _locate_hf_model(model_path: Path, shown: str) -> Path:
    """The model folder of a source: an earlier model-import output's, or the source folder itself; InputError
    naming the source as the user gave it (`shown`), with where a model lies deeper if one does."""
    if (model_path / MODEL_SELECTOR_ARGS).exists():
        try:
            return resolve_model_dir(model_path)
        except InputError as err:
            raise InputError(str(err).replace(str(model_path), shown)) from None
    if any((model_path / m).exists() for m in MODEL_MARKERS):
        return model_path
    deeper = _find_dir_with(model_path, MODEL_MARKERS, [])
    hint = f"; a model lies in {deeper.relative_to(model_path).as_posix()}/: give that folder" if deeper else ""
    raise InputError(f"no model found in {shown}: expected config.json (or adapter_config.json for a LoRA adapter) "
                     f"at its top; found {preview(sorted(p.name for p in model_path.iterdir()), 8)}{hint}")


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
        workdir = workdir_beside(out)
        try:
            fetched = fetch(source, workdir, hf_endpoint=config.hf_endpoint)
            return _import(config, fetched, given, what, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _shown(path: Path, src: Path, given: str) -> str:
    """`path`, a part of the fetched source `src`, as the user knows it: under the source they gave."""
    try:
        rel = path.relative_to(src).as_posix()
    except ValueError:
        return str(path)
    return given if rel == "." else f"{given.rstrip('/')}/{rel}"


def _import(config: ModelImportConfig, fetched: Fetched, given: str, what: str, workdir: Path) -> dict:
    src, provenance, move = fetched.path, fetched.provenance, fetched.downloaded
    if not src.is_dir():
        raise InputError(f"model folder not found: {given}" + ("" if not src.exists() else
                                                               " (it is a file, not a folder)"))
    within = boundary(src)
    list(iter_files(src, within=within))  # a link out of the source is refused before anything is written

    flavor: dict = {}
    tok_dir: Optional[Path] = None
    if config.mlflow_model_path or (src / "MLmodel").exists():
        source = "mlflow_model_path" if config.mlflow_model_path else f"{what} (MLflow)"
        model_dir, tok_dir, flavor = _locate_mlflow_model(src)
    else:
        source = what
        model_dir = _locate_hf_model(src, given)
    earlier = read_model_selector_args(src)
    shown = _shown(model_dir, src, given)
    model_config = (_json_object(model_dir / "config.json", f"{shown}/config.json")
                    if (model_dir / "config.json").exists() else {})
    has_adapter = (model_dir / "adapter_config.json").exists()
    is_adapter = has_adapter and not model_config
    _check_weights(model_dir, has_adapter, shown, _skipped_in(fetched, model_dir))
    base = _base_model(config, model_dir, shown, workdir) if has_adapter else None
    family = model_config.get("model_type") or (base.family if base else None) or earlier.get("model_family")
    if family:  # a model no token-classification head exists for fails here, not two steps later at finetune
        check_family(family, f"{shown}/config.json" if model_config else shown)

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
    if base is not None and base.fetched is not None:
        meta["base_model"] = {"name": base.name, **{k: v for k, v in base.fetched.provenance.items()
                                                     if k in ("source_uri", "revision", "hub_endpoint")}}
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
            raise InputError(f"no config.json or adapter_config.json in {shown}")
        if base is not None and base.fetched is not None:
            _add_base_model(stage, base)
            copied.append(BASE_MODEL_SUBDIR)
        meta["has_tokenizer"] = any((stage / f).exists() for f in TOKENIZER_FILES)
        (stage / MODEL_SELECTOR_ARGS).write_text(json.dumps(meta, indent=2))
        publish_dir(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    logger.info("imported %s (%s) from %s into %s: %s", meta["model_name"], family, meta.get("source_uri", model_dir),
                out, copied)
    return meta


@dataclass
class _Base:
    """The base model of a LoRA adapter: where its model files are, its family; `fetched` is None when the adapter
    folder brings it along (`base_model/`)."""

    name: str
    model_dir: Path
    family: Optional[str]
    fetched: Optional[Fetched] = None


def _base_model(config: ModelImportConfig, model_dir: Path, shown: str, workdir: Path) -> _Base:
    """The base model the adapter in `model_dir` needs: its own `base_model/` (our unmerged fine-tune output), else
    the one adapter_config.json names, from the same kind of source as model_path (a path, an object store, the hub
    with the same endpoint, HF_TOKEN and a pinned revision: adapter_config.json's `revision`, else main). Checked
    (config.json, weights) before anything is written; InputError when it cannot be found."""
    adapter_cfg = _json_object(model_dir / "adapter_config.json", f"{shown}/adapter_config.json")
    own = model_dir / BASE_MODEL_SUBDIR
    if own.is_dir():
        if not (own / "config.json").is_file():
            raise InputError(f"{shown}/{BASE_MODEL_SUBDIR} has no config.json: its base model is incomplete")
        cfg = _json_object(own / "config.json", f"{shown}/{BASE_MODEL_SUBDIR}/config.json")
        _check_weights(own, False, f"{shown}/{BASE_MODEL_SUBDIR}")
        return _Base(BASE_MODEL_SUBDIR, own, cfg.get("model_type"))
    name = adapter_cfg.get("base_model_name_or_path")
    where = f"{shown}/adapter_config.json"
    if not isinstance(name, str) or not name.strip() or name.strip("./") == BASE_MODEL_SUBDIR:
        raise InputError(f"{where} names no base model we can import (base_model_name_or_path={name!r}) and {shown} "
                         f"has no {BASE_MODEL_SUBDIR}/ folder: import a merged model, or the adapter with its base "
                         f"model in {BASE_MODEL_SUBDIR}/ (our unmerged fine-tune output)")
    try:
        source = parse_source(name, "base_model_name_or_path", s3_endpoint_url=config.s3_endpoint_url)
        if source.kind == "hub" and not source.revision and adapter_cfg.get("revision"):
            source = dataclasses.replace(source, revision=str(adapter_cfg["revision"]))
        (workdir / "base").mkdir()
        fetched = fetch(source, workdir / "base", hf_endpoint=config.hf_endpoint)
        if not fetched.path.is_dir():
            raise InputError(f"{name} is a file, not a model folder")
        list(iter_files(fetched.path))  # a link out of the base model's folder is refused too
        base_dir = _locate_hf_model(fetched.path, name)
        if not (base_dir / "config.json").exists():
            raise InputError(f"{_shown(base_dir, fetched.path, name)} has no config.json (a LoRA adapter cannot be "
                             "the base of another)")
        cfg = _json_object(base_dir / "config.json", f"{_shown(base_dir, fetched.path, name)}/config.json")
        _check_weights(base_dir, False, _shown(base_dir, fetched.path, name), _skipped_in(fetched, base_dir))
    except (ConfigError, InputError) as err:
        raise InputError(f"the base model of the LoRA adapter ({where}: base_model_name_or_path={name!r}) cannot be "
                         f"imported: {err}") from None
    return _Base(name, base_dir, cfg.get("model_type"), fetched)


def _add_base_model(stage: Path, base: _Base) -> None:
    """The base model into `stage/base_model/`, its tokenizer beside the adapter when the adapter has none, and
    adapter_config.json naming `base_model` (the layout of our unmerged LoRA fine-tune output)."""
    assert base.fetched is not None
    target = stage / BASE_MODEL_SUBDIR
    _copy_model_files(base.model_dir, target, within=boundary(base.fetched.path), move=base.fetched.downloaded)
    if not any((stage / f).exists() for f in TOKENIZER_FILES):
        for name in (*TOKENIZER_FILES, *EXTRA_TOKENIZER_FILES):
            if (target / name).is_file():
                shutil.copy2(target / name, stage / name)
    adapter_config = stage / "adapter_config.json"
    write_json_atomic(adapter_config, {**read_json(adapter_config), "base_model_name_or_path": BASE_MODEL_SUBDIR})


def _name_from(uri: str, src: Path) -> str:
    """A model name from where it came from: the last segment of a URI or path that is not a generic word."""
    parts = [p for p in (uri.split("://", 1)[-1] if "://" in uri else str(src.resolve())).split("/") if p]
    for part in reversed(parts):
        if part not in ("model", "data", "download", "pytorch_model_folder", "model_selector_output"):
            return part
    return src.name
