"""The evaluate program on the inference core: one F1 (the fine-tune's), the token-mean loss, no re-scoring of what
the fine-tune scored on the very same split unless asked, predictions always written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer.cli import evaluate_main
from trainer.config import EvaluateConfig
from trainer.evaluate import evaluate
from trainer.inference import load_classifier


def _config(model, data, tmp_path, **values) -> EvaluateConfig:
    return EvaluateConfig(model=str(model), preprocess_output=str(data), predictions=str(tmp_path / "p.jsonl"),
                          **values)


def _test_figures(model: Path) -> dict:
    metrics = json.loads((model / "metrics.json").read_text())["test_metrics"]
    return {k[len("test_"):]: v for k, v in metrics.items() if k[len("test_"):] in ("f1", "precision", "recall",
                                                                                     "accuracy", "loss")}


def test_the_finetunes_figures_are_reported_for_its_own_split(tiny_finetuned, tiny_preprocess_output, tmp_path):
    result = evaluate(_config(tiny_finetuned["pytorch"], tiny_preprocess_output, tmp_path))
    assert result.source == "finetune" and result.figures == _test_figures(tiny_finetuned["pytorch"])
    assert result.per_entity == tiny_finetuned["result"].per_entity
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == result.sentences == 40
    served = load_classifier(tiny_finetuned["mlflow"]).predict([r["tokens"] for r in rows])
    assert [r["predicted_tags"] for r in rows] == [p.labels for p in served]  # the served model's words
    assert set(rows[0]) == {"tokens", "tags", "predicted_tags", "scores"}
    assert len(rows[0]["scores"]) == len(rows[0]["tokens"])


def test_rescore_gives_the_finetunes_f1_and_the_token_mean_loss(tiny_finetuned, tiny_preprocess_output, tmp_path):
    model = tiny_finetuned["pytorch"]
    result = evaluate(_config(model, tiny_preprocess_output, tmp_path, rescore=True))
    assert result.source == "evaluate"
    finetune_figures = _test_figures(model)
    for name in ("f1", "precision", "recall", "accuracy"):  # one definition: the same numbers, recomputed
        assert result.figures[name] == pytest.approx(finetune_figures[name], abs=1e-12), name
    # the loss: mean cross-entropy over every scored position (first sub-tokens) of the split, computed directly
    from transformers import AutoModelForTokenClassification

    net = AutoModelForTokenClassification.from_pretrained(model).eval()
    rows = [json.loads(line) for line in (tiny_preprocess_output / "test.jsonl").read_text().splitlines()]
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            logits = net(input_ids=torch.tensor([row["input_ids"]]),
                         attention_mask=torch.tensor([row["attention_mask"]])).logits[0]
            labels = torch.tensor(row["labels"])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    assert result.figures["loss"] == pytest.approx(total / count, rel=1e-4)


def test_the_finetunes_predictions_are_reused_without_loading_a_model(tiny_finetuned, tiny_preprocess_output,
                                                                      tmp_path, monkeypatch):
    model = tiny_finetuned["pytorch"]
    rescored = evaluate(_config(model, tiny_preprocess_output, tmp_path / "rescored", rescore=True))
    import trainer.inference

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(trainer.inference, "load_classifier", no_model)
    reused = evaluate(_config(model, tiny_preprocess_output, tmp_path / "reused"))
    assert reused.source == "finetune" and reused.sentences == rescored.sentences == 40
    assert reused.figures == rescored.figures and reused.per_entity == rescored.per_entity  # the same scoring
    written = (tmp_path / "reused" / "p.jsonl").read_bytes()
    assert written == (model / "test_predictions.jsonl").read_bytes() == (tmp_path / "rescored" / "p.jsonl").read_bytes()
    assert not list((tiny_finetuned["mlflow"] / "artifacts" / "model").glob("*predictions*"))  # not served
    data = tmp_path / "data"  # the classes changed under the same test rows: not reused, refused before loading
    shutil.copytree(tiny_preprocess_output, data)
    names = json.loads((data / "class_names.json").read_text())["class_names"]
    (data / "class_names.json").write_text(json.dumps({"class_names": names + ["B-extra"]}))
    from trainer.errors import InputError

    with pytest.raises(InputError, match="but the preprocess output has the classes"):
        evaluate(_config(model, data, tmp_path / "changed"))


def test_a_different_split_is_scored_even_without_rescore(tiny_finetuned, tiny_preprocess_output, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_preprocess_output, data)
    lines = (data / "test.jsonl").read_text().splitlines()
    (data / "test.jsonl").write_text("\n".join(lines[:30]) + "\n")
    result = evaluate(_config(tiny_finetuned["pytorch"], data, tmp_path))
    assert result.source == "evaluate" and result.sentences == 30
    validation = evaluate(_config(tiny_finetuned["pytorch"], tiny_preprocess_output, tmp_path / "validation",
                                  split="validation"))
    assert validation.source == "evaluate"  # metrics.json's per-entity figures are the test split's


def test_split_auto_is_the_test_split_else_validation(tiny_finetuned, tiny_preprocess_output, tmp_path):
    """The pipeline evaluates with split=auto: data without a test split (test_ratio 0, no test file) is scored on
    its validation split, as the fine-tune scored it, instead of failing after training."""
    with_test = evaluate(_config(tiny_finetuned["pytorch"], tiny_preprocess_output, tmp_path / "a", split="auto"))
    assert with_test.split == "test" and with_test.source == "finetune"
    data = tmp_path / "no_test"
    shutil.copytree(tiny_preprocess_output, data)
    (data / "test.jsonl").unlink()
    result = evaluate(_config(tiny_finetuned["pytorch"], data, tmp_path / "b", split="auto"))
    validation = evaluate(_config(tiny_finetuned["pytorch"], data, tmp_path / "c", split="validation"))
    assert result.split == "validation" and result.figures == validation.figures
    assert result.sentences == len((data / "validation.jsonl").read_text().splitlines())


def test_the_pipeline_evaluates_the_split_its_finetune_scored():
    from pipelines.token_classification_pipeline import token_classification_pipeline

    spec = token_classification_pipeline.pipeline_spec
    tasks = {name: task for dag in [spec.root.dag] + [c.dag for c in spec.components.values() if c.dag.tasks]
             for name, task in dag.tasks.items()}
    split = tasks["evaluate"].inputs.parameters["split"].runtime_value.constant.string_value
    assert split == "auto"


def test_a_word_the_tokenizer_drops_is_predicted_and_scored_as_it_was_trained(tiny_finetuned, tiny_model_selector,
                                                                               conll_dir, tmp_path):
    """Preprocess trains a word with no sub-token (a lone zero-width space) as the unknown token; the served model
    predicts it the same way, so a gold entity on it counts in the figures (it dropped out of them, unscored)."""
    from trainer.config import PreprocessConfig
    from trainer.preprocess import preprocess

    data = tmp_path / "conll"
    shutil.copytree(conll_dir, data)
    with (data / "test.conll").open("a", encoding="utf-8") as handle:
        handle.write("\nsaw\tO\n\u200b\tB-person\ntoday\tO\n")
    pre = tmp_path / "pre"
    preprocess(PreprocessConfig(train_data=str(data / "train.conll"), validation_data=str(data / "validation.conll"),
                                test_data=str(data / "test.conll"), model_selector_output=str(tiny_model_selector),
                                preprocess_output=str(pre), max_seq_length=64))
    assert json.loads((pre / "preprocess_args.json").read_text())["windowing"]["test"]["empty_words"] == 1
    result = evaluate(_config(tiny_finetuned["pytorch"], pre, tmp_path, rescore=True))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    gold_persons = sum(tag == "B-person" for row in rows for tag in row["tags"])
    assert result.per_entity["person"]["number"] == gold_persons
    assert rows[-1]["tokens"] == ["saw", "\u200b", "today"] and None not in rows[-1]["scores"]


def test_every_model_format_scores_alike(tiny_finetuned, tiny_preprocess_output, tmp_path):
    f1 = {kind: evaluate(_config(tiny_finetuned[kind], tiny_preprocess_output, tmp_path / kind,
                                 rescore=True)).figures["f1"] for kind in ("pytorch", "mlflow", "onnx")}
    assert f1["pytorch"] == f1["mlflow"] == f1["onnx"] > 0.9


def test_bad_input_is_exit_2(tiny_finetuned, tiny_preprocess_output, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_preprocess_output, data)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    (data / "test.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "tokens"})
                                               for r in rows) + "\n")
    out = tmp_path / "p.jsonl"
    argv = ["--model", str(tiny_finetuned["pytorch"]), "--preprocess_output", str(data), "--predictions", str(out)]
    assert evaluate_main(argv) == 2
    assert "test.jsonl line 1: no 'tokens' and 'tags' lists" in capsys.readouterr().err and not out.exists()
    names = json.loads((data / "class_names.json").read_text())["class_names"]
    (data / "class_names.json").write_text(json.dumps({"class_names": names + ["B-extra"]}))
    assert evaluate_main(argv[:3] + [str(tiny_preprocess_output), "--predictions", str(out), "--split",
                                     "validation"]) == 0
    assert evaluate_main(["--model", str(tiny_finetuned["pytorch"]), "--preprocess_output", str(data),
                          "--predictions", str(tmp_path / "p2.jsonl"), "--split", "validation"]) == 2
    assert "predicts" in capsys.readouterr().err


class _Artifact:
    """What the evaluate component's body uses of a KFP artifact: its path, metadata and (Metrics) log_metric."""

    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}

    def log_metric(self, name: str, value: float) -> None:
        self.metadata[name] = value


