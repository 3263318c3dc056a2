"""Preprocess for token classification: read CoNLL / JSON Lines, split, tokenize and align labels.

Output folder contract (the `preprocess_output` of the finetune component):

- `train.jsonl`, `validation.jsonl`, `test.jsonl` (test only if it has rows): one encoded sentence per line,
  {"input_ids", "attention_mask", ["token_type_ids"], "labels", "tokens", "tags"}; `labels` is aligned with
  `input_ids` (-100 where no label is predicted: special tokens, continuation sub-tokens unless
  `label_all_tokens`); `tokens`/`tags` are the original words and their string tags.
- `class_names.json`: {"class_names": [...]}; label id = index ("O" first when present, the rest sorted).
- `preprocess_args.json`: every argument, plus model_name, split sizes and "task_name": "TokenClassification".
- The tokenizer (`save_pretrained`).

Word/sub-token alignment follows the transformers `run_ner` example.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from trainer.model_io import InputError, read_model_selector_args, resolve_model_dir

logger = logging.getLogger(__name__)

TASK_NAME = "TokenClassification"
CLASS_NAMES_FILE = "class_names.json"
PREPROCESS_ARGS_FILE = "preprocess_args.json"
SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
IGNORE_INDEX = -100
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
DATA_SUFFIXES = (".conll", ".txt", ".tsv", ".iob", ".bio", ".conllu") + JSONL_SUFFIXES
# Model families whose fast tokenizer is byte-level BPE: pre-split words need add_prefix_space=True.
BYTE_LEVEL_FAMILIES = ("roberta", "xlm-roberta-bpe", "gpt2", "gpt_neo", "gpt_neox", "gptj", "bart", "mvp", "led",
                       "longformer", "deberta", "bloom", "codegen", "blenderbot", "markuplm", "layoutlmv3", "ibert",
                       "data2vec-text", "luke", "mpnet-bpe", "opt", "megatron-gpt2", "xmod", "roberta-prelayernorm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")

Sentence = tuple[list[str], list[str]]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
def _resolve_data_file(path: str | os.PathLike, role: str) -> Path:
    """A data file; a folder holding exactly one data file (as a KFP Dataset artifact may be) also works."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} file not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        data = [f for f in files if f.suffix.lower() in DATA_SUFFIXES] or files
        if len(data) != 1:
            raise InputError(f"{role} folder {p} must hold exactly one data file (.conll/.txt/.jsonl); "
                             f"found {[f.name for f in files]}")
        p = data[0]
    if p.stat().st_size == 0:
        raise InputError(f"{role} file is empty: {p}")
    return p


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def read_conll(path: str | os.PathLike) -> list[Sentence]:
    """Sentences of a CoNLL file: `token<TAB>tag` or whitespace-separated columns (the last is the tag),
    blank lines between sentences, `-DOCSTART-` lines skipped."""
    path = Path(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        nonlocal tokens, tags
        if tokens:
            sentences.append((tokens, tags))
        tokens, tags = [], []

    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            if line.lstrip().startswith("-DOCSTART-"):
                flush()
                continue
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
            if len(parts) < 2 or parts[-1] == "":
                raise InputError(
                    f"{path}: sentence {len(sentences) + 1} (line {lineno}): token and tag counts differ: "
                    f"expected 'token<TAB>tag' (or whitespace-separated columns, tag last), got {line!r}")
            tokens.append(parts[0])
            tags.append(parts[-1])
    flush()
    return sentences


def read_jsonl(path: str | os.PathLike, token_column: str = "tokens", tag_column: str = "ner_tags") -> list[Sentence]:
    """Sentences of a JSON Lines file: one object per line with a list of tokens and a list of tags."""
    path = Path(path)
    sentences: list[Sentence] = []
    with path.open(encoding="utf-8") as fh:
        rows = [(n, line) for n, line in enumerate(fh, start=1) if line.strip()]
    for number, (lineno, line) in enumerate(rows, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: line {lineno} is not valid JSON: {err}") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}: line {lineno} must be a JSON object")
        missing = [c for c in (token_column, tag_column) if c not in row]
        if missing:
            raise InputError(f"{path}: sentence {number} (line {lineno}) is missing column(s) {missing} "
                             f"(token_column={token_column!r}, tag_column={tag_column!r}); "
                             f"columns present: {sorted(row)}")
        toks, tags = row[token_column], row[tag_column]
        if isinstance(toks, str) or not isinstance(toks, list) or isinstance(tags, str) or not isinstance(tags, list):
            raise InputError(f"{path}: sentence {number} (line {lineno}): columns {token_column!r} and "
                             f"{tag_column!r} must be lists")
        if len(toks) != len(tags):
            raise InputError(f"{path}: sentence {number} (line {lineno}): token and tag counts differ "
                             f"({len(toks)} tokens, {len(tags)} tags)")
        if not toks:
            continue
        sentences.append(([str(t) for t in toks], [str(t) for t in tags]))
    return sentences


def read_sentences(path: str | os.PathLike, role: str, token_column: str = "tokens",
                   tag_column: str = "ner_tags") -> list[Sentence]:
    """Read a CoNLL or JSON Lines file (sniffed from its suffix / first line); errors name the file."""
    p = _resolve_data_file(path, role)
    sentences = read_jsonl(p, token_column, tag_column) if _is_jsonl(p) else read_conll(p)
    if not sentences:
        raise InputError(f"{role} file {p} holds no sentences")
    return sentences


# --------------------------------------------------------------------------------------------------
# Labels and splits
# --------------------------------------------------------------------------------------------------
def class_names_of(sentences: Iterable[Sentence]) -> list[str]:
    """Sorted label strings, "O" first when present."""
    labels = {t for _, tags in sentences for t in tags}
    return (["O"] if "O" in labels else []) + sorted(labels - {"O"})


def b_to_i_map(class_names: list[str]) -> list[int]:
    """For each label id, the id to use on continuation sub-tokens: B-x -> I-x when I-x exists."""
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for i, name in enumerate(class_names):
        if name.startswith("B-") and f"I-{name[2:]}" in index:
            out.append(index[f"I-{name[2:]}"])
        else:
            out.append(i)
    return out


def split_sentences(sentences: list[Sentence], fractions: dict[str, float], seed: int) -> dict[str, list[Sentence]]:
    """Shuffle (seeded) and carve out the named fractions; the rest stays in 'train'."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    out: dict[str, list[Sentence]] = {}
    start = 0
    n = len(sentences)
    for name, frac in fractions.items():
        k = int(round(n * frac))
        if frac > 0:
            k = max(k, 1)
        out[name] = [sentences[i] for i in order[start:start + k]]
        start += k
    out["train"] = [sentences[i] for i in order[start:]]
    if not out["train"]:
        raise InputError(f"training data has {n} sentence(s): too few to split off {sorted(fractions)}; "
                         f"provide validation/test files or more training data")
    return out


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
def _tokenizer_dir(tokenizer_path: str | os.PathLike) -> Path:
    root = Path(tokenizer_path)
    if not root.is_dir():
        raise InputError(f"tokenizer_path folder not found: {root}")
    if any((root / f).exists() for f in TOKENIZER_FILES):
        return root
    model_dir = resolve_model_dir(root)
    if any((model_dir / f).exists() for f in TOKENIZER_FILES):
        return model_dir
    adapter = model_dir / "adapter_config.json"
    if adapter.exists():  # a LoRA adapter folder without a tokenizer: use its base model's, if local
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if base and Path(base).is_dir():
            return Path(base)
    raise InputError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) found in {root}")


def _model_type(folder: Path) -> Optional[str]:
    cfg = folder / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text()).get("model_type")
        except (json.JSONDecodeError, OSError):
            return None
    return None


def _is_byte_level(tokenizer: Any) -> bool:
    try:
        backend = tokenizer.backend_tokenizer
        return "ByteLevel" in str(backend.pre_tokenizer) or "ByteLevel" in backend.to_str()[:20000]
    except Exception:  # noqa: BLE001 - best effort detection only
        return False


def load_tokenizer(tokenizer_path: str | os.PathLike, add_prefix_space: Optional[bool] = None):
    """Load the fast tokenizer of a tokenizer / model / model-import folder; returns (tokenizer, folder, prefix)."""
    from transformers import AutoTokenizer

    folder = _tokenizer_dir(tokenizer_path)
    kwargs: dict[str, Any] = {}
    if add_prefix_space is not None:
        kwargs["add_prefix_space"] = add_prefix_space
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise InputError(f"could not load a tokenizer from {folder}: {type(err).__name__}: {err}") from err
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"the tokenizer in {folder} ({type(tokenizer).__name__}) is not a fast (Rust) tokenizer; "
                         f"word/sub-token alignment needs word_ids(): provide a tokenizer.json")
    if add_prefix_space is None:
        family = (_model_type(folder) or _model_type(Path(tokenizer_path)) or "").lower()
        if (family in BYTE_LEVEL_FAMILIES or _is_byte_level(tokenizer)) and not getattr(
                tokenizer, "add_prefix_space", False):
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True,
                                                          add_prefix_space=True)
                add_prefix_space = True
            except Exception as err:  # noqa: BLE001
                logger.warning("could not enable add_prefix_space for %s: %s", folder, err)
        elif getattr(tokenizer, "add_prefix_space", None) is not None:
            add_prefix_space = bool(tokenizer.add_prefix_space)
    return tokenizer, folder, add_prefix_space


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------
def encode_sentences(sentences: list[Sentence], tokenizer: Any, label_to_id: dict[str, int], max_seq_length: int,
                     label_all_tokens: bool = False) -> tuple[list[dict], int]:
    """Tokenize pre-split words and align labels; returns (rows, number of sentences truncated)."""
    continuation = b_to_i_map(sorted(label_to_id, key=label_to_id.get))
    rows, truncated = [], 0
    batch = 256
    for start in range(0, len(sentences), batch):
        chunk = sentences[start:start + batch]
        enc = tokenizer([toks for toks, _ in chunk], is_split_into_words=True, truncation=True,
                        max_length=max_seq_length)
        for i, (toks, tags) in enumerate(chunk):
            word_ids = enc.word_ids(batch_index=i)
            labels: list[int] = []
            previous = None
            for w in word_ids:
                if w is None:
                    labels.append(IGNORE_INDEX)
                elif w != previous:
                    labels.append(label_to_id[tags[w]])
                else:
                    labels.append(continuation[label_to_id[tags[w]]] if label_all_tokens else IGNORE_INDEX)
                previous = w
            seen = [w for w in word_ids if w is not None]
            if seen and max(seen) < len(toks) - 1:
                truncated += 1
            row = {"input_ids": list(enc["input_ids"][i]), "attention_mask": list(enc["attention_mask"][i])}
            if "token_type_ids" in enc:
                row["token_type_ids"] = list(enc["token_type_ids"][i])
            row.update(labels=labels, tokens=toks, tags=tags)
            rows.append(row)
    return rows, truncated


# --------------------------------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------------------------------
def _move_contents(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(item, target)


def atomic_output(output_dir: str | os.PathLike):
    """A temp folder beside output_dir; call `commit(tmp)` to move its contents in (see preprocess())."""
    out = Path(output_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent)), out


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def preprocess(*, train_file: str, output_dir: str, tokenizer_path: str, validation_file: Optional[str] = None,
               test_file: Optional[str] = None, token_column: str = "tokens", tag_column: str = "ner_tags",
               max_seq_length: int = 512, label_all_tokens: bool = False, add_prefix_space: Optional[bool] = None,
               validation_ratio: float = 0.1, test_ratio: float = 0.1, split_seed: int = 42) -> dict:
    """Read, split, tokenize and align a token-classification dataset; write the preprocess output folder.

    Returns a summary: split sizes, class names, model name, truncation count.
    """
    args = dict(train_file=train_file, output_dir=output_dir, tokenizer_path=tokenizer_path,
                validation_file=validation_file, test_file=test_file, token_column=token_column,
                tag_column=tag_column, max_seq_length=max_seq_length, label_all_tokens=label_all_tokens,
                add_prefix_space=add_prefix_space, validation_ratio=validation_ratio, test_ratio=test_ratio,
                split_seed=split_seed)
    validation_file = validation_file or None
    test_file = test_file or None
    if int(max_seq_length) < 2:
        raise InputError(f"max_seq_length must be >= 2, got {max_seq_length}")
    for name, value in (("validation_ratio", validation_ratio), ("test_ratio", test_ratio)):
        if not 0.0 <= float(value) < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {value}")

    read = lambda path, role: read_sentences(path, role, token_column, tag_column)  # noqa: E731
    train = read(train_file, "train")
    splits: dict[str, list[Sentence]] = {"train": train}
    if validation_file:
        splits["validation"] = read(validation_file, "validation")
    if test_file:
        splits["test"] = read(test_file, "test")

    class_names = class_names_of(train)
    if len(class_names) < 2:
        raise InputError(f"training data {train_file} has {len(class_names)} class(es) {class_names}: "
                         f"token classification needs at least two")
    known = set(class_names)
    for role in ("validation", "test"):
        if role in splits:
            for number, (_, tags) in enumerate(splits[role], start=1):
                unseen = sorted(set(tags) - known)
                if unseen:
                    raise InputError(f"{role} file {args[role + '_file']}: sentence {number} has label(s) "
                                     f"{unseen} not seen in the training data (train labels: {class_names})")

    # Split what is missing: 80/10/10 when both are missing, 80/20 when one is.
    missing = [r for r in ("validation", "test") if r not in splits]
    if missing:
        total = float(validation_ratio) + float(test_ratio)
        if len(missing) == 2:
            fractions = {"validation": float(validation_ratio), "test": float(test_ratio)}
        else:
            fractions = {missing[0]: total}
        fractions = {k: v for k, v in fractions.items() if v > 0}
        if "validation" in missing and "validation" not in fractions:
            raise InputError("no validation_file and validation_ratio is 0: a validation split is required")
        carved = split_sentences(train, fractions, int(split_seed))
        splits.update(carved)
        splits.setdefault("test", [])

    tokenizer, tok_folder, prefix = load_tokenizer(tokenizer_path, add_prefix_space)
    model_max = getattr(tokenizer, "model_max_length", None) or 0
    effective_len = int(max_seq_length)
    if 0 < model_max < effective_len:
        logger.warning("max_seq_length %d exceeds the tokenizer's model_max_length %d; using %d",
                       effective_len, model_max, model_max)
        effective_len = int(model_max)

    label_to_id = {name: i for i, name in enumerate(class_names)}
    meta = read_model_selector_args(tokenizer_path) if Path(tokenizer_path).is_dir() else {}
    model_name = meta.get("model_name") or Path(tokenizer_path).resolve().name

    tmp, out = atomic_output(output_dir)
    try:
        sizes, truncated = {}, {}
        for role in ("train", "validation", "test"):
            rows, cut = encode_sentences(splits.get(role, []), tokenizer, label_to_id, effective_len,
                                         bool(label_all_tokens))
            sizes[role], truncated[role] = len(rows), cut
            if role == "test" and not rows:
                continue
            with (tmp / SPLIT_FILES[role]).open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / CLASS_NAMES_FILE).write_text(json.dumps({"class_names": class_names}, indent=2))
        tokenizer.save_pretrained(str(tmp))
        record = dict(args)
        record.update(model_name=model_name, task_name=TASK_NAME, add_prefix_space=prefix,
                      effective_max_seq_length=effective_len, tokenizer_folder=str(tok_folder),
                      train_size=sizes["train"], validation_size=sizes["validation"], test_size=sizes["test"],
                      truncated_sentences=truncated, num_labels=len(class_names), class_names=class_names)
        (tmp / PREPROCESS_ARGS_FILE).write_text(json.dumps(record, indent=2, default=str))
        if out.exists() and (out / SPLIT_FILES["test"]).exists() and not sizes["test"]:
            (out / SPLIT_FILES["test"]).unlink()  # do not leave a stale test split from an earlier run
        _move_contents(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {"train_size": sizes["train"], "validation_size": sizes["validation"], "test_size": sizes["test"],
               "class_names": class_names, "num_labels": len(class_names), "model_name": model_name,
               "truncated_sentences": truncated, "add_prefix_space": prefix, "output_dir": str(out)}
    logger.info("preprocess summary: %s", summary)
    return summary


def _opt_bool(value: str) -> Optional[bool]:
    text = str(value).strip().lower()
    if text in ("", "auto", "none"):
        return None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/auto, got {value!r}")


def _bool(value: str) -> bool:
    result = _opt_bool(value)
    if result is None:
        raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.preprocess", description=__doc__.splitlines()[0])
    p.add_argument("--train_file", "--train-file", required=True, help="CoNLL or JSON Lines training data.")
    p.add_argument("--validation_file", "--validation-file", default=None, help="Validation data (else split).")
    p.add_argument("--test_file", "--test-file", default=None, help="Test data (else split).")
    p.add_argument("--tokenizer_path", "--tokenizer-path", required=True,
                   help="Tokenizer folder, model folder or model-import output folder.")
    p.add_argument("--output_dir", "--output-dir", required=True, help="Preprocess output folder.")
    p.add_argument("--token_column", default="tokens", help="JSON Lines column of the words.")
    p.add_argument("--tag_column", default="ner_tags", help="JSON Lines column of the tags.")
    p.add_argument("--max_seq_length", type=int, default=512, help="Truncate encoded rows to this many tokens.")
    p.add_argument("--label_all_tokens", type=_bool, default=False,
                   help="Label continuation sub-tokens too (B- becomes I-).")
    p.add_argument("--add_prefix_space", type=_opt_bool, default=None,
                   help="true/false/auto (auto: true for byte-level BPE tokenizers).")
    p.add_argument("--validation_ratio", type=float, default=0.1)
    p.add_argument("--test_ratio", type=float, default=0.1)
    p.add_argument("--split_seed", type=int, default=42)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ns = build_parser().parse_args(argv)
    try:
        summary = preprocess(**vars(ns))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
