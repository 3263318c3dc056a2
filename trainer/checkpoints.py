"""Resumable checkpoints: a checkpoint counts only once its manifest, written last, matches its files.

The HF Trainer writes `checkpoint-N/` file by file; a crash, a full disk or a killed pod can leave any of them
missing, empty or truncated (a 0-byte `trainer_state.json` once made every later resume fail). So after each
save, every rank having finished (`trainer.hf_trainer.CheckpointManifestCallback`), the main process writes
`checkpoint_manifest.json` — the size and SHA-256 of every file — atomically and last:

- `is_complete` (cheap: the manifest parses and every file has its size) decides what is uploaded or kept;
- `choose_resume_checkpoint` picks the newest checkpoint whose files also match their hashes and that holds no
  pickled object outside the allowlist (`trainer.safe_loading`), says which newer ones it skipped and why, and
  removes the torn ones: newer ones would be written into again when training reaches their step, older ones are
  deletions that a kill cut short.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Optional

from trainer.publish import make_readable, write_json_atomic

logger = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "checkpoint_manifest.json"
COMPLETE_MARKER = MANIFEST  # written last; uploads and copies put it last too
MANIFEST_FORMAT = 1
RUN_TOTALS = "run_totals.json"  # the run's training so far (loss sum, seconds): a resume continues them


def read_run_totals(checkpoint: Optional[str | Path]) -> dict:
    """{"loss_sum", "train_seconds"} of the training up to `checkpoint` (every attempt before it included); zeros
    without a checkpoint, None values for one written before these records existed."""
    if checkpoint is None:
        return {"loss_sum": 0.0, "train_seconds": 0.0}
    path = Path(checkpoint) / RUN_TOTALS
    return json.loads(path.read_text()) if path.is_file() else {"loss_sum": None, "train_seconds": None}


def list_checkpoints(folder: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest step first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(checkpoint: Path) -> list[Path]:
    return sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not p.name.startswith("."))


def write_manifest(checkpoint: Path) -> dict:
    """Record the size and hash of every file of a finished checkpoint (atomically, as its last file), after
    making it readable by all, like the published outputs (`make_readable`)."""
    make_readable(checkpoint)
    manifest = {"format": MANIFEST_FORMAT, "files": {
        str(p.relative_to(checkpoint)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(checkpoint)}}
    write_json_atomic(checkpoint / MANIFEST, manifest)
    return manifest


def _read_manifest(checkpoint: Path) -> tuple[Optional[dict], str]:
    path = checkpoint / MANIFEST
    if not path.is_file():
        return None, f"no {MANIFEST} (interrupted while saving)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        return None, f"{MANIFEST} is unreadable ({type(err).__name__})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        return None, f"{MANIFEST} is not a manifest of format {MANIFEST_FORMAT}"
    return manifest, ""


def problem(checkpoint: Path, verify_hashes: bool = False) -> str:
    """Why `checkpoint` cannot be used ('' when it can): missing manifest, missing/resized/altered files."""
    manifest, why = _read_manifest(checkpoint)
    if manifest is None:
        return why
    for name, expected in manifest["files"].items():
        path = checkpoint / name
        if ".." in Path(name).parts or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected.get('size')}"
        if verify_hashes and _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    return ""


def is_complete(checkpoint: Path) -> bool:
    """The manifest is there and every file has its recorded size (no hashing: cheap enough to poll)."""
    return not problem(checkpoint)


def choose_resume_checkpoint(folder: str | Path, remove_torn: bool = False) -> Optional[Path]:
    """The newest checkpoint that is complete, matches its hashes and holds only allowed pickled objects.

    Newer ones are skipped with a warning saying why. With `remove_torn`, torn ones (no valid manifest) are removed
    at any step: a newer one would be written into again when training reaches its step; an older one is a deletion
    by `rotate_checkpoints` (manifest first) that a kill cut short, which no later rotation would see.
    """
    chosen = None
    for checkpoint in reversed(list_checkpoints(folder)):
        if chosen is None:
            why = _resume_problem(checkpoint)
            if not why:
                chosen = checkpoint
                continue
            logger.warning("not resuming from %s: %s", checkpoint, why)
        if remove_torn and _read_manifest(checkpoint)[0] is None:
            if chosen is not None:
                logger.info("removing %s: a rotation's deletion cut short (no manifest)", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)
    return chosen


def _resume_problem(checkpoint: Path) -> str:
    """Why training may not resume from `checkpoint` ('' when it may): `problem` with hashes, or pickled objects
    outside the allowlist."""
    from trainer.safe_loading import unsafe_pickles

    why = problem(checkpoint, verify_hashes=True)
    if why:
        return why
    unsafe = unsafe_pickles(checkpoint)
    return f"it holds pickled objects that are not on the allowlist: {unsafe}" if unsafe else ""


def rotate_checkpoints(folder: str | Path, limit: int, best: Optional[str], current: Path) -> None:
    """Keep the newest `limit` complete checkpoints (the HF Trainer's rule: the newest and the best always stay,
    even beyond the limit); delete the older complete ones. Runs only once `current` is complete, so a kill at
    any instant leaves a checkpoint to resume from (the HF Trainer deletes before the manifest is written)."""
    complete = [c for c in list_checkpoints(folder) if is_complete(c)]
    protected = {current.resolve()} | ({Path(best).resolve()} if best else set())
    keep = max(limit, len(protected))
    for checkpoint in complete:
        if len(complete) <= keep:
            break
        if checkpoint.resolve() not in protected:
            (checkpoint / MANIFEST).unlink()  # first: a deletion cut short leaves a torn checkpoint
            shutil.rmtree(checkpoint, ignore_errors=True)
            complete.remove(checkpoint)


def check_resumable(checkpoint: Path, apply_lora: bool, lora_r: int, class_names: list[str]) -> None:
    """A resume continues the run that wrote `checkpoint`: InputError, before anything is loaded, when the model it
    holds cannot take this run's settings (LoRA on or off, another LoRA rank, other classes); loading it failed half
    way with a traceback."""
    from trainer.errors import InputError

    adapter = checkpoint / "adapter_config.json"
    fix = "resume with the settings of that run, or give a new pytorch_model_folder to start another"
    if adapter.is_file() != bool(apply_lora):
        raise InputError(f"{checkpoint} holds a {'LoRA adapter' if adapter.is_file() else 'full model'} but "
                         f"apply_lora={str(bool(apply_lora)).lower()}: {fix}")
    if adapter.is_file():
        rank = json.loads(adapter.read_text(encoding="utf-8")).get("r")
        if rank is not None and rank != lora_r:
            raise InputError(f"{checkpoint} holds a LoRA adapter of rank {rank} but lora_r={lora_r}: {fix}")
    model_config = checkpoint / "config.json"
    if model_config.is_file():
        labels = list((json.loads(model_config.read_text(encoding="utf-8")).get("id2label") or {}).values())
        if labels and sorted(labels) != sorted(class_names):
            raise InputError(f"{checkpoint} predicts {len(labels)} classes but the preprocess output has "
                             f"{len(class_names)} ({', '.join(sorted(set(class_names) ^ set(labels))[:5])} differ): "
                             f"{fix}")

