"""Writing outputs so that a crash never leaves a folder that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from trainer.model_io import InputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def write_json_atomic(path: str | Path, data: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        tmp = handle.name
    os.replace(tmp, path)


def staging_dir(target: str | Path) -> Path:
    """A fresh folder beside `target` on the same filesystem, so the final move is a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.incomplete-"))


def ensure_empty_or_absent(folder: str | Path, name: str) -> None:
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{name} {folder} already exists and is not empty; give an empty or new folder")


def publish_dir(staged: Path, target: str | Path) -> None:
    """Move a finished staging folder to `target` (absent or empty) in one rename."""
    target = Path(target)
    if target.is_dir():
        target.rmdir()  # raises if not empty: we never overwrite a finished output
    os.replace(staged, target)


def publish_into(staged: Path, target: str | Path) -> None:
    """Move the files of a staging folder into an existing folder, weights last, then drop the staging folder.

    The model is only loadable once its weights arrive, so a crash in between leaves no model that looks whole.
    """
    target = Path(target)
    entries = sorted(staged.iterdir(), key=lambda p: (p.suffix in WEIGHT_SUFFIXES, p.name))
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    staged.rmdir()
