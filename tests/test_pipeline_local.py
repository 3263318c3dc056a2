"""The whole pipeline, run locally with kfp.local (SubprocessRunner, no Docker) on the tiny fixtures.

No `from __future__ import annotations` here: KFP reads the annotations of the pipeline defined below.
"""


import json
import math
from pathlib import Path

import pytest


@pytest.fixture()
def local_runner(tmp_path):
    from kfp import local

    root = tmp_path / "kfp_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


def test_full_pipeline_runs_locally(local_runner, conll_dir, tiny_model_selector, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from pipelines.token_classification_pipeline import token_classification_pipeline

    unlabelled = tmp_path / "unlabelled" / "texts.txt"
    unlabelled.parent.mkdir()
    unlabelled.write_text("alice lives in paris .\n\nbob works for globex in rome .\n")
    run = token_classification_pipeline(
        data_uri=str(conll_dir), model_path=str(tiny_model_selector), predict_data_uri=str(unlabelled.parent),
        max_seq_length=64, max_steps=30,
        per_device_train_batch_size=8, per_device_eval_batch_size=16, learning_rate=5e-3,
        evaluation_strategy="steps", eval_steps=30, logging_strategy="steps", logging_steps=10)
    outputs = run.outputs

    model_dir = Path(outputs["pytorch_model_folder"].path)
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 6 and model.config.id2label[0] == "O"
    assert AutoTokenizer.from_pretrained(model_dir).is_fast
    assert (Path(outputs["mlflow_model_folder"].path) / "MLmodel").exists()
    assert (Path(outputs["onnx_model_folder"].path) / "model.onnx").exists()  # export_onnx defaults to true

    metrics = outputs["metrics"].metadata
    for key in ("eval_f1", "eval_loss", "test_f1", "test_precision", "test_recall", "test_accuracy"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["test_f1"] > 0.5  # the synthetic task is easy: a trained model is far above chance
    report = Path(outputs["report"].path).read_text()
    assert "| person |" in report and "Per entity" in report

    # The evaluate step ran on the test split and agrees with the fine-tune's own test figures.
    run_dir = model_dir.parent.parent
    evaluate_dir = run_dir / "evaluate"
    predictions = [json.loads(line) for line in (evaluate_dir / "predictions").read_text().splitlines()]
    assert len(predictions) == 40 and set(predictions[0]) == {"tokens", "tags", "predicted_tags", "scores"}
    assert "| location |" in (evaluate_dir / "report").read_text()
    executor_output = json.loads((evaluate_dir / "executor_output.json").read_text())
    assert abs(executor_output["parameterValues"]["f1"] - metrics["test_f1"]) < 1e-6

    # The optional predict step labelled the unlabelled texts, one line each, the blank line kept.
    labelled = [json.loads(line) for line in (run_dir / "predict" / "predictions").read_text().splitlines()]
    assert [len(p["words"]) for p in labelled] == [5, 0, 7] and set(labelled[0]) >= {"labels", "entities"}

    prep = json.loads((run_dir / "preprocess" / "preprocess_output" / "preprocess_args.json").read_text())
    assert (prep["train_size"], prep["validation_size"], prep["test_size"]) == (160, 40, 40)
    imported = json.loads((run_dir / "model-import" / "model_selector_output" / "model_selector_args.json").read_text())
    assert imported["model_family"] == "bert"


def test_preprocess_component_splits_a_single_jsonl_file(local_runner, tmp_path, tiny_model_selector):
    from kfp import dsl

    from components.preprocess.component import preprocess
    from conftest import make_sentences

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"words": t, "labels": g}) for t, g in make_sentences(50, seed=9)) + "\n")

    @dsl.pipeline(name="preprocess-only")
    def pipe(uri: str, model_uri: str):
        train = dsl.importer(artifact_uri=uri, artifact_class=dsl.Dataset)
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        preprocess(train_data=train.output, model_selector_output=model.output, token_column="words",
                   tag_column="labels", max_seq_length=32, label_all_tokens="true")

    pipe(uri=str(data), model_uri=str(tiny_model_selector))
    out = next(local_runner.glob("preprocess-only-*/preprocess/preprocess_output"))
    args = json.loads((out / "preprocess_args.json").read_text())
    assert (args["train_size"], args["validation_size"], args["test_size"]) == (40, 5, 5)
    assert args["label_all_tokens"] is True and args["token_column"] == "words"


