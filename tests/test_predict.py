"""Batch prediction (token-classification-predict): every data format, every model format, bad input first."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from trainer.cli import predict_main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = predict_main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors (choices): exit 2 with one line too
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_text_lines_one_prediction_per_line_in_order(tiny_finetuned, tmp_path, capsys):
    data = tmp_path / "tweets.txt"
    data.write_text("alice lives in paris .\n\nbob works for globex in rome .\n", encoding="utf-8")
    out = tmp_path / "out" / "predictions.jsonl"
    rc, stdout, err = _run(capsys, "--model", str(tiny_finetuned["pytorch"]), "--data", str(data),
                           "--predictions", str(out))
    assert rc == 0, err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [1, 2, 3]  # the blank line keeps its place
    assert rows[1]["words"] == [] and rows[1]["entities"] == []
    assert [(e["text"], e["label"]) for e in rows[2]["entities"]] == [
        ("bob", "person"), ("globex", "organization"), ("rome", "location")]
    summary = json.loads(stdout)
    assert summary["rows"] == 3 and summary["entities"] == 5 and summary["model_format"] == "pytorch"
    assert not list(out.parent.glob(".*incomplete"))


def test_jsonl_conll_and_csv_inputs(tiny_finetuned, tmp_path, capsys):
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "text": "alice lives in paris ."}) + "\n"
                     + json.dumps({"tokens": ["bob", None, "carol", "."]}) + "\n", encoding="utf-8")  # null: blank
    conll = tmp_path / "data.conll"  # no tags; a second column (e.g. gold tags) is ignored
    conll.write_text("-DOCSTART- O\n\nalice\tB-person\nlives\tO\n\t\nbob\nin\nrome\n", encoding="utf-8")
    table = tmp_path / "data.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "body"], ["1", "frank visited oslo ."], ["2", ""]])
    expected = {
        jsonl: ([], [["alice", "lives", "in", "paris", "."], ["bob", "", "carol", "."]], ["a", 2]),
        conll: ([], [["alice", "lives"], ["bob", "in", "rome"]], [3, 6]),
        table: (["--text_column", "body"], [["frank", "visited", "oslo", "."], []], [1, 2]),
    }
    for data, (flags, words, ids) in expected.items():
        out = tmp_path / f"{data.stem}-{data.suffix[1:]}.jsonl"
        rc, _, err = _run(capsys, "--model", str(tiny_finetuned["pytorch"]), "--data", str(data), "--predictions",
                          str(out), *flags)
        assert rc == 0, err
        rows = _rows(out)
        assert [r["words"] for r in rows] == words and [r["id"] for r in rows] == ids, data.name
    assert _rows(tmp_path / "data-csv.jsonl")[0]["labels"] == ["B-person", "O", "B-location", "O"]


@pytest.mark.parametrize("name,content", [
    ("texts.txt", "alice lives in paris .\n"),
    ("rows.jsonl", json.dumps({"text": "alice lives in paris ."}) + "\n"),
    ("words.conll", "alice\nlives\nin\nparis\n.\n"),
    ("table.csv", "text\nalice lives in paris .\n"),  # Excel's "CSV UTF-8" starts with the mark
])
def test_a_utf8_byte_order_mark_is_not_data(tiny_finetuned, tmp_path, capsys, name, content):
    data = tmp_path / name
    data.write_text("\ufeff" + content, encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    rc, _, err = _run(capsys, "--model", str(tiny_finetuned["pytorch"]), "--data", str(data), "--predictions", str(out))
    assert rc == 0, err
    [row] = _rows(out)
    assert row["words"] == ["alice", "lives", "in", "paris", "."]
    assert [e["text"] for e in row["entities"]] == ["alice", "paris"]


def test_pytorch_mlflow_and_onnx_folders_predict_alike(tiny_finetuned, tmp_path, capsys):
    from conftest import make_sentences

    data = tmp_path / "test.txt"
    data.write_text("\n".join(" ".join(t) for t, _ in make_sentences(40, seed=3)) + "\n", encoding="utf-8")
    labels = {}
    for kind in ("pytorch", "mlflow", "onnx"):
        out = tmp_path / f"{kind}.jsonl"
        rc, stdout, err = _run(capsys, "--model", str(tiny_finetuned[kind]), "--data", str(data), "--predictions",
                               str(out), "--batch_size", "7")
        assert rc == 0, err
        assert json.loads(stdout)["model_format"] == kind
        labels[kind] = [r["labels"] for r in _rows(out)]
    assert labels["pytorch"] == labels["mlflow"] == labels["onnx"]


@pytest.mark.parametrize("name,content,flags,message", [
    ("data.csv", "id,body\n1,x\n", [], "no column 'text' (text_column); columns: ['id', 'body']"),
    ("data.jsonl", '{"text": "ok"}\n{"sentence": "x"}\n', [], "data.jsonl line 2: expected a string column 'text'"),
    ("data.jsonl", '{"text": "ok"}\nnot json\n', [], "data.jsonl line 2: not valid JSON"),
    ("data.parquet", "x", [], "cannot tell the format of data.parquet"),
    ("data.txt", "ok\n", ["--data_format", "xml"], "invalid choice: 'xml'"),
    ("data.txt", b"\xff\xfe bad".decode("latin-1"), [], "is not UTF-8 text"),
])
def test_bad_data_is_exit_2_before_the_model_loads(tmp_path, capsys, name, content, flags, message):
    data = tmp_path / name
    data.write_text(content, encoding="latin-1" if "UTF-8" in message else "utf-8")
    out = tmp_path / "predictions.jsonl"
    # the model folder holds no model (it would fail to load): the data is checked first
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-model" / "notes.txt").write_text("x")
    rc, _, err = _run(capsys, "--model", str(tmp_path / "no-model"), "--data", str(data), "--predictions", str(out),
                      *flags)
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_bad_paths_are_exit_2(tiny_finetuned, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("alice\n", encoding="utf-8")
    cases = [
        (["--data", str(tmp_path / "missing.txt")], "data not found"),
        (["--data", str(data), "--predictions", str(data)], "is the same as the input data"),
        (["--data", str(tmp_path / "two")], "must hold exactly one data file"),
        (["--data", str(data), "--model", str(tmp_path / "m")], "no model found"),
    ]
    (tmp_path / "m").mkdir()
    (tmp_path / "two").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "two" / name).write_text("x\n")
    (tmp_path / "m" / "notes.txt").write_text("x")
    for argv, message in cases:
        values = {"--model": str(tiny_finetuned["pytorch"]), "--predictions": str(tmp_path / "p.jsonl")}
        values.update(dict(zip(argv[::2], argv[1::2])))
        rc, _, err = _run(capsys, *[x for pair in values.items() for x in pair])
        assert rc == 2 and message in err, (argv, err)
    assert data.read_text() == "alice\n" and not (tmp_path / "p.jsonl").exists()


def test_settings_the_model_cannot_serve_are_exit_2_before_its_weights_load(tiny_finetuned, tmp_path, capsys,
                                                                           monkeypatch):
    import onnxruntime

    import trainer.model_io
    from trainer.inference import OnnxBackend

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(trainer.model_io, "load_token_classification_model", no_loading)
    monkeypatch.setattr(OnnxBackend, "__init__", no_loading)
    data = tmp_path / "data.txt"
    data.write_text("alice\n", encoding="utf-8")
    for model in ("pytorch", "onnx"):  # a window with no room for a word beside [CLS] and [SEP]
        rc, _, err = _run(capsys, "--model", str(tiny_finetuned[model]), "--data", str(data), "--predictions",
                          str(tmp_path / "p.jsonl"), "--max_length", "2")
        assert rc == 2 and "max_length 2 leaves no room for words next to 2 special tokens" in err, (model, err)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # an ONNX model on CUDA: onnxruntime's
        rc, _, err = _run(capsys, "--model", str(tiny_finetuned["onnx"]), "--data", str(data), "--predictions",
                          str(tmp_path / "p.jsonl"), "--device", "cuda")
        assert rc == 2 and "this onnxruntime has no CUDA provider" in err, err
    assert not (tmp_path / "p.jsonl").exists()


def test_a_failure_is_classified_without_torch(tmp_path):
    """ONNX serving needs no torch: classifying a failure must not import it (it gave a second traceback)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
            "from trainer.failures import kind_of\n"
            "print(kind_of(MemoryError()), kind_of(RuntimeError('a bug')), kind_of(OSError(28, 'No space left on "
            "device')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["memory", "None", "disk"]


