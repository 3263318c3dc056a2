"""The inference core: raw text or pre-split words in; word labels, scores, character offsets and entity spans out.

One core serves every consumer (the MLflow model, the predict program, evaluate, the tests) and every model format
(a PyTorch folder, our MLflow model, an ONNX folder):

- A word's label is its first sub-token's prediction: the rule the model was trained with (continuation
  sub-tokens carry -100). Words are always tokenized as pre-split words (`is_split_into_words=True`), exactly as
  preprocess encoded the training data; raw text is first cut into words by `split_words`.
- An input longer than the model (a 5,000-word text) is cut on word boundaries into windows of at most
  `max_length` sub-tokens that repeat about `stride` sub-tokens of their neighbour; each word takes its label from
  the window in which it has the most context on both sides. No word is dropped.
- The windows of all inputs are sorted by length and run in batches (`batch_size`) under `torch.inference_mode`
  (or onnxruntime); an input without words gives an empty result, never an exception.
- A PyTorch model computes in the precision it was trained in, where the device computes it natively (bf16 autocast
  for precision 16; `recorded_precision`, `trainer.precision`), else in fp32; `precision="32"` forces fp32.
- Entity spans are read as the metrics read them, in the model's tag scheme (`trainer.schemes.spans`: seqeval
  strict mode, IOB1 converted to IOB2; each tagged word for plain tags). The scheme is the one preprocess recorded,
  carried by the model folder (`recorded_tag_scheme`), else the one its labels imply (`schemes.of_labels`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from trainer import schemes
from trainer.errors import InputError
from trainer.precision import PRECISIONS

logger = logging.getLogger(__name__)

TextOrWords = Union[str, Sequence[str], None]
DEFAULT_BATCH_SIZE = 32
DEFAULT_STRIDE = 128  # sub-tokens repeated between neighbouring windows of a long input (capped at half a window)
ONNX_FILE = "model.onnx"
EXPORT_INFO = "onnx_export.json"
TAG_SCHEME_FILE = "tag_scheme.json"  # {"tag_scheme": ...} beside a served model that has no run records
SERVING_FILE = "serving.json"  # {"precision", "max_length"} beside a served model that has no run records
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# --------------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------------
_OPENING = "([{\"'“‘«¿¡"
_CLOSING = ".,;:!?)]}\"'”’»…"
# CJK ideographs are words of their own (as BERT's basic tokenizer and character-level CJK NER data treat them).
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


def split_words(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the words of raw text, CoNLL style: split on whitespace, opening and
    closing punctuation peeled off as words of their own ("Paris." -> "Paris", "."; a run such as "!!!" stays one
    word; "U.S." keeps its final dot), CJK ideographs one word each. Pass pre-split words to decide yourself."""
    spans: list[tuple[int, int]] = []
    for match in re.finditer(r"\S+", text):
        start, end = match.span()
        while start < end and text[start] in _OPENING:
            spans.append((start, start + 1))
            start += 1
        tail: list[tuple[int, int]] = []
        while end > start and text[end - 1] in _CLOSING:
            run = end - 1
            while run > start and text[run - 1] == text[end - 1]:
                run -= 1
            if text[end - 1] == "." and end - run == 1 and "." in text[start:run]:
                break  # an abbreviation or a domain ("U.S.", "e.g."): the dot belongs to the word
            tail.append((run, end))
            end = run
        spans += _split_cjk(text, start, end)
        spans += reversed(tail)
    return spans


def _split_cjk(text: str, start: int, end: int) -> list[tuple[int, int]]:
    if start >= end:
        return []
    if not _CJK.search(text, start, end):
        return [(start, end)]
    out, run = [], start
    for i in range(start, end):
        if _CJK.match(text, i):
            if run < i:
                out.append((run, i))
            out.append((i, i + 1))
            run = i + 1
    if run < end:
        out.append((run, end))
    return out


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """One input's result. Offsets index `text` (for pre-split words, the words joined by single spaces).

    A word that the tokenizer turns into no sub-token at all (e.g. a lone zero-width character) is encoded as the
    unknown token, as preprocess trained it, so every word has a label and a score. A score is None only for a word
    no window holds (none: kept for inputs built by hand)."""

    text: str
    words: list[str]
    offsets: list[tuple[int, int]]
    labels: list[str]
    scores: list[Optional[float]]
    entities: list[dict]
    probabilities: Optional[np.ndarray] = field(default=None, repr=False)  # (words, classes), NaN rows unscored

    def to_dict(self) -> dict:
        return {"text": self.text, "words": self.words, "labels": self.labels, "scores": self.scores,
                "offsets": [list(o) for o in self.offsets], "entities": self.entities}


