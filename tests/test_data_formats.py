"""The same data in every format gives the same encoded rows: WNUT-17 (IOB2 NER) and a synthetic POS set (plain
tags), written as CoNLL (columns by index, and by name after a header line), CoNLL-U, CoNLL-U Plus, JSON Lines,
JSON, CSV, TSV, Parquet, a datasets folder and an Arrow file; integer tags with names; the local run's --quick
data."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from conftest import run_preprocess
from trainer.readers import read_conll

SPLIT = {"validation_ratio": 0.1, "test_ratio": 0.1, "split_seed": 7}


def _outputs(folder: Path) -> dict:
    rows = {s: (folder / f"{s}.jsonl").read_text() for s in ("train", "validation", "test")}
    return {"rows": rows, "class_names": json.loads((folder / "class_names.json").read_text())["class_names"],
            "tag_scheme": json.loads((folder / "preprocess_args.json").read_text())["tag_scheme"]}


def write_formats(sentences: list, folder: Path, class_names: list[str]) -> dict[str, tuple[Path, dict]]:
    """The sentences in every format; returns {name: (path, preprocess options)}."""
    from datasets import ClassLabel, Dataset, Features, List, Value

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    records = [{"tokens": t, "ner_tags": g} for t, g in sentences]

    path = folder / "data.conllu"
    with path.open("w") as handle:
        for number, (tokens, tags) in enumerate(sentences, start=1):
            handle.write(f"# sent_id = {number}\n# text = {' '.join(tokens)}\n")
            if number % 7 == 0:  # a multi-word token's range line and an empty node: neither is a word
                handle.write(f"1-2\t{tokens[0]}{tokens[0]}\t_\t_\t_\t_\t_\t_\t_\t_\n")
            for i, (token, tag) in enumerate(zip(tokens, tags), start=1):
                misc = "_" if tag == "O" else f"NER={tag}|SpaceAfter=No"
                handle.write(f"{i}\t{token}\t_\tX\t_\t_\t{i - 1}\tdep\t_\t{misc}\n")
                if number % 7 == 0 and i == 1:
                    handle.write("1.1\tgone\t_\tVERB\t_\t_\t_\t_\t0:root\t_\n")
            handle.write("\n")
    out["conllu"] = (path, {"tag_column": "misc:NER"})

    path = folder / "plus.conllup"
    path.write_text("# global.columns = ID FORM NER\n" + "".join(
        "".join(f"{i}\t{t}\t{g}\n" for i, (t, g) in enumerate(zip(*s), start=1)) + "\n" for s in sentences))
    out["conllu_plus"] = (path, {"tag_column": "ner"})
    path = folder / "named.conll"  # CoNLL whose first line names the columns: picked by name
    path.write_text("# columns = pos word ner chunk\n" + "\n".join(
        "".join(f"X\t{t}\t{g}\tX\n" for t, g in zip(*s)) for s in sentences))
    out["conll_named_columns"] = (path, {"token_column": "word", "tag_column": "ner"})

    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out["jsonl"] = (path, {})
    path = folder / "data.json"
    path.write_text(json.dumps({"data": [{"words": r["tokens"], "labels": r["ner_tags"]} for r in records]}))
    out["json"] = (path, {})

    path = folder / "sentences.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "tokens", "ner_tags"])
        writer.writerows([i, json.dumps(t, ensure_ascii=False), json.dumps(g)] for i, (t, g) in enumerate(sentences))
    out["csv"] = (path, {})
    path = folder / "words.tsv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["Sentence #", "Word", "Tag"])
        for number, (tokens, tags) in enumerate(sentences, start=1):
            writer.writerows([f"Sentence: {number}" if i == 0 else "", t, g] for i, (t, g) in enumerate(zip(tokens,
                                                                                                            tags)))
    out["tsv_word_per_row"] = (path, {})

    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=class_names))})
    dataset = Dataset.from_dict({"tokens": [t for t, _ in sentences],
                                 "ner_tags": [[class_names.index(x) for x in g] for _, g in sentences]},
                                features=features)
    dataset.to_parquet(str(folder / "data.parquet"))
    out["parquet"] = (folder / "data.parquet", {})
    dataset.save_to_disk(str(folder / "hf"))
    out["hf_folder"] = (folder / "hf", {})
    out["arrow"] = (next((folder / "hf").glob("*.arrow")), {})
    return out


def _check_every_format(sentences, tmp_path, tiny_model_selector, reference: Path, reference_options: dict) -> dict:
    baseline_dir = tmp_path / "baseline"
    run_preprocess(train_data=str(reference), model_selector_output=str(tiny_model_selector),
                   preprocess_output=str(baseline_dir), max_seq_length=64, **SPLIT, **reference_options)
    baseline = _outputs(baseline_dir)
    for name, (path, options) in write_formats(sentences, tmp_path / "formats", baseline["class_names"]).items():
        out = tmp_path / "out" / name
        summary = run_preprocess(train_data=str(path), model_selector_output=str(tiny_model_selector),
                                 preprocess_output=str(out), max_seq_length=64, **SPLIT, **options)
        got = _outputs(out)
        assert got["class_names"] == baseline["class_names"], name
        for split in ("train", "validation", "test"):
            assert got["rows"][split] == baseline["rows"][split], f"{name}: {split} rows differ"
        assert summary["train_size"] + summary["validation_size"] + summary["test_size"] == len(sentences)
    return baseline


def test_wnut17_in_every_format_gives_identical_rows(tmp_path, tiny_model_selector, wnut17_dir):
    sentences = read_conll(wnut17_dir / "validation.conll")
    baseline = _check_every_format(sentences, tmp_path, tiny_model_selector, wnut17_dir / "validation.conll", {})
    assert baseline["tag_scheme"] == "iob2" and baseline["class_names"][:2] == ["O", "B-corporation"]


UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "NOUN", "NUM", "PRON", "PROPN", "PUNCT", "SCONJ", "VERB"]


def pos_sentences(n: int, seed: int) -> list:
    """A small synthetic POS set (plain tags); words drawn from the tiny vocabulary."""
    from conftest import CITIES, FILLER, PERSONS

    rng = random.Random(seed)
    vocabulary = PERSONS + CITIES + FILLER
    return [([rng.choice(vocabulary) for _ in range(k)], [rng.choice(UPOS) for _ in range(k)])
            for k in (rng.randint(3, 12) for _ in range(n))]


def test_pos_tags_in_every_format_are_plain(tmp_path, tiny_model_selector):
    sentences = pos_sentences(200, seed=1)
    reference = tmp_path / "pos.conllu"  # UD style: FORM + UPOS, the default columns
    reference.write_text("".join("# text = x\n" + "".join(f"{i}\t{t}\t{t}\t{g}\t_\t_\t0\tdep\t_\t_\n" for i, (t, g)
                                                          in enumerate(zip(*s), start=1)) + "\n" for s in sentences))
    baseline = _check_every_format(sentences, tmp_path, tiny_model_selector, reference, {})
    assert baseline["tag_scheme"] == "plain" and baseline["class_names"] == UPOS  # no "O": sorted tags


def test_integer_tags_map_to_their_names(tmp_path, tiny_model_selector):
    from datasets import ClassLabel, Dataset, Features, List, Value

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC", "B-X", "I-X", "B-Y"]
    words = [["alice", "smith", "in", "paris"], ["the", "acme", "corp", "."]]
    ids = [[1, 2, 0, 3], [0, 5, 6, 11]]
    expected = sorted([names[i] for i in row] for row in ids)
    common = dict(model_selector_output=str(tiny_model_selector), max_seq_length=32, validation_data=None,
                  validation_ratio=0.0, test_ratio=0.0)

    def tags_of(out: Path) -> list:
        rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
        classes = json.loads((out / "class_names.json").read_text())["class_names"]
        assert [[classes[x] for x in r["labels"] if x != -100] for r in rows] == [r["tags"] for r in rows]
        return classes, sorted(r["tags"] for r in rows)

    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names))})
    Dataset.from_dict({"tokens": words, "ner_tags": ids}, features=features).save_to_disk(str(tmp_path / "hf"))
    common.update(validation_data=str(tmp_path / "hf"))
    run_preprocess(train_data=str(tmp_path / "hf"), preprocess_output=str(tmp_path / "a"), **common)
    assert tags_of(tmp_path / "a") == (names, expected)  # ClassLabel ids -> names; ids keep the feature's order

    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text("".join(json.dumps({"tokens": w, "ner_tags": i}) + "\n" for w, i in zip(words, ids)))
    run_preprocess(train_data=str(jsonl), validation_data=str(jsonl), preprocess_output=str(tmp_path / "b"),
                   label_names=",".join(names), **{k: v for k, v in common.items() if k != "validation_data"})
    assert tags_of(tmp_path / "b") == (names, expected)

    summary = run_preprocess(train_data=str(jsonl), validation_data=str(jsonl), preprocess_output=str(tmp_path / "c"),
                             tag_scheme="plain", **{k: v for k, v in common.items() if k != "validation_data"})
    assert summary["class_names"] == ["0", "1", "2", "3", "5", "6", "11"]  # numeric order, not '0', '1', '11', '2'


def test_quick_local_run_data_preprocesses(tmp_path, minilm_dir, wnut17_dir, caplog):
    """The local run's --quick subset (200/50/50 WNUT-17 sentences) has I-product only outside training."""
    from pipelines.local_run import LOCAL_RECIPE, QUICK, make_subset

    subset, reading = make_subset(wnut17_dir, tmp_path / "quick", QUICK)
    assert reading == {"data_format": "jsonl", "token_column": "tokens", "tag_column": "tags",
                       "sentence_column": "auto"}
    with caplog.at_level("WARNING", logger="trainer.preprocess"):
        summary = run_preprocess(train_data=str(subset), model_selector_output=str(minilm_dir),
                                 preprocess_output=str(tmp_path / "out"),
                                 max_seq_length=LOCAL_RECIPE["max_seq_length"][0])
    assert (summary["train_size"], summary["validation_size"], summary["test_size"]) == (200, 50, 50)
    assert summary["labels_not_in_train"] == ["I-product"] and "I-product" in summary["class_names"]
    assert "I-product" in caplog.text and summary["tag_scheme"] == "iob2"


