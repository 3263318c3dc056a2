"""Scoring a fine-tuned model on one split of a preprocess output, on the inference core and the trainer's metrics.

The split's words go through `trainer.inference` (the served code path: batched, length-sorted, inference_mode,
long sentences windowed, never truncated), so the predictions written are exactly what the served model says.
Scores come from `trainer.metrics.entity_scores` on the words the training rule scores (each word's first
sub-token), in the tag scheme preprocess recorded: the same F1 definition the fine-tune reports; the loss is the mean
cross-entropy over those words. The windows preprocess cut from a long sentence are joined back into the sentence
(the inference core windows it again as the served model does).

The fine-tune already scored its test split (metrics.json). Evaluating that model on that same split (same file
content, checked by its sha256) reports those figures instead of a second, possibly different, "test F1"; set
`rescore=true` to score again. Predictions are written either way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from trainer.config import EvaluateConfig
from trainer.constants import METRICS_FILE, PREPROCESS_ARGS_FILE, SPLIT_FILES
from trainer.errors import InputError

logger = logging.getLogger(__name__)
FIGURES = ("precision", "recall", "f1", "accuracy", "loss")


@dataclass
class EvaluateResult:
    split: str
    sentences: int
    figures: dict  # precision, recall, f1, accuracy, loss
    per_entity: dict = field(default_factory=dict)
    source: str = "evaluate"  # "evaluate": scored here; "finetune": the fine-tune's figures for this split
    tag_scheme: Optional[str] = None  # what precision/recall/f1 mean: trainer.metrics.describe(tag_scheme)
    seconds: float = 0.0


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


def finetune_figures_for(model: Path, split: str, digest: str) -> Optional[tuple[dict, dict]]:
    """(figures, per_entity) the fine-tune wrote for this very split, or None."""
    from trainer.jsonio import read_json

    path = model / METRICS_FILE
    if not path.is_file():
        return None
    result = read_json(path)
    test = result.get("test_metrics")
    scored, prefix, metrics = (("test", "test_", test) if test
                               else ("validation", "eval_", result.get("validation_metrics")))
    if split != scored or (result.get("scored_splits") or {}).get(split) != digest or not metrics:
        return None
    figures = {name: metrics[prefix + name] for name in FIGURES if prefix + name in metrics}
    return (figures, result.get("per_entity") or {}) if "f1" in figures else None


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Predict `config.split` with `config.model`, write the predictions, and report the figures."""
    from trainer import schemes
    from trainer.data import load_class_names
    from trainer.inference import load_classifier
    from trainer.jsonio import read_json, write_jsonl

    started = time.perf_counter()
    data_dir = Path(config.preprocess_output)
    split_file = data_dir / SPLIT_FILES[config.split]
    if not split_file.exists():
        raise InputError(f"preprocess output {data_dir} has no {config.split} split ({split_file.name}); "
                         f"found {sorted(p.name for p in data_dir.iterdir())}")
    args_file = data_dir / PREPROCESS_ARGS_FILE
    preprocess_args = read_json(args_file) if args_file.exists() else {}
    class_names = load_class_names(data_dir, preprocess_args)
    words, gold = read_words(split_file, class_names)
    scheme = preprocess_args.get("tag_scheme") or schemes.resolve("auto", gold)
    classifier = load_classifier(config.model, batch_size=config.batch_size)
    if sorted(classifier.class_names) != sorted(class_names):
        raise InputError(f"the model in {config.model} predicts {classifier.class_names} but the preprocess output "
                         f"has the classes {class_names}")
    predictions = classifier.predict(words)
    write_jsonl(config.predictions, ({"tokens": w, "tags": g, "predicted_tags": p.labels, "scores": p.scores}
                                     for w, g, p in zip(words, gold, predictions)))

    reused = None if config.rescore else finetune_figures_for(
        Path(config.model), config.split, split_digests(data_dir, [config.split])[config.split])
    if reused is not None:
        (figures, per_entity), source = reused, "finetune"
    else:
        (figures, per_entity), source = score(gold, predictions, classifier.class_names, scheme), "evaluate"
    seconds = time.perf_counter() - started
    logger.info("%s split, %d sentences (%s figures, %.1f s): %s", config.split, len(words), source, seconds, figures)
    return EvaluateResult(split=config.split, sentences=len(words), figures=figures, per_entity=per_entity,
                          source=source, seconds=seconds, tag_scheme=scheme)


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
