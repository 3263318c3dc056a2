"""Publishing outputs atomically: a reader sees the old state or the whole new one, never a half-written folder.

Everything is first written into a staging folder beside its target (same filesystem), then moved into place
with `os.replace`, the one atomic step POSIX filesystems give.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from trainer.errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
STAGE_KINDS = ("incomplete", "old", "download")  # .NAME.<kind>-XXXX folders beside an output NAME while it is written
PUBLISHED_RECORD = ".published.json"  # in a model folder: the outputs it published beside itself (publish_output)


def write_file_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a temporary sibling of `path`, which is then synced, made readable by all (like any other
    output) and renamed over `path`; a failed write (e.g. a full disk) leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: object) -> None:
    """Write JSON atomically (`write_file_atomic`)."""
    write_file_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str),
                                                      encoding="utf-8"))


def staging_dir(target: str | Path) -> Path:
    """A fresh, empty folder beside `target` (same filesystem), so the final move is a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.incomplete-"))
    stage.chmod(0o755)  # mkdtemp makes it owner-only; a published folder is readable by the serving user too
    return stage


def ensure_empty_or_absent(folder: str | Path, name: str, published_from: str | Path | None = None) -> None:
    """`folder` can take a new output: absent, empty, or the one `published_from` published earlier (a killed or
    resumed run of the same output, replaced as a whole when published again)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{name} {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if published_from is not None and published_by(folder, published_from):
            return
        raise InputError(f"{name} {folder} already exists and is not empty; give an empty or new folder")


def ensure_new_file(path: str | Path, name: str) -> None:
    """`path` can take a new output file: nothing is there (an existing file is never overwritten)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{name} {path} is a folder; give a file path")
    if path.exists() or path.is_symlink():
        raise InputError(f"{name} {path} already exists; give a new path (outputs are never overwritten)")


@contextlib.contextmanager
def new_output_folder(folder: str | Path, name: str) -> Iterator[None]:
    """Around a program that writes one new output folder: `folder` must be absent or empty (InputError), what a
    killed earlier run left beside it goes (`remove_stale_stages`), and if the program fails, the parent folders
    it created for `folder` are removed again (when empty): a failed run leaves nothing behind."""
    folder = Path(os.path.abspath(folder))
    ensure_empty_or_absent(folder, name)
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    remove_stale_stages(folder)
    try:
        yield
    except BaseException:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:  # not empty (or already gone): leave it
                if created.exists():
                    break
        raise


def tree_fingerprint(folder: str | Path) -> str:
    """SHA-256 of every file's relative path, size and modification time in `folder`: what a rename keeps and a
    later write changes."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for item in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        stat = item.lstat()
        digest.update(f"{item.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _record_path(root: str | Path) -> Path:
    return Path(root) / PUBLISHED_RECORD


def published_by(target: str | Path, root: str | Path) -> bool:
    """`target` is still exactly the output that `root` published there (recorded when it was renamed in)."""
    record = _record_path(root)
    try:
        published = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    key = str(Path(target).resolve())
    return isinstance(published, dict) and published.get(key) == tree_fingerprint(target)


def publish_output(staged: Path, target: str | Path, root: str | Path) -> None:
    """Rename a finished staging folder to `target`, an output published beside the folder `root`.

    `root` records what it published (before the rename), so a later run of the same output — one resumed after
    being killed between this rename and its last file — recognises `target` as its own and replaces it; anything
    else in `target` is never overwritten. Leftover staging folders of `target` are removed first.
    """
    target = Path(target)
    remove_stale_stages(target, keep=staged)
    replace = published_by(target, root)
    record = _record_path(root)
    try:
        published = json.loads(record.read_text(encoding="utf-8")) if record.exists() else {}
    except ValueError:
        published = {}
    published = published if isinstance(published, dict) else {}
    published[str(target.resolve())] = tree_fingerprint(staged)
    write_json_atomic(record, published)
    publish_dir(staged, target, replace=replace)


def remove_stale_stages(target: str | Path, keep: Path | None = None) -> None:
    """Remove the staging folders a killed run left beside `target` (`.NAME.incomplete-*`, `.NAME.old-*`,
    `.NAME.download-*`), all but `keep` (the one being published)."""
    target = Path(target)
    if target.parent.is_dir():
        for stale in target.parent.glob(f".{target.name}.*"):
            if stale != keep and stale.is_dir() and stale.name.startswith(tuple(
                    f".{target.name}.{kind}-" for kind in STAGE_KINDS)):
                shutil.rmtree(stale, ignore_errors=True)


def remove_published(root: str | Path, marker: str, keep) -> None:
    """Remove what an earlier run published into `root` before publishing again: its completion `marker` first
    (the folder stops looking finished), then its weights, then everything else except what `keep(path)` spares.
    Stale results never sit beside new ones."""
    root = Path(root)
    if not root.is_dir():
        return
    (root / marker).unlink(missing_ok=True)
    entries = [p for p in root.iterdir() if not keep(p)]
    for entry in sorted(entries, key=lambda p: p.suffix not in WEIGHT_SUFFIXES):
        remove_entry(entry)


def remove_entry(path: Path) -> None:
    """Remove one entry of a folder: a directory with its contents, a file, or a link (never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_readable(path: Path) -> None:
    """Make `path` (a file, or a folder with everything in it) readable by all, whatever the umask: a published model
    is read by other users (the next step's pod, a serving pod). safetensors 0.8 writes its files owner-only (0600),
    and `save_pretrained` with it."""
    for entry in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else ())]:
        if not entry.is_symlink():
            mode = entry.stat().st_mode
            entry.chmod(mode | (0o555 if entry.is_dir() else 0o444))


def publish_dir(staged: Path, target: str | Path, *, replace: bool = False) -> None:
    """Move a finished staging folder to `target` in one rename, readable by all (`make_readable`).

    An empty `target` is replaced; a non-empty one only with `replace=True`: it is first renamed aside, so
    `target` always holds either the old complete folder or the new one, and is then deleted.
    """
    target = Path(target)
    make_readable(staged)
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
    They are made readable by all first (`make_readable`).

    The model is only loadable once its weights arrive, so a crash in between leaves no model that looks whole.
    """
    target = Path(target)
    make_readable(staged)
    target.chmod(target.stat().st_mode | 0o555)  # the folder itself too (made under the umask)
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
