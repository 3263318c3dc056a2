"""Bad input fails fast through the real CLI: exit 2, a specific "error: ..." on stderr, nothing written.

Each case corrupts a *copy* of the tiny preprocess output / model-selector output (the session fixtures stay
intact), runs `trainer.cli.main([...])`, and checks that no model was loaded, no training started and no output
folder was created. `load_model` and `Trainer.train` are booby-trapped so reaching them fails the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer.cli import main


# --- helpers ------------------------------------------------------------------------------------

def _rewrite_line(path: Path, line_no: int, edit) -> None:
    """Apply edit(row_dict) -> row_dict | str to the 1-based line `line_no` of a jsonl file."""
    lines = path.read_text().splitlines()
    new = edit(json.loads(lines[line_no - 1]))
    lines[line_no - 1] = new if isinstance(new, str) else json.dumps(new)
    path.write_text("\n".join(lines) + "\n")


class Case:
    """A corrupted input: mutate(ctx) edits the copies and may return extra CLI flags."""

    def __init__(self, mutate, expected: list[str], argparse_exit: bool = False):
        self.mutate, self.expected, self.argparse_exit = mutate, expected, argparse_exit


@pytest.fixture
def ctx(tmp_path, tiny_preprocess_output, tiny_model_selector, monkeypatch):
    import transformers

    def _reached(*args, **kwargs):
        pytest.fail("bad input reached model loading / training: validation must come first")

    monkeypatch.setattr(transformers.AutoModelForTokenClassification, "from_pretrained", _reached)
    monkeypatch.setattr(transformers.Trainer, "train", _reached)
    pre = tmp_path / "preprocess_output"
    ms = tmp_path / "model_selector_output"
    shutil.copytree(tiny_preprocess_output, pre)
    shutil.copytree(tiny_model_selector, ms)
    out = tmp_path / "out"
    return {"tmp": tmp_path, "pre": pre, "ms": ms, "pt": out / "pytorch_model_folder",
            "mlflow": out / "mlflow_model_folder", "out": out}


def _argv(c: dict, extra: list[str]) -> list[str]:
    return ["--preprocess_output", str(c["pre"]), "--model_selector_output", str(c["ms"]),
            "--pytorch_model_folder", str(c["pt"]), "--mlflow_model_folder", str(c["mlflow"]),
            *extra]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse rejects a bad choice itself (exit status 2, usage + error on stderr)
        rc = exc.code
    return rc, capsys.readouterr().err


def _assert_nothing_written(c: dict, pre_existing: dict[Path, set[str]]) -> None:
    for folder in (c["pt"], c["mlflow"]):
        if folder in pre_existing:  # a folder the case itself set up: it must hold exactly what it held
            assert {p.name for p in folder.iterdir()} == pre_existing[folder], f"{folder} was written to"
        else:
            assert not folder.exists(), f"{folder} was created although the input was rejected"
    if c["out"].exists():
        leftovers = [p.name for p in c["out"].iterdir() if p not in pre_existing]
        assert leftovers == [], f"half-written outputs left behind: {leftovers}"


# --- the cases --------------------------------------------------------------------------------------

def missing_preprocess_folder(c):
    shutil.rmtree(c["pre"])
    return []


def missing_model_folder(c):
    shutil.rmtree(c["ms"])
    return []


def remove(name):
    def mutate(c):
        (c["pre"] / name).unlink()
        return []
    return mutate


def no_tokenizer(c):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (c["pre"] / name).unlink(missing_ok=True)
    return []


def labels_longer(c):
    _rewrite_line(c["pre"] / "train.jsonl", 3, lambda r: {**r, "labels": r["labels"] + [-100]})
    return []


def attention_shorter(c):
    _rewrite_line(c["pre"] / "validation.jsonl", 2, lambda r: {**r, "attention_mask": r["attention_mask"][:-1]})
    return []


def label_id(value, split="validation", line=2):
    def mutate(c):
        def edit(r):
            labels = list(r["labels"])
            labels[1] = value  # position 1: the first word piece after [CLS]
            return {**r, "labels": labels}
        _rewrite_line(c["pre"] / f"{split}.jsonl", line, edit)
        return []
    return mutate


def empty_split(split, content=""):
    def mutate(c):
        (c["pre"] / f"{split}.jsonl").write_text(content)
        return []
    return mutate


def invalid_json_line(c):
    _rewrite_line(c["pre"] / "train.jsonl", 5, lambda r: '{"input_ids": [2, 3,')
    return []


def missing_labels_key(c):
    _rewrite_line(c["pre"] / "test.jsonl", 1, lambda r: {k: v for k, v in r.items() if k != "labels"})
    return []


def class_names(content):
    def mutate(c):
        (c["pre"] / "class_names.json").write_text(content if isinstance(content, str) else json.dumps(content))
        return []
    return mutate


def model_without_config(c):
    (c["ms"] / "config.json").unlink()
    # keep model_name (a sub-folder name) but drop the absolute source path recorded at import time
    args = json.loads((c["ms"] / "model_selector_args.json").read_text())
    args.pop("model_name_or_path")
    (c["ms"] / "model_selector_args.json").write_text(json.dumps(args))
    return []


def model_without_config_keep_args(c):
    (c["ms"] / "config.json").unlink()  # model_selector_args.json still records the import's absolute source path
    return []


def bad_model_selector_args(c):
    (c["ms"] / "model_selector_args.json").write_text("{not json")
    return []


def unsupported_lora_family(c):
    cfg = json.loads((c["ms"] / "config.json").read_text())
    cfg["model_type"] = "albert"
    cfg.pop("architectures", None)
    (c["ms"] / "config.json").write_text(json.dumps(cfg))
    return ["--apply_lora", "true"]


def config_file(values, raw=None):
    def mutate(c):
        path = c["tmp"] / "params.json"
        path.write_text(raw if raw is not None else json.dumps(values))
        return ["--config", str(path)]
    return mutate


def flags(*extra):
    return lambda c: list(extra)


def deepspeed_file(text):
    def mutate(c):
        path = c["tmp"] / "ds_config.json"
        path.write_text(text)
        return ["--apply_deepspeed", "true", "--deepspeed", str(path)]
    return mutate


def deepspeed_missing(c):
    return ["--apply_deepspeed", "true", "--deepspeed", str(c["tmp"] / "nowhere.json")]


def deepspeed_without_apply(c):
    path = c["tmp"] / "ds_config.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    return ["--deepspeed", str(path)]


CASES = {
    # missing folders / files
    "missing-preprocess-folder": Case(missing_preprocess_folder, ["preprocess_output folder not found", "preprocess_output"]),
    "missing-model-folder": Case(missing_model_folder, ["model_selector_output folder not found"]),
    "missing-train-jsonl": Case(remove("train.jsonl"), ["has no train.jsonl"]),
    "missing-validation-jsonl": Case(remove("validation.jsonl"), ["has no validation.jsonl"]),
    "missing-class-names": Case(remove("class_names.json"), ["no label map in", "class_names.json"]),
    "missing-tokenizer": Case(no_tokenizer, ["has no tokenizer files"]),
    "model-without-config-json": Case(model_without_config, ["no model found in", "expected config.json"]),
    # rows
    "labels-longer-than-input-ids": Case(labels_longer, ["train.jsonl line 3: labels has", "entries but input_ids has"]),
    "attention-mask-shorter": Case(attention_shorter, ["validation.jsonl line 2: attention_mask has"]),
    "label-id-too-large": Case(label_id(99), ["validation.jsonl line 2: label id(s) [99] outside the label map"]),
    "label-id-negative": Case(label_id(-1, "train", 7), ["train.jsonl line 7: label id(s) [-1] outside the label map"]),
    "label-id-float": Case(label_id(1.5, "test", 4), ["test.jsonl line 4: label id(s) [1.5] outside the label map"]),
    "invalid-json-line": Case(invalid_json_line, ["train.jsonl line 5: not valid JSON"]),
    "row-missing-labels": Case(missing_labels_key, ["test.jsonl line 1: missing key(s) ['labels']"]),
    # empty splits
    "empty-train": Case(empty_split("train"), ["train.jsonl holds no rows: the train split is empty"]),
    "empty-validation": Case(empty_split("validation", "\n\n"), ["the validation split is empty"]),
    "empty-test": Case(empty_split("test", "\n"), ["test.jsonl holds no rows: the test split is empty"]),
    # label map
    "class-names-one-class": Case(class_names({"class_names": ["O"]}), ["has 1 class(es)", "at least two"]),
    "class-names-duplicates": Case(class_names({"class_names": ["O", "B-x", "B-x"]}), ["repeats a label", "'B-x'"]),
    "class-names-not-json": Case(class_names('{"class_names": ["O",'), ["class_names.json is not valid JSON"]),
    "class-names-wrong-shape": Case(class_names({"labels": ["O", "B-x"]}), ["class_names.json must be"]),
    "model-selector-args-not-json": Case(bad_model_selector_args, ["model_selector_args.json is not valid JSON"]),
    # config values
    "unknown-optim-flag": Case(flags("--optim", "sgd"), ["--optim", "invalid choice: 'sgd'"], argparse_exit=True),
    "unknown-strategy-flag": Case(flags("--evaluation_strategy", "no"), ["--evaluation_strategy", "invalid choice: 'no'"],
                                  argparse_exit=True),
    "unknown-scheduler-in-config": Case(config_file({"lr_scheduler_type": "exotic"}),
                                        ["lr_scheduler_type='exotic' is not one of"]),
    "unknown-metric-in-config": Case(config_file({"metric_for_best_model": "bleu"}),
                                     ["metric_for_best_model='bleu' is not one of"]),
    "unknown-key-in-config": Case(config_file({"learning_rte": 0.1}), ["unknown parameter(s): ['learning_rte']"]),
    "epochs-and-steps-zero": Case(flags("--num_train_epochs", "0", "--max_steps", "0"),
                                  ["num_train_epochs and max_steps are both non-positive"]),
    "epochs-negative-steps-default": Case(flags("--num_train_epochs", "-2"),
                                          ["num_train_epochs and max_steps are both non-positive"]),
    "string-bool-maybe": Case(flags("--apply_lora", "maybe"), ["apply_lora='maybe' is not one of ['true', 'false']"]),
    "string-bool-in-config": Case(config_file({"apply_early_stopping": "sometimes"}),
                                  ["apply_early_stopping='sometimes' is not one of ['true', 'false']"]),
    "not-a-number": Case(flags("--lora_r", "abc"), ["lora_r='abc' is not a number"]),
    "lora-r-zero": Case(flags("--lora_r", "0"), ["lora_r must be >= 1, got 0"]),
    # deepspeed / lora / ort
    "deepspeed-json-unparsable": Case(deepspeed_file('{"zero_optimization": {"stage": 2,}'),
                                      ["deepspeed config", "ds_config.json is not valid JSON"]),
    "deepspeed-json-not-object": Case(deepspeed_file("[1, 2]"), ["ds_config.json must be a JSON object"]),
    "deepspeed-bad-stage": Case(deepspeed_file('{"zero_optimization": {"stage": 4}}'),
                                ["zero_optimization.stage must be 0-3, got 4"]),
    "deepspeed-file-missing": Case(deepspeed_missing, ["deepspeed config not found", "nowhere.json"]),
    "deepspeed-without-apply": Case(deepspeed_without_apply, ["apply_deepspeed is false"]),
    "ort-with-deepspeed": Case(flags("--apply_ort", "true", "--apply_deepspeed", "true"),
                               ["apply_ort and apply_deepspeed cannot be combined"]),
    "lora-unsupported-family": Case(unsupported_lora_family,
                                    ["no default LoRA target modules for model type 'albert'", "lora_target_modules"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_fast(name, ctx, capsys):
    case = CASES[name]
    extra = case.mutate(ctx)
    rc, err = _run(_argv(ctx, extra), capsys)
    assert rc == 2, f"exit {rc}, stderr: {err}"
    assert "error:" in err
    for text in case.expected:
        assert text in err, f"{text!r} not in stderr: {err}"
    if not case.argparse_exit:
        assert err.startswith("error: "), err
        assert "Traceback" not in err
    _assert_nothing_written(ctx, {})


def test_apply_ort_without_onnxruntime_training(ctx, capsys):
    try:
        import onnxruntime.training.ortmodule  # noqa: F401
        pytest.skip("ONNX Runtime training is installed here")
    except ImportError:
        pass
    rc, err = _run(_argv(ctx, ["--apply_ort", "true"]), capsys)
    assert rc == 2, err
    assert "apply_ort=true needs ONNX Runtime training (ORTModule" in err and "images/Dockerfile.ort" in err
    assert len(err.strip().splitlines()) == 1
    _assert_nothing_written(ctx, {})


def test_non_empty_mlflow_model_folder(ctx, capsys):
    ctx["mlflow"].mkdir(parents=True)
    (ctx["mlflow"] / "MLmodel").write_text("flavors: {}\n")
    rc, err = _run(_argv(ctx, []), capsys)
    assert rc == 2, err
    assert f"mlflow_model_folder {ctx['mlflow']} already exists and is not empty" in err
    _assert_nothing_written(ctx, {ctx["mlflow"]: {"MLmodel"}})


def test_mlflow_model_folder_is_a_file(ctx, capsys):
    ctx["out"].mkdir()
    ctx["mlflow"].write_text("not a folder")
    rc, err = _run(_argv(ctx, []), capsys)
    assert rc == 2, err
    assert "mlflow_model_folder" in err and "is not empty" in err
    assert ctx["mlflow"].read_text() == "not a folder" and not ctx["pt"].exists()


def test_existing_checkpoints_without_resume(ctx, capsys):
    (ctx["pt"] / "checkpoint-4").mkdir(parents=True)
    rc, err = _run(_argv(ctx, []), capsys)
    assert rc == 2, err
    assert "already holds checkpoints" in err and "resume_from_checkpoint=true" in err
    _assert_nothing_written(ctx, {ctx["pt"]: {"checkpoint-4"}})


# --- regressions: trainer bugs these tests found ------------------------------------------------------------

def test_model_selector_without_config_json_does_not_escape_folder(ctx, capsys):
    model_without_config_keep_args(ctx)
    rc, err = _run(_argv(ctx, []), capsys)
    assert rc == 2, err
    assert "no model found in" in err


def test_config_file_not_json(ctx, capsys):
    extra = config_file(None, raw='{"learning_rate": 0.1,')(ctx)
    rc, err = _run(_argv(ctx, extra), capsys)
    assert rc == 2 and "params.json" in err


def test_config_file_missing(ctx, capsys):
    rc, err = _run(_argv(ctx, ["--config", str(ctx["tmp"] / "nope.json")]), capsys)
    assert rc == 2 and "nope.json" in err


def test_string_bool_yes_rejected(ctx, capsys):
    rc, err = _run(_argv(ctx, ["--apply_early_stopping", "yes", "--lora_r", "0"]), capsys)
    assert rc == 2 and "apply_early_stopping='yes'" in err
