"""KFP component: read, split, tokenize and label-align a token-classification dataset."""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import TRAINER_CPU_IMAGE


@dsl.component(base_image=TRAINER_CPU_IMAGE, install_kfp_package=False)
def preprocess(
    train_data: Input[Dataset],
    model_selector_output: Input[Model],
    preprocess_output: Output[Dataset],
    validation_data: Optional[Input[Dataset]] = None,
    test_data: Optional[Input[Dataset]] = None,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
    max_seq_length: int = 512,
    label_all_tokens: str = "false",
    add_prefix_space: str = "auto",
    validation_ratio: float = 0.1,
    test_ratio: float = 0.1,
    split_seed: int = 42,
) -> NamedTuple("PreprocessSummary", [("num_labels", int), ("class_names", list), ("train_size", int)]):
    """Read CoNLL or JSON Lines NER data, split it, tokenize it and align word labels to sub-tokens.

    Args:
        train_data: Training data: a CoNLL file (token<TAB>tag, blank line between sentences), a JSON Lines file
            (token and tag list columns), or a folder holding train.* and optionally validation.*/dev.* and test.*
            files (used when validation_data/test_data are not given).
        model_selector_output: Model import output (or any folder with tokenizer files); its tokenizer is used
            and saved into the output.
        preprocess_output: Folder with train/validation/test.jsonl (input_ids, attention_mask, labels, tokens,
            tags), class_names.json, preprocess_args.json and the tokenizer.
        validation_data: Validation data (CoNLL / JSON Lines); if absent, split off the training data.
        test_data: Test data (CoNLL / JSON Lines); if absent, split off the training data.
        token_column: JSON Lines column holding the words.
        tag_column: JSON Lines column holding the tags (strings).
        max_seq_length: Rows are truncated to this many tokens (capped at the tokenizer's maximum).
        label_all_tokens: "true": continuation sub-tokens get the word's label (B- turned into I-); "false": -100.
        add_prefix_space: "auto" (true for byte-level BPE tokenizers such as RoBERTa/GPT-2/DeBERTa), "true" or
            "false".
        validation_ratio: Fraction of the training data split off as validation when validation_data is absent.
        test_ratio: Fraction of the training data split off as test when test_data is absent (when exactly one
            split is missing it gets validation_ratio + test_ratio, i.e. 80/20).
        split_seed: Seed of the split shuffle.

    Returns:
        num_labels: Number of classes.
        class_names: Class names; label id = index.
        train_size: Number of training sentences.
    """
    import logging
    import os
    from collections import namedtuple
    from pathlib import Path

    from trainer.config import parse_bool
    from trainer.preprocess import DATA_SUFFIXES, preprocess as run_preprocess

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def pick(folder: Path, stems: tuple) -> Optional[str]:
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in DATA_SUFFIXES and f.stem.lower() in stems:
                return str(f)
        return None

    train_path = Path(train_data.path)
    validation_file = validation_data.path if validation_data is not None else None
    test_file = test_data.path if test_data is not None else None
    if train_path.is_dir():
        train_file = pick(train_path, ("train", "training"))
        if train_file is None:
            raise ValueError(f"train_data folder {train_path} has no train.* data file "
                             f"(found {sorted(p.name for p in train_path.iterdir())})")
        validation_file = validation_file or pick(train_path, ("validation", "valid", "dev", "val"))
        test_file = test_file or pick(train_path, ("test",))
    else:
        train_file = str(train_path)

    prefix = str(add_prefix_space).strip().lower()
    summary = run_preprocess(
        train_file=train_file, validation_file=validation_file, test_file=test_file,
        tokenizer_path=model_selector_output.path, output_dir=preprocess_output.path,
        token_column=token_column, tag_column=tag_column, max_seq_length=max_seq_length,
        label_all_tokens=parse_bool(label_all_tokens, "label_all_tokens"),
        add_prefix_space=None if prefix in ("", "auto", "none") else parse_bool(prefix, "add_prefix_space"),
        validation_ratio=validation_ratio, test_ratio=test_ratio, split_seed=split_seed)
    for key in ("train_size", "validation_size", "test_size", "num_labels", "model_name"):
        preprocess_output.metadata[key] = summary[key]
    preprocess_output.metadata["class_names"] = summary["class_names"]
    print(f"preprocess output in {os.path.abspath(preprocess_output.path)}: {summary}")
    out = namedtuple("PreprocessSummary", ["num_labels", "class_names", "train_size"])
    return out(summary["num_labels"], summary["class_names"], summary["train_size"])
