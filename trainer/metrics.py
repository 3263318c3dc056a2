"""One definition of the scores and one of the loss, for the trainer, the evaluate step and anyone scoring tags.

    from trainer.metrics import scores
    overall, per_label = scores(true_tags, pred_tags, scheme="iob2")  # one list of tags per sentence
    overall   -> {"precision", "recall", "f1", "accuracy"} (plain tags add "macro_precision/recall/f1")
    per_label -> {"PER": {"precision", "recall", "f1", "number"}, ...}  (entity types, or tags for plain)

What the names mean depends on the tag scheme (`trainer.schemes`; `scheme=None` detects it from `true_tags`):

- span schemes (iob1, iob2, bioes, bilou): precision/recall/f1 are entity-level micro averages from seqeval in
  strict mode with the matching scheme (a span counts only if its type and both boundaries are right; IOB1 is
  converted to IOB2 first). per_label holds entity types.
- plain tags: precision/recall/f1 are micro averages over the tags other than "O" (the outside tag, when there is
  one; without one micro P = R = F1 = accuracy), plus their macro averages; per_label holds every tag but "O".
- accuracy: the fraction of words whose predicted tag is the gold tag.

Scores are per word: a word's prediction is its first sub-token's (the training rule), and the windows of a long
sentence are stitched back into the sentence before scoring (`word_tags`), so a span across a window boundary is
still one span. The loss is the mean cross-entropy over the labelled sub-token positions (labels != -100) of the
whole split: the training objective, averaged per position, not per batch (`token_losses`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from trainer import schemes
from trainer.constants import IGNORE_INDEX


def _span_scores(true: list[list[str]], pred: list[list[str]], scheme: str) -> tuple[dict, dict]:
    from seqeval import metrics as seqeval_metrics

    if scheme == "iob1":
        true, pred = [schemes.iob1_to_iob2(t) for t in true], [schemes.iob1_to_iob2(p) for p in pred]
    # One report: seqeval 1.2.2 reads the spans of both tag lists once for it, and its "micro avg" row is what
    # precision_score / recall_score / f1_score return (each of which would read all the spans again).
    report = seqeval_metrics.classification_report(true, pred, output_dict=True, mode="strict",
                                                   scheme=schemes.seqeval_scheme(scheme), zero_division=0)
    micro = report["micro avg"]
    overall = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"]}
    per_label = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                        "number": int(v["support"])} for name, v in report.items() if not name.endswith(" avg")}
    return overall, per_label


def _tag_scores(flat_true: list[str], flat_pred: list[str]) -> tuple[dict, dict]:
    from sklearn.metrics import precision_recall_fscore_support

    labels = sorted((set(flat_true) | set(flat_pred)) - {schemes.OUTSIDE})
    if not labels:
        zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
        return {**zero, **{f"macro_{k}": 0.0 for k in zero}}, {}
    overall = {}
    for average, prefix in (("micro", ""), ("macro", "macro_")):
        p, r, f, _ = precision_recall_fscore_support(flat_true, flat_pred, labels=labels, average=average,
                                                     zero_division=0)
        overall.update({f"{prefix}precision": p, f"{prefix}recall": r, f"{prefix}f1": f})
    p, r, f, support = precision_recall_fscore_support(flat_true, flat_pred, labels=labels, average=None,
                                                       zero_division=0)
    per_label = {label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                         "number": int(support[i])} for i, label in enumerate(labels)}
    return overall, per_label


def scores(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: Optional[str] = None
           ) -> tuple[dict[str, float], dict[str, dict]]:
    """Overall and per-label scores of predicted vs gold tags, one list per sentence (see the module docstring)."""
    true, pred = [list(t) for t in true], [list(p) for p in pred]
    if len(true) != len(pred) or any(len(t) != len(p) for t, p in zip(true, pred)):
        raise ValueError("true and predicted tags must have the same sentences and lengths")
    scheme = scheme or schemes.detect(true)
    flat_true = [t for sentence in true for t in sentence]
    flat_pred = [p for sentence in pred for p in sentence]
    if schemes.is_span(scheme):
        overall, per_label = _span_scores(true, pred, scheme)
    else:
        overall, per_label = _tag_scores(flat_true, flat_pred)
    correct = sum(t == p for t, p in zip(flat_true, flat_pred))
    overall["accuracy"] = correct / len(flat_true) if flat_true else 0.0
    return {k: float(v) for k, v in overall.items()}, per_label


def entity_scores(true, pred, class_names: Optional[Sequence[str]] = None, scheme: Optional[str] = None):
    """`scores()` under its earlier name; `class_names` is accepted for compatibility and not needed."""
    return scores(true, pred, scheme)


def describe(scheme: Optional[str]) -> str:
    """What precision/recall/f1/accuracy mean for a scheme, in one sentence (for reports)."""
    if schemes.is_span(scheme):
        converted = ", IOB1 converted to IOB2" if scheme == "iob1" else ""
        return (f"Tag scheme {schemes.NAMES[scheme]}: precision, recall and f1 are entity-level micro averages "
                f"(seqeval strict{converted}); accuracy is word accuracy")
    return ("Tag scheme plain: precision, recall and f1 are micro averages over the tags other than O (macro_* "
            "the macro averages); accuracy is word accuracy")


# --------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------
def token_losses(logits, labels):
    """Cross-entropy of every position (float32), 0 where the label is -100: sum it and divide by the number of
    labelled positions for the package's loss."""
    import torch

    loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return loss * (labels != IGNORE_INDEX)


