"""The served model: the MLflow pyfunc (every input shape, never an exception, a real REST server), every output
variant self-contained (tokenizer, own base model) and equal to its MLflow model word for word, ONNX parity."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_sentences
from trainer.constants import BASE_MODEL_SUBDIR
from trainer.finetune import finetune
from trainer.inference import TokenClassifier, TorchBackend, load_classifier

TEST_TEXTS = [" ".join(tokens) for tokens, _ in make_sentences(40, seed=3)]  # the synthetic test split's sentences


@pytest.fixture(scope="module")
def pyfunc(tiny_finetuned):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(tiny_finetuned["mlflow"]))


def test_mlflow_model_returns_words_labels_and_entities(pyfunc, tiny_finetuned):
    [result] = pyfunc.predict("yesterday alice met bob in paris .")
    assert result["words"] == ["yesterday", "alice", "met", "bob", "in", "paris", "."]
    assert result["labels"] == ["O", "B-person", "O", "B-person", "O", "B-location", "O"]
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in result["entities"]] == [
        ("alice", "person", 10, 15), ("bob", "person", 20, 23), ("paris", "location", 27, 32)]
    assert all(0 < e["score"] <= 1 for e in result["entities"])
    mlmodel = (tiny_finetuned["mlflow"] / "MLmodel").read_text()
    assert "signature:" in mlmodel and "entities" in mlmodel
    assert json.loads((tiny_finetuned["mlflow"] / "input_example.json").read_text())
    requirements = (tiny_finetuned["mlflow"] / "requirements.txt").read_text()
    assert "torchvision" not in requirements and "transformers==" in requirements and "torch==" in requirements


SERVE = """
import json, sys
import mlflow.pyfunc

