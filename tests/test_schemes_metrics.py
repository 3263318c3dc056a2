"""trainer.schemes and trainer.metrics: scheme detection, and scores checked against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.errors import InputError
from trainer.metrics import ids_and_losses, scores, split_scores, word_tags
from trainer.schemes import check, detect, iob1_to_iob2, resolve

# Two sentences as spans (type, start, end), rendered below in every scheme. Sentence 1 has two adjacent PER spans
# (IOB1 needs its B- there) and multi-word spans; sentence 2 one-word spans.
GOLD = [(8, [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 7)]), (3, [("LOC", 0, 1), ("PER", 2, 3)])]
PRED = [(8, [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 6), ("ORG", 7, 8)]), (3, [("LOC", 0, 1), ("LOC", 2, 3)])]
# By hand: 6 gold spans, 6 predicted, 3 right (PER 0-2, PER 2-3, LOC 0-1): P = R = F1 = 0.5.
# PER: 2 of 3 gold found, 2 of 2 predicted right -> P 1, R 2/3, F1 0.8. LOC: 1 of 2 / 1 of 3 -> F1 0.4. ORG: 0.


def render(sentences, scheme: str) -> list[list[str]]:
    out = []
    for length, spans in sentences:
        tags = ["O"] * length
        previous_end = {}
        for kind, start, end in spans:
            n = end - start
            if scheme == "iob2":
                tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
            elif scheme == "iob1":
                first = "B" if previous_end.get(kind) == start else "I"
                tags[start:end] = [f"{first}-{kind}"] + [f"I-{kind}"] * (n - 1)
            else:
                single, last = ("S", "E") if scheme == "bioes" else ("U", "L")
                tags[start:end] = [f"{single}-{kind}"] if n == 1 else [f"B-{kind}"] + [f"I-{kind}"] * (n - 2) + [
                    f"{last}-{kind}"]
            previous_end[kind] = end
        out.append(tags)
    return out


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bioes", "bilou"])
def test_same_spans_score_the_same_in_every_span_scheme(scheme):
    true, pred = render(GOLD, scheme), render(PRED, scheme)
    assert detect(true) == scheme
    overall, per_label = scores(true, pred)  # scheme detected from the gold tags
    assert overall["precision"] == overall["recall"] == overall["f1"] == pytest.approx(0.5)
    assert per_label["PER"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "number": 3})
    assert per_label["LOC"]["f1"] == pytest.approx(0.4) and per_label["ORG"]["f1"] == 0.0
    flat = [(t, p) for ts, ps in zip(true, pred) for t, p in zip(ts, ps)]
    assert overall["accuracy"] == pytest.approx(sum(t == p for t, p in flat) / len(flat))


@pytest.mark.parametrize("scheme", ["iob2", "bioes", "bilou"])
def test_span_scores_are_seqevals_strict_micro_scores(scheme):
    """Random tag lists (invalid sequences, sentences without spans, all-O predictions included): the overall
    figures equal seqeval's own precision_score / recall_score / f1_score in strict mode."""
    from seqeval import metrics as seqeval_metrics

    from trainer.schemes import seqeval_scheme

    rng = np.random.default_rng(7)
    prefixes = {"iob2": "BI", "bioes": "BIES", "bilou": "BILU"}[scheme]
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]
    kwargs = {"mode": "strict", "scheme": seqeval_scheme(scheme), "zero_division": 0}
    for trial in range(30):
        true = [list(rng.choice(tags, size=rng.integers(1, 9))) for _ in range(rng.integers(1, 6))]
        pred = [["O"] * len(t) for t in true] if trial % 5 == 0 else [list(rng.choice(tags, size=len(t))) for t in true]
        overall, _ = scores(true, pred, scheme)
        assert overall["precision"] == seqeval_metrics.precision_score(true, pred, **kwargs)
        assert overall["recall"] == seqeval_metrics.recall_score(true, pred, **kwargs)
        assert overall["f1"] == seqeval_metrics.f1_score(true, pred, **kwargs)


def test_span_scores_read_each_tag_list_once(monkeypatch):
    """Scoring a split reads the spans of the gold and of the predicted tags once each (not once per figure)."""
    import seqeval.metrics.v1 as seqeval_v1

    made = []
    real = seqeval_v1.Entities

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(seqeval_v1, "Entities", counting)
    overall, per_label = scores(render(GOLD, "iob2"), render(PRED, "iob2"), "iob2")
    assert overall["f1"] == pytest.approx(0.5) and per_label["PER"]["f1"] == pytest.approx(0.8)
    assert len(made) == 2