def ids_and_losses(logits, labels):
    """preprocess_logits_for_metrics: keep predicted ids and per-position losses, not the full logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1), token_losses(logits, labels)


# --------------------------------------------------------------------------------------------------
# Rows -> words -> sentences
# --------------------------------------------------------------------------------------------------
def word_tags(pred_ids, label_ids, class_names: Sequence[str], split: Any = None) -> tuple[list, list]:
    """Gold and predicted tags per sentence from row-level arrays (rows in split order, any padding -100).

    `split` (an EncodedSplit) tells which labelled positions are a word's first sub-token (`word_starts`) and which
    sentence each row belongs to (`sentence_ids`): the windows of a sentence are joined. Without it every
    labelled position is a word and every row a sentence."""
    pred_ids, label_ids = np.asarray(pred_ids), np.asarray(label_ids)
    starts = getattr(split, "word_starts", None)
    sentence_ids = getattr(split, "sentence_ids", None)
    if split is not None and len(split) != len(label_ids):
        raise ValueError(f"scored {len(label_ids)} rows but the split has {len(split)}")
    true: list[list[str]] = []
    pred: list[list[str]] = []
    previous = None
    for row, (p_row, l_row) in enumerate(zip(pred_ids, label_ids)):
        keep = l_row != IGNORE_INDEX
        gold, guess = l_row[keep], p_row[keep]
        if starts is not None and starts[row] is not None:
            if len(starts[row]) != len(gold):
                raise ValueError(f"row {row} has {len(gold)} labelled positions, the split's row {len(starts[row])}: "
                                 f"the rows were not scored in the split's order")
            gold, guess = gold[starts[row]], guess[starts[row]]
        sentence = sentence_ids[row] if sentence_ids is not None else row
        if sentence != previous or not true:
            true.append([])
            pred.append([])
            previous = sentence
        true[-1] += [class_names[i] for i in gold]
        pred[-1] += [class_names[i] for i in guess]
    return true, pred


def split_scores(predictions, label_ids, class_names: Sequence[str], scheme: Optional[str] = None,
                 split: Any = None) -> tuple[dict[str, float], dict[str, dict]]:
    """Scores of an evaluation loop's output; `predictions` is ids, or (ids, per-position losses) from
    `ids_and_losses`, which adds "loss"."""
    losses = None
    if isinstance(predictions, (tuple, list)):
        predictions, losses = predictions[0], predictions[1]
    label_ids = np.asarray(label_ids)
    overall, per_label = scores(*word_tags(predictions, label_ids, class_names, split), scheme)
    if losses is not None:
        labelled = label_ids != IGNORE_INDEX
        overall["loss"] = float(np.asarray(losses, dtype=np.float64)[labelled].sum() / max(1, labelled.sum()))
    return overall, per_label


def in_dataset_order(value, order: Sequence[int]):
    """Rows evaluated in `order` (row k is dataset row order[k]) put back in dataset order; tuples (ids, losses)
    element-wise."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(in_dataset_order(v, order) for v in value)
    restore = np.empty(len(order), dtype=np.int64)
    restore[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return np.asarray(value)[restore]


class SplitMetrics:
    """compute_metrics for the HF Trainer. `split` is the EncodedSplit being scored and `order` the order its rows
    were evaluated in (None: dataset order); the Trainer sets both before each evaluation loop (trainer.hf_trainer).
    The "loss" it returns replaces the Trainer's per-batch average."""

    def __init__(self, class_names: Sequence[str], scheme: Optional[str] = None):
        self.class_names = list(class_names)
        self.scheme = scheme
        self.split = None
        self.order: Optional[Sequence[int]] = None

    def __call__(self, eval_pred) -> dict:
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        if self.order is not None:
            predictions, label_ids = in_dataset_order(predictions, self.order), in_dataset_order(label_ids, self.order)
        return split_scores(predictions, label_ids, self.class_names, self.scheme, self.split)[0]


def make_compute_metrics(class_names: Sequence[str], scheme: Optional[str] = None) -> SplitMetrics:
    return SplitMetrics(class_names, scheme)
