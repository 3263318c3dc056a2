"""Reading an input folder safely: symbolic links are followed only while they stay inside the folder.

An input artifact (a model folder on a PVC, a user's data folder, a KFP artifact) may hold symlinks. Copying or
uploading it must never follow a link to something outside it (`config.json -> /etc/passwd`,
`weights -> ../../other-team/model`): such a link is refused with an InputError naming it and where it points.
A link that resolves inside the folder is read as the file or folder it points to (a copy holds real files).

One exception is recognised: a Hugging Face cache snapshot (`.../models--org--name/snapshots/<sha>/`), whose files
are links to `../../blobs/<hash>`. Its boundary is the repository's cache folder (`models--org--name/`), so a
snapshot folder given as a model works while links out of that repository are still refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from trainer.errors import InputError


def boundary(folder: str | Path) -> Path:
    """The folder links may point into: `folder` itself (resolved), or the repository folder of an HF cache
    snapshot."""
    root = Path(folder).resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith(("models--", "datasets--")):
        return root.parent.parent
    return root


def resolve_inside(path: Path, root: Path, shown: str) -> Path:
    """The real path of `path`, which must lie inside `root` (resolved); InputError otherwise."""
    real = path.resolve()
    if real != root and root not in real.parents:
        target = os.readlink(path) if path.is_symlink() else str(real)
        raise InputError(f"{shown} is a symbolic link to {target}, outside the input folder {root}: "
                         "refusing to read it (copy the file into the folder instead)")
    return real


def iter_files(folder: str | Path, *, within: str | Path | None = None) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, real path) of every file under `folder`, sorted, following links only inside it
    (or inside `within`, the whole input, when `folder` is a part of it).

    Links to folders inside are walked as folders (a link cycle is refused); broken links are refused.
    """
    top = Path(folder)
    if not top.is_dir():
        raise InputError(f"{top} is not a folder")
    root = Path(within).resolve() if within is not None else boundary(top)
    yield from _walk(top, root, "", {top.resolve()})


def _walk(folder: Path, root: Path, prefix: str, active: set[Path]) -> Iterator[tuple[str, Path]]:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        rel = f"{prefix}{entry.name}"
        shown = str(entry)
        if entry.is_symlink():
            if not entry.exists():
                raise InputError(f"{shown} is a broken symbolic link (to {os.readlink(entry)})")
            real = resolve_inside(entry, root, shown)
        else:
            real = entry
        if real.is_dir():
            key = real.resolve()
            if key in active:
                raise InputError(f"{shown} is a symbolic link loop (back to {key})")
            yield from _walk(entry, root, f"{rel}/", active | {key})
        elif real.is_file():
            yield rel, real
        # sockets, fifos and devices are not data: skipped


def copy_tree(src: str | Path, dst: str | Path) -> list[str]:
    """Copy every file of `src` into `dst` (created; existing files replaced) as real files, links resolved
    inside `src` only. Returns the relative paths copied."""
    dst = Path(dst)
    copied = []
    for rel, real in iter_files(src):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target)
        copied.append(rel)
    return copied


def check_file(path: str | Path) -> Path:
    """A single input file given directly: a link is the user's choice and is followed wherever it points (only links
    inside an input folder are kept inside it); its real path. A broken link is refused."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path} is a broken symbolic link (to {os.readlink(path)})")
    return path.resolve()
