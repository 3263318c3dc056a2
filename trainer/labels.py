"""The label list of a preprocess output (class_names.json, or an id2label mapping): read without torch, so the
evaluate program can check a fine-tune's reusable predictions without loading a model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from trainer.constants import CLASS_NAMES_FILE
from trainer.errors import InputError, preview
from trainer.jsonio import read_json


def load_class_names(folder: Path, preprocess_args: dict) -> list[str]:
    """The label list, from class_names.json or an id2label mapping."""
    path = folder / CLASS_NAMES_FILE
    if path.exists():
        data = read_json(path)
        names = data.get("class_names") if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f'{path} must be {{"class_names": [label strings]}}')
    else:
        id2label = preprocess_args.get("id2label")
        if id2label is None and (folder / "id2label.json").exists():
            id2label = read_json(folder / "id2label.json")
        if not isinstance(id2label, dict) or not id2label:
            raise InputError(f"no label map in {folder}: expected class_names.json or an id2label mapping")
        try:
            ids = sorted(int(k) for k in id2label)
        except ValueError:
            raise InputError(f"id2label keys must be integers, got {list(id2label)[:5]}") from None
        if ids != list(range(len(ids))):
            raise InputError(f"id2label ids must be 0..{len(ids) - 1}, got {preview(ids)}")
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids]
    if len(names) < 2:
        raise InputError(f"the label map has {len(names)} class(es); token classification needs at least two")
    if len(set(names)) != len(names):
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        raise InputError(f"the label map repeats a label: {preview(repeated)}")
    return names
