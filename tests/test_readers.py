"""trainer.readers: every format read from its content, the columns picked, every malformed input named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.errors import InputError
from trainer.readers import ReadOptions, Source, detect_format, read, read_conll, read_conllu, read_file, \
    resolve_sources

SENTENCES = [(["Alice", "met", "Bob", "in", "New", "York"], ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"]),
             (["Thanks", ",", "\"", "Carol", "\""], ["O", "O", "O", "B-PER", "O"])]
NAMES = ["O", "B-LOC", "B-PER", "I-LOC"]


def _read(path: Path, **options) -> list:
    return read_file(path, ReadOptions(**options)).sentences


# --- Detection ----------------------------------------------------------------------------------------------------
CONLLU = """# newdoc id = d1
# sent_id = 1
# text = Alice doesn't care.
1\tAlice\tAlice\tPROPN\tNNP\t_\t3\tnsubj\t_\tNER=B-PER
2-3\tdoesn't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdoes\tdo\tAUX\tVBZ\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t4:conj\t_
4\tcare\tcare\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tBob\tBob\tPROPN\tNNP\t_\t0\troot\t_\tNER=B-PER|SpaceAfter=No
"""


def test_conllu_reads_form_and_upos_skipping_comments_ranges_and_empty_nodes(tmp_path):
    path = tmp_path / "ud.txt"  # the suffix says nothing: the content does
    path.write_text(CONLLU)
    assert detect_format(path) == "conllu"
    assert _read(path) == [(["Alice", "does", "n't", "care", "."], ["PROPN", "AUX", "PART", "VERB", "PUNCT"]),
                           (["Bob"], ["PROPN"])]
    assert _read(path, tag_column="xpos")[0][1] == ["NNP", "VBZ", "RB", "VB", "."]
    assert _read(path, tag_column="misc:NER") == [(["Alice", "does", "n't", "care", "."],
                                                   ["B-PER", "O", "O", "O", "O"]), (["Bob"], ["B-PER"])]
    assert _read(path, token_column="lemma", tag_column="7")[0] == (["Alice", "do", "not", "care", "."],
                                                                    ["nsubj", "aux", "advmod", "root", "punct"])


def test_conllu_plus_names_extra_columns(tmp_path):
    path = tmp_path / "ner.conllup"
    path.write_text("# global.columns = ID FORM UPOS NE\n1\tAlice\tPROPN\tB-PER\n2\tsmiled\tVERB\tO\n")
    assert _read(path, tag_column="ne") == [(["Alice", "smiled"], ["B-PER", "O"])]
    assert _read(path) == [(["Alice", "smiled"], ["PROPN", "VERB"])]


@pytest.mark.parametrize("text,message", [
    ("1\tAlice\tAlice\tPROPN\n", r"bad\.conllu line 1: expected 10 tab-separated CoNLL-U columns \(ID FORM LEMMA"),
    ("# c\nx\tAlice\tAlice\tPROPN\tNNP\t_\t0\troot\t_\t_\n",
     r"bad\.conllu line 2: the ID column must be a word index \(1\), a multi-word range \(1-2\) or an empty node"),
])
def test_malformed_conllu_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.conllu"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_conllu(path)
    with pytest.raises(InputError, match=r"tag_column='ner' is not a column of .*one of id, form"):
        read_conllu(tmp_path / "bad.conllu", tag_column="ner")


def test_conll_any_column_count_by_index(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    assert detect_format(path) == "conll"
    assert _read(path) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])]
    assert _read(path, tag_column="1") == [(["EU", "rejects"], ["NNP", "VBZ"]), (["Peter"], ["NNP"])]
    assert _read(path, token_column="2", tag_column="-2")[0] == (["B-NP", "B-VP"], ["B-NP", "B-VP"])
    with pytest.raises(InputError, match=r"c\.txt line 3 \(sentence 1\): expected a word and its tag in 6\+ columns"):
        read_conll(path, tag_column="5")
    with pytest.raises(InputError, match=r"token_column='word': CoNLL columns are picked by index"):
        read_conll(path, token_column="word")


CONLL_NAMED = "# columns = word pos chunk ner\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"


def test_conll_columns_by_name_from_a_header_line(tmp_path):
    path = tmp_path / "named.txt"
    path.write_text(CONLL_NAMED)
    assert detect_format(path) == "conll"
    assert _read(path) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])]  # auto: first and last
    assert _read(path, token_column="word", tag_column="pos") == [(["EU", "rejects"], ["NNP", "VBZ"]),
                                                                   (["Peter"], ["NNP"])]
    assert _read(path, token_column="Chunk", tag_column="-1")[0] == (["B-NP", "B-VP"], ["B-ORG", "O"])
    plus = tmp_path / "plus.conll"  # CoNLL-U Plus columns without an ID column: CoNLL with named columns
    plus.write_text("# global.columns = FORM UPOS NE\nAlice\tPROPN\tB-PER\nsmiled\tVERB\tO\n")
    assert detect_format(plus) == "conll"
    assert _read(plus, tag_column="upos") == [(["Alice", "smiled"], ["PROPN", "VERB"])]
    assert _read(plus, tag_column="ne") == _read(plus) == [(["Alice", "smiled"], ["B-PER", "O"])]
    with pytest.raises(InputError, match=r"tag_column='ner' is not a column of .*plus\.conll: one of form, upos, ne"):
        _read(plus, tag_column="ner")
    for suffix in (".conllup", ".conllu"):  # the same file under a CoNLL-U name: its declared columns decide
        named = plus.rename(plus.with_suffix(suffix))
        assert detect_format(named) == "conll" and _read(named, tag_column="ne") == _read(named)
        plus = named
    short = tmp_path / "short.txt"
    short.write_text("# columns = word pos ner\nEU NNP\n")
    with pytest.raises(InputError, match=r"short\.txt line 2 \(sentence 1\): expected the 3 columns of line 1 "
                                         r"\(word pos ner\), got 2"):
        _read(short, tag_column="ner")


def test_conll_column_names_without_a_header_are_exit_2(tmp_path, tiny_model_selector, capsys):
    from trainer.cli import preprocess_main

    path = tmp_path / "train.conll"
    path.write_text(CONLL_NAMED.split("\n", 1)[1])
    argv = ["--train_data", str(path), "--model_selector_output", str(tiny_model_selector), "--preprocess_output",
            str(tmp_path / "out"), "--tag_column", "ner"]
    assert preprocess_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tag_column='ner': CoNLL columns are picked by index (0 = first, -1 = last); names " \
        "need a first line that names the columns, e.g. '# columns = word pos chunk ner'" in err[0], err


def test_wnut_tab_only_lines_separate_sentences(wnut17_dir):
    sentences = read_conll(wnut17_dir / "validation.conll")
    assert len(sentences) == 1009 and sentences[0][0][:3] == ["Stabilized", "approach", "or"]


# --- Tables -------------------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tables_of_one_sentence_per_row_and_one_word_per_row(tmp_path):
    rows = [{"id": i, "words": t, "labels": g} for i, (t, g) in enumerate(SENTENCES)]
    jsonl = _jsonl(tmp_path / "a.json", rows)  # .json holding JSON Lines: the content decides
    assert detect_format(jsonl) == "jsonl" and _read(jsonl) == SENTENCES
    array = tmp_path / "b.json"
    array.write_text(json.dumps({"version": 1, "data": rows}, indent=1))
    assert detect_format(array) == "json" and _read(array) == SENTENCES

    import csv

    with (tmp_path / "c.csv").open("w", newline="") as handle:  # JSON lists, Python lists, words and spaces
        writer = csv.writer(handle)
        writer.writerow(["Tokens", "NER_Tags"])
        writer.writerow([json.dumps(SENTENCES[0][0]), str(SENTENCES[0][1])])
        writer.writerow([" ".join(SENTENCES[1][0]), " ".join(SENTENCES[1][1])])
    assert detect_format(tmp_path / "c.csv") == "csv" and _read(tmp_path / "c.csv") == SENTENCES

    with (tmp_path / "ner_dataset.tsv").open("w", newline="") as handle:  # one word per row, Kaggle style
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["Sentence #", "Word", "POS", "Tag"])
        for number, (tokens, tags) in enumerate(SENTENCES, start=1):
            for k, (token, tag) in enumerate(zip(tokens, tags)):
                writer.writerow([f"Sentence: {number}" if k == 0 else "", token, "X", tag])
    path = tmp_path / "ner_dataset.tsv"
    assert detect_format(path) == "tsv"
    corpus = read_file(path)
    assert corpus.sentences == SENTENCES and corpus.columns == {"token": "Word", "tag": "Tag",
                                                                "sentence": "Sentence #"}
    assert _read(path, tag_column="pos")[0][1] == ["X"] * 6


def test_table_errors_name_the_row_and_the_fix(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(InputError, match=r"bad\.jsonl line 1: token and tag counts differ \(2 tokens in 'tokens', "
                                         r"1 tags in 'tags'\)"):
        _read(bad)
    words = _jsonl(tmp_path / "words.jsonl", [{"token": "a", "tag": "O"}, {"token": "b", "tag": "O"}])
    with pytest.raises(InputError, match=r"words\.jsonl line 1: column 'token' must hold a list \(one sentence per "
                                         r"row\).*name the column that numbers the sentences with sentence_column"):
        _read(words)
    assert _read(words, sentence_column="tag") == [(["a", "b"], ["O", "O"])]
    csv_words = tmp_path / "w.csv"
    csv_words.write_text("word,tag\na,O\nb,B-X\n")
    with pytest.raises(InputError, match=r"every row holds one word; for one word per row name the column"):
        _read(csv_words)
    csv_bad = tmp_path / "l.csv"
    csv_bad.write_text('tokens,tags\n"[""a"", ""b""","[O]"\n')
    with pytest.raises(InputError, match=r"l\.csv line 2: column 'tokens' starts with '\[' but is not a JSON or "
                                         r"Python list"):
        _read(csv_bad)
    nulls = _jsonl(tmp_path / "n.jsonl", [{"tokens": ["a", None], "tags": ["O", "O"]}])
    with pytest.raises(InputError, match=r"n\.jsonl line 1: missing or invalid word None"):
        _read(nulls)
    binary = tmp_path / "x.xlsx"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00\x81" * 10)
    with pytest.raises(InputError, match=r"x\.xlsx is neither UTF-8 text nor Parquet/Arrow"):
        _read(binary)


