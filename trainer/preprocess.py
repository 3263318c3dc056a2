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

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

from trainer.booleans import parse_auto_bool
from trainer.config import PreprocessConfig
from trainer.constants import CLASS_NAMES_FILE, IGNORE_INDEX, PREPROCESS_ARGS_FILE, SPLIT_FILES, TOKENIZER_FILES
from trainer.errors import InputError
from trainer.jsonio import iter_jsonl, write_jsonl
from trainer.model_io import read_model_selector_args, resolve_model_dir
from trainer.publish import publish_dir, staging_dir

logger = logging.getLogger(__name__)

TASK_NAME = "TokenClassification"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
DATA_SUFFIXES = (".conll", ".txt", ".tsv", ".iob", ".bio", ".conllu") + JSONL_SUFFIXES
# Model families whose fast tokenizer is byte-level BPE: pre-split words need add_prefix_space=True.
BYTE_LEVEL_FAMILIES = ("roberta", "xlm-roberta-bpe", "gpt2", "gpt_neo", "gpt_neox", "gptj", "bart", "mvp", "led",
                       "longformer", "deberta", "bloom", "codegen", "blenderbot", "markuplm", "layoutlmv3", "ibert",
                       "data2vec-text", "luke", "mpnet-bpe", "opt", "megatron-gpt2", "xmod", "roberta-prelayernorm")

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
    for number, (lineno, row) in enumerate(iter_jsonl(path), start=1):
        missing = [c for c in (token_column, tag_column) if c not in row]
        if missing:
            raise InputError(f"{path}: sentence {number} (line {lineno}) is missing column(s) {missing} "
                             f"(token_column={token_column!r}, tag_column={tag_column!r}); "
                             f"columns present: {sorted(row)}")
        toks, tags = row[token_column], row[tag_column]
        if not isinstance(toks, list) or not isinstance(tags, list):
            raise InputError(f"{path}: sentence {number} (line {lineno}): columns {token_column!r} and "
                             f"{tag_column!r} must be lists")
        if len(toks) != len(tags):
            raise InputError(f"{path}: sentence {number} (line {lineno}): token and tag counts differ "
                             f"({len(toks)} tokens, {len(tags)} tags)")
        if toks:
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
# Entry point
# --------------------------------------------------------------------------------------------------
def _pick(folder: Path, stems: tuple[str, ...]) -> Optional[str]:
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in DATA_SUFFIXES and f.stem.lower() in stems:
            return str(f)
    return None


def resolve_data_files(config: PreprocessConfig) -> dict[str, Optional[str]]:
    """The train/validation/test files: `train_data` may be a folder holding train.* (and validation.*/dev.*,
    test.*, used where validation_data / test_data are not given)."""
    files = {"train": config.train_data, "validation": config.validation_data, "test": config.test_data}
    root = Path(config.train_data)
    if root.is_dir():
        train = _pick(root, ("train", "training"))
        if train is None:
            data = [f for f in sorted(root.iterdir()) if f.is_file() and not f.name.startswith(".")]
            if len(data) != 1:
                raise InputError(f"train_data folder {root} has no train.* data file "
                                 f"(found {sorted(p.name for p in root.iterdir())})")
            train = str(data[0])
        files["train"] = train
        files["validation"] = files["validation"] or _pick(root, ("validation", "valid", "dev", "val"))
        files["test"] = files["test"] or _pick(root, ("test",))
    return files


def preprocess(config: PreprocessConfig) -> dict:
    """Read, split, tokenize and align a token-classification dataset; write the preprocess output folder.

    Returns a summary: split sizes, class names, model name, truncation count.
    """
    files = resolve_data_files(config)
    read = lambda path, role: read_sentences(path, role, config.token_column, config.tag_column)  # noqa: E731
    train = read(files["train"], "train")
    splits: dict[str, list[Sentence]] = {"train": train}
    for role in ("validation", "test"):
        if files[role]:
            splits[role] = read(files[role], role)

    class_names = class_names_of(train)
    if len(class_names) < 2:
        raise InputError(f"training data {files['train']} has {len(class_names)} class(es) {class_names}: "
                         f"token classification needs at least two")
    known = set(class_names)
    for role in ("validation", "test"):
        if role in splits:
            for number, (_, tags) in enumerate(splits[role], start=1):
                unseen = sorted(set(tags) - known)
                if unseen:
                    raise InputError(f"{role} file {files[role]}: sentence {number} has label(s) "
                                     f"{unseen} not seen in the training data (train labels: {class_names})")

    # Split what is missing: 80/10/10 when both are missing, 80/20 when one is.
    missing = [r for r in ("validation", "test") if r not in splits]
    if missing:
        total = config.validation_ratio + config.test_ratio
        if len(missing) == 2:
            fractions = {"validation": config.validation_ratio, "test": config.test_ratio}
        else:
            fractions = {missing[0]: total}
        fractions = {k: v for k, v in fractions.items() if v > 0}
        if "validation" in missing and "validation" not in fractions:
            raise InputError("no validation data and validation_ratio is 0: a validation split is required")
        carved = split_sentences(train, fractions, config.split_seed)
        splits.update(carved)
        splits.setdefault("test", [])

    tokenizer, tok_folder, prefix = load_tokenizer(config.model_selector_output,
                                                   parse_auto_bool(config.add_prefix_space, "add_prefix_space"))
    model_max = getattr(tokenizer, "model_max_length", None) or 0
    effective_len = config.max_seq_length
    if 0 < model_max < effective_len:
        logger.warning("max_seq_length %d exceeds the tokenizer's model_max_length %d; using %d",
                       effective_len, model_max, model_max)
        effective_len = int(model_max)

    label_to_id = {name: i for i, name in enumerate(class_names)}
    meta = read_model_selector_args(config.model_selector_output)
    model_name = meta.get("model_name") or Path(config.model_selector_output).resolve().name

    stage = staging_dir(config.preprocess_output)
    try:
        sizes, truncated = {}, {}
        for role in ("train", "validation", "test"):
            rows, cut = encode_sentences(splits.get(role, []), tokenizer, label_to_id, effective_len,
                                         config.label_all_tokens)
            sizes[role], truncated[role] = len(rows), cut
            if role != "test" or rows:
                write_jsonl(stage / SPLIT_FILES[role], rows)
        (stage / CLASS_NAMES_FILE).write_text(json.dumps({"class_names": class_names}, indent=2))
        tokenizer.save_pretrained(str(stage))
        record = config.to_dict()
        record.update(data_files=files, model_name=model_name, task_name=TASK_NAME, add_prefix_space=prefix,
                      effective_max_seq_length=effective_len, tokenizer_folder=str(tok_folder),
                      train_size=sizes["train"], validation_size=sizes["validation"], test_size=sizes["test"],
                      truncated_sentences=truncated, num_labels=len(class_names), class_names=class_names)
        (stage / PREPROCESS_ARGS_FILE).write_text(json.dumps(record, indent=2, default=str))
        publish_dir(stage, config.preprocess_output, replace=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    summary = {"train_size": sizes["train"], "validation_size": sizes["validation"], "test_size": sizes["test"],
               "class_names": class_names, "num_labels": len(class_names), "model_name": model_name,
               "truncated_sentences": truncated, "add_prefix_space": prefix,
               "output_dir": str(Path(config.preprocess_output).resolve())}
    logger.info("preprocess summary: %s", summary)
    return summary
