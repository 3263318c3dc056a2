"""Preprocess for token classification: read any labelled data, settle labels and tag scheme, split, tokenize in
windows, align labels.

Output folder contract (the `preprocess_output` of the finetune component):

- `train.jsonl`, `validation.jsonl`, `test.jsonl` (test only if it has rows): one window of a sentence per line,
  {"input_ids", "attention_mask", ["token_type_ids"], "labels", "word_ids", "tokens", "tags", "sentence",
  "window"}. A sentence that fits `max_seq_length` is one row (window 0). A longer one is split into windows of
  whole words; each carries up to `stride` sub-tokens of its neighbours' words as context on each side. `tokens`
  and `tags` are the row's own words (the windows of a sentence, joined, give it back exactly); `word_ids` maps each
  position to its own word (null: special tokens and context); `labels` holds the tag id on each own word's first
  sub-token, -100 elsewhere (continuation sub-tokens get the word's tag with `label_all_tokens`). Every word is
  trained on and scored exactly once.
- `class_names.json`: {"class_names": [...]}; label id = index ("O" first when present, then sorted; integer tags
  numerically; ClassLabel / `label_names` order when declared). The label set is the union of all splits.
- `preprocess_args.json`: every argument plus what was found: data formats and columns, `tag_scheme`, split sizes
  (sentences and rows), `split_sentences` (sentences split into windows), labels that never occur in training.
- The tokenizer (`save_pretrained`).

Word/sub-token alignment follows the transformers `run_ner` example.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from trainer import schemes
from trainer.booleans import parse_auto_bool
from trainer.config import PreprocessConfig
from trainer.constants import CLASS_NAMES_FILE, IGNORE_INDEX, PREPROCESS_ARGS_FILE, SPLIT_FILES, SPLITS, TOKENIZER_FILES
from trainer.errors import InputError, preview
from trainer.jsonio import write_jsonl
from trainer.model_io import read_model_selector_args, resolve_model_dir
from trainer.publish import new_output_folder, publish_dir, staging_dir
from trainer.readers import Corpus, ReadOptions, Sentence, read, resolve_sources
from trainer.validation import check_io, one_line

logger = logging.getLogger(__name__)

TASK_NAME = "TokenClassification"
# Model families whose fast tokenizer is byte-level BPE: pre-split words need add_prefix_space=True.
BYTE_LEVEL_FAMILIES = ("roberta", "xlm-roberta-bpe", "gpt2", "gpt_neo", "gpt_neox", "gptj", "bart", "mvp", "led",
                       "longformer", "deberta", "bloom", "codegen", "blenderbot", "markuplm", "layoutlmv3", "ibert",
                       "data2vec-text", "luke", "mpnet-bpe", "opt", "megatron-gpt2", "xmod", "roberta-prelayernorm")
_INTEGER = re.compile(r"-?\d+")


# --------------------------------------------------------------------------------------------------
# Labels and splits
# --------------------------------------------------------------------------------------------------
def class_names_of(sentences: Iterable[Sentence], declared: Optional[Sequence[str]] = None) -> list[str]:
    """The label list: `declared` names in their order, else "O" first and the rest sorted (numerically when every
    tag is an integer)."""
    if declared:
        return list(declared)
    labels = {t for _, tags in sentences for t in tags}
    rest = labels - {"O"}
    numeric = all(_INTEGER.fullmatch(t) for t in rest)
    return (["O"] if "O" in labels else []) + sorted(rest, key=(lambda t: (int(t), t)) if numeric else None)


def name_tags(sentences: list[Sentence], names: list[str], where: str) -> list[Sentence]:
    """Tags that are ids of `names` (integers) become the names; tags already among the names stay."""
    known = set(names)
    out = []
    for number, (tokens, tags) in enumerate(sentences, start=1):
        named = []
        for tag in tags:
            if tag not in known:
                if not (_INTEGER.fullmatch(tag) and 0 <= int(tag) < len(names)):
                    raise InputError(f"{where} sentence {number}: tag {tag!r} is neither one of label_names "
                                     f"{preview(names)} nor an id 0..{len(names) - 1}")
                tag = names[int(tag)]
            named.append(tag)
        out.append((tokens, named))
    return out


def carve_splits(sentences: list[Sentence], fractions: dict[str, float], seed: int) -> dict[str, list[Sentence]]:
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
def _tokenizer_dir(tokenizer_path: str | Path) -> Path:
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


def load_tokenizer(tokenizer_path: str | Path, add_prefix_space: Optional[bool] = None):
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
# Encoding: windows of whole words
# --------------------------------------------------------------------------------------------------
def word_budget(tokenizer: Any, max_seq_length: int) -> int:
    """Sub-tokens left for words in a row of max_seq_length; InputError when none are."""
    budget = max_seq_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise InputError(f"max_seq_length={max_seq_length} leaves no room for words beside the tokenizer's "
                         f"{max_seq_length - budget} special tokens")
    return budget


def plan_windows(counts: Sequence[int], budget: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows (context start, own start, own end, context end) over words with `counts` sub-tokens each: own words
    fill at most budget - 2 × context sub-tokens, context (whole words, up to `stride` = at most budget // 4
    sub-tokens) on each side. A single word longer than the budget is a window of its own, cut after its first
    sub-tokens (it is still scored: its first sub-token is kept)."""
    if sum(counts) <= budget:
        return [(0, 0, len(counts), len(counts))]
    context = min(stride, budget // 4)
    own_budget = budget - 2 * context
    windows = []
    start = 0
    while start < len(counts):
        end, used = start, 0
        while end < len(counts) and used + counts[end] <= own_budget:
            used += counts[end]
            end += 1
        if end == start:  # one word longer than the room for own words
            windows.append((start, start, start + 1, start + 1))
            start += 1
            continue
        left, room = start, context
        while left > 0 and counts[left - 1] <= room:
            left -= 1
            room -= counts[left]
        right, room = end, context
        while right < len(counts) and counts[right] <= room:
            room -= counts[right]
            right += 1
        windows.append((left, start, end, right))
        start = end
    return windows


def _row(encoding: Any, index: int, sentence: Sentence, window: tuple[int, int, int, int], label_to_id: dict,
         continuation: Optional[list[int]]) -> dict:
    """One encoded window: labels on own words' first sub-tokens (and continuations with label_all_tokens)."""
    tokens, tags = sentence
    left, start, end, _ = window
    word_ids, labels = [], []
    previous = None
    for word in encoding.word_ids(batch_index=index):
        own = None if word is None or not start <= left + word < end else left + word - start
        if own is None:
            labels.append(IGNORE_INDEX)
        else:
            tag_id = label_to_id[tags[start + own]]
            labels.append(tag_id if own != previous else (continuation[tag_id] if continuation else IGNORE_INDEX))
        word_ids.append(own)
        previous = own
    if len({w for w in word_ids if w is not None}) != end - start:
        raise RuntimeError(f"window {window} of {tokens[:5]}...: a word lost its first sub-token")
    row = {"input_ids": list(encoding["input_ids"][index]), "attention_mask": list(encoding["attention_mask"][index])}
    if "token_type_ids" in encoding:
        row["token_type_ids"] = list(encoding["token_type_ids"][index])
    row.update(labels=labels, word_ids=word_ids, tokens=tokens[start:end], tags=tags[start:end])
    return row


def empty_word_placeholder(tokenizer: Any) -> str:
    """What a word the tokenizer turns into nothing (a lone U+FE0F) is encoded as, in training and in serving: the
    unknown token, so the word is trained on, predicted and scored like any other."""
    return tokenizer.unk_token or "_"


def encode_sentences(sentences: list[Sentence], tokenizer: Any, label_to_id: dict[str, int], max_seq_length: int,
                     label_all_tokens: bool = False, scheme: str = "iob2", stride: int = 32,
                     batch: int = 256) -> tuple[list[dict], dict]:
    """Tokenize pre-split words in windows and align labels; returns (rows, counts: split_sentences, windows,
    clipped_words, empty_words). A word the tokenizer turns into nothing (e.g. a lone U+FE0F) is encoded as the
    unknown token so that it is still scored."""
    class_names = sorted(label_to_id, key=label_to_id.get)
    continuation = schemes.continuation_ids(class_names, scheme) if label_all_tokens else None
    budget = word_budget(tokenizer, max_seq_length)
    placeholder = empty_word_placeholder(tokenizer)
    rows: list[dict] = []
    counts = {"split_sentences": 0, "windows": 0, "clipped_words": 0, "empty_words": 0}
    for first in range(0, len(sentences), batch):
        chunk = sentences[first:first + batch]
        words = [list(tokens) for tokens, _ in chunk]
        whole = tokenizer(words, is_split_into_words=True, verbose=False)  # no truncation: sizes of every word
        done: dict[int, dict] = {}
        pieces = []
        for i, tokens in enumerate(words):
            sizes = [0] * len(tokens)
            for word in whole.word_ids(batch_index=i):
                if word is not None:
                    sizes[word] += 1
            empty = [w for w, size in enumerate(sizes) if size == 0]
            for w in empty:
                tokens[w], sizes[w] = placeholder, 1
            counts["empty_words"] += len(empty)
            windows = plan_windows(sizes, budget, stride)
            counts["split_sentences"] += len(windows) > 1
            counts["clipped_words"] += sum(sizes[s] > budget for _, s, e, _ in windows if e - s == 1)
            if len(windows) == 1 and not empty:  # the usual case: the first encoding is the row
                done[i] = _row(whole, i, chunk[i], windows[0], label_to_id, continuation)
            else:
                pieces += [(i, number, window) for number, window in enumerate(windows)]
        encoded = tokenizer([words[i][w[0]:w[3]] for i, _, w in pieces], is_split_into_words=True, truncation=True,
                            max_length=max_seq_length) if pieces else None
        windowed: dict[int, list] = {}
        for k, (i, number, window) in enumerate(pieces):
            windowed.setdefault(i, []).append(_row(encoded, k, chunk[i], window, label_to_id, continuation))
        for i in range(len(chunk)):
            for number, row in enumerate([done[i]] if i in done else windowed[i]):
                row.update(sentence=first + i, window=number)
                rows.append(row)
    counts["windows"] = len(rows)
    return rows, counts


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def _read_splits(config: PreprocessConfig) -> tuple[dict[str, Corpus], dict[str, str]]:
    """Every given split, read (the output folder was checked against the inputs first: `check_io`)."""
    options = ReadOptions(config.data_format, config.token_column, config.tag_column, config.sentence_column)
    sources = {role: source for role, source in
               resolve_sources(config.train_data, config.validation_data, config.test_data).items() if source}
    corpora = {role: read(source, role, options) for role, source in sources.items()}
    return corpora, {role: str(source) for role, source in sources.items()}


def _declared_names(config: PreprocessConfig, corpora: dict[str, Corpus]) -> Optional[list[str]]:
    """label_names, else the ClassLabel names the data declared (the same in every split)."""
    names = config.label_name_list
    if names is not None:
        return names
    declared = {tuple(c.label_names) for c in corpora.values() if c.label_names is not None}
    if len(declared) > 1:
        raise InputError("the splits declare different ClassLabel names: set label_names to the one label list")
    return list(declared.pop()) if declared else None


def preprocess(config: PreprocessConfig) -> dict:
    """Read, split, tokenize and align a token-classification dataset; write the preprocess output folder.

    Returns a summary: split sizes, class names, tag scheme, model name, windows.
    """
    check_io(config)  # inputs exist, outputs are writable and never inside an input or each other
    with new_output_folder(config.preprocess_output, "preprocess_output"):
        return _preprocess(config)


def _first_use(labels: list[str], splits: dict[str, list[Sentence]], files: dict[str, str]) -> str:
    """Where the first of `labels` is: '{label} first in the {role} data {file}, sentence {n}, word {i} {word}'."""
    wanted = set(labels)
    for role, sentences in splits.items():
        for number, (words, tags) in enumerate(sentences, 1):
            for position, tag in enumerate(tags):
                if tag in wanted:
                    return (f"{tag!r} first in the {role} data {files[role]}, sentence {number}, word {position + 1} "
                            f"{words[position]!r}")
    return "found in no sentence"


def _check_encodes_unknown_characters(tokenizer: Any, folder: Path) -> None:
    """The tokenizer encodes a character outside its vocabulary (as its unknown token, or as bytes): a WordPiece
    vocabulary without its unknown token cannot, and failed with a traceback half way through the data."""
    try:
        tokenizer(["\u2603\U0001d54f"], is_split_into_words=True, verbose=False)
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise InputError(f"the tokenizer in {folder} cannot encode a character outside its vocabulary "
                         f"({one_line(err)}): give its vocabulary the unknown token, then import the "
                         "model again") from None


def _preprocess(config: PreprocessConfig) -> dict:
    # The tokenizer first: a model folder without one fails before any data is read.
    tokenizer, tok_folder, prefix = load_tokenizer(config.model_selector_output,
                                                   parse_auto_bool(config.add_prefix_space, "add_prefix_space"))
    _check_encodes_unknown_characters(tokenizer, tok_folder)
    corpora, files = _read_splits(config)
    declared = _declared_names(config, corpora)
    splits: dict[str, list[Sentence]] = {
        role: name_tags(c.sentences, declared, f"{role} data") if declared else c.sentences
        for role, c in corpora.items()}

    class_names = class_names_of((s for sentences in splits.values() for s in sentences), declared)
    train_labels = {t for _, tags in splits["train"] for t in tags}
    if len(train_labels) < 2 or len(class_names) < 2:
        raise InputError(f"training data {files['train']} has {len(train_labels)} distinct tag(s) "
                         f"{preview(sorted(train_labels))}: token classification needs at least two")
    try:
        scheme = schemes.resolve(config.tag_scheme, [tags for sentences in splits.values() for _, tags in sentences])
    except schemes.LabelError as error:
        raise InputError(f"{error} ({_first_use(error.labels, splits, files)})") from None
    unseen = sorted(set(class_names) - train_labels)  # in the validation/test data, or declared (label_names...)
    if unseen:
        logger.warning("label(s) %s never occur in the training data (declared, or in the validation/test data "
                       "only): the model cannot learn them (every occurrence counts as a miss)", preview(unseen))
    for role, corpus in corpora.items():  # logged once the data passed its checks: bad input prints one line
        logger.info("%s data: %d sentences from %s (%s, columns %s)", role, len(corpus.sentences), files[role],
                    corpus.format, corpus.columns)
    logger.info("tag scheme: %s (%s); %d labels %s", schemes.NAMES[scheme],
                "detected" if config.tag_scheme == "auto" else "given", len(class_names), preview(class_names, 8))

    # Split what is missing: 80/10/10 when both are missing, 80/20 when one is.
    missing = [r for r in ("validation", "test") if r not in splits]
    if missing:
        total = config.validation_ratio + config.test_ratio
        fractions = ({"validation": config.validation_ratio, "test": config.test_ratio} if len(missing) == 2
                     else {missing[0]: total})
        fractions = {k: v for k, v in fractions.items() if v > 0}
        if "validation" in missing and "validation" not in fractions:
            raise InputError("no validation data and validation_ratio is 0: a validation split is required")
        splits.update(carve_splits(splits["train"], fractions, config.split_seed))
        splits.setdefault("test", [])

    model_max = getattr(tokenizer, "model_max_length", None) or 0
    effective_len = config.max_seq_length
    if 0 < model_max < effective_len:
        logger.warning("max_seq_length %d exceeds the tokenizer's model_max_length %d; using %d",
                       effective_len, model_max, model_max)
        effective_len = int(model_max)
    budget = word_budget(tokenizer, effective_len)

    label_to_id = {name: i for i, name in enumerate(class_names)}
    meta = read_model_selector_args(config.model_selector_output)
    model_name = meta.get("model_name") or Path(config.model_selector_output).resolve().name

    stage = staging_dir(config.preprocess_output)
    try:
        sizes, rows_per_split, windowed = {}, {}, {}
        for role in SPLITS:
            rows, counts = encode_sentences(splits.get(role, []), tokenizer, label_to_id, effective_len,
                                            config.label_all_tokens, scheme, config.stride)
            sizes[role], rows_per_split[role], windowed[role] = len(splits.get(role, [])), len(rows), counts
            if role != "test" or rows:
                write_jsonl(stage / SPLIT_FILES[role], rows)
        split_count = {role: windowed[role]["split_sentences"] for role in SPLITS}
        if any(split_count.values()):
            logger.info("sentences longer than %d sub-tokens split into windows (stride %d): %s", effective_len,
                        min(config.stride, budget // 4), split_count)
        if any(windowed[role]["empty_words"] for role in SPLITS):
            logger.info("words the tokenizer turns into no sub-token (a lone U+FE0F, say), encoded as %s so they "
                        "are still trained on and scored: %s", tokenizer.unk_token or "_",
                        {role: windowed[role]["empty_words"] for role in SPLITS})
        if any(windowed[role]["clipped_words"] for role in SPLITS):
            logger.warning("words longer than max_seq_length %d sub-tokens on their own, cut to fit (only their "
                           "first sub-token is scored): %s", effective_len,
                           {role: windowed[role]["clipped_words"] for role in SPLITS})
        (stage / CLASS_NAMES_FILE).write_text(json.dumps({"class_names": class_names}, indent=2))
        tokenizer.save_pretrained(str(stage))
        record = config.to_dict()
        record.update(
            data_files=files, data_formats={r: c.format for r, c in corpora.items()},
            columns={r: c.columns for r, c in corpora.items()}, model_name=model_name, task_name=TASK_NAME,
            add_prefix_space=prefix, effective_max_seq_length=effective_len, effective_stride=min(config.stride,
                                                                                                 budget // 4),
            tokenizer_folder=str(tok_folder), tag_scheme=scheme, train_size=sizes["train"],
            validation_size=sizes["validation"], test_size=sizes["test"], rows=rows_per_split,
            split_sentences=split_count, windowing=windowed, labels_not_in_train=unseen,
            num_labels=len(class_names), class_names=class_names)
        (stage / PREPROCESS_ARGS_FILE).write_text(json.dumps(record, indent=2, default=str))
        publish_dir(stage, config.preprocess_output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    summary = {"train_size": sizes["train"], "validation_size": sizes["validation"], "test_size": sizes["test"],
               "class_names": class_names, "num_labels": len(class_names), "tag_scheme": scheme,
               "model_name": model_name, "rows": rows_per_split, "split_sentences": split_count,
               "labels_not_in_train": unseen, "data_formats": record["data_formats"], "add_prefix_space": prefix,
               "output_dir": str(Path(config.preprocess_output).resolve())}
    logger.info("preprocess summary: %s", {k: v if k != "class_names" else preview(v, 8) for k, v in summary.items()})
    return summary
