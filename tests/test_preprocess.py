"""trainer.preprocess: reading, label alignment, splits, outputs and every bad-input error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import make_sentences, run_preprocess, write_conll
from trainer.cli import preprocess_main as main
from trainer.errors import ConfigError, InputError
from trainer.preprocess import class_names_of
from trainer.readers import read_conll
from trainer.schemes import continuation_ids


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture()
def run(tmp_path, tiny_model_selector):
    """run_preprocess() with the tiny tokenizer and the output in a fresh folder."""
    def _run(**kwargs):
        kwargs.setdefault("model_selector_output", str(tiny_model_selector))
        kwargs.setdefault("preprocess_output", str(tmp_path / "out"))
        kwargs.setdefault("max_seq_length", 64)
        return run_preprocess(**kwargs), Path(kwargs["preprocess_output"])
    return _run


def test_outputs_and_contract(run, conll_dir):
    summary, out = run(train_data=str(conll_dir / "train.conll"), validation_data=str(conll_dir / "validation.conll"),
                       test_data=str(conll_dir / "test.conll"))
    assert (summary["train_size"], summary["validation_size"], summary["test_size"]) == (160, 40, 40)
    names = json.loads((out / "class_names.json").read_text())["class_names"]
    assert names == ["O", "B-location", "B-organization", "B-person", "I-organization", "I-person"]
    assert summary["class_names"] == names
    args = json.loads((out / "preprocess_args.json").read_text())
    assert args["task_name"] == "TokenClassification" and args["model_name"] == "tiny-bert"
    assert args["train_size"] == 160 and args["max_seq_length"] == 64 and args["label_all_tokens"] is False
    for split in ("train", "validation", "test"):
        rows = _rows(out, split)
        for row in rows:
            assert set(row) >= {"input_ids", "attention_mask", "token_type_ids", "labels", "tokens", "tags"}
            assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])
            assert len(row["tokens"]) == len(row["tags"])
            assert row["labels"][0] == row["labels"][-1] == -100  # [CLS], [SEP]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).is_fast
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.tmp")]  # atomic: no temp left behind


def _alignment_data(tmp_path: Path) -> Path:
    # "zyxwort" is out of the tiny vocabulary: it splits into several sub-tokens.
    return write_conll(tmp_path / "align.conll", [
        (["zyxwort", "lives", "in", "paris"], ["B-person", "O", "O", "B-location"]),
        (["alice", "zyxwort", "met", "bob"], ["B-person", "I-person", "O", "B-person"]),
    ] * 5)


@pytest.mark.parametrize("label_all_tokens", [False, True])
def test_first_subtoken_alignment(run, tmp_path, label_all_tokens, tiny_model_selector):
    from transformers import AutoTokenizer

    data = _alignment_data(tmp_path)
    _, out = run(train_data=str(data), validation_data=str(data), test_data=str(data),
                 label_all_tokens=label_all_tokens)
    names = json.loads((out / "class_names.json").read_text())["class_names"]
    tok = AutoTokenizer.from_pretrained(tiny_model_selector)
    row = _rows(out, "train")[0]
    word_ids = tok(row["tokens"], is_split_into_words=True).word_ids()
    assert word_ids.count(0) > 1, "zyxwort must split into several pieces for this test"
    got = ["-" if i == -100 else names[i] for i in row["labels"]]
    expected, previous = [], None
    for w in word_ids:
        if w is None:
            expected.append("-")
        elif w != previous:
            expected.append(row["tags"][w])
        else:
            expected.append(row["tags"][w].replace("B-", "I-") if label_all_tokens else "-")
        previous = w
    assert got == expected
    if label_all_tokens:  # B-person on the first piece, I-person on the continuation pieces
        assert got[1] == "B-person" and got[2] == "I-person"
        second = _rows(out, "train")[1]  # I-person word split: continuations keep I-person
        assert "I-person" in ["-" if i == -100 else names[i] for i in second["labels"]]
    else:
        assert got[1] == "B-person" and got[2] == "-"


def test_continuation_ids():
    names = ["O", "B-a", "B-b", "I-a"]
    assert continuation_ids(names, "iob2") == [0, 3, 2, 3]  # B-b has no I-b: kept
    assert continuation_ids(["O", "B-a", "I-a", "E-a", "S-a"], "bioes") == [0, 2, 2, 2, 2]
    assert continuation_ids(["B-NOUN", "I-NOUN"], "plain") == [0, 1]  # plain tags: the word's own tag


def test_splits_80_10_10_and_80_20(run, conll_dir, tmp_path):
    summary, out = run(train_data=str(conll_dir / "train.conll"))
    assert (summary["train_size"], summary["validation_size"], summary["test_size"]) == (128, 16, 16)
    again, _ = run(train_data=str(conll_dir / "train.conll"), preprocess_output=str(tmp_path / "again"))
    assert _rows(out, "validation") == _rows(tmp_path / "again", "validation")  # seeded: reproducible
    train_words = {" ".join(r["tokens"]) for r in _rows(out, "train")}
    assert len(_rows(out, "test")) == 16 and train_words

    summary, out = run(train_data=str(conll_dir / "train.conll"), validation_data=str(conll_dir / "validation.conll"),
                       preprocess_output=str(tmp_path / "v"))
    assert (summary["train_size"], summary["validation_size"], summary["test_size"]) == (128, 40, 32)
    summary, out = run(train_data=str(conll_dir / "train.conll"), test_data=str(conll_dir / "test.conll"),
                       preprocess_output=str(tmp_path / "t"))
    assert (summary["train_size"], summary["validation_size"], summary["test_size"]) == (128, 32, 40)
    summary, out = run(train_data=str(conll_dir / "train.conll"), validation_data=str(conll_dir / "validation.conll"),
                       test_ratio=0.0, validation_ratio=0.0, preprocess_output=str(tmp_path / "none"))
    assert summary["test_size"] == 0 and not (out / "test.jsonl").exists()


def test_jsonl_custom_columns_and_conll_variants(run, tmp_path):
    sentences = make_sentences(20, seed=5)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps({"words": t, "labels": g, "id": i})
                               for i, (t, g) in enumerate(sentences)) + "\n")
    summary, out = run(train_data=str(jsonl), token_column="words", tag_column="labels")
    assert summary["train_size"] + summary["validation_size"] + summary["test_size"] == 20
    assert _rows(out, "train")[0]["tags"][0] in summary["class_names"]

    # Whitespace-separated columns (tag last), a tab-separated line among them, and -DOCSTART- lines.
    conll = tmp_path / "multi.txt"
    conll.write_text("-DOCSTART- -X- -X- O\n\nalice NNP B-NP B-person\nlives VBZ B-VP O\n\n"
                     "bob NNP B-NP B-person\n.\t.\tO\tO\n")
    assert read_conll(conll) == [(["alice", "lives"], ["B-person", "O"]), (["bob", "."], ["B-person", "O"])]


def test_folder_with_one_file_is_accepted(run, tmp_path, conll_dir):
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "data.conll").write_text((conll_dir / "train.conll").read_text())
    summary, _ = run(train_data=str(folder))
    assert summary["train_size"] == 128


def test_class_names_order():
    assert class_names_of([(["a", "b", "c"], ["I-x", "O", "B-x"])]) == ["O", "B-x", "I-x"]


def test_byte_level_bpe_gets_prefix_space(tmp_path, conll_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([" ".join(t) for t, _ in make_sentences(50, 1)], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    folder = tmp_path / "roberta"
    RobertaTokenizerFast(tokenizer_object=bpe).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    summary = run_preprocess(train_data=str(conll_dir / "train.conll"), model_selector_output=str(folder),
                         preprocess_output=str(tmp_path / "out"), max_seq_length=64)
    assert summary["add_prefix_space"] is True
    explicit = run_preprocess(train_data=str(conll_dir / "train.conll"), model_selector_output=str(folder),
                          preprocess_output=str(tmp_path / "out2"), max_seq_length=64, add_prefix_space=False)
    assert explicit["add_prefix_space"] is False  # an explicit choice is honoured


# --- Errors --------------------------------------------------------------------------------------------------------
def test_missing_and_empty_files(run, tmp_path, conll_dir):
    with pytest.raises(InputError, match="train_data not found"):
        run(train_data=str(tmp_path / "nope.conll"))
    empty = tmp_path / "empty.conll"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        run(train_data=str(empty))
    blank = tmp_path / "blank.conll"
    blank.write_text("\n\n\n")
    with pytest.raises(InputError, match="no sentences"):
        run(train_data=str(blank))
    with pytest.raises(InputError, match="validation_data not found"):
        run(train_data=str(conll_dir / "train.conll"), validation_data=str(tmp_path / "missing.conll"))


def test_token_tag_count_mismatch_names_file_and_line(run, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("alice\tB-person\nlives\tO\n\nbob\tB-person\nparis\n")
    with pytest.raises(InputError, match=r"bad\.conll line 5 \(sentence 2\): expected a word and its tag"):
        run(train_data=str(bad))
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(json.dumps({"tokens": ["a"], "ner_tags": ["O"]}) + "\n"
                         + json.dumps({"tokens": ["a", "b"], "ner_tags": ["O"]}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl line 2: token and tag counts differ \(2 tokens"):
        run(train_data=str(bad_jsonl))


def test_label_only_in_validation_joins_the_label_set_with_a_warning(run, tmp_path, conll_dir, caplog):
    val = write_conll(tmp_path / "val.conll", [(["alice", "x"], ["B-person", "B-weapon"])])
    with caplog.at_level("WARNING", logger="trainer.preprocess"):
        summary, out = run(train_data=str(conll_dir / "train.conll"), validation_data=str(val))
    assert "B-weapon" in summary["class_names"] and summary["labels_not_in_train"] == ["B-weapon"]
    assert "'B-weapon'" in caplog.text and "never occur in the training data" in caplog.text
    names = json.loads((out / "class_names.json").read_text())["class_names"]
    assert names.index("B-weapon") in _rows(out, "validation")[0]["labels"]


def test_a_declared_label_never_in_the_data_is_kept_with_a_warning(run, conll_dir, caplog):
    seen = ["O", "B-location", "B-organization", "B-person", "I-organization", "I-person"]
    with caplog.at_level("WARNING", logger="trainer.preprocess"):
        summary, _ = run(train_data=str(conll_dir / "train.conll"), label_names=",".join(seen + ["B-weapon"]))
    assert summary["class_names"][-1] == "B-weapon" and summary["labels_not_in_train"] == ["B-weapon"]
    assert "'B-weapon'" in caplog.text and "never occur in the training data" in caplog.text


def test_fewer_than_two_classes(run, tmp_path):
    data = write_conll(tmp_path / "o.conll", [(["a", "b"], ["O", "O"])] * 10)
    with pytest.raises(InputError, match="at least two"):
        run(train_data=str(data))


def test_missing_jsonl_columns(run, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"tokens": ["a"], "tags": ["O"]}) + "\n")
    with pytest.raises(InputError, match=r"d\.jsonl has no tag column 'ner_tags' \(tag_column\); columns present: "
                                         r"\['tags', 'tokens'\]"):
        run(train_data=str(data), tag_column="ner_tags")
    data.write_text(json.dumps({"words": ["a"], "ner": ["O"]}) + "\n" + json.dumps({"words": ["b"]}) + "\n")
    with pytest.raises(InputError, match=r"d\.jsonl line 2: missing column\(s\) \['ner'\]; columns present: "
                                         r"\['words'\]"):
        run(train_data=str(data))
    data.write_text(json.dumps({"text": "a b", "ner": ["O", "O"]}) + "\n")
    with pytest.raises(InputError, match=r"no token column among \['ner', 'text'\]; name it with token_column"):
        run(train_data=str(data))


def test_tokenizer_errors(tmp_path, conll_dir):
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(InputError, match="no model found|no tokenizer"):
        run_preprocess(train_data=str(conll_dir / "train.conll"), model_selector_output=str(empty),
                   preprocess_output=str(tmp_path / "out"))
    with pytest.raises(InputError, match="not found"):
        run_preprocess(train_data=str(conll_dir / "train.conll"), model_selector_output=str(tmp_path / "missing"),
                   preprocess_output=str(tmp_path / "out"))


def test_cli(tmp_path, conll_dir, tiny_model_selector, capsys):
    out = tmp_path / "cli"
    rc = main(["--train_data", str(conll_dir / "train.conll"), "--model_selector_output", str(tiny_model_selector),
               "--preprocess_output", str(out), "--max_seq_length", "32", "--label_all_tokens", "true"])
    assert rc == 0 and (out / "train.jsonl").exists()
    assert json.loads((out / "preprocess_args.json").read_text())["label_all_tokens"] is True
    rc = main(["--train_data", str(tmp_path / "missing.conll"), "--model_selector_output", str(tiny_model_selector),
               "--preprocess_output", str(out)])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_slow_tokenizer_is_refused(tmp_path, conll_dir, tiny_model_selector, monkeypatch):
    import transformers

    class Slow:
        is_fast = False

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: Slow()))
    with pytest.raises(InputError, match="not a fast"):
        run_preprocess(train_data=str(conll_dir / "train.conll"), model_selector_output=str(tiny_model_selector),
                   preprocess_output=str(tmp_path / "out"))


def test_output_never_replaces_an_input(run, tmp_path, conll_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.conll").write_text((conll_dir / "train.conll").read_text())
    for target, how in ((data, "is the same as"), (tmp_path, "contains"), (data / "out", "is inside")):
        with pytest.raises(ConfigError, match=re.escape(f"preprocess_output {target} {how} the input train_data "
                                                        f"{data}: outputs never overwrite inputs")):
            run(train_data=str(data), preprocess_output=str(target))
    assert sorted(p.name for p in data.iterdir()) == ["train.conll"]


def test_cli_bad_data_is_one_bounded_line_and_exit_2(tmp_path, tiny_model_selector, capsys):
    data = tmp_path / "train.conllu"
    data.write_text("# sent_id = 1\n1\tAlice\tAlice\tPROPN\tNNP\t_\t0\troot\t_\t_\n2\tsmiled\n")
    rc = main(["--train_data", str(data), "--model_selector_output", str(tiny_model_selector),
               "--preprocess_output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and len(err) < 400 and not (tmp_path / "out").exists()
    assert "train.conllu line 3: expected 10 tab-separated CoNLL-U columns" in err
