"""Scoring a fine-tuned model on one split of a preprocess output, on the inference core and the trainer's metrics.

The split's words go through `trainer.inference` (the served code path: batched, length-sorted, inference_mode,
long sentences windowed, never truncated), so the predictions written are exactly what the served model says.
Scores come from `trainer.metrics.entity_scores` on the words the training rule scores (each word's first
sub-token), in the tag scheme preprocess recorded: the same F1 definition the fine-tune reports; the loss is the mean
cross-entropy over those words. The windows preprocess cut from a long sentence are joined back into the sentence
(the inference core windows it again as the served model does).

The fine-tune scores its test split (else its validation split) the same way, through `predict_split` on the
model it publishes, and publishes those predictions beside metrics.json. Evaluating that model on that same split
(same file content, checked by its sha256, and the same classes) copies its predictions and reports its figures
without loading the model: one test F1, and no second pass over the split. `rescore=true` predicts and scores again
(the same code on the same model: the same figures).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from trainer.config import EvaluateConfig
from trainer.constants import METRICS_FILE, PREPROCESS_ARGS_FILE, SPLIT_FILES
from trainer.errors import InputError
from trainer.publish import ensure_new_file, write_file_atomic
from trainer.validation import check_io

logger = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    split: str
    sentences: int
    figures: dict  # precision, recall, f1, accuracy, loss
    per_entity: dict = field(default_factory=dict)
    source: str = "evaluate"  # "evaluate": predicted here; "finetune": the fine-tune's predictions and figures
    tag_scheme: Optional[str] = None  # what precision/recall/f1 mean: trainer.metrics.describe(tag_scheme)
    seconds: float = 0.0
    predictions_file: Optional[str] = None  # source "finetune": the fine-tune's predictions of this split
    compute_dtype: Optional[str] = None  # what the model's forward computed in (trainer.precision)


def split_digests(preprocess_output: str | Path, splits: list[str]) -> dict[str, str]:
    """sha256 of each split file: tells evaluate whether the fine-tune scored the very same rows."""
    return {split: hashlib.sha256((Path(preprocess_output) / SPLIT_FILES[split]).read_bytes()).hexdigest()
            for split in splits}


def read_words(split_file: Path, class_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """The words and gold tags of each sentence of an encoded split (preprocess writes them beside the ids; the
    windows of a sentence, consecutive rows with the same "sentence", are joined)."""
    from trainer.jsonio import iter_jsonl

    words, tags, known, previous = [], [], set(class_names), None
    for line_no, row in iter_jsonl(split_file):
        where = f"{split_file} line {line_no}"
        if not isinstance(row.get("tokens"), list) or not isinstance(row.get("tags"), list):
            raise InputError(f"{where}: no 'tokens' and 'tags' lists: evaluate scores words, which our preprocess "
                             "writes beside the ids; re-run the preprocess component on the labelled data")
        if len(row["tokens"]) != len(row["tags"]):
            raise InputError(f"{where}: {len(row['tokens'])} tokens but {len(row['tags'])} tags")
        unknown = sorted(set(row["tags"]) - known)
        if unknown:
            raise InputError(f"{where}: tag(s) {unknown} are not in the label map {class_names}")
        sentence = row.get("sentence")
        if sentence is not None and sentence == previous:
            words[-1] += [str(w) for w in row["tokens"]]
            tags[-1] += row["tags"]
        else:
            words.append([str(w) for w in row["tokens"]])
            tags.append(list(row["tags"]))
        previous = sentence
    if not words:
        raise InputError(f"{split_file} holds no rows")
    return words, tags


def predict_split(model: str | Path, preprocess_output: str | Path, split: str, batch_size: int,
                  predictions: str | Path) -> EvaluateResult:
    """Predict one split of a preprocess output with `model` on the inference core (the served code path), write the
    predictions (atomically: a temporary sibling renamed into place) and score them. The fine-tune calls this on
    the model it publishes, the evaluate program on any model."""
    from trainer import schemes
    from trainer.inference import load_classifier, model_config
    from trainer.labels import load_class_names

    started = time.perf_counter()
    data_dir = Path(preprocess_output)
    split_file = _split_file(data_dir, split)
    preprocess_args = _preprocess_args(data_dir)
    class_names = load_class_names(data_dir, preprocess_args)
    words, gold = read_words(split_file, class_names)
    scheme = preprocess_args.get("tag_scheme") or schemes.resolve("auto", gold)
    id2label = model_config(model)[2].id2label  # its label map before its weights: a mismatch loads nothing
    predicts = [id2label[i] for i in sorted(int(k) for k in id2label)]
    if sorted(predicts) != sorted(class_names):
        raise InputError(f"the model in {model} predicts {predicts} but the preprocess output has the classes "
                         f"{class_names}")
    classifier = load_classifier(model, batch_size=batch_size)
    predicted = classifier.predict(words)
    write_file_atomic(predictions, lambda path: write_predictions(path, words, gold, predicted))
    figures, per_entity = score(gold, predicted, classifier.class_names, scheme)
    return EvaluateResult(split=split, sentences=len(words), figures=figures, per_entity=per_entity,
                          seconds=time.perf_counter() - started, tag_scheme=scheme,
                          compute_dtype=classifier.compute_dtype)


def write_predictions(path: Path, words: list, gold: list, predicted: list) -> int:
    from trainer.jsonio import write_jsonl

    return write_jsonl(path, ({"tokens": w, "tags": g, "predicted_tags": p.labels, "scores": p.scores}
                              for w, g, p in zip(words, gold, predicted)))


def finetune_predictions_for(model: Path, preprocess_output: Path, split: str) -> Optional[EvaluateResult]:
    """What the fine-tune that published `model` scored and predicted on this very split (same file content, same
    classes), as an EvaluateResult whose `predictions_file` is its written predictions; None when it did not."""
    from trainer.jsonio import read_json
    from trainer.labels import load_class_names

    path, config_file = model / METRICS_FILE, model / "config.json"
    if not path.is_file() or not config_file.is_file():
        return None
    result = read_json(path)
    scored = result.get("predictions") or {}
    if scored.get("split") != split or not scored.get("file") or "f1" not in (scored.get("figures") or {}):
        return None
    file = model / scored["file"]
    if not file.is_file():
        return None
    if (result.get("scored_splits") or {}).get(split) != split_digests(preprocess_output, [split])[split]:
        return None
    preprocess_args = _preprocess_args(preprocess_output)
    id2label = read_json(config_file).get("id2label") or {}
    if sorted(map(str, id2label.values())) != sorted(load_class_names(preprocess_output, preprocess_args)):
        return None  # the preprocess output's classes changed: predicting again reports the mismatch
    return EvaluateResult(split=split, sentences=int(scored.get("sentences", 0)), figures=dict(scored["figures"]),
                          per_entity=result.get("per_entity") or {}, source="finetune",
                          tag_scheme=preprocess_args.get("tag_scheme") or result.get("tag_scheme"),
                          predictions_file=str(file), compute_dtype=scored.get("compute_dtype"))


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Write the predictions of `config.split` by `config.model` and report its figures: the fine-tune's own
    predictions and figures when it scored this very split (no model is loaded then), else predicted here."""
    check_io(config)  # inputs exist, outputs are writable and never inside an input or each other
    ensure_new_file(config.predictions, "predictions")
    started = time.perf_counter()
    data_dir = Path(config.preprocess_output)
    split = config.split
    if split == "auto":  # what the fine-tune scored: a pipeline whose data has no test split still evaluates
        _split_file(data_dir, "validation")
        split = "test" if (data_dir / SPLIT_FILES["test"]).exists() else "validation"
    _split_file(data_dir, split)
    reused = None if config.rescore else finetune_predictions_for(Path(config.model), data_dir, split)
    if reused is not None:
        write_file_atomic(config.predictions, lambda path: shutil.copyfile(reused.predictions_file, path))
        result = reused
    else:
        result = predict_split(config.model, data_dir, split, config.batch_size, config.predictions)
    result.seconds = time.perf_counter() - started
    logger.info("%s split, %d sentences (%s figures and predictions, %.1f s): %s", split, result.sentences,
                result.source, result.seconds, result.figures)
    return result