def test_a_prediction_that_fails_half_way_leaves_no_output_and_no_temporary(tiny_finetuned, tmp_path, capsys,
                                                                           monkeypatch):
    """The predictions appear whole or not at all: a model failing on its second chunk of inputs leaves neither the
    target nor a temporary file beside it, and an earlier complete file beside it stays as it was."""
    import trainer.inference
    import trainer.predict

    data = tmp_path / "data.txt"
    data.write_text("alice lives in paris .\nbob works in rome .\ncarol .\n", encoding="utf-8")
    out = tmp_path / "out" / "predictions.jsonl"
    argv = ("--model", str(tiny_finetuned["pytorch"]), "--data", str(data), "--predictions", str(out))
    assert _run(capsys, *argv)[0] == 0
    before = out.read_bytes()
    real = trainer.inference.load_classifier

    def failing_on_the_second_chunk(*args, **kwargs):
        classifier, calls = real(*args, **kwargs), []
        predict = classifier.predict

        def flaky(items):
            calls.append(1)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return predict(items)

        classifier.predict = flaky
        return classifier

    monkeypatch.setattr(trainer.inference, "load_classifier", failing_on_the_second_chunk)
    monkeypatch.setattr(trainer.predict, "CHUNK", 2)  # three inputs: two chunks
    rc, _, err = _run(capsys, *argv[:-1], str(out.with_name("again.jsonl")))
    assert rc == 1 and "No space left on device" in err, err
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.jsonl"]