def test_plain_tags_fine_tune_reports_tag_scores(tmp_path, tiny_model_selector):
    """A POS set end to end: scored per tag (micro F1 = accuracy, no O), macro figures, a per-tag report."""
    from trainer.config import FinetuneConfig
    from trainer.finetune import finetune
    from trainer.report import finetune_markdown

    data = tmp_path / "pos.jsonl"
    data.write_text("".join(json.dumps({"words": t, "upos": g}) + "\n" for t, g in pos_sentences(120, seed=3)))
    run_preprocess(train_data=str(data), model_selector_output=str(tiny_model_selector),
                   preprocess_output=str(tmp_path / "pre"), max_seq_length=32)
    result = finetune(FinetuneConfig(
        preprocess_output=str(tmp_path / "pre"), model_selector_output=str(tiny_model_selector),
        pytorch_model_folder=str(tmp_path / "model"), mlflow_model_folder=str(tmp_path / "mlflow"),
        per_device_train_batch_size=16, per_device_eval_batch_size=16, learning_rate=5e-3, max_steps=6,
        evaluation_strategy="steps", eval_steps=6, metric_for_best_model="f1"))
    test = result.test_metrics
    assert result.tag_scheme == "plain" and test["test_f1"] == pytest.approx(test["test_accuracy"])
    assert {"test_macro_f1", "test_macro_precision", "test_macro_recall"} <= set(test)
    assert set(result.per_entity) <= set(UPOS) and len(result.per_entity) > 3
    assert "| Tag | Precision |" in finetune_markdown(json.loads((tmp_path / "model" / "metrics.json").read_text()),
                                                       "f1")
