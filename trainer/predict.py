"""Batch prediction: a fine-tuned model (PyTorch, MLflow or ONNX folder) + unlabelled data -> predictions JSON Lines.

Formats of `data` (PredictConfig.data_format, auto from the suffix):
- text lines: one input a line (a blank line is an empty input, so output line n answers input line n);
- JSON Lines: one object a line with a raw-text column (`text_column`) or a word-list column (`words_column`);
  an `id` field is carried over;
- CoNLL without tags: one word a line (first column; any tag columns are ignored), a blank line between sentences;
- CSV: a header row and a raw-text column (`text_column`).

The whole file is read and checked before the model is loaded (a bad row is exit 2 naming its line), then
streamed through the inference core in chunks and written to a sibling file renamed into place at the end.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Iterator

from trainer.config import PredictConfig
from trainer.errors import InputError
from trainer.publish import ensure_new_file, write_file_atomic
from trainer.validation import check_io

logger = logging.getLogger(__name__)

SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
            ".conll": "conll", ".tsv": "conll", ".iob": "conll", ".bio": "conll", ".csv": "csv"}
CHUNK = 4096  # inputs per call of the core: bounded memory, length sorting within each chunk


def data_file(path: str | Path) -> Path:
    """The data file, or the single data file inside a folder (as a KFP Dataset artifact may be)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            raise InputError(f"data folder {path} must hold exactly one data file; found {[p.name for p in files]}")
        path = files[0]
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    return path


def data_format(path: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"cannot tell the format of {path.name} from its suffix; set data_format to one of text, "
                         "jsonl, conll, csv")
    return SUFFIXES[path.suffix.lower()]


def read_inputs(config: PredictConfig) -> Iterator[tuple[object, object]]:
    """(id, raw text or word list) of every input, in file order; InputError naming the line of a bad one. A UTF-8
    byte-order mark (Excel's "CSV UTF-8", Windows editors) is skipped, as the training data readers do."""
    path = data_file(config.data)
    kind = data_format(path, config.data_format)
    try:
        yield from {"text": _text_lines, "jsonl": _jsonl, "conll": _conll, "csv": _csv}[kind](path, config)
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text: {err}") from None


def _text_lines(path: Path, config: PredictConfig):
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            yield line_no, line.rstrip("\r\n")


def _jsonl(path: Path, config: PredictConfig):
    from trainer.jsonio import iter_jsonl

    for line_no, row in iter_jsonl(path):
        text, words = row.get(config.text_column), row.get(config.words_column)
        if isinstance(text, str) or (text is None and isinstance(words, list)):
            yield row.get("id", line_no), text if isinstance(text, str) else words  # the core reads null as blank
        else:
            raise InputError(f"{path} line {line_no}: expected a string column {config.text_column!r} or a list "
                             f"column {config.words_column!r} (text_column / words_column); found {sorted(row)}")


def _conll(path: Path, config: PredictConfig):
    words, first_line = [], 1
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            token = line.split()[0] if line.strip() else None
            if token is None or token == "-DOCSTART-":
                if words:
                    yield first_line, words
                words, first_line = [], line_no + 1
            else:
                words.append(token)
    if words:
        yield first_line, words


def _csv(path: Path, config: PredictConfig):
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if config.text_column not in (reader.fieldnames or []):
            raise InputError(f"{path}: no column {config.text_column!r} (text_column); columns: {reader.fieldnames}")
        for row_no, row in enumerate(reader, 1):
            yield row_no, row[config.text_column] or ""


def predict(config: PredictConfig) -> dict:
    """Write the predictions of every input of `config.data`; returns a summary."""
    from trainer.inference import load_classifier, model_format

    check_io(config)  # inputs exist, outputs are writable and never inside an input or each other
    ensure_new_file(config.predictions, "predictions")
    source, target = data_file(config.data).resolve(), Path(config.predictions)
    if target.resolve() == source:
        raise InputError(f"predictions {target} is the data file: give another path (outputs never overwrite inputs)")
    rows = sum(1 for _ in read_inputs(config))  # every row checked before the model is loaded
    kind = model_format(config.model)
    if config.device == "cuda" and kind == "onnx":  # onnxruntime's CUDA provider; no torch needed
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise InputError("device=cuda but this onnxruntime has no CUDA provider (onnxruntime-gpu); use "
                             "device=auto or cpu")
    elif config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("device=cuda but no GPU is visible; use device=auto or cpu")
    started = time.perf_counter()
    classifier = load_classifier(config.model, device=config.device, batch_size=config.batch_size,
                                 max_length=config.max_length or None, stride=config.stride)
    words = entities = 0

    def write(path: Path) -> None:
        nonlocal words, entities
        with path.open("w", encoding="utf-8") as handle:
            for chunk in _chunks(read_inputs(config), CHUNK):
                for (row_id, _), prediction in zip(chunk, classifier.predict([item for _, item in chunk])):
                    words += len(prediction.words)
                    entities += len(prediction.entities)
                    handle.write(json.dumps({"id": row_id, **prediction.to_dict()}, ensure_ascii=False) + "\n")

    write_file_atomic(target, write)  # a failure half-way leaves neither the output nor a temporary file
    seconds = time.perf_counter() - started
    summary = {"rows": rows, "words": words, "entities": entities, "model_format": kind,
               "compute_dtype": classifier.compute_dtype, "seconds": round(seconds, 2), "predictions": str(target)}
    logger.info("predicted %d inputs (%d words, %d entities) with the %s model (%s) in %.1f s: %s", rows, words,
                entities, kind, classifier.compute_dtype, seconds, target)
    return summary


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