def test_local_run_helpers(tmp_path, conll_dir):
    from pipelines.local_run import LOCAL_RECIPE, build_parser, default_data_dir, make_subset, stage_path

    # kfp.local rewrites 'python3' inside task arguments: such paths go through a symlink.
    target = tmp_path / "lib" / "python3.11" / "site-packages" / "model"
    target.mkdir(parents=True)
    staged = stage_path(target, tmp_path / "staging", "model")
    assert "python3" not in staged and Path(staged).resolve() == target.resolve()
    assert stage_path(conll_dir, tmp_path / "staging", "data") == str(conll_dir.resolve())
    assert stage_path(None, tmp_path, "x") == ""

    from trainer.readers import ReadOptions, read, read_file, resolve_sources

    subset, reading = make_subset(conll_dir, tmp_path / "subset", {"train": 5, "validation": 3, "test": 2})
    for split, n in {"train": 5, "validation": 3, "test": 2}.items():
        assert read_file(subset / f"{split}.jsonl").sentences == \
            read(resolve_sources(str(conll_dir))[split], split).sentences[:n]
    # --quick reads every format preprocess reads, with the run's reading options (it had split CoNLL text: Parquet
    # gave a UnicodeDecodeError, a UD-style file name was not found), and says how to read the subset
    import datasets
    import pandas as pd

    ud = tmp_path / "ud"
    ud.mkdir()
    for split, rows in {"train": (("Rome", "PROPN", "NNP"), ("Yes", "INTJ", "UH")), "test": (("Oslo", "PROPN", "NNP"),)
                        }.items():
        (ud / f"en_ewt-ud-{split}.conllu").write_text("".join(f"1\t{w}\t_\t{t}\t{x}\t_\t0\troot\t_\t_\n\n"
                                                              for w, t, x in rows))
    subset, reading = make_subset(ud, tmp_path / "subset2", {"train": 1, "validation": 1, "test": 1},
                                  ReadOptions(tag_column="xpos"))
    assert sorted(p.name for p in subset.iterdir()) == ["test.jsonl", "train.jsonl"]
    assert read_file(subset / "train.jsonl").sentences == [(["Rome"], ["NNP"])]  # the column the run reads
    assert (reading["data_format"], reading["token_column"], reading["tag_column"]) == ("jsonl", "tokens", "tags")
    other = tmp_path / "other"  # a train-only Parquet folder next, into the same subset folder
    other.mkdir()
    pd.DataFrame({"tokens": [["Paris", "is"], ["Bob", "ran"], ["Oslo"]], "ner_tags": [["B-LOC", "O"], ["B-PER", "O"],
                                                                                     ["B-LOC"]]}).to_parquet(
        other / "train.parquet")
    subset, _ = make_subset(other, tmp_path / "subset2", {"train": 2, "validation": 1, "test": 1})
    assert sorted(p.name for p in subset.iterdir()) == ["train.jsonl"]  # no split of the earlier data stays
    assert read_file(subset / "train.jsonl").sentences == [(["Paris", "is"], ["B-LOC", "O"]), (["Bob", "ran"],
                                                                                               ["B-PER", "O"])]
    # ClassLabel tags: the names the data declared come along (a JSONL file cannot declare them)
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "B-LOC"]))})
    datasets.Dataset.from_dict({"tokens": [["Bob"]], "ner_tags": [[1]]}, features=features).save_to_disk(
        str(tmp_path / "hf"))
    subset, reading = make_subset(tmp_path / "hf", tmp_path / "hf_subset", {"train": 1})
    assert read_file(subset / "train.jsonl").sentences == [(["Bob"], ["B-PER"])]
    assert reading["label_names"] == "O,B-PER,B-LOC"
    args = build_parser().parse_args(["--quick", "--max-steps", "7", "--lr_scheduler_type", "cosine",
                                      "--apply-lora", "true", "--finetune_node_selector", '{"pool": "cpu"}'])
    assert args.quick and args.max_steps == 7 and args.lr_scheduler_type == "cosine" and args.apply_lora == "true"
    assert args.finetune_node_selector == {"pool": "cpu"}
    # every pipeline parameter is an option; the local recipe's defaults differ from the spec's, documented
    assert args.max_seq_length == LOCAL_RECIPE["max_seq_length"][0] == 128
    assert args.per_device_train_batch_size == 16 and args.seed == 42 and args.warmup_steps == 20
    data = default_data_dir()
    assert data is not None and (data / "train.conll").exists() and (data / "README.md").exists()


