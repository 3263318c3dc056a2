"""Reading and validating a preprocess output folder (the encoded splits, label map and tokenizer).

Contract (the file names the Azure ML preprocess component writes, and our own preprocess):
  train.jsonl, validation.jsonl, [test.jsonl]  rows {"input_ids", "attention_mask", ["token_type_ids"], "labels"}
                                               with labels -100 on ignored sub-tokens; optional "word_ids" (per
                                               position: the row's word, null for special tokens and context) and
                                               "sentence" (rows of one sentence's windows are consecutive), which
                                               scoring uses to score each word once; other keys are ignored
  class_names.json                             {"class_names": [...]} (label id = index), or id2label in
                                               preprocess_args.json / id2label.json
  preprocess_args.json                         the preprocess arguments (provenance; "tag_scheme" picks the scores)
  tokenizer files                              whatever `AutoTokenizer.from_pretrained` reads
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainer.constants import IGNORE_INDEX, PREPROCESS_ARGS_FILE, SPLIT_FILES, TOKENIZER_FILES
from trainer.errors import InputError
from trainer.jsonio import int_lists, iter_jsonl, read_json
from trainer.labels import load_class_names
from trainer import schemes
from trainer.schemes import SCHEMES

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class EncodedSplit(torch.utils.data.Dataset):
    """One encoded split held in memory; rows are lists of ints, padded later by the collator.

    For scoring (trainer.metrics.word_tags): `sentence_ids[i]` is the sentence of row i and `word_starts[i]` marks,
    among row i's labelled positions, the first sub-tokens of its words (None: all of them)."""

    def __init__(self, rows: list[dict], sentence_ids: Optional[list[int]] = None,
                 word_starts: Optional[list] = None):
        self.rows = rows
        self.sentence_ids = sentence_ids if sentence_ids is not None else list(range(len(rows)))
        self.word_starts = word_starts if word_starts is not None else [None] * len(rows)

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

    @cached_property
    def tag_scheme(self) -> str:
        """The tag scheme preprocess recorded; for a folder without one (another preprocess), the scheme of the
        gold labels (plain when they mix prefixed and plain tags)."""
        recorded = self.preprocess_args.get("tag_scheme")
        if recorded:
            return recorded
        sequences = [[self.class_names[i] for i in row["labels"] if i != IGNORE_INDEX]
                     for split in (self.train, self.validation) for row in split.rows]
        try:
            return schemes.detect(sequences)
        except InputError:
            return "plain"


def _word_starts(raw: dict, where: str, n: int):
    """Among the labelled positions of a row, which are the first sub-token of a word (None: no word_ids, all)."""
    word_ids = raw.get("word_ids")
    if word_ids is None:
        return None
    if not isinstance(word_ids, list) or len(word_ids) != n:
        raise InputError(f"{where}: word_ids must be a list as long as input_ids ({n})")
    starts, previous = [], None
    for word, label in zip(word_ids, raw["labels"]):
        if label != IGNORE_INDEX:
            starts.append(word is not None and word != previous)
        previous = word
    return np.array(starts, dtype=bool)


def read_split(path: Path, num_labels: int) -> EncodedSplit:
    """Read and validate one encoded split: required keys, equal lengths, label ids inside the map, the windows of
    a sentence in consecutive rows."""
    rows, sentence_ids, word_starts, done = [], [], [], set()
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
        sentence = raw.get("sentence", len(rows))
        if sentence_ids and sentence != sentence_ids[-1]:
            if sentence in done:
                raise InputError(f"{where}: sentence {sentence} continues after other rows; the windows of a "
                                 f"sentence must be consecutive rows")
            done.add(sentence_ids[-1])
        rows.append(row)
        sentence_ids.append(sentence)
        word_starts.append(_word_starts(raw, where, n))
    if not rows:
        raise InputError(f"{path} holds no rows: the {path.stem} split is empty")
    return EncodedSplit(rows, sentence_ids, word_starts)


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
    scheme = preprocess_args.get("tag_scheme")
    if scheme is not None and scheme not in SCHEMES:
        raise InputError(f"{args_path}: tag_scheme={scheme!r} is not one of {list(SCHEMES)}")
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