# --- Parquet and datasets -----------------------------------------------------------------------------------------
def _hf_dataset(names=NAMES):
    from datasets import ClassLabel, Dataset, Features, List, Value

    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names))})
    return Dataset.from_dict({"tokens": [t for t, _ in SENTENCES],
                              "ner_tags": [[names.index(x) for x in g] for _, g in SENTENCES]}, features=features)


def test_parquet_and_datasets_map_classlabel_ids_to_names(tmp_path):
    from datasets import DatasetDict

    names = ["I-LOC", "B-PER", "O", "B-LOC"]  # not sorted: the ids follow the feature
    dataset = _hf_dataset(names)
    dataset.to_parquet(str(tmp_path / "data.bin"))
    corpus = read_file(tmp_path / "data.bin")
    assert corpus.format == "parquet" and corpus.sentences == SENTENCES and corpus.label_names == names

    DatasetDict(train=dataset, dev=dataset.select([1])).save_to_disk(str(tmp_path / "dd"))
    sources = resolve_sources(str(tmp_path / "dd"))
    assert sources["train"] == Source((tmp_path / "dd",), "train") and sources["validation"].split == "dev"
    assert sources["test"] is None
    assert read(sources["validation"], "validation").sentences == SENTENCES[1:]
    arrow = next((tmp_path / "dd" / "train").glob("*.arrow"))
    corpus = read_file(arrow)
    assert corpus.format == "hf" and corpus.sentences == SENTENCES and corpus.label_names == names

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 20)
    with pytest.raises(InputError, match=r"broken\.parquet: not a readable Parquet file"):
        read_file(broken)


# --- Folders ------------------------------------------------------------------------------------------------------
def test_folders_of_split_files(tmp_path):
    for name in ("en_ewt-ud-train.conllu", "en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu", "LICENSE.txt"):
        (tmp_path / name).write_text(CONLLU)
    sources = resolve_sources(str(tmp_path))
    assert [s.paths[0].name for s in sources.values()] == ["en_ewt-ud-train.conllu", "en_ewt-ud-dev.conllu",
                                                            "en_ewt-ud-test.conllu"]
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        _jsonl(shards / f"train-0000{k}-of-00002.jsonl", [{"tokens": SENTENCES[k][0], "tags": SENTENCES[k][1]}])
    source = resolve_sources(str(shards))["train"]
    assert len(source.paths) == 2 and read(source, "train").sentences == SENTENCES
    (shards / "train.csv").write_text("tokens,tags\n")
    with pytest.raises(InputError, match=r"holds train data in several formats"):
        resolve_sources(str(shards))
    with pytest.raises(InputError, match=r"validation data not found: .*nope"):
        resolve_sources(str(shards), validation_data=str(tmp_path / "nope"))