def _entities(text: str, offsets: list[tuple[int, int]], labels: list[str], scores: list[Optional[float]],
              scheme: str) -> list:
    out = []
    for first, last, kind in schemes.spans(labels, scheme):
        start, end = offsets[first][0], offsets[last - 1][1]
        word_scores = [s for s in scores[first:last] if s is not None]
        out.append({"text": text[start:end], "label": kind, "start": start, "end": end,
                    "score": float(np.mean(word_scores)) if word_scores else None})
    return out


# --------------------------------------------------------------------------------------------------
# Backends: a batch of int64 arrays in, float logits (batch, sequence, classes) out
# --------------------------------------------------------------------------------------------------
class TorchBackend:
    """A transformers token-classification model (CPU, or the GPU when there is one and device allows), computing in
    fp32, or under the autocast a model trained in precision 16 is served in on this device (trainer.precision),
    its linear layers' weights then stored in the autocast dtype (`store_linear_weights_in`)."""

    def __init__(self, model, device: str = "auto", precision: str = "32"):
        import contextlib
        import inspect

        import torch

        from trainer.precision import serving_dtype, store_linear_weights_in

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        accepted = inspect.signature(self.model.forward).parameters
        self.input_names = tuple(n for n in MODEL_INPUT_NAMES if n in accepted)
        dtype = serving_dtype(precision, self.device)
        if dtype:  # the casts autocast would make for every batch, made once (bit-identical outputs)
            store_linear_weights_in(self.model, dtype)
        self.compute_dtype = str(dtype or torch.float32).removeprefix("torch.")
        self._autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            inputs = {k: torch.from_numpy(batch[k]).to(self.device) for k in self.input_names if k in batch}
            return self.model(**inputs).logits.float().cpu().numpy()


