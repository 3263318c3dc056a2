"""seqeval entity metrics for the HF Trainer (strict IOB2 where the tags are IOB2)."""

from __future__ import annotations

from typing import Callable

import numpy as np
from seqeval import metrics as seqeval_metrics
from seqeval.scheme import IOB2

from trainer.constants import IGNORE_INDEX


def is_iob2(class_names: list[str]) -> bool:
    """True when every label is "O" or B-/I- prefixed, with a B- for each I- type."""
    types_b = {n[2:] for n in class_names if n.startswith("B-")}
    types_i = {n[2:] for n in class_names if n.startswith("I-")}
    others = [n for n in class_names if n != "O" and n[:2] not in ("B-", "I-")]
    return bool(types_b) and not others and types_i <= types_b


def align(predictions: np.ndarray, labels: np.ndarray, class_names: list[str]) -> tuple[list, list]:
    """Drop ignored positions and map ids to tag strings, one list per sentence."""
    true, pred = [], []
    for p_row, l_row in zip(predictions, labels):
        keep = l_row != IGNORE_INDEX
        true.append([class_names[i] for i in l_row[keep]])
        pred.append([class_names[i] for i in p_row[keep]])
    return true, pred


def entity_scores(true: list[list[str]], pred: list[list[str]], class_names: list[str]) -> tuple[dict, dict]:
    """Overall precision/recall/f1/accuracy and the per-entity report."""
    kwargs = {"mode": "strict", "scheme": IOB2} if is_iob2(class_names) else {}
    overall = {
        "precision": seqeval_metrics.precision_score(true, pred, zero_division=0, **kwargs),
        "recall": seqeval_metrics.recall_score(true, pred, zero_division=0, **kwargs),
        "f1": seqeval_metrics.f1_score(true, pred, zero_division=0, **kwargs),
        "accuracy": seqeval_metrics.accuracy_score(true, pred),
    }
    report = seqeval_metrics.classification_report(true, pred, output_dict=True, zero_division=0, **kwargs)
    per_entity = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                         "f1": float(v["f1-score"]), "number": int(v["support"])}
                  for name, v in report.items() if not name.endswith(" avg")}
    return {k: float(v) for k, v in overall.items()}, per_entity


def per_entity_scores(predictions, label_ids, class_names: list[str]) -> dict:
    """The per-entity report of predicted vs gold label ids (arrays aligned on token positions)."""
    true, pred = align(np.asarray(predictions), np.asarray(label_ids), class_names)
    return entity_scores(true, pred, class_names)[1]


def argmax_logits(logits, labels):
    """preprocess_logits_for_metrics: keep ids, not full logits, across the evaluation loop."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def make_compute_metrics(class_names: list[str]) -> Callable:
    def compute_metrics(eval_pred) -> dict:
        true, pred = align(np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids), class_names)
        overall, _ = entity_scores(true, pred, class_names)
        return overall

    return compute_metrics