@pytest.mark.parametrize("flags,message", [
    (["--precision", "8"], "precision='8' is not one of ['32', '16']"),
    (["--apply_lora", "yes"], "apply_lora='yes' is not one of ['true', 'false']"),
    (["--tag_scheme", "xyz"], "tag_scheme='xyz' is not one of"),
    (["--learning_rate", "-1"], "learning_rate must be > 0"),
    (["--finetune_tolerations", '{"key": "gpu"}'], "expected a JSON list, got dict"),
    (["--finetune_node_selector", "{bad"], "--finetune_node_selector/--finetune-node-selector: not valid JSON"),
    (["--runner", "foo"], "invalid choice: 'foo'"),
    (["--data-dir", "{tmp}/nowhere"], "--data-dir {tmp}/nowhere not found"),
    (["--data-dir", "{data}/train.conll"], "is a file; give the folder"),
    (["--output-dir", "{data}/run"], "is inside --data-dir"),
    (["--output-dir", "{data}"], "is inside --data-dir"),
    (["--model_path", "{tmp}/nowhere"], "--model_path {tmp}/nowhere not found"),
    (["--predict_data_uri", "{tmp}/texts.txt"], "--predict_data_uri {tmp}/texts.txt not found"),
])
def test_a_bad_local_run_fails_in_one_line_before_any_step(conll_dir, tiny_model_selector, tmp_path, capsys, flags,
                                                           message):
    """Exit 2 and one line before the first step runs (each step would refuse the value only when reached, after
    the steps before it had run), and nothing created."""
    import shutil

    from pipelines.local_run import main

    data = tmp_path / "data"
    shutil.copytree(conll_dir, data)
    before = sorted(tmp_path.rglob("*"))
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{data}", str(data))

    flags = [fill(f) for f in flags]
    argv = ["--data-dir", str(data), "--model_path", str(tiny_model_selector), "--output-dir", str(tmp_path / "out"),
            *flags]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert fill(message) in err
    assert sorted(tmp_path.rglob("*")) == before


def test_docker_runner_without_an_engine_fails_in_one_line_before_any_step(conll_dir, tmp_path, capsys,
                                                                           monkeypatch):
    import pipelines.container_runner
    from pipelines.local_run import main

    monkeypatch.setattr(pipelines.container_runner, "engine_available", lambda: "no Docker daemon, no podman")
    rc = main(["--data-dir", str(conll_dir), "--output-dir", str(tmp_path / "out"), "--quick", "--runner", "docker"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: --runner docker: no Docker daemon, no podman\n", err
    assert not (tmp_path / "out").exists()


def test_a_refused_tracking_store_fails_in_one_line_before_any_step(conll_dir, tmp_path, capsys, monkeypatch):
    from pipelines.local_run import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path}/mlruns")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    rc = main(["--data-dir", str(conll_dir), "--output-dir", str(tmp_path / "out"), "--quick"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: MLFLOW_TRACKING_URI=file:{tmp_path}/mlruns: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns").exists()