def test_iob1_is_converted_not_read_as_iob2():
    true = render(GOLD, "iob1")
    assert true[0][:3] == ["I-PER", "I-PER", "B-PER"]
    assert iob1_to_iob2(true[0]) == render(GOLD, "iob2")[0]
    # Read as strict IOB2, IOB1's I- starts are not spans: the scheme matters.
    assert scores(true, true, "iob2")[1]["PER"]["number"] == 1
    assert scores(true, true, "iob1")[1]["PER"]["number"] == 3


POS_TRUE = [["DET", "NOUN", "CCONJ", "NOUN", "VERB"], ["SCONJ", "PRON", "VERB"]]
POS_PRED = [["DET", "NOUN", "SCONJ", "NOUN", "NOUN"], ["SCONJ", "PRON", "VERB"]]


def test_plain_tags_are_scored_per_tag():
    assert detect(POS_TRUE) == "plain"
    overall, per_label = scores(POS_TRUE, POS_PRED)
    # Every tag is its own class: no "OUN" from NOUN, CCONJ and SCONJ not merged into "CONJ".
    assert sorted(per_label) == ["CCONJ", "DET", "NOUN", "PRON", "SCONJ", "VERB"]
    assert overall["accuracy"] == 6 / 8  # a direct count
    assert overall["precision"] == overall["recall"] == overall["f1"] == pytest.approx(6 / 8)  # micro, no O
    assert per_label["SCONJ"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "number": 1})
    assert per_label["NOUN"]["f1"] == pytest.approx(0.8) and per_label["CCONJ"]["f1"] == 0.0
    assert overall["macro_f1"] == pytest.approx((0 + 1 + 0.8 + 1 + 2 / 3 + 2 / 3) / 6)


def test_plain_tags_with_an_outside_tag_leave_it_out():
    overall, per_label = scores([["O", "PER", "PER", "O", "LOC"]], [["O", "PER", "O", "O", "LOC"]], "plain")
    assert sorted(per_label) == ["LOC", "PER"]
    assert overall["precision"] == 1.0 and overall["recall"] == pytest.approx(2 / 3)
    assert overall["f1"] == pytest.approx(0.8) and overall["accuracy"] == 4 / 5


def test_detection_and_explicit_schemes(caplog):
    assert detect([["B-X", "I-X", "O"], ["I-X", "O"]]) == "iob2"  # mostly B- starts: IOB2 with one stray I-
    assert detect([["I-X", "I-X", "O"], ["I-Y", "B-Y"]]) == "iob1"
    with pytest.raises(InputError, match=r"mix span-prefixed labels \['B-PER'\] with labels without a B-/I- prefix "
                                         r"\['NOUN'\]: set tag_scheme=plain"):
        detect([["B-PER", "NOUN", "O"]])
    assert resolve("plain", [["B-PER", "NOUN"]]) == "plain"
    with caplog.at_level("WARNING", logger="trainer.schemes"):
        assert detect([["B_PER", "I_PER", "O"]]) == "plain"
    assert "['B_PER', 'I_PER'] look like span tags with another separator" in caplog.text
    with pytest.raises(InputError, match=r"tag_scheme=iob2 but the labels use the prefix\(es\) E, S"):
        check("iob2", ["O", "B-X", "E-X", "S-X"])
    with pytest.raises(InputError, match=r"tag_scheme=bioes but the labels \['NOUN'\] have no span prefix"):
        resolve("bioes", [["NOUN", "O"]])
    many = [[f"T{i}" for i in range(5000)] + ["B-X"]]
    with pytest.raises(InputError) as err:
        detect(many)
    assert len(str(err.value)) < 300  # a few labels and a count, never all of them


# --- Rows -> words -> sentences, and the loss ----------------------------------------------------------------------
CLASSES = ["O", "B-PER", "I-PER"]