[result] = mlflow.pyfunc.load_model(sys.argv[1]).predict(["alice lives in paris ."])
print(json.dumps(result["entities"]))
"""


def _site_with_only(distributions: set[str], folder: Path) -> Path:
    """A site-packages folder holding only `distributions` (links to their installed files), like an environment
    pip built from those names."""
    from importlib import metadata

    folder.mkdir()
    for name in distributions:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in files if f.parts and f.parts[0] != ".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def _with_dependencies(names: set[str]) -> set[str]:
    """`names` and every distribution they require, recursively (extras left out): what pip would install."""
    import re
    from importlib import metadata

    seen, todo = set(), [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[ ;<>=!~[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requires
                 if "extra ==" not in r]
    return seen


def test_the_mlflow_model_serves_with_only_what_its_requirements_install(tiny_finetuned, tmp_path):
    """An environment built from requirements.txt (`mlflow models serve`'s default) is enough: with only those
    distributions and their dependencies importable (python -S: no site-packages), the model loads from its own code
    and predicts entity spans."""
    pinned = {line.split("==")[0].strip() for line in (tiny_finetuned["mlflow"] / "requirements.txt").read_text()
              .splitlines() if line.strip() and not line.startswith("#")}
    site = _site_with_only(_with_dependencies(pinned), tmp_path / "site")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-S", "-c", SERVE, str(tiny_finetuned["mlflow"])], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    entities = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(e["text"], e["label"]) for e in entities] == [("alice", "person"), ("paris", "location")]


@pytest.mark.parametrize("given,expected_words", [
    ([""], [[]]), (["   "], [[]]), ([None], [[]]), ([], []),
    (pd.DataFrame({"text": ["bob in rome", None]}), [["bob", "in", "rome"], []]),
    (pd.DataFrame({"sentence": ["bob in rome"]}), [["bob", "in", "rome"]]),  # a one-column frame: its column
    (pd.DataFrame({"text": pd.Series([], dtype=object)}), []),
    (pd.Series(["oslo"]), [["oslo"]]),
    (["alice 😀 東京 москва"], [["alice", "😀", "東", "京", "москва"]]),
    # what `mlflow models serve` passes for {"inputs": "a text"}: a 0-d array, one text (not one per character)
    (np.array("bob in rome"), [["bob", "in", "rome"]]),
    ([["bob", "in", "rome"], ["oslo"]], [["bob", "in", "rome"], ["oslo"]]),  # pre-split words, kept as words
    (np.array([["bob", "in", "rome"]]), [["bob", "in", "rome"]]),
    ({"text": ["bob in rome", "oslo"]}, [["bob", "in", "rome"], ["oslo"]]),  # a dict: its columns
    ({"text": "bob in rome"}, [["bob", "in", "rome"]]),
    # pandas' own missing value (a "string" column, a CSV read with dtype string) is missing too, not the text "<NA>"
    (pd.DataFrame({"text": pd.array(["oslo", None], dtype="string")}), [["oslo"], []]),
    ([np.float32("nan"), pd.NaT], [[], []]),
    (5, [["5"]]),  # a number is its text, as `mlflow models serve` reads {"inputs": 5}
    ([["bob", None, "rome"]], [["bob", "", "rome"]]),  # a missing word is a blank one, kept one for one
])
def test_mlflow_model_takes_every_input_shape_and_never_raises(pyfunc, given, expected_words):
    results = pyfunc.predict(given)
    assert [r["words"] for r in results] == expected_words
    for r in results:
        assert len(r["labels"]) == len(r["scores"]) == len(r["offsets"]) == len(r["words"])


@pytest.mark.parametrize("given,message", [
    ([{"a": 1}], "expected a text or a list of words per row, got dict"),
    (b"alice lives", "expected a text or a list of words per row, got bytes"),  # not its repr "b'alice"
    ([["alice", ["paris"]]], "a word must be a string, got list"),
])
def test_mlflow_model_refuses_a_row_that_is_neither_text_nor_words(pyfunc, given, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=message) as caught:
        pyfunc.predict(given)
    assert caught.value.get_http_status_code() == 400


def test_mlflow_model_with_no_entity_found(pyfunc):
    """mlflow's transformers flavor raised IndexError here; ours returns the words, all "O", and no entity."""
    results = pyfunc.predict(["the visited said that .", "alice lives in paris ."])
    assert results[0]["labels"] == ["O"] * 5 and results[0]["entities"] == []
    assert len(results[1]["entities"]) == 2


def test_the_declared_output_holds_unscored_words_and_empty_results(pyfunc, tiny_finetuned):
    """A word the tokenizer drops (scored as the unknown token), a text without entities and an empty text validate
    against the output signature; so do a word and an entity without a score: `scores` and `score` are optional."""
    import mlflow.models
    from mlflow.types import DataType

    outputs = mlflow.models.Model.load(str(tiny_finetuned["mlflow"])).signature.outputs
    results = pyfunc.predict(["alice \u200b lives in paris .", "the visited said that .", ""])
    assert results[0]["scores"][1] is not None and results[1]["entities"] == [] and results[2]["words"] == []
    mlflow.models.validate_schema(pd.DataFrame(results), outputs)
    unscored = {**results[0], "scores": [None, *results[0]["scores"][1:]],
                "entities": [{**results[0]["entities"][0], "score": None}]}
    mlflow.models.validate_schema(pd.DataFrame([unscored]), outputs)
    columns = {spec.name: spec for spec in outputs.inputs}
    assert not columns["scores"].required and columns["scores"].type.dtype == DataType.double
    score = next(p for p in columns["entities"].type.dtype.properties if p.name == "score")
    assert not score.required and all(columns[name].required for name in ("text", "words", "labels", "offsets"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port: int, payload) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_invocations(tiny_finetuned, tmp_path):
    """`mlflow models serve` of a copy of the model, from a folder without the repository on the path: the model
    carries its code."""
    model = tmp_path / "served"
    shutil.copytree(tiny_finetuned["mlflow"], model)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(cli), "models", "serve", "-m", str(model), "--env-manager", "local", "-h",
                               "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                assert time.time() < deadline, "server did not start"
                time.sleep(0.5)
        status, body = _post(port, {"inputs": ["alice lives in paris .", "", "the visited said that ."]})
        assert status == 200, body
        first, empty, none = body["predictions"]
        assert [(e["text"], e["label"]) for e in first["entities"]] == [("alice", "person"), ("paris", "location")]
        assert empty["words"] == [] and none["entities"] == []
        status, body = _post(port, {"inputs": []})
        assert (status, body["predictions"]) == (200, [])
        status, body = _post(port, {"inputs": "bob in rome"})
        assert status == 200 and [p["labels"] for p in body["predictions"]] == [["B-person", "O", "B-location"]]
        status, body = _post(port, {"inputs": [["bob", "in", "rome"]]})
        assert status == 200 and [p["words"] for p in body["predictions"]] == [["bob", "in", "rome"]]
        status, body = _post(port, {"dataframe_split": {"columns": ["text"], "data": [["bob in rome"], [None]]}})
        assert status == 200 and [p["labels"] for p in body["predictions"]] == [["B-person", "O", "B-location"], []]
        # word lists of different lengths: as dataframe records (`inputs` makes them one ragged numpy array)
        status, body = _post(port, {"dataframe_records": [{"tokens": ["bob", "in", "rome"]}, {"tokens": ["oslo"]}]})
        assert status == 200 and [p["words"] for p in body["predictions"]] == [["bob", "in", "rome"], ["oslo"]]
        status, body = _post(port, {"inputs": 5})  # a number is its text, as in a direct predict(5)
        assert status == 200 and [p["words"] for p in body["predictions"]] == [["5"]]
        status, body = _post(port, {"inputs": [{"a": 1}]})  # neither text nor words: a bad request, not a text
        assert status == 400 and "expected a text or a list of words per row, got dict" in body["message"], body
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


VARIANTS = {
    "full": {},
    "lora-merged": dict(apply_lora=True, learning_rate=5e-2, lora_alpha=16, num_train_epochs=12),
    "lora-unmerged": dict(apply_lora=True, merge_lora_weights=False, learning_rate=5e-2, lora_alpha=16,
                          num_train_epochs=12),
}


def plain_classifier(folder: Path) -> TokenClassifier:
    """The core over a model loaded with plain transformers (peft for an adapter) and the folder's own tokenizer, in
    the windows the model was trained on (what metrics.json records)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            AutoModelForTokenClassification.from_pretrained(folder / BASE_MODEL_SUBDIR), folder)
    else:
        model = AutoModelForTokenClassification.from_pretrained(folder)
    window = json.loads((folder / "metrics.json").read_text())["max_seq_length"]
    return TokenClassifier(TorchBackend(model), AutoTokenizer.from_pretrained(folder), model.config.id2label,
                           max_length=window)


def assert_self_contained_and_equal_to_mlflow(pytorch_folder: Path, mlflow_folder: Path, texts: list[str]) -> list:
    """The folder holds its tokenizer (the one preprocess used), names only its own base model, reloads with plain
    transformers/peft, and predicts every text exactly like the MLflow model. Returns the predictions."""
    import mlflow.pyfunc
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pytorch_folder)
    assert (pytorch_folder / "tokenizer.json").exists() and len(tokenizer) > 50, len(tokenizer)
    assert len(AutoTokenizer.from_pretrained(mlflow_folder / "artifacts" / "model")) == len(tokenizer)
    adapter = pytorch_folder / "adapter_config.json"
    if adapter.exists():
        assert json.loads(adapter.read_text())["base_model_name_or_path"] == BASE_MODEL_SUBDIR
    ours = plain_classifier(pytorch_folder).predict(texts)
    served = mlflow.pyfunc.load_model(str(mlflow_folder)).predict(texts)
    assert [p.words for p in ours] == [s["words"] for s in served]
    mismatched = [i for i, (p, s) in enumerate(zip(ours, served)) if p.labels != s["labels"]]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, e.g. {texts[mismatched[0]]!r}"
    return ours


def test_the_lora_model_card_names_base_model_and_keeps_its_other_words():
    """Only the card's lines that name the base model change, also when its path is a plain word ("model", a
    relative model_selector_output): a text replacement made that card's front matter 'base_base_model'."""
    from trainer.outputs import _rebased

    card = ["---\n", "base_model: model\n", "library_name: peft\n", "tags:\n", "- base_model:adapter:model\n",
            "- lora\n", "---\n", "# Model Card for model\n"]
    assert [_rebased(line, "model") for line in card] == [
        "---\n", "base_model: base_model\n", "library_name: peft\n", "tags:\n", "- base_model:adapter:base_model\n",
        "- lora\n", "---\n", "# Model Card for model\n"]
    assert _rebased("base_model: /runs/x/model_selector_output\r\n", "/runs/x/model_selector_output") == \
        "base_model: base_model\r\n"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_output_variant_is_self_contained_and_equals_its_mlflow_model(make_config, tmp_path, variant):
    config = make_config(variant, **VARIANTS[variant])
    finetune(config)
    moved = tmp_path / "elsewhere"  # moved away from the run: nothing may point back at the import or run folders
    shutil.move(config.pytorch_model_folder, moved / "pytorch")
    shutil.move(config.mlflow_model_folder, moved / "mlflow")
    predictions = assert_self_contained_and_equal_to_mlflow(moved / "pytorch", moved / "mlflow", TEST_TEXTS)
    # what loaders and readers of the model read names none of the run's folders (peft's model card named the
    # import folder; metrics.json records them on purpose), and a serving user other than the trainer's can read
    # every file (safetensors writes its files owner-only)
    for path in (moved / "pytorch").rglob("*"):
        checkpoint = path.relative_to(moved).parts[1].startswith("checkpoint-")
        if path.name.endswith(("config.json", ".md")) and not checkpoint:
            text = path.read_text(encoding="utf-8")
            for folder in (tmp_path, config.model_selector_output):
                assert str(folder) not in text, f"{path.relative_to(moved)} names {folder}"
    unreadable = [p for p in moved.rglob("*") if not p.stat().st_mode & (0o005 if p.is_dir() else 0o004)]
    assert not unreadable, [str(p.relative_to(moved)) for p in unreadable]
    gold = [tags for _, tags in make_sentences(40, seed=3)]
    from trainer.metrics import entity_scores

    f1 = entity_scores(gold, [p.labels for p in predictions], sorted({t for g in gold for t in g}))[0]["f1"]
    assert f1 > 0.8, f1  # the right tokenizer: an empty or [UNK] tokenizer scores ~0


@pytest.fixture(scope="module")
def byte_level_model(tmp_path_factory, conll_dir) -> dict:
    """A tiny RoBERTa with a byte-level BPE tokenizer trained here on the synthetic sentences (`tokenizers`), imported
    and preprocessed like any model: {"model": model_selector_output, "data": preprocess_output}."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForTokenClassification, RobertaTokenizerFast

    from conftest import run_preprocess

    root = tmp_path_factory.mktemp("byte_level")
    model = root / "model"
    model.mkdir()
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator([" ".join(t) for t, _ in make_sentences(300, seed=9)], vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(model))
    tokenizer = RobertaTokenizerFast(str(model / "vocab.json"), str(model / "merges.txt"), add_prefix_space=True,
                                     model_max_length=64)
    tokenizer.save_pretrained(model)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, num_labels=2,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    RobertaForTokenClassification(config).save_pretrained(model)
    (model / "model_selector_args.json").write_text(json.dumps(
        {"model_name": "tiny-roberta-bpe", "model_name_or_path": str(model), "model_family": "roberta"}))
    run_preprocess(train_data=str(conll_dir / "train.conll"), validation_data=str(conll_dir / "validation.conll"),
                   test_data=str(conll_dir / "test.conll"), model_selector_output=str(model),
                   preprocess_output=str(root / "data"), max_seq_length=64)
    return {"model": model, "data": root / "data"}


def test_a_byte_level_bpe_model_with_merged_lora_serves_real_words(byte_level_model, make_config, tmp_path):
    """The original failure: merged LoRA shipped an empty tokenizer. Both outputs of a byte-level BPE model carry the
    tokenizer it was trained with (the words survive encoding, not <unk>), predict each word and agree word for word."""
    import mlflow.pyfunc
    from transformers import AutoTokenizer

    from trainer.metrics import scores

    config = make_config("bpe", preprocess_output=str(byte_level_model["data"]),
                         model_selector_output=str(byte_level_model["model"]), apply_lora=True,
                         merge_lora_weights=True, learning_rate=5e-2, lora_alpha=16, num_train_epochs=12)
    finetune(config)
    pytorch, mlflow_folder = Path(config.pytorch_model_folder), Path(config.mlflow_model_folder)
    assert not (pytorch / "adapter_config.json").exists()  # merged
    words = [tokens for tokens, _ in make_sentences(40, seed=3)]
    for folder in (pytorch, mlflow_folder / "artifacts" / "model"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert len(tokenizer) == len(AutoTokenizer.from_pretrained(byte_level_model["model"])) > 100
        for sentence in words[:10]:
            ids = tokenizer(sentence, is_split_into_words=True)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids, skip_special_tokens=True).split() == sentence
    predictions = assert_self_contained_and_equal_to_mlflow(pytorch, mlflow_folder, TEST_TEXTS)
    served = mlflow.pyfunc.load_model(str(mlflow_folder)).predict(TEST_TEXTS)
    assert [p.words for p in predictions] == [s["words"] for s in served] == words
    assert [p.entities for p in predictions] == [s["entities"] for s in served]
    gold = [tags for _, tags in make_sentences(40, seed=3)]
    assert scores(gold, [p.labels for p in predictions], "iob2")[0]["f1"] > 0.8  # an empty tokenizer scores ~0


def test_every_output_serves_in_the_window_it_was_trained_on(conll_dir, tiny_model_selector, tmp_path):
    """Trained on windows of 24 sub-tokens (preprocess max_seq_length; the tiny model's own limit is 64), every output
    windows long texts at 24 too unless told otherwise, says so (metrics.json, MLflow metadata), and still labels
    every word of a text many windows long."""
    import mlflow.models

    from trainer.config import FinetuneConfig, PreprocessConfig
    from trainer.preprocess import preprocess

    data = tmp_path / "data"
    preprocess(PreprocessConfig(train_data=str(conll_dir / "train.conll"), test_data=str(conll_dir / "test.conll"),
                                model_selector_output=str(tiny_model_selector), preprocess_output=str(data),
                                max_seq_length=24))
    out = {kind: tmp_path / kind for kind in ("pytorch", "mlflow", "onnx")}
    finetune(FinetuneConfig(preprocess_output=str(data), model_selector_output=str(tiny_model_selector),
                            pytorch_model_folder=str(out["pytorch"]), mlflow_model_folder=str(out["mlflow"]),
                            onnx_model_folder=str(out["onnx"]), max_steps=2, per_device_train_batch_size=16))
    for kind, folder in out.items():
        assert load_classifier(folder).max_length == 24, kind
        assert load_classifier(folder, max_length=64).max_length == 64, kind  # the model's limit, when asked
    assert mlflow.models.Model.load(str(out["mlflow"])).metadata["max_length"] == 24
    assert json.loads((out["pytorch"] / "metrics.json").read_text())["max_seq_length"] == 24
    long_text = " ".join(["alice lives in paris ."] * 40)  # 200 words
    served = load_classifier(out["mlflow"]).predict([long_text])[0]
    assert len(served.words) == len(served.labels) == 200


def test_onnx_export_matches_pytorch(tiny_finetuned):
    import onnx

    folder = tiny_finetuned["onnx"]
    record = json.loads((folder / "onnx_export.json").read_text())
    assert record["max_abs_logit_diff"] < 1e-4 and record["inputs"][:2] == ["input_ids", "attention_mask"]
    assert tiny_finetuned["result"].onnx_export["exported"] is True
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    for tensor in list(graph.input) + list(graph.output):
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim[:2]] == ["batch", "sequence"], tensor.name
    texts = TEST_TEXTS + [" ".join(["alice", "smith", "met", "bob"] * 40)]  # batched, padded, and one long text
    onnx_results = load_classifier(folder).predict(texts)
    torch_results = load_classifier(tiny_finetuned["pytorch"]).predict(texts)
    assert [r.labels for r in onnx_results] == [r.labels for r in torch_results]
    assert max(np.nanmax(abs(a.probabilities - b.probabilities)) for a, b in zip(onnx_results, torch_results)) < 1e-4


def test_failed_onnx_export_keeps_the_run_and_says_why(make_config, monkeypatch, tmp_path):
    import trainer.onnx_export

    def broken(model_dir, target, published_from=None):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(trainer.onnx_export, "export_onnx", broken)
    config = make_config(onnx_model_folder=str(tmp_path / "onnx"), num_train_epochs=1)
    result = finetune(config)
    assert result.onnx_export == {"exported": False, "error": "RuntimeError: exporter exploded"}
    assert not (Path(config.onnx_model_folder) / "model.onnx").exists()
    assert json.loads((Path(config.onnx_model_folder) / "onnx_export.json").read_text())["exported"] is False
    assert json.loads((Path(config.pytorch_model_folder) / "metrics.json").read_text())["onnx_export"]["error"]
    from trainer.errors import InputError

    with pytest.raises(InputError, match="exporter exploded"):
        load_classifier(config.onnx_model_folder)


def test_export_onnx_false_writes_no_model(make_config, tmp_path):
    config = make_config(num_train_epochs=1, export_onnx=False, onnx_model_folder=str(tmp_path / "onnx"))
    finetune(config)
    assert sorted(p.name for p in Path(config.onnx_model_folder).iterdir()) == ["onnx_export.json"]


def test_a_non_empty_onnx_model_folder_is_refused_before_training(make_config, tmp_path, capsys):
    from trainer.cli import finetune_main

    config = make_config()
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_text("an earlier export")
    argv = [f"--{k}={v}" for k, v in config.to_dict().items() if v is not None and k != "onnx_model_folder"]
    assert finetune_main(argv + ["--onnx_model_folder", str(tmp_path / "onnx")]) == 2
    assert "onnx_model_folder" in capsys.readouterr().err and not Path(config.pytorch_model_folder).exists()
    assert (tmp_path / "onnx" / "model.onnx").read_text() == "an earlier export"