def test_the_component_names_the_tag_scheme_in_its_report_and_metrics(tiny_finetuned, tiny_preprocess_output,
                                                                       tmp_path):
    from components.evaluate.runtime import run
    from trainer.metrics import describe

    outputs = {name: _Artifact(tmp_path / name) for name in ("predictions", "metrics", "report")}
    figures = run(model=_Artifact(tiny_finetuned["pytorch"]), preprocess_output=_Artifact(tiny_preprocess_output),
                  split="test", batch_size=16, rescore=False, **outputs)
    report = (tmp_path / "report").read_text()
    assert f"{describe('iob2')}." in report and "## Per entity" in report and "| location |" in report
    assert outputs["metrics"].metadata["tag_scheme"] == "iob2" and outputs["metrics"].metadata["test_f1"] == figures.f1


def test_the_evaluate_report_of_plain_tags_is_per_tag():
    from trainer.report import evaluate_markdown

    plain = evaluate_markdown("test", 3, {"f1": 0.5}, {"NOUN": {"f1": 0.7, "number": 3}}, "m", "plain")
    assert "Tag scheme plain: precision, recall and f1 are micro averages over the tags other than O" in plain
    assert "## Per tag" in plain and "| Tag | Precision |" in plain and "Per entity" not in plain
    bioes = evaluate_markdown("test", 3, {"f1": 0.5}, {"PER": {"f1": 0.7, "number": 3}}, "m", "bioes")
    assert "Tag scheme BIOES: precision, recall and f1 are entity-level" in bioes and "| Entity |" in bioes