class OnnxBackend:
    """An exported model.onnx under onnxruntime (CPU; CUDA when onnxruntime-gpu provides it)."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.compute_dtype = "float32"  # the export is fp32 (trainer.onnx_export)

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: batch[name] if name in batch else np.zeros_like(batch["input_ids"]) for name in self.input_names}
        return self.session.run(["logits"], feed)[0]


# --------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------
@dataclass
class _Window:
    source: int  # index of the input
    ids: list[int]
    type_ids: Optional[list[int]]
    positions: list[int]  # first sub-token position of each word this window labels
    words: list[int]  # index (in its input) of each word this window labels


class TokenClassifier:
    """Word-level token classification with any backend; `predict` takes a batch of texts or word lists. Entities
    follow `tag_scheme` (default: the scheme the labels imply)."""

    def __init__(self, backend, tokenizer, id2label: dict[int, str], *, max_length: Optional[int] = None,
                 stride: int = DEFAULT_STRIDE, batch_size: int = DEFAULT_BATCH_SIZE, model_max_length: int = 512,
                 tag_scheme: Optional[str] = None):
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer: word alignment "
                             "needs word_ids(); save a tokenizer.json with the model")
        self.backend = backend
        self.compute_dtype = getattr(backend, "compute_dtype", "float32")  # what the forward computes in
        self.tokenizer = tokenizer
        self.class_names = [id2label[i] for i in sorted(int(k) for k in id2label)]
        if tag_scheme is not None:
            if tag_scheme not in schemes.SCHEMES:
                raise InputError(f"unknown tag scheme {tag_scheme!r}: one of {', '.join(schemes.SCHEMES)}")
            try:
                schemes.check(tag_scheme, self.class_names)
            except InputError as err:
                raise InputError(f"the model's tag scheme does not fit its labels: {err}") from None
        self.tag_scheme = tag_scheme or schemes.of_labels(self.class_names)
        limit = getattr(tokenizer, "model_max_length", None) or model_max_length
        limit = min(int(limit), model_max_length) if limit < 10**6 else model_max_length
        self.max_length = min(max_length, limit) if max_length else limit
        self.specials = check_room(self.max_length, tokenizer)
        self.capacity = self.max_length - self.specials
        self.overlap = max(0, min(stride, self.capacity // 2))
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # --- public ---------------------------------------------------------------------------------------
    def predict(self, inputs: Iterable[TextOrWords]) -> list[Prediction]:
        """One Prediction per input: a string (raw text, cut by `split_words`), a list of words, or None/"" (empty).
        """
        texts, words, offsets = [], [], []
        for item in inputs:
            text, item_words, item_offsets = _as_words(item)
            texts.append(text)
            words.append(item_words)
            offsets.append(item_offsets)
        windows = self._windows(words)
        probabilities = [np.full((len(w), len(self.class_names)), np.nan, dtype=np.float32) for w in words]
        for batch in self._batches(windows):
            logits = self.backend(self._pad(batch)).astype(np.float64)
            for row, window in enumerate(batch):
                picked = logits[row, window.positions]
                picked = np.exp(picked - picked.max(axis=-1, keepdims=True))
                probabilities[window.source][window.words] = picked / picked.sum(axis=-1, keepdims=True)
        results = []
        for text, item_words, item_offsets, probs in zip(texts, words, offsets, probabilities):
            scored = ~np.isnan(probs[:, 0]) if len(item_words) else np.zeros(0, dtype=bool)
            ids = np.where(scored, np.nan_to_num(probs).argmax(-1), -1) if len(item_words) else []
            labels = [self.class_names[i] if i >= 0 else schemes.OUTSIDE for i in ids]
            scores = [float(probs[k, i]) if i >= 0 else None for k, i in enumerate(ids)]
            results.append(Prediction(text, item_words, item_offsets, labels, scores,
                                      _entities(text, item_offsets, labels, scores, self.tag_scheme), probs))
        return results

    # --- windows --------------------------------------------------------------------------------------
    def _encode(self, word_lists: list[list[str]], truncate: bool):
        return self.tokenizer(word_lists, is_split_into_words=True, truncation=truncate,
                              max_length=self.max_length if truncate else None, verbose=False)

    def _windows(self, words: list[list[str]]) -> list[_Window]:
        present = [i for i, w in enumerate(words) if w]
        if not present:
            return []
        whole = self._encode([words[i] for i in present], truncate=False)
        encodable = self._with_placeholders(words, present, whole)
        if encodable is not words:  # some words had no sub-token: encoded again with their placeholder
            words, whole = encodable, self._encode([encodable[i] for i in present], truncate=False)
        windows: list[_Window] = []
        long_inputs = []
        for row, source in enumerate(present):
            word_ids = whole.word_ids(row)
            if len(word_ids) <= self.max_length:
                windows.append(self._window(source, whole, row, range(len(words[source])), 0))
            else:
                long_inputs.append((source, word_ids))
        for source, word_ids in long_inputs:
            counts = np.bincount([w for w in word_ids if w is not None], minlength=len(words[source])).tolist()
            spans = plan_windows(counts, self.capacity, self.overlap)
            owner = assign_words(counts, spans)
            encoded = self._encode([words[source][a:b] for a, b in spans], truncate=True)
            for k, (a, b) in enumerate(spans):
                windows.append(self._window(source, encoded, k, [w - a for w in range(a, b) if owner[w] == k], a))
        return windows

    def _with_placeholders(self, words: list[list[str]], present: list[int], whole) -> list[list[str]]:
        """`words` with each word the tokenizer turns into no sub-token (a lone U+FE0F, a blank word) replaced by
        the placeholder preprocess trained it as (`trainer.preprocess.empty_word_placeholder`), so it is predicted
        and scored as in training; `words` itself when there is none."""
        from trainer.preprocess import empty_word_placeholder

        replaced = None
        for row, source in enumerate(present):
            seen = {w for w in whole.word_ids(row) if w is not None}
            if len(seen) < len(words[source]):
                replaced = replaced or list(words)
                placeholder = empty_word_placeholder(self.tokenizer)
                replaced[source] = [w if k in seen else placeholder for k, w in enumerate(words[source])]
        return replaced or words

    def _window(self, source: int, encoding, row: int, local_words: Iterable[int], offset: int) -> _Window:
        first: dict[int, int] = {}
        for position, word in enumerate(encoding.word_ids(row)):
            if word is not None and word not in first:
                first[word] = position
        kept = [w for w in local_words if w in first]
        type_ids = encoding["token_type_ids"][row] if "token_type_ids" in encoding else None
        return _Window(source, encoding["input_ids"][row], type_ids, [first[w] for w in kept],
                       [w + offset for w in kept])

    def _batches(self, windows: list[_Window]) -> Iterable[list[_Window]]:
        ordered = sorted(windows, key=lambda w: len(w.ids))
        for start in range(0, len(ordered), self.batch_size):
            yield ordered[start:start + self.batch_size]

    def _pad(self, batch: list[_Window]) -> dict[str, np.ndarray]:
        shape = (len(batch), max(len(w.ids) for w in batch))
        padded = {"input_ids": np.full(shape, self.pad_id, dtype=np.int64),
                  "attention_mask": np.zeros(shape, dtype=np.int64)}
        # token type ids only where the tokenizer makes them, as in the rows the model trained on: a model that
        # takes them but trained without them (GPT-2 adds an embedding of every type id, 0 included) computed
        # other logits when served zeros
        if any(window.type_ids is not None for window in batch):
            padded["token_type_ids"] = np.zeros(shape, dtype=np.int64)
        for row, window in enumerate(batch):
            padded["input_ids"][row, :len(window.ids)] = window.ids
            padded["attention_mask"][row, :len(window.ids)] = 1
            if window.type_ids is not None:
                padded["token_type_ids"][row, :len(window.ids)] = window.type_ids
        return padded


def is_missing(value: Any) -> bool:
    """A missing value, read as an empty text (or an empty word): None, NaN (Python's or numpy's), pandas' NaT and
    NA (without importing pandas: NA is the one value whose comparison with itself has no truth value)."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, dict)) or hasattr(value, "__len__"):  # texts and containers (arrays, frames)
        return False
    try:
        return bool(value != value)  # NaN and NaT differ from themselves
    except TypeError:  # pd.NA: `NA != NA` is NA, and bool(NA) raises
        return True


