"""Long sentences: split into windows of whole words, every word trained on and scored exactly once, windows joined
back into sentences when scoring (spans across a boundary included), one loss."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import make_sentences, run_preprocess, write_conll
from trainer.preprocess import plan_windows


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def long_sentences(n: int, seed: int, length: int = 12) -> list:
    """Sentences of `length` synthetic sentences each: 60-100 words, entities everywhere (boundaries fall inside)."""
    short = make_sentences(n * length, seed)
    return [(sum((t for t, _ in short[i:i + length]), []), sum((g for _, g in short[i:i + length]), []))
            for i in range(0, len(short), length)]


def test_plan_windows_covers_every_word_once():
    rng = random.Random(0)
    for _ in range(200):
        counts = [rng.choice([1, 1, 1, 2, 3, 7]) for _ in range(rng.randint(1, 60))]
        budget, stride = rng.randint(4, 30), rng.randint(0, 10)
        windows = plan_windows(counts, budget, stride)
        assert [w[1] for w in windows] == [0] + [w[2] for w in windows[:-1]] and windows[-1][2] == len(counts)
        for left, start, end, right in windows:
            context = min(stride, budget // 4)
            assert sum(counts[left:start]) <= context and sum(counts[end:right]) <= context
            assert sum(counts[left:right]) <= budget or end - start == 1  # only a single over-long word exceeds


def test_long_sentences_lose_no_word(tmp_path, tiny_model_selector):
    from transformers import AutoTokenizer

    sentences = long_sentences(6, seed=1) + make_sentences(4, seed=2)
    sentences[0][0][3], sentences[1][0][5] = "zyxwort" * 8, "\ufe0f"  # a word of many pieces; one of none
    data = write_conll(tmp_path / "long.conll", sentences)
    summary = run_preprocess(train_data=str(data), validation_data=str(data), test_data=str(data),
                             model_selector_output=str(tiny_model_selector), preprocess_output=str(tmp_path / "out"),
                             max_seq_length=24, stride=4)
    assert summary["split_sentences"] == {"train": 6, "validation": 6, "test": 6}
    args = json.loads((tmp_path / "out" / "preprocess_args.json").read_text())
    assert args["windowing"]["test"]["empty_words"] == 1 and args["windowing"]["test"]["clipped_words"] == 1
    names = summary["class_names"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_selector)
    rows = _rows(tmp_path / "out", "test")
    assert len(rows) == summary["rows"]["test"] > len(sentences)
    for number, (tokens, tags) in enumerate(sentences):
        windows = [r for r in rows if r["sentence"] == number]
        assert [r["window"] for r in windows] == list(range(len(windows)))
        assert sum((r["tokens"] for r in windows), []) == tokens and sum((r["tags"] for r in windows), []) == tags
        scored = []
        for row in windows:
            assert len(row["input_ids"]) <= 24
            labelled = [(w, names[label]) for w, label in zip(row["word_ids"], row["labels"]) if label != -100]
            assert [w for w, _ in labelled] == list(range(len(row["tokens"])))  # each own word once, in order
            scored += [tag for _, tag in labelled]
            # context: up to `stride` sub-tokens of the neighbours' words on each side, seen but not scored
            own = [i for i, w in enumerate(row["word_ids"]) if w is not None]
            ids = row["input_ids"]
            left = [t for t in ids[:own[0]] if t not in tokenizer.all_special_ids]
            right = [t for t in ids[own[-1] + 1:] if t not in tokenizer.all_special_ids]
            assert len(left) <= 4 and len(right) <= 4
            assert all(w is not None for w in row["word_ids"][own[0]:own[-1] + 1])
        assert scored == tags
    assert any(r["window"] > 0 and any(w is None for w in r["word_ids"][1:-1]) for r in rows)  # context was used


def test_windowed_finetune_scores_whole_sentences_with_one_loss(tmp_path, tiny_model_selector):
    """Train on windows (continuation sub-tokens labelled too); the figures are those of the words of the raw
    sentences (the windows joined in order under length-grouped training, continuations not counted as words), and
    eval_loss is the mean over labelled positions, recomputed from the published model."""
    import torch
    from seqeval.metrics.sequence_labeling import get_entities
    from transformers import AutoModelForTokenClassification

    from trainer.config import FinetuneConfig
    from trainer.data import load_preprocess_output
    from trainer.finetune import finetune
    from trainer.metrics import split_scores, token_losses, word_tags

    train, test = long_sentences(10, seed=3) + make_sentences(80, seed=4), long_sentences(4, seed=5)
    data = tmp_path / "data"
    data.mkdir()
    for name, sentences in (("train", train), ("validation", test), ("test", test)):
        write_conll(data / f"{name}.conll", sentences)
    pre = tmp_path / "pre"
    summary = run_preprocess(train_data=str(data), model_selector_output=str(tiny_model_selector),
                             preprocess_output=str(pre), max_seq_length=20, stride=4, label_all_tokens=True)
    assert summary["split_sentences"]["train"] >= 10 and summary["split_sentences"]["test"] == 4
    result = finetune(FinetuneConfig(
        preprocess_output=str(pre), model_selector_output=str(tiny_model_selector),
        pytorch_model_folder=str(tmp_path / "model"), mlflow_model_folder=str(tmp_path / "mlflow"),
        per_device_train_batch_size=16, per_device_eval_batch_size=3, learning_rate=5e-3, num_train_epochs=1,
        metric_for_best_model="f1", group_by_length=True))
    gold = {}
    for _, tags in test:
        for kind, _, _ in get_entities(tags):
            gold[kind] = gold.get(kind, 0) + 1
    assert {k: v["number"] for k, v in result.per_entity.items()} == gold
    assert result.tag_scheme == json.loads((tmp_path / "model" / "metrics.json").read_text())["tag_scheme"] == "iob2"

    data = load_preprocess_output(pre)
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "model").eval()
    width = max(len(row["input_ids"]) for row in data.validation.rows)
    predictions, labels, losses = (np.full((len(data.validation), width), -100, dtype=dtype)
                                   for dtype in (np.int64, np.int64, np.float64))
    with torch.no_grad():
        for i, row in enumerate(data.validation.rows):
            n = len(row["input_ids"])
            logits = model(**{k: torch.tensor([row[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")
                              if k in row}).logits
            predictions[i, :n] = logits.argmax(-1)[0].numpy()
            labels[i, :n] = row["labels"]
            losses[i, :n] = token_losses(logits, torch.tensor([row["labels"]]))[0].numpy()
    assert word_tags(predictions, labels, data.class_names, data.validation)[0] == [tags for _, tags in test]
    joined, per_entity = split_scores((predictions, losses), labels, data.class_names, "iob2", data.validation)
    assert {k: v["number"] for k, v in per_entity.items()} == gold
    figures = result.validation_metrics
    assert (figures["eval_f1"], figures["eval_accuracy"]) == pytest.approx((joined["f1"], joined["accuracy"]))
    labelled = labels != -100
    assert figures["eval_loss"] == pytest.approx(losses[labelled].sum() / labelled.sum(), rel=1e-4)
