"""Finding resumable checkpoints: a checkpoint is complete once the HF Trainer wrote trainer_state.json (last)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest step first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def latest_complete_checkpoint(folder: str | Path, drop_incomplete: bool = False) -> Optional[Path]:
    """The newest complete checkpoint; newer incomplete ones (a crash mid-save) are removed if asked."""
    latest = None
    for checkpoint in list_checkpoints(folder):
        if is_complete(checkpoint):
            latest = checkpoint
        elif drop_incomplete:
            logger.warning("removing incomplete checkpoint %s (interrupted while saving)", checkpoint)
            shutil.rmtree(checkpoint, ignore_errors=True)
    return latest
