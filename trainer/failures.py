"""Failures while a program runs that are not bugs — a full disk, exhausted memory, a download that broke off — as
one clear line.

The input was fine, so the exit code is 1, not 2. What was written stays usable: a checkpoint counts only once its
manifest is written (`trainer.checkpoints`), so the line names the last complete one and how to go on from it.
Libraries report these conditions in their own ways (deepspeed 0.19.8, safetensors 0.7, torch 2.13): an OSError
with errno ENOSPC/EDQUOT, a SafetensorError quoting "os error 28", torch's zip writer failing with
"inline_container.cc ... unexpected pos" (its stream error hides the errno), torch.OutOfMemoryError, or a
RuntimeError from the CPU allocator.
"""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional

from trainer.errors import TransferError
from trainer.validation import one_line

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")
WRITE_FAILED_TEXT = ("PytorchStreamWriter failed", "inline_container.cc", "file write failed")
OUT_OF_MEMORY_TEXT = ("out of memory", "can't allocate memory", "not enough memory")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def kind_of(err: BaseException) -> Optional[str]:
    """'disk' (full), 'write' (a write failed, cause hidden), 'memory', 'transfer' (a download broke off), or None
    for anything else."""
    torch = sys.modules.get("torch")  # a torch error needs torch imported; ONNX serving runs without torch
    out_of_memory = (MemoryError, torch.OutOfMemoryError) if torch is not None else (MemoryError,)
    for link in _chain(err):
        text = str(link)
        if isinstance(link, TransferError) or (type(link).__name__ == "MlflowException"
                                               and "API request to" in text):  # a tracking server not answering
            return "transfer"
        if (isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS) or any(t in text for t in DISK_FULL_TEXT):
            return "disk"
        if isinstance(link, out_of_memory) or any(t in text.lower() for t in OUT_OF_MEMORY_TEXT):
            return "memory"
        if isinstance(link, RuntimeError) and any(t in text for t in WRITE_FAILED_TEXT):
            return "write"
    return None


def last_complete_checkpoint(folder: str | Path) -> Optional[Path]:
    from trainer.checkpoints import is_complete, list_checkpoints

    complete = [c for c in list_checkpoints(folder) if is_complete(c)]
    return complete[-1] if complete else None


def failure_line(err: BaseException, config) -> Optional[str]:
    """One line for a run-time failure that is not a bug (what happened, what is left, how to go on); None for
    anything else (a bug keeps its traceback)."""
    kind = kind_of(err)
    if kind is None:
        return None
    if kind == "transfer":  # it says what broke off and to run again: nothing was published
        return one_line(err)[:600]
    what = {"disk": "the disk is full", "write": "a file could not be written",
            "memory": "out of memory"}[kind] + f" ({one_line(err)[:300]})"
    folder = getattr(config, "pytorch_model_folder", None)
    if folder is None:
        return f"{what}; {'free memory' if kind == 'memory' else 'free disk space'} and run again"
    free = _free(folder)
    fix = {"disk": f"free space on {folder} ({free} free)", "write": f"check {folder} ({free} free)",
           "memory": "lower per_device_train_batch_size (or set auto_find_batch_size=true)"}[kind]
    last = last_complete_checkpoint(folder)
    left = f"the last complete checkpoint is {last}" if last else "no checkpoint was complete yet"
    return f"{what}; {left}; {fix}, then rerun with resume_from_checkpoint=true"


def _free(folder: str | Path) -> str:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    return f"{shutil.disk_usage(path).free / 2**20:,.1f} MiB"