def test_a_failing_step_ends_the_run_in_one_line(conll_dir, tmp_path, capsys):
    """The step's own log says why (kfp.local prints it); the run ends with one line and exit 1, not kfp's
    traceback."""
    from pipelines.local_run import main

    rc = main(["--data-dir", str(conll_dir), "--output-dir", str(tmp_path / "out"), "--quick",
               "--model_path", "org/no-such-model", "--hf_endpoint", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: Pipeline ") and "model-import" in err[-1], err[-3:]
    assert "Traceback" not in "\n".join(err)


def test_hub_ids_and_uris_reach_the_steps_as_given(conll_dir, tmp_path, monkeypatch):
    """Only local paths are staged; a hub id or an object-store URI was once resolved into a local path."""
    import pipelines.token_classification_pipeline as module
    from pipelines import local_run

    class Started(Exception):
        pass

    seen = {}

    def pipeline(**params):
        seen.update(params)
        raise Started

    pipeline.pipeline_func = module.token_classification_pipeline.pipeline_func
    monkeypatch.setattr(module, "token_classification_pipeline", pipeline)
    args = local_run.build_parser().parse_args([
        "--data-dir", str(conll_dir), "--output-dir", str(tmp_path / "out"), "--model_path", "org/bert-ner",
        "--predict_data_uri", "s3://bucket/texts.txt"])
    with pytest.raises(Started):
        local_run.run(args)
    assert seen["model_path"] == "org/bert-ner" and seen["predict_data_uri"] == "s3://bucket/texts.txt"
    assert Path(seen["data_uri"]).resolve() == conll_dir.resolve()


def test_every_help_explains_each_option_once(capsys):
    """--help of each command: every option described, no empty or doubled "(default: ...)"."""
    import re

    from pipelines.local_run import build_parser
    from trainer.cli import evaluate_main, finetune_main, model_import_main, preprocess_main

    texts = [build_parser().format_help()]
    for main in (finetune_main, preprocess_main, model_import_main, evaluate_main):
        with pytest.raises(SystemExit):
            main(["--help"])
        texts.append(capsys.readouterr().out)
    for text in texts:
        options = re.split(r"\n  (?=-)", " ".join(text.split("\n\n")[2:]))
        for option in options:
            flat = " ".join(option.split())
            assert flat.count("(default:") <= 1 and "(default: )" not in flat and "(default: '')" not in flat, flat
    tag_scheme = next(o for o in re.split(r"\n  (?=-)", texts[0]) if o.startswith("--tag_scheme"))
    assert "Tag scheme; auto detects it from the tags" in " ".join(tag_scheme.split())


def test_a_component_checks_its_folders_as_the_cli_does(tmp_path, tiny_finetuned, tiny_preprocess_output):
    """In KFP the programs run without their CLI: the component's body hands its config to the program, which checks
    its folders first as it does under its CLI (a link out of an input artifact is refused before anything is
    loaded or written)."""
    import shutil
    from types import SimpleNamespace

    from components.evaluate.runtime import run
    from trainer.errors import InputError

    data = tmp_path / "preprocess_output"
    shutil.copytree(tiny_preprocess_output, data)
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not part of the artifact\n")
    (data / "notes.txt").symlink_to(secret)
    outputs = {name: SimpleNamespace(path=str(tmp_path / "out" / name), metadata={})
               for name in ("predictions", "metrics", "report")}
    with pytest.raises(InputError, match="notes.txt"):
        run(model=SimpleNamespace(path=str(tiny_finetuned["pytorch"])),
            preprocess_output=SimpleNamespace(path=str(data)), split="test", rescore=True, batch_size=8, **outputs)
    assert not (tmp_path / "out").exists()


def test_every_program_checks_its_folders_when_called_from_python(tmp_path, tiny_preprocess_output,
                                                                   tiny_model_selector):
    """The Python API is checked as the CLIs and the components are (each program calls check_io first): an output
    inside an input folder, or under a file, is refused before anything is read or written, for every program."""
    from trainer.config import (DataImportConfig, EvaluateConfig, ModelImportConfig, PredictConfig,
                                PreprocessConfig)
    from trainer.data_import import data_import
    from trainer.errors import ConfigError, InputError
    from trainer.evaluate import evaluate
    from trainer.model_import import model_import
    from trainer.predict import predict
    from trainer.preprocess import preprocess

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.conll").write_text("Paris B-LOC\n\n", encoding="utf-8")
    pre, model = Path(tiny_preprocess_output), Path(tiny_model_selector)
    inside = "outputs never overwrite inputs"
    calls = [
        (preprocess, PreprocessConfig(train_data=str(data), model_selector_output=str(model),
                                      preprocess_output=str(data / "out")), ConfigError, inside, data / "out"),
        (model_import, ModelImportConfig(model=str(model), model_selector_output=str(model / "imported")),
         ConfigError, inside, model / "imported"),
        (evaluate, EvaluateConfig(model=str(model), preprocess_output=str(pre), predictions=str(pre / "p.jsonl")),
         ConfigError, inside, pre / "p.jsonl"),
        (predict, PredictConfig(model=str(model), data=str(data / "train.conll"), predictions=str(model / "p.jsonl")),
         ConfigError, inside, model / "p.jsonl"),
        (data_import, DataImportConfig(data_uri=str(data), data_output=str(data / "copy")),
         ConfigError, inside, data / "copy"),
        (data_import, DataImportConfig(data_uri=str(data), data_output=str(tmp_path / "notes.txt" / "copy")),
         InputError, "is a file, not a folder", tmp_path / "notes.txt" / "copy"),
    ]
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for program, config, error, message, output in calls:
        with pytest.raises(error, match=message):
            program(config)
        assert not output.exists(), program.__name__
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("flags, precision", [({"avx2", "avx512f"}, "32"), ({"avx2", "avx512f", "avx512_bf16"}, "16"),
                                              ({"amx_tile", "amx_bf16"}, "16"), (set(), "32")])
def test_local_run_trains_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, flags, precision):
    """Emulated CPU bf16 is slower than fp32: the local recipe picks 16 only where the CPU has bf16 instructions."""
    import importlib

    import pipelines.local_run as local_run
    from trainer import precision as precisions

    monkeypatch.setattr(precisions, "cpu_flags", lambda: flags)
    try:
        assert importlib.reload(local_run).LOCAL_RECIPE["precision"][0] == precision
        assert local_run.build_parser().parse_args([]).precision == precision
    finally:
        monkeypatch.undo()
        importlib.reload(local_run)
