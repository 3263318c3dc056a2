"""Publishing outputs atomically: a reader sees the old state or the whole new one, never a half-written folder.

Everything is first written into a staging folder beside its target (same filesystem), then moved into place
with `os.replace`, the one atomic step POSIX filesystems give.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from trainer.errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def write_json_atomic(path: str | Path, data: object) -> None:
    """Write JSON to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
        tmp = handle.name
    os.replace(tmp, path)


def staging_dir(target: str | Path) -> Path:
    """A fresh, empty folder beside `target` (same filesystem), so the final move is a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.incomplete-"))
    stage.chmod(0o755)  # mkdtemp makes it owner-only; a published folder is readable by the serving user too
    return stage


def ensure_empty_or_absent(folder: str | Path, name: str) -> None:
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{name} {folder} already exists and is not empty; give an empty or new folder")


def publish_dir(staged: Path, target: str | Path, *, replace: bool = False) -> None:
    """Move a finished staging folder to `target` in one rename.

    An empty `target` is replaced; a non-empty one only with `replace=True`: it is first renamed aside, so
    `target` always holds either the old complete folder or the new one, and is then deleted.
    """
    target = Path(target)
    old = None
    if target.is_dir() and any(target.iterdir()):
        if not replace:
            raise InputError(f"{target} already exists and is not empty: not overwriting a finished output")
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "x")
    elif target.is_dir():
        target.rmdir()
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_into(staged: Path, target: str | Path) -> None:
    """Move the entries of a staging folder into an existing folder, weights last, then drop the staging folder.

    The model is only loadable once its weights arrive, so a crash in between leaves no model that looks whole.
    """
    target = Path(target)
    entries = sorted(staged.iterdir(), key=lambda p: (p.suffix in WEIGHT_SUFFIXES, p.name))
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    staged.rmdir()


def copy_tree_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy an input folder to `dst` through a staging sibling and a rename; an existing `dst` is replaced as a
    whole. Symlinks are copied as their targets' contents, and only while they stay inside `src`
    (`trainer.input_tree`: a link out of the folder is an InputError)."""
    from trainer.input_tree import copy_tree

    dst = Path(dst)
    stage = staging_dir(dst)
    try:
        (stage / "x").mkdir()
        copy_tree(src, stage / "x")
        publish_dir(stage / "x", dst, replace=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