def _preprocess_args(data_dir: Path) -> dict:
    from trainer.jsonio import read_json

    args_file = data_dir / PREPROCESS_ARGS_FILE
    return read_json(args_file) if args_file.exists() else {}


def _split_file(data_dir: Path, split: str) -> Path:
    if not data_dir.is_dir():
        raise InputError(f"preprocess_output {data_dir} is a file; give the preprocess output folder")
    split_file = data_dir / SPLIT_FILES[split]
    if not split_file.exists():
        raise InputError(f"preprocess output {data_dir} has no {split} split ({split_file.name}); "
                         f"found {sorted(p.name for p in data_dir.iterdir())}")
    return split_file


def score(gold: list[list[str]], predictions: list, class_names: list[str],
          scheme: Optional[str] = None) -> tuple[dict, dict]:
    """Figures of `scheme` (trainer.metrics) and the mean cross-entropy over the scored words (first sub-tokens)."""
    from trainer.metrics import entity_scores

    index = {name: i for i, name in enumerate(class_names)}
    y_true, y_pred, nll = [], [], []
    for tags, prediction in zip(gold, predictions):
        scored = [k for k, s in enumerate(prediction.scores) if s is not None]
        y_true.append([tags[k] for k in scored])
        y_pred.append([prediction.labels[k] for k in scored])
        nll += [-np.log(max(prediction.probabilities[k, index[tags[k]]], 1e-45)) for k in scored]
    overall, per_entity = entity_scores(y_true, y_pred, class_names, scheme)
    return {**overall, "loss": float(np.mean(nll)) if nll else 0.0}, per_entity