def test_windows_are_joined_before_scoring(tmp_path):
    """A sentence in two windows, PER crossing the boundary; a continuation sub-token labelled (label_all_tokens)."""
    from trainer.data import read_split

    rows = [  # sentence 0: "Ann Lee" (PER) | "smiled", split after "Ann"; sentence 1: "Bob" (PER), "Bob" in 2 pieces
        {"input_ids": [1, 5, 6, 2], "attention_mask": [1] * 4, "labels": [-100, 1, -100, -100],
         "word_ids": [None, 0, None, None], "sentence": 0, "window": 0},
        {"input_ids": [1, 5, 6, 7, 2], "attention_mask": [1] * 5, "labels": [-100, -100, 2, 0, -100],
         "word_ids": [None, None, 0, 1, None], "sentence": 0, "window": 1},
        {"input_ids": [1, 8, 9, 2], "attention_mask": [1] * 4, "labels": [-100, 1, 2, -100],
         "word_ids": [None, 0, 0, None], "sentence": 1, "window": 0},
    ]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = read_split(tmp_path / "v.jsonl", len(CLASSES))
    labels = np.full((3, 6), -100)  # as the evaluation loop hands them over: padded to the longest row
    for i, row in enumerate(rows):
        labels[i, :len(row["labels"])] = row["labels"]
    predictions = np.where(labels == -100, 0, labels)
    predictions[2, 2] = 0  # the continuation piece is wrong: it is not a word, it does not count
    true, pred = word_tags(predictions, labels, CLASSES, split)
    assert true == pred == [["B-PER", "I-PER", "O"], ["B-PER"]]
    overall, per_label = split_scores(predictions, labels, CLASSES, "iob2", split)
    assert overall["f1"] == 1.0 and per_label["PER"]["number"] == 2 and overall["accuracy"] == 1.0
    # Scored row by row, the span would be cut at the window boundary and the continuation counted as a word:
    assert split_scores(predictions, labels, CLASSES, "iob2")[0]["f1"] < 1.0

    with pytest.raises(ValueError, match="scored 2 rows but the split has 3"):
        word_tags(predictions[:2], labels[:2], CLASSES, split)
    # a sentence whose windows are not consecutive rows
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [rows[0], {**rows[2], "sentence": 1},
                                                                              {**rows[1], "sentence": 0}]))
    with pytest.raises(InputError, match=r"bad\.jsonl line 3: sentence 0 continues after other rows"):
        read_split(tmp_path / "bad.jsonl", len(CLASSES))


def test_loss_is_the_mean_over_labelled_positions_of_the_split():
    import torch

    torch.manual_seed(0)
    lengths = [3, 9, 5]  # batches of one row each: unequal numbers of labelled positions
    logits = [torch.randn(1, n, len(CLASSES)) for n in lengths]
    labels = [torch.randint(0, len(CLASSES), (1, n)) for n in lengths]
    labels[1][0, :4] = -100
    ids, losses = zip(*(ids_and_losses(lg, lb) for lg, lb in zip(logits, labels)))
    pad = lambda rows, value: np.stack([np.pad(r[0].numpy(), (0, 9 - r.shape[1]), constant_values=value)  # noqa: E731
                                        for r in rows])
    overall, _ = split_scores((pad(ids, -100), pad(losses, -100)), pad(labels, -100), CLASSES, "iob2")
    everything = torch.nn.functional.cross_entropy(torch.cat([lg[0] for lg in logits]),
                                                   torch.cat([lb[0] for lb in labels]), ignore_index=-100)
    assert overall["loss"] == pytest.approx(float(everything), rel=1e-6)
    per_batch = np.mean([float(torch.nn.functional.cross_entropy(lg[0], lb[0], ignore_index=-100))
                         for lg, lb in zip(logits, labels)])
    assert abs(overall["loss"] - per_batch) > 1e-3  # the Trainer's own average would be another number


def test_report_names_the_scheme_and_what_the_metric_means():
    from trainer.report import finetune_markdown

    result = {"best_checkpoint": "checkpoint-9", "best_metric": 0.5, "validation_metrics": {"eval_f1": 0.5},
              "test_metrics": {"test_f1": 0.4, "test_accuracy": 0.9}, "per_entity": {"NOUN": {"f1": 0.7, "number": 3}}}
    plain = finetune_markdown({**result, "tag_scheme": "plain"}, "f1")
    assert "Tag scheme plain: precision, recall and f1 are micro averages over the tags other than O" in plain
    assert "## Per tag (test split)" in plain and "| Tag | Precision |" in plain
    iob1 = finetune_markdown({**result, "tag_scheme": "iob1"}, "f1")
    assert "Tag scheme IOB1: precision, recall and f1 are entity-level micro averages (seqeval strict, IOB1 " \
           "converted to IOB2)" in iob1 and "## Per entity (test split)" in iob1
