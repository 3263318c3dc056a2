"""Reading and validating a preprocess output folder (the encoded splits, label map and tokenizer).

Contract (the file names the Azure ML preprocess component writes, and our own preprocess):
  train.jsonl, validation.jsonl, [test.jsonl]  rows {"input_ids", "attention_mask", ["token_type_ids"], "labels"}
                                               with labels -100 on ignored sub-tokens; other keys are ignored
  class_names.json                             {"class_names": [...]} (label id = index), or id2label in
                                               preprocess_args.json / id2label.json
  preprocess_args.json                         the preprocess arguments (read for provenance)
  tokenizer files                              whatever `AutoTokenizer.from_pretrained` reads
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from trainer.constants import CLASS_NAMES_FILE, IGNORE_INDEX, PREPROCESS_ARGS_FILE, SPLIT_FILES, TOKENIZER_FILES
from trainer.errors import InputError
from trainer.jsonio import int_lists, iter_jsonl, read_json

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class EncodedSplit(torch.utils.data.Dataset):
    """One encoded split held in memory; rows are lists of ints, padded later by the collator."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    @property
    def num_tokens(self) -> int:
        return sum(sum(r["attention_mask"]) for r in self.rows)


@dataclass
class PreprocessOutput:
    train: EncodedSplit
    validation: EncodedSplit
    test: Optional[EncodedSplit]
    class_names: list[str]
    preprocess_args: dict
    tokenizer_dir: Path

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}


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
            raise InputError(f"id2label ids must be 0..{len(ids) - 1}, got {ids}")
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids]
    if len(names) < 2:
        raise InputError(f"the label map has {len(names)} class(es); token classification needs at least two")
    if len(set(names)) != len(names):
        raise InputError(f"the label map repeats a label: {names}")
    return names


def read_split(path: Path, num_labels: int) -> EncodedSplit:
    """Read and validate one encoded split: required keys, equal lengths, label ids inside the map."""
    rows = []
    for line_no, raw in iter_jsonl(path):
        where = f"{path.name} line {line_no}"
        missing = [k for k in ("input_ids", "attention_mask", "labels") if k not in raw]
        if missing:
            raise InputError(f"{where}: missing key(s) {missing}; found {sorted(raw)}")
        row = {k: raw[k] for k in MODEL_INPUTS if k in raw}
        int_lists(row, MODEL_INPUTS, where)
        n = len(row["input_ids"])
        if n == 0:
            raise InputError(f"{where}: empty input_ids")
        for key in ("attention_mask", "token_type_ids", "labels"):
            if key in row and len(row[key]) != n:
                raise InputError(f"{where}: {key} has {len(row[key])} entries but input_ids has {n}")
        bad = [x for x in row["labels"] if x != IGNORE_INDEX and not (isinstance(x, int) and 0 <= x < num_labels)]
        if bad:
            raise InputError(f"{where}: label id(s) {sorted(set(bad))[:5]} outside the label map "
                             f"(0..{num_labels - 1}, or {IGNORE_INDEX} for ignored sub-tokens)")
        rows.append(row)
    if not rows:
        raise InputError(f"{path} holds no rows: the {path.stem} split is empty")
    return EncodedSplit(rows)


def load_preprocess_output(folder: str | Path) -> PreprocessOutput:
    """Validate and load a preprocess output folder; every problem is raised before any training."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"preprocess_output folder not found: {root}")
    args_path = root / PREPROCESS_ARGS_FILE
    preprocess_args = read_json(args_path) if args_path.exists() else {}
    if not isinstance(preprocess_args, dict):
        raise InputError(f"{args_path} must hold a JSON object")
    class_names = load_class_names(root, preprocess_args)
    for split in ("train", "validation"):
        if not (root / SPLIT_FILES[split]).exists():
            raise InputError(f"{root} has no {SPLIT_FILES[split]} (found {sorted(p.name for p in root.iterdir())})")
    if not any((root / f).exists() for f in TOKENIZER_FILES):
        raise InputError(f"{root} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    test_path = root / SPLIT_FILES["test"]
    return PreprocessOutput(
        train=read_split(root / SPLIT_FILES["train"], len(class_names)),
        validation=read_split(root / SPLIT_FILES["validation"], len(class_names)),
        test=read_split(test_path, len(class_names)) if test_path.exists() else None,
        class_names=class_names,
        preprocess_args=preprocess_args,
        tokenizer_dir=root,
    )