def as_word(value: Any) -> str:
    """One word of a pre-split input: a string, a number (its text), or missing (`is_missing`: a blank word);
    InputError for anything else (bytes, a list: not one word)."""
    if isinstance(value, str):
        return value
    if is_missing(value):
        return ""
    if isinstance(value, (bytes, dict)) or hasattr(value, "__len__"):
        raise InputError(f"a word must be a string, got {type(value).__name__}: {str(value)[:80]!r}")
    return str(value)


def _as_words(item: TextOrWords) -> tuple[str, list[str], list[tuple[int, int]]]:
    """(text, words, offsets) of one input: a missing value (`is_missing`) is empty text, a string is raw text, a
    sequence is words (a missing word is a blank one)."""
    if is_missing(item):
        item = ""
    if isinstance(item, str):
        offsets = split_words(item)
        return item, [item[a:b] for a, b in offsets], offsets
    if isinstance(item, (bytes, dict)) or not hasattr(item, "__iter__"):
        raise InputError(f"expected a text or a list of words, got {type(item).__name__}: {str(item)[:80]!r}")
    words = [as_word(w) for w in item]  # kept one for one (a blank word: the unknown token)
    offsets, position = [], 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), words, offsets


def plan_windows(counts: Sequence[int], capacity: int, overlap: int) -> list[tuple[int, int]]:
    """Word ranges [a, b) of at most `capacity` sub-tokens each (a longer single word is its own, truncated window),
    every window repeating at most `overlap` sub-tokens (whole words) of the one before."""
    spans, start, n = [], 0, len(counts)
    while start < n:
        end, used = start, 0
        while end < n and (used + counts[end] <= capacity or end == start):
            used += counts[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            break
        back, repeated = end, 0
        while back - 1 > start and repeated + counts[back - 1] <= overlap:
            repeated += counts[back - 1]
            back -= 1
        start = back
    return spans


def assign_words(counts: Sequence[int], spans: list[tuple[int, int]]) -> list[int]:
    """For each word, the window in which it has the most context: the largest min(sub-tokens before it, after it),
    an edge of the whole input counting as unlimited context."""
    before = np.concatenate([[0], np.cumsum(counts)])
    n, owner, best = len(counts), [0] * len(counts), [-1.0] * len(counts)
    for k, (a, b) in enumerate(spans):
        for w in range(a, b):
            left = math.inf if a == 0 else before[w] - before[a]
            right = math.inf if b == n else before[b] - before[w + 1]
            context = min(left, right)
            if context > best[w]:
                best[w], owner[w] = context, k
    return owner


# --------------------------------------------------------------------------------------------------
# Loading any of our model folders
# --------------------------------------------------------------------------------------------------
def model_format(path: str | Path) -> str:
    """'mlflow', 'onnx' or 'pytorch' (a save_pretrained folder, our LoRA output, a model-import output)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model folder not found: {path}")
    if (path / "MLmodel").exists():
        return "mlflow"
    if (path / ONNX_FILE).exists():
        return "onnx"
    if (path / EXPORT_INFO).exists():  # an onnx_model_folder whose export was off or failed
        from trainer.jsonio import read_json

        raise InputError(f"{path} holds no ONNX model: {read_json(path / EXPORT_INFO).get('error')}; serve the "
                         "pytorch_model_folder or mlflow_model_folder instead")
    return "pytorch"


def check_room(max_length: int, tokenizer: Any) -> int:
    """The tokenizer's special tokens per window; InputError when a window of `max_length` sub-tokens holds no word
    beside them."""
    specials = tokenizer.num_special_tokens_to_add()
    if max_length <= specials:
        raise InputError(f"max_length {max_length} leaves no room for words next to {specials} special tokens")
    return specials


def load_classifier(path: str | Path, *, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                    max_length: Optional[int] = None, stride: int = DEFAULT_STRIDE,
                    precision: str = "auto") -> TokenClassifier:
    """A TokenClassifier for a pytorch_model_folder (merged, or unmerged LoRA), an MLflow model folder of ours or an
    onnx_model_folder; each carries its tokenizer and label map, and its tag scheme where recorded. precision "auto"
    serves a PyTorch model in the precision it was trained in (`recorded_precision`, `trainer.precision`); "32"
    forces fp32. An ONNX model computes in fp32. Windows hold `max_length` sub-tokens, by default the window the
    model was trained on (`recorded_window`), else the model's limit."""
    path = Path(path)
    if precision not in ("auto", *PRECISIONS):
        raise InputError(f"precision must be auto, 32 or 16, got {precision!r}")
    kind = model_format(path)
    if kind == "mlflow":
        return load_classifier(mlflow_model_dir(path), device=device, batch_size=batch_size, max_length=max_length,
                               stride=stride, precision=precision)
    _, model_dir, config = model_config(path)
    tokenizer = load_serving_tokenizer(model_dir)
    if max_length:  # before the weights load
        check_room(max_length, tokenizer)
    if kind == "onnx":
        backend: Any = OnnxBackend(model_dir / ONNX_FILE, device)
    else:
        from trainer.model_io import load_token_classification_model

        backend = TorchBackend(load_token_classification_model(model_dir), device,
                               recorded_precision(path) if precision == "auto" else precision)
        config = backend.model.config
    limit = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        limit -= 2  # positions start after the padding index
    return TokenClassifier(backend, tokenizer, config.id2label, max_length=max_length or recorded_window(path),
                           stride=stride, batch_size=batch_size, model_max_length=limit,
                           tag_scheme=recorded_tag_scheme(path))


def model_config(path: str | Path) -> tuple[str, Path, Any]:
    """(format, the folder holding the model, its transformers config) of a model folder of any format (an MLflow
    model: its served copy), without loading any weights."""
    from transformers import AutoConfig

    from trainer.model_io import resolve_model_dir

    path = Path(path)
    kind = model_format(path)
    if kind == "mlflow":
        return model_config(mlflow_model_dir(path))
    model_dir = path if kind == "onnx" else resolve_model_dir(path)
    config = AutoConfig.from_pretrained(model_dir if (model_dir / "config.json").exists() else model_dir / "base_model")
    return kind, model_dir, config


def _recorded(folder: Path, served: tuple[str, str], metrics_key: str, preprocess_key: str,
              valid: Callable[[Any], bool], what: str) -> Any:
    """One thing a model folder records about its run: `served` (file, key) of a served copy without the run
    records (our MLflow model's served folder, the ONNX folder), else `metrics_key` of its metrics.json (a finished
    pytorch_model_folder), else `preprocess_key` of the preprocess_args.json of the data its finetune_args.json names
    (a pytorch_model_folder being published: metrics.json comes last); None when none does. A value that is not
    `valid` is an InputError naming the file and `what` it must be."""
    from trainer.constants import FINETUNE_ARGS, METRICS_FILE, PREPROCESS_ARGS_FILE
    from trainer.jsonio import read_json

    def read(file: Path, key: str) -> Any:
        data = read_json(file) if file.is_file() else {}
        value = data.get(key) if isinstance(data, dict) else None
        if value is not None and not valid(value):
            raise InputError(f"{file}: {key}={value!r} is not {what}")
        return value

    value = read(folder / served[0], served[1])
    if value is None:
        value = read(folder / METRICS_FILE, metrics_key)
    if value is None and (folder / FINETUNE_ARGS).is_file():
        data = read_json(folder / FINETUNE_ARGS).get("preprocess_output")
        value = read(Path(data) / PREPROCESS_ARGS_FILE, preprocess_key) if data else None
    return value


def recorded_tag_scheme(folder: Path) -> Optional[str]:
    """The tag scheme a model folder records (`_recorded`: tag_scheme.json, metrics.json, preprocess_args.json)."""
    return _recorded(folder, (TAG_SCHEME_FILE, "tag_scheme"), "tag_scheme", "tag_scheme",
                     lambda scheme: scheme in schemes.SCHEMES, f"one of {list(schemes.SCHEMES)}")


def recorded_precision(folder: Path) -> str:
    """The precision a model folder was trained in: its serving.json (a served copy: the MLflow model's folder),
    else its finetune_args.json (a pytorch_model_folder); "32" for any other model (an imported one)."""
    from trainer.constants import FINETUNE_ARGS
    from trainer.jsonio import read_json

    for file in (folder / SERVING_FILE, folder / FINETUNE_ARGS):
        if file.is_file():
            precision = str(read_json(file).get("precision", "32"))
            if precision not in PRECISIONS:
                raise InputError(f"{file}: precision={precision!r} is not one of {list(PRECISIONS)}")
            return precision
    return "32"


def recorded_window(folder: Path) -> Optional[int]:
    """The window, in sub-tokens, a model folder was trained on (preprocess's max_seq_length as it took effect;
    `_recorded`: serving.json, metrics.json, preprocess_args.json); None when none records it (an imported model).
    Served in longer windows, positions the fine-tune never saw cost recall on long texts."""
    return _recorded(folder, (SERVING_FILE, "max_length"), "max_seq_length", "effective_max_seq_length",
                     lambda n: isinstance(n, int) and not isinstance(n, bool) and n >= 1, "a positive whole number")


def copy_tag_scheme(model_dir: Path, target: Path) -> Optional[str]:
    """Write the tag scheme `model_dir` records into `target`/tag_scheme.json (a served copy without the run
    records: the MLflow model's folder, the ONNX folder); returns it (None: nothing recorded, nothing written)."""
    import json

    scheme = recorded_tag_scheme(Path(model_dir))
    if scheme:
        (Path(target) / TAG_SCHEME_FILE).write_text(json.dumps({"tag_scheme": scheme}) + "\n")
    return scheme


def copy_serving_settings(model_dir: Path, target: Path, *, precision: bool = True) -> dict:
    """Write how `model_dir` is served into `target`/serving.json (a served copy without the run records): the
    precision it was trained in (not for an ONNX copy: it computes in fp32) and the window it was trained on
    (`recorded_window`, when recorded); returns them."""
    import json

    settings = {"precision": recorded_precision(Path(model_dir))} if precision else {}
    window = recorded_window(Path(model_dir))
    if window is not None:
        settings["max_length"] = window
    (Path(target) / SERVING_FILE).write_text(json.dumps(settings) + "\n")
    return settings


def load_serving_tokenizer(model_dir: Path):
    """The fast tokenizer saved with a model (add_prefix_space on for byte-level BPE, as preprocess used it)."""
    from trainer.constants import TOKENIZER_FILES
    from trainer.preprocess import load_tokenizer

    if not any((model_dir / f).exists() for f in TOKENIZER_FILES):
        raise InputError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}): a served model "
                         "needs the tokenizer it was trained with; re-export it from the fine-tune output")
    return load_tokenizer(model_dir)[0]


def mlflow_model_dir(path: Path) -> Path:
    """The Hugging Face folder inside an MLflow model written by this project (artifacts/model)."""
    candidate = path / "artifacts" / "model"
    if not (candidate / "config.json").exists():
        raise InputError(f"{path} is not an MLflow model of this project (no artifacts/model/config.json); a "
                         "transformers-flavor model can be brought in with model_import (mlflow_model_path)")
    return candidate
