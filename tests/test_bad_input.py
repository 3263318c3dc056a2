"""Bad input fails fast through the real CLIs: exit 2, exactly one line on stderr ("error: ..." naming the file, line
or flag and the fix), nothing created, loaded, trained or written.

Each case corrupts *copies* of the tiny inputs (the session fixtures stay intact), lists the whole test folder
(names, sizes, modification times), runs the program's `main([...])` in-process and lists it again: the listings
must be equal (no output folder created, no input touched). Loading a model's weights and training are booby-trapped,
so a check that runs after them fails the test. What a real run would print besides the error — log records and
warnings — is captured and must be empty; a few cases also run as real processes (`test_one_line_in_a_real_process`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from trainer import cli

PROGRAMS = {"finetune": cli.finetune_main, "preprocess": cli.preprocess_main, "model-import": cli.model_import_main,
            "data-import": cli.data_import_main, "evaluate": cli.evaluate_main, "predict": cli.predict_main}
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # hidden by default


# --- harness ------------------------------------------------------------------------------------------------------
def listing(root: Path) -> dict[str, tuple]:
    """Every entry under root: folders by name, files and links with size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            stat = path.lstat()
            found[str(path.relative_to(root))] = ("dir",) if name in dirs and not path.is_symlink() else (
                stat.st_size, stat.st_mtime_ns)
    return found


class Case:
    """A corrupted input: mutate(ctx) edits the copies and returns the program's extra CLI flags."""

    def __init__(self, mutate, expected: list[str], program: str = "finetune"):
        self.mutate, self.expected, self.program = mutate, expected, program


@pytest.fixture
def ctx(tmp_path, tiny_preprocess_output, tiny_model_selector, conll_dir, monkeypatch):
    import transformers

    def _reached(*args, **kwargs):
        pytest.fail("bad input reached model loading / training: validation must come first")

    monkeypatch.setattr(transformers.AutoModelForTokenClassification, "from_pretrained", _reached)
    monkeypatch.setattr(transformers.Trainer, "train", _reached)
    shutil.copytree(tiny_preprocess_output, tmp_path / "preprocess_output")
    shutil.copytree(tiny_model_selector, tmp_path / "model_selector_output")
    shutil.copytree(conll_dir, tmp_path / "conll")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "texts.txt").write_text("alice lives in paris .\nbob works for acme corp .\n")
    out = tmp_path / "out"
    return {"tmp": tmp_path, "pre": tmp_path / "preprocess_output", "ms": tmp_path / "model_selector_output",
            "conll": tmp_path / "conll", "texts": tmp_path / "texts", "out": out, "pt": out / "pytorch_model_folder",
            "mlflow": out / "mlflow_model_folder", "import_out": out / "imported", "pre_out": out / "preprocessed",
            "data_out": out / "data", "predictions": out / "predictions.jsonl", "setenv": monkeypatch.setenv}


def argv_of(program: str, c: dict, extra: list[str]) -> list[str]:
    base = {
        "finetune": ["--preprocess_output", c["pre"], "--model_selector_output", c["ms"],
                     "--pytorch_model_folder", c["pt"], "--mlflow_model_folder", c["mlflow"]],
        "preprocess": ["--train_data", c["conll"] / "train.conll", "--validation_data", c["conll"] / "validation.conll",
                       "--test_data", c["conll"] / "test.conll", "--model_selector_output", c["ms"],
                       "--preprocess_output", c["pre_out"]],
        "model-import": ["--model_path", c["ms"], "--model_selector_output", c["import_out"]],
        "evaluate": ["--model", c["ms"], "--preprocess_output", c["pre"], "--predictions", c["predictions"]],
        "data-import": ["--data_uri", c["conll"], "--data_output", c["data_out"]],
        "predict": ["--model", c["ms"], "--data", c["texts"] / "texts.txt", "--predictions", c["predictions"]],
    }[program]
    flags = [str(x) for x in base]
    for i in range(0, len(extra), 2):  # a case's flag replaces the default one
        if extra[i] in flags:
            flags[flags.index(extra[i]) + 1] = str(extra[i + 1])
        else:
            flags += [str(extra[i]), str(extra[i + 1])]
    return flags


def run_rejected(program: str, c: dict, extra: list[str], capsys, caplog) -> str:
    """Run a program on bad input; assert exit 2, one 'error:' line, nothing else said, nothing written."""
    from transformers.utils import logging as hf_logging

    before = listing(c["tmp"])
    hf_logging.enable_propagation()  # what transformers would print reaches caplog too
    try:
        with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rc = PROGRAMS[program](argv_of(program, c, extra))
            except SystemExit as exc:  # argparse: a bad choice or a malformed flag
                rc = exc.code
    finally:
        hf_logging.disable_propagation()
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}, stderr: {err}"
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, repr(err)
    said = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.INFO]
    assert not said, f"a real run would also print: {said}"
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, QUIET_WARNINGS)]
    assert not shown, f"a real run would also print warnings: {shown}"
    assert listing(c["tmp"]) == before, "the rejected run created, removed or changed files"
    return err


# --- mutations ------------------------------------------------------------------------------------------------------
def rewrite_line(path: Path, line_no: int, edit) -> None:
    """Apply edit(row) -> row | str to the 1-based line `line_no` of a JSON Lines file."""
    lines = path.read_text().splitlines()
    new = edit(json.loads(lines[line_no - 1]))
    lines[line_no - 1] = new if isinstance(new, str) else json.dumps(new)
    path.write_text("\n".join(lines) + "\n")


def row(split: str, line: int, edit):
    def mutate(c):
        rewrite_line(c["pre"] / f"{split}.jsonl", line, edit)
        return []
    return mutate


def set_at(key: str, position: int, value):
    def edit(r):
        values = list(r[key])
        values[position] = value
        return {**r, key: values}
    return edit


def longer(r, n=70):
    extra = n - len(r["input_ids"])
    out = {**r, "input_ids": r["input_ids"] + [7] * extra, "attention_mask": r["attention_mask"] + [1] * extra,
           "labels": r["labels"] + [-100] * extra}
    if "token_type_ids" in r:
        out["token_type_ids"] = r["token_type_ids"] + [0] * extra
    if "word_ids" in r:
        out["word_ids"] = r["word_ids"] + [None] * extra
    return out


def all_ignored(split: str):
    def mutate(c):
        path = c["pre"] / f"{split}.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        path.write_text("".join(json.dumps({**r, "labels": [-100] * len(r["labels"])}) + "\n" for r in rows))
        return []
    return mutate


def _without_unk(tokenizer: dict) -> dict:
    """A WordPiece tokenizer.json whose vocabulary lacks its unknown token."""
    model = {**tokenizer["model"], "vocab": {k: v for k, v in tokenizer["model"]["vocab"].items() if k != "[UNK]"}}
    added = [t for t in tokenizer["added_tokens"] if t["content"] != "[UNK]"]
    return {**tokenizer, "model": model, "added_tokens": added}


def write(key: str, name: str, content, extra=()):
    """Overwrite (or create) file `name` in folder ctx[key] with text, JSON or bytes."""
    def mutate(c):
        path = c[key] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        return list(extra)
    return mutate


def remove(key: str, *names: str, extra=()):
    def mutate(c):
        for name in names:
            path = c[key] / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return list(extra)
    return mutate


def edit_json(key: str, name: str, edit, extra=()):
    def mutate(c):
        path = c[key] / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
        return list(extra)
    return mutate


def truncate(key: str, name: str, keep: float = 0.5):
    def mutate(c):
        path = c[key] / name
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
        return []
    return mutate


def link(key: str, name: str, target, as_flag: str = ""):
    """Make `name` in folder ctx[key] a symbolic link to target(ctx) (a file it replaces is moved there first);
    as_flag: pass the folder as that flag."""
    def mutate(c):
        path, to = c[key] / name, target(c)
        if path.is_file() and not to.exists():
            to.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, to)
        path.unlink(missing_ok=True)
        path.symlink_to(to)
        return [as_flag, c[key]] if as_flag else []
    return mutate


def predict_data(name: str, content, *more: str):
    """Predict data: a file `name` (text or bytes) in a new folder of its own, with `more` empty files beside it."""
    def mutate(c):
        folder = c["tmp"] / "data"
        folder.mkdir()
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        for other in more:
            (folder / other).write_text("")
        return ["--data", folder if more else path]
    return mutate


def flags(*extra):
    return lambda c: list(extra)


def config_file(content):
    def mutate(c):
        path = c["tmp"] / "params.json"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        return ["--config", path]
    return mutate


def deepspeed_file(content):
    def mutate(c):
        path = c["tmp"] / "ds_config.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
            content if isinstance(content, str) else json.dumps(content))
        return ["--apply_deepspeed", "true", "--deepspeed", path]
    return mutate


def path_flag(flag: str, where):
    """Point `flag` at where(ctx) (after preparing it)."""
    return lambda c: [flag, where(c)]


def symlink_output_to_model(c):
    (c["tmp"] / "link").symlink_to(c["ms"], target_is_directory=True)
    return ["--pytorch_model_folder", c["tmp"] / "link"]


def deepspeed_inside_output(c):
    c["pt"].mkdir(parents=True)
    (c["pt"] / "ds.json").write_text("{}")
    return ["--apply_deepspeed", "true", "--deepspeed", c["pt"] / "ds.json"]


def output_parent_is_a_file(c):
    c["out"].write_text("a file where a folder should be")
    return []


def model_without_config(c):
    (c["ms"] / "config.json").unlink()
    args = json.loads((c["ms"] / "model_selector_args.json").read_text())
    args.pop("model_name_or_path")  # keep model_name (a sub-folder name), drop the absolute source path
    (c["ms"] / "model_selector_args.json").write_text(json.dumps(args))
    return []


def unsupported_lora_family(c):
    cfg = json.loads((c["ms"] / "config.json").read_text())
    cfg["model_type"] = "albert"
    cfg.pop("architectures", None)
    (c["ms"] / "config.json").write_text(json.dumps(cfg))
    return ["--apply_lora", "true"]


def weights_as_damaged_bin(c):
    import torch
    from safetensors.torch import load_file

    state = load_file(c["ms"] / "model.safetensors")
    (c["ms"] / "model.safetensors").unlink()
    path = c["ms"] / "pytorch_model.bin"
    torch.save(state, path)
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    data[member.header_offset + 200] ^= 0xFF  # inside the member's bytes: its CRC no longer matches
    path.write_bytes(bytes(data))
    return []


def id2label_not_integers(c):
    (c["pre"] / "class_names.json").unlink()
    (c["pre"] / "id2label.json").write_text(json.dumps({"a": "O", "b": "B-x"}))
    return []


def deepspeed_folder_with_two(c):
    folder = c["tmp"] / "ds"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (folder / "b.json").write_text("{}")
    return ["--apply_deepspeed", "true", "--deepspeed", folder]


def mlmodel_invalid_yaml(c):
    src = c["tmp"] / "mlflow_src"
    src.mkdir()
    (src / "MLmodel").write_text("flavors: [unclosed\n")
    return ["--model_path", "", "--mlflow_model_path", src]


def import_source_inside_output(c):
    src = c["import_out"] / "source"
    shutil.copytree(c["ms"], src)
    return ["--model_path", src]


def single_class_conll(c):
    (c["conll"] / "train.conll").write_text("alice\tO\nparis\tO\n\nbob\tO\n")
    return []


def jsonl_train(rows):
    def mutate(c):
        (c["conll"] / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return ["--train_data", c["conll"] / "train.jsonl"]
    return mutate


B = "finetune"
CASES = {
    # --- inputs missing ------------------------------------------------------------------------------------------
    "missing-preprocess-folder": Case(remove("pre", "."), ["preprocess_output not found"]),
    "missing-model-folder": Case(remove("ms", "."), ["model_selector_output not found"]),
    "missing-train-jsonl": Case(remove("pre", "train.jsonl"), ["has no train.jsonl"]),
    "missing-validation-jsonl": Case(remove("pre", "validation.jsonl"), ["has no validation.jsonl"]),
    "missing-class-names": Case(remove("pre", "class_names.json"), ["no label map in", "class_names.json"]),
    "missing-tokenizer": Case(remove("pre", "tokenizer.json", "tokenizer_config.json", "vocab.txt"),
                              ["has no tokenizer files"]),
    "model-without-config-json": Case(model_without_config, ["no model found in", "expected config.json"]),
    "model-without-config-keeps-args": Case(remove("ms", "config.json"), ["no model found in"]),
    "model-without-weights": Case(remove("ms", "model.safetensors"), ["no weight files", "re-import the model"]),
    "deepspeed-file-missing": Case(lambda c: ["--apply_deepspeed", "true", "--deepspeed", c["tmp"] / "nowhere.json"],
                                   ["deepspeed not found", "nowhere.json"]),
    # --- folder relations: outputs never overwrite inputs or each other ------------------------------------------
    "output-is-the-model-input": Case(path_flag("--pytorch_model_folder", lambda c: c["ms"]),
                                      ["pytorch_model_folder", "is the same as the input model_selector_output"]),
    "output-inside-the-model-input": Case(path_flag("--pytorch_model_folder", lambda c: c["ms"] / "out"),
                                          ["is inside the input model_selector_output"]),
    "output-is-the-data-input": Case(path_flag("--pytorch_model_folder", lambda c: c["pre"]),
                                     ["is the same as the input preprocess_output"]),
    "output-contains-the-inputs": Case(path_flag("--pytorch_model_folder", lambda c: c["tmp"]),
                                       ["contains the input preprocess_output"]),
    "output-symlink-to-the-model-input": Case(symlink_output_to_model,
                                              ["is the same as the input model_selector_output"]),
    "mlflow-output-is-the-data-input": Case(path_flag("--mlflow_model_folder", lambda c: c["pre"]),
                                            ["mlflow_model_folder", "is the same as the input preprocess_output"]),
    "mlflow-output-is-the-pytorch-output": Case(path_flag("--mlflow_model_folder", lambda c: c["pt"]),
                                                ["is the same as the output mlflow_model_folder"]),
    "mlflow-output-inside-the-pytorch-output": Case(path_flag("--mlflow_model_folder", lambda c: c["pt"] / "mlflow"),
                                                    ["contains the output mlflow_model_folder"]),
    "deepspeed-file-inside-the-output": Case(deepspeed_inside_output, ["contains the input deepspeed"]),
    # --- output folders ------------------------------------------------------------------------------------------
    "output-parent-is-a-file": Case(output_parent_is_a_file, ["cannot be created", "is a file, not a folder"]),
    "pytorch-output-is-a-file": Case(write("out", "pytorch_model_folder", "x"), ["pytorch_model_folder", "is a file"]),
    "mlflow-output-is-a-file": Case(write("out", "mlflow_model_folder", "x"), ["mlflow_model_folder", "is a file"]),
    "mlflow-output-not-empty": Case(write("mlflow", "MLmodel", "flavors: {}\n"),
                                    ["mlflow_model_folder", "already exists and is not empty"]),
    "checkpoints-without-resume": Case(write("pt", "checkpoint-4/trainer_state.json", "{}"),
                                       ["already holds checkpoints", "resume_from_checkpoint=true"]),
    "finished-model-without-resume": Case(write("pt", "finetune_args.json", "{}"),
                                          ["already holds a fine-tuned model", "resume_from_checkpoint=true"]),
    "foreign-files-in-the-output": Case(write("pt", "notes.txt", "mine"), ["holds files no fine-tune wrote",
                                                                          "notes.txt"]),
    # --- rows: JSON types ----------------------------------------------------------------------------------------
    "labels-longer-than-input-ids": Case(row("train", 3, lambda r: {**r, "labels": r["labels"] + [-100]}),
                                         ["train.jsonl line 3: labels has", "entries but input_ids has"]),
    "attention-mask-shorter": Case(row("validation", 2, lambda r: {**r, "attention_mask": r["attention_mask"][:-1]}),
                                   ["validation.jsonl line 2: attention_mask has"]),
    "label-id-too-large": Case(row("validation", 2, set_at("labels", 1, 99)),
                               ["validation.jsonl line 2: label id(s) [99] outside the label map"]),
    "label-id-negative": Case(row("train", 7, set_at("labels", 1, -1)),
                              ["train.jsonl line 7: label id(s) [-1] outside the label map"]),
    "label-id-float": Case(row("test", 4, set_at("labels", 1, 1.5)),
                           ["test.jsonl line 4: labels must be a list of integer ids, got 1.5"]),
    "label-id-boolean": Case(row("train", 2, set_at("labels", 1, True)),
                             ["train.jsonl line 2: labels must be a list of integer ids, got True"]),
    "labels-null": Case(row("train", 5, lambda r: {**r, "labels": None}),
                        ["train.jsonl line 5: labels must be a list of integer ids, got NoneType"]),
    "input-ids-not-a-list": Case(row("train", 4, lambda r: {**r, "input_ids": 5}),
                                 ["train.jsonl line 4: input_ids must be a list of integer ids, got int"]),
    "input-id-float": Case(row("validation", 3, set_at("input_ids", 2, 3.5)),
                           ["validation.jsonl line 3: input_ids must be a list of integer ids, got 3.5"]),
    "input-id-string": Case(row("train", 1, set_at("input_ids", 2, "7")), ["input_ids must be a list", "'7'"]),
    "attention-mask-string": Case(row("train", 2, lambda r: {**r, "attention_mask": "1111"}),
                                  ["attention_mask must be a list of integer ids, got str"]),
    "invalid-json-line": Case(row("train", 5, lambda r: '{"input_ids": [2, 3,'),
                              ["train.jsonl line 5: not valid JSON"]),
    "row-not-an-object": Case(row("train", 6, lambda r: "[1, 2, 3]"), ["train.jsonl line 6: expected a JSON object"]),
    "row-missing-labels": Case(row("test", 1, lambda r: {k: v for k, v in r.items() if k != "labels"}),
                               ["test.jsonl line 1: missing key(s) ['labels']"]),
    "train-jsonl-not-utf8": Case(write("pre", "train.jsonl", b'{"input_ids": [2, 3], "x": "\xff"}\n'),
                                 ["train.jsonl is not UTF-8 text"]),
    # --- rows against the model: vocabulary, position and token-type tables -------------------------------------
    "row-longer-than-the-position-table": Case(row("train", 2, longer),
                                               ["train.jsonl line 2: 70 tokens, more than the model's position table "
                                                "takes (64)", "max_seq_length <= 64"]),
    "input-id-outside-the-vocabulary": Case(row("test", 3, set_at("input_ids", 2, 10_000)),
                                            ["test.jsonl line 3: input id(s) [10000] outside the model's vocabulary"]),
    "input-id-negative": Case(row("train", 8, set_at("input_ids", 1, -5)),
                              ["train.jsonl line 8: input id(s) [-5] outside the model's vocabulary"]),
    "token-type-outside-the-table": Case(row("validation", 4, set_at("token_type_ids", 1, 5)),
                                         ["validation.jsonl line 4: token type id(s) outside the model's 2 token "
                                          "types"]),
    "attention-mask-value-two": Case(row("train", 9, set_at("attention_mask", 1, 2)),
                                     ["train.jsonl line 9: attention_mask values [2]"]),
    # --- splits ---------------------------------------------------------------------------------------------------
    "empty-train": Case(write("pre", "train.jsonl", ""), ["train.jsonl holds no rows: the train split is empty"]),
    "empty-validation": Case(write("pre", "validation.jsonl", "\n\n"), ["the validation split is empty"]),
    "empty-test": Case(write("pre", "test.jsonl", "\n"), ["test.jsonl holds no rows: the test split is empty"]),
    "train-labels-all-ignored": Case(all_ignored("train"),
                                     ["train.jsonl: every label is -100", "nothing to learn from"]),
    "validation-labels-all-ignored": Case(all_ignored("validation"), ["validation split has nothing to score"]),
    "test-labels-all-ignored": Case(all_ignored("test"), ["test split has nothing to score"]),
    # --- label map -----------------------------------------------------------------------------------------------
    "class-names-one-class": Case(write("pre", "class_names.json", {"class_names": ["O"]}),
                                  ["has 1 class(es)", "at least two"]),
    "class-names-duplicates": Case(write("pre", "class_names.json", {"class_names": ["O", "B-x", "B-x"]}),
                                   ["repeats", "B-x"]),
    "class-names-not-json": Case(write("pre", "class_names.json", '{"class_names": ["O",'),
                                 ["class_names.json is not valid JSON"]),
    "class-names-not-utf8": Case(write("pre", "class_names.json", b'{"class_names": ["O", "\xfe"]}'),
                                 ["class_names.json is not UTF-8 text"]),
    "class-names-wrong-shape": Case(write("pre", "class_names.json", {"labels": ["O", "B-x"]}),
                                    ["class_names.json must be"]),
    "id2label-keys-not-integers": Case(id2label_not_integers, ["id2label keys must be integers"]),
    "preprocess-args-not-an-object": Case(write("pre", "preprocess_args.json", [1, 2]),
                                          ["preprocess_args.json must hold a JSON object"]),
    # --- tokenizer -----------------------------------------------------------------------------------------------
    "tokenizer-json-truncated": Case(truncate("pre", "tokenizer.json"), ["tokenizer.json is not valid JSON"]),
    "tokenizer-config-not-utf8": Case(write("pre", "tokenizer_config.json", b'{"x": "\xff"}'),
                                      ["tokenizer_config.json is not UTF-8 text"]),
    "tokenizer-json-not-a-tokenizer": Case(write("pre", "tokenizer.json", {"version": "1.0"}),
                                           ["cannot load the tokenizer in", "re-run preprocess"]),
    # --- model folder ----------------------------------------------------------------------------------------------
    "model-selector-args-not-json": Case(write("ms", "model_selector_args.json", "{not json"),
                                         ["model_selector_args.json is not valid JSON"]),
    "model-selector-args-not-an-object": Case(write("ms", "model_selector_args.json", "[]"),
                                              ["model_selector_args.json must hold a JSON object"]),
    "model-config-not-json": Case(write("ms", "config.json", '{"model_type": "bert",'),
                                  ["config.json is not valid JSON"]),
    "model-config-not-utf8": Case(write("ms", "config.json", b'{"model_type": "\xff"}'),
                                  ["config.json is not UTF-8 text"]),
    "model-config-size-not-a-number": Case(edit_json("ms", "config.json", lambda d: {**d, "vocab_size": "big"}),
                                           ["config.json: vocab_size must be a positive integer, got 'big'"]),
    "model-config-type-vocab-negative": Case(edit_json("ms", "config.json", lambda d: {**d, "type_vocab_size": -1}),
                                             ["config.json: type_vocab_size must be an integer >= 0, got -1"]),
    "model-config-unknown-type": Case(edit_json("ms", "config.json", lambda d: {**d, "model_type": "no-such-model"}),
                                      ["cannot read the model config", "config.json"]),
    "family-without-a-token-classification-head": Case(
        edit_json("ms", "config.json", lambda d: {**d, "model_type": "bart", "architectures": None}),
        ["no token-classification head for model type 'bart'"]),
    "head-label-count-mismatch": Case(flags("--ignore_mismatched_sizes", "false"),
                                      ["the model's head has 2 labels but preprocess_output has 6",
                                       "ignore_mismatched_sizes=true"]),
    "weights-truncated": Case(truncate("ms", "model.safetensors", 0.6), ["model.safetensors is damaged",
                                                                          "re-import the model"]),
    "weights-header-garbage": Case(write("ms", "model.safetensors", b"\xff" * 64), ["model.safetensors is damaged"]),
    "weights-bin-crc-mismatch": Case(weights_as_damaged_bin, ["pytorch_model.bin is damaged"]),
    "sharded-index-names-a-missing-shard": Case(
        write("ms", "model.safetensors.index.json", {"weight_map": {"w": "model-00002-of-00002.safetensors"}}),
        ["names shard(s) that are missing", "model-00002-of-00002.safetensors"]),
    # --- LoRA -------------------------------------------------------------------------------------------------------
    "lora-unsupported-family": Case(unsupported_lora_family,
                                    ["no default LoRA target modules for model type 'albert'", "lora_target_modules"]),
    "lora-unknown-target-modules": Case(flags("--apply_lora", "true", "--lora_target_modules", "q_proj,v_proj"),
                                        ["lora_target_modules: ['q_proj', 'v_proj'] match no module of the bert",
                                         "query"]),
    # --- DeepSpeed --------------------------------------------------------------------------------------------------
    "deepspeed-json-unparsable": Case(deepspeed_file('{"zero_optimization": {"stage": 2,}'),
                                      ["deepspeed config", "ds_config.json is not valid JSON"]),
    "deepspeed-json-not-utf8": Case(deepspeed_file(b'{"x": "\xff"}'), ["ds_config.json is not UTF-8 text"]),
    "deepspeed-json-not-an-object": Case(deepspeed_file("[1, 2]"), ["ds_config.json must be a JSON object"]),
    "deepspeed-bad-stage": Case(deepspeed_file({"zero_optimization": {"stage": 4}}),
                                ["zero_optimization.stage must be 0-3, got 4"]),
    "deepspeed-zero-not-an-object": Case(deepspeed_file({"zero_optimization": "yes"}),
                                         ["zero_optimization must be a JSON object"]),
    "deepspeed-section-not-an-object": Case(deepspeed_file({"bf16": True}), ["bf16 must be a JSON object"]),
    "deepspeed-enabled-not-a-boolean": Case(deepspeed_file({"bf16": {"enabled": "yes"}}),
                                            ['bf16.enabled must be true, false or "auto"']),
    "deepspeed-fp16-forced-on-cpu": Case(deepspeed_file({"fp16": {"enabled": True}}),
                                         ["forces fp16, which CPUs do not train in"]),
    "deepspeed-batch-contradicts-ours": Case(deepspeed_file({"train_micro_batch_size_per_gpu": 8}),
                                             ["ds train_micro_batch_size_per_gpu=8 vs hf "
                                              "per_device_train_batch_size=1"]),
    "deepspeed-size-of-the-wrong-type": Case(deepspeed_file({"train_micro_batch_size_per_gpu": "auto",
                                                             "zero_optimization": {"stage": 2,
                                                                                   "reduce_bucket_size": "big"}}),
                                             ["reduce_bucket_size", "valid integer"]),
    "deepspeed-flag-of-the-wrong-type": Case(deepspeed_file({"train_micro_batch_size_per_gpu": "auto",
                                                             "zero_optimization": {"stage": 2,
                                                                                   "overlap_comm": "maybe"}}),
                                             ["overlap_comm", "valid boolean"]),
    "deepspeed-removed-feature": Case(deepspeed_file({"train_micro_batch_size_per_gpu": "auto",
                                                      "amp": {"enabled": True}}),
                                      ["Apex AMP", "has been removed"]),
    "deepspeed-folder-with-two-files": Case(deepspeed_folder_with_two, ["must hold exactly one .json file, found 2"]),
    "deepspeed-without-apply": Case(lambda c: deepspeed_file("{}")(c)[2:], ["apply_deepspeed is false"]),
    "ort-with-deepspeed": Case(flags("--apply_ort", "true", "--apply_deepspeed", "true"),
                               ["apply_ort and apply_deepspeed cannot be combined"]),
    # --- values ----------------------------------------------------------------------------------------------------
    "unknown-optim-flag": Case(flags("--optim", "sgd"), ["--optim", "invalid choice: 'sgd'"]),
    "unknown-strategy-flag": Case(flags("--evaluation_strategy", "no"), ["--evaluation_strategy", "invalid choice"]),
    "unknown-precision-flag": Case(flags("--precision", "8"), ["--precision", "invalid choice: '8'"]),
    "unknown-scheduler-in-config": Case(config_file({"lr_scheduler_type": "exotic"}),
                                        ["lr_scheduler_type='exotic' is not one of"]),
    "unknown-metric-in-config": Case(config_file({"metric_for_best_model": "bleu"}),
                                     ["metric_for_best_model='bleu' is not one of"]),
    "unknown-key-in-config": Case(config_file({"learning_rte": 0.1}), ["unknown parameter(s): ['learning_rte']"]),
    "config-file-not-json": Case(config_file('{"learning_rate": 0.1,'), ["params.json is not valid JSON"]),
    "config-file-not-utf8": Case(config_file(b'{"seed": "\xff"}'), ["params.json is not valid JSON"]),
    "config-file-not-an-object": Case(config_file([1, 2]), ["must hold a JSON object of parameters"]),
    "config-file-missing": Case(lambda c: ["--config", c["tmp"] / "nope.json"], ["--config", "nope.json"]),
    "config-list-for-a-string": Case(config_file({"lora_target_modules": ["query"]}),
                                     ["lora_target_modules=['query'] is not a string"]),
    "config-object-for-a-number": Case(config_file({"learning_rate": {"value": 1}}),
                                       ["learning_rate={'value': 1} is not a number"]),
    "epochs-and-steps-zero": Case(flags("--num_train_epochs", "0", "--max_steps", "0"),
                                  ["num_train_epochs and max_steps are both non-positive"]),
    "epochs-negative-steps-default": Case(flags("--num_train_epochs", "-2"),
                                          ["num_train_epochs and max_steps are both non-positive"]),
    "epochs-not-an-integer": Case(flags("--num_train_epochs", "1.5"), ["num_train_epochs='1.5' is not an integer"]),
    "string-bool-maybe": Case(flags("--apply_lora", "maybe"), ["apply_lora='maybe' is not one of ['true', 'false']"]),
    "string-bool-yes": Case(flags("--apply_early_stopping", "yes"), ["apply_early_stopping='yes'"]),
    "string-bool-in-config": Case(config_file({"apply_early_stopping": "sometimes"}),
                                  ["apply_early_stopping='sometimes' is not one of ['true', 'false']"]),
    "not-a-number": Case(flags("--lora_r", "abc"), ["lora_r='abc' is not a number"]),
    "learning-rate-not-finite": Case(flags("--learning_rate", "nan"), ["learning_rate='nan' is not finite"]),
    "learning-rate-zero": Case(flags("--learning_rate", "0"), ["learning_rate must be > 0, got 0"]),
    "adam-beta1-one": Case(flags("--adam_beta1", "1"), ["adam_beta1 must be >= 0 and < 1, got 1"]),
    "adam-epsilon-zero": Case(flags("--adam_epsilon", "0"), ["adam_epsilon must be > 0"]),
    "weight-decay-negative": Case(flags("--weight_decay", "-0.1"), ["weight_decay must be >= 0"]),
    "warmup-negative": Case(flags("--warmup_steps", "-1"), ["warmup_steps must be >= 0"]),
    "lora-r-zero": Case(flags("--lora_r", "0"), ["lora_r must be >= 1, got 0"]),
    "lora-dropout-one": Case(flags("--lora_dropout", "1"), ["lora_dropout must be >= 0 and < 1"]),
    "batch-size-zero": Case(flags("--per_device_train_batch_size", "0"), ["per_device_train_batch_size must be >= 1"]),
    "accumulation-zero": Case(flags("--gradient_accumulation_steps", "0"),
                              ["gradient_accumulation_steps must be >= 1"]),
    "save-total-limit-zero": Case(flags("--save_total_limit", "0"), ["save_total_limit must be -1 (keep all) or >= 1"]),
    "evaluation-interval-above-one": Case(flags("--evaluation_steps_interval", "1.5"),
                                         ["evaluation_steps_interval must be >= 0 and <= 1"]),
    "seed-negative": Case(flags("--seed", "-1"), ["seed must be >= 0"]),
    "tokenizer-without-padding-token": Case(lambda c: write("pre", "tokenizer_config.json", {
        **json.loads((c["pre"] / "tokenizer_config.json").read_text()), "pad_token": None})(c),
                                            ["has no padding token, so batches cannot be padded"]),
    "test-rows-without-words": Case(row("test", 2, lambda r: {k: r[k] for k in r if k not in ("tokens", "tags")}),
                                    ["test.jsonl line 2: no 'tokens' and 'tags' lists"]),
    "mlflow-file-store-refused": Case(lambda c: c["setenv"]("MLFLOW_TRACKING_URI", f"file://{c['tmp']}/mlruns") or [],
                                      ["MLFLOW_TRACKING_URI=file://", "MLFLOW_ALLOW_FILE_STORE=true"]),
    # --- preprocess -------------------------------------------------------------------------------------------------
    "preprocess-train-missing": Case(remove("conll", "train.conll"), ["train_data not found"], "preprocess"),
    "preprocess-train-empty": Case(write("conll", "train.conll", ""), ["train.conll is empty"], "preprocess"),
    "preprocess-conll-line-without-tag": Case(write("conll", "train.conll", "alice\tB-person\nparis\n"),
                                              ["train.conll line 2 (sentence 1): expected a word and its tag"],
                                              "preprocess"),
    "preprocess-jsonl-missing-column": Case(jsonl_train([{"tokens": ["a"], "entity": ["O"]}]),
                                            ["train.jsonl: no tag column among", "tag_column"], "preprocess"),
    "preprocess-jsonl-count-mismatch": Case(jsonl_train([{"tokens": ["a", "b"], "ner_tags": ["O"]}]),
                                            ["token and tag counts differ (2 tokens in 'tokens', 1 tags in "
                                             "'ner_tags')"], "preprocess"),
    "preprocess-single-class": Case(single_class_conll, ["has 1 distinct tag(s)", "at least two"], "preprocess"),
    "preprocess-ratios-sum-to-one": Case(flags("--validation_ratio", "0.6", "--test_ratio", "0.5"),
                                         ["validation_ratio + test_ratio must be < 1"], "preprocess"),
    "preprocess-max-seq-length-one": Case(flags("--max_seq_length", "1"), ["max_seq_length must be >= 2"],
                                          "preprocess"),
    "preprocess-output-is-the-model-input": Case(path_flag("--preprocess_output", lambda c: c["ms"]),
                                                 ["preprocess_output",
                                                  "is the same as the input model_selector_output"],
                                                 "preprocess"),
    "preprocess-output-inside-the-data": Case(lambda c: ["--train_data", c["conll"], "--preprocess_output",
                                                         c["conll"] / "encoded"],
                                              ["is inside the input train_data"], "preprocess"),
    "preprocess-output-is-the-train-file": Case(path_flag("--preprocess_output", lambda c: c["conll"] / "train.conll"),
                                                ["is the same as the input train_data"], "preprocess"),
    "preprocess-output-parent-is-a-file": Case(output_parent_is_a_file, ["cannot be created", "is a file"],
                                               "preprocess"),
    "preprocess-no-tokenizer": Case(remove("ms", "tokenizer.json", "tokenizer_config.json", "vocab.txt"),
                                    ["no tokenizer files"], "preprocess"),
    "preprocess-conll-line-with-fewer-columns": Case(write("conll", "train.conll",
                                                           "John\tPROPN\tB-PER\nwent\tVERB\tO\nhome\thome\n"),
                                                     ["train.conll line 3 (sentence 1) has 2 columns",
                                                      "the first word line (line 1) 3"], "preprocess"),
    "preprocess-iob2-read-as-bioes": Case(flags("--tag_scheme", "bioes"),
                                          ["tag_scheme=bioes reads", "as no entity", "the tags look like IOB2"],
                                          "preprocess"),
    "preprocess-iob2-read-as-bilou": Case(flags("--tag_scheme", "bilou"), ["the tags look like IOB2"], "preprocess"),
    "preprocess-mixed-prefixed-and-plain-tags": Case(write("conll", "train.conll",
                                                           "alice\tB-person\nwent\tO\n\nbob\tB-person\nran\tVERB\n"),
                                                     ["the tags mix span-prefixed labels", "'VERB' first in the train "
                                                      "data", "train.conll, sentence 2, word 2 'ran'"], "preprocess"),
    "preprocess-plain-tags-read-as-iob2": Case(write("conll", "train.conll", "alice\tNOUN\nwent\tVERB\n\nbob\tNOUN\n",
                                                     ["--tag_scheme", "iob2"]),
                                               ["tag_scheme=iob2 but the labels", "have no span prefix",
                                                "'NOUN' first in the train data", "sentence 1, word 1 'alice'"],
                                               "preprocess"),
    "preprocess-tokenizer-cannot-encode": Case(lambda c: [*write("conll", "train.conll", "alice\tB-person\nin\tO\n"
                                                                                   "\n2019\tO\nparis\tB-location\n")(c),
                                                          *edit_json("ms", "tokenizer.json", _without_unk)(c)],
                                               ["cannot encode a character outside its vocabulary", "[UNK]"],
                                               "preprocess"),
    # an output folder is new or empty: what is in it is never replaced, nor is a file where it should be
    "preprocess-output-not-empty": Case(write("pre_out", "notes.txt", "keep me"),
                                        ["preprocess_output", "already exists and is not empty"], "preprocess"),
    "preprocess-output-is-a-file": Case(write("out", "preprocessed", "keep me"),
                                        ["preprocess_output", "is a file; give a folder"], "preprocess"),
    # --- model import ------------------------------------------------------------------------------------------------
    "import-hub-unreachable-creates-nothing": Case(flags("--model_path", "org/name", "--hf_endpoint",
                                                         "http://127.0.0.1:9"),
                                                   ["cannot download org/name@main"], "model-import"),
    "import-output-not-empty": Case(write("import_out", "notes.txt", "keep me"),
                                    ["model_selector_output", "already exists and is not empty"], "model-import"),
    "import-output-is-a-file": Case(write("out", "imported", "keep me"),
                                    ["model_selector_output", "is a file; give a folder"], "model-import"),
    "import-no-source": Case(flags("--model_path", ""), ["give exactly one model source"], "model-import"),
    "import-two-sources": Case(lambda c: ["--mlflow_model_path", c["ms"]], ["give exactly one model source"],
                               "model-import"),
    "import-source-missing": Case(path_flag("--model_path", lambda c: c["tmp"] / "nowhere"), ["nowhere not found in this container"],
                                  "model-import"),
    "import-source-without-config": Case(lambda c: remove("ms", "config.json", "model_selector_args.json")(c),
                                         ["no model found in"], "model-import"),
    "import-output-is-the-source": Case(path_flag("--model_selector_output", lambda c: c["ms"]),
                                        ["model_selector_output", "is the same as the input model_path"],
                                        "model-import"),
    "import-output-inside-the-source": Case(path_flag("--model_selector_output", lambda c: c["ms"] / "copy"),
                                            ["is inside the input model_path"], "model-import"),
    "import-source-inside-the-output": Case(import_source_inside_output, ["contains the input model_path"],
                                            "model-import"),
    "import-mlmodel-not-yaml": Case(mlmodel_invalid_yaml, ["MLmodel is not valid YAML"], "model-import"),
    "import-config-not-json": Case(write("ms", "config.json", "{"), ["config.json is not valid JSON"], "model-import"),
    # --- evaluate ----------------------------------------------------------------------------------------------------
    "evaluate-model-of-other-classes": Case(flags(), ["predicts", "but the preprocess output has the classes"],
                                            "evaluate"),  # an imported model: its label map, not its weights
    "evaluate-predictions-exist": Case(write("out", "predictions.jsonl", "keep me"),
                                       ["predictions", "already exists; give a new path"], "evaluate"),
    "evaluate-predictions-is-a-folder": Case(write("predictions", "notes.txt", "keep me"),
                                             ["predictions", "is a folder; give a file path"], "evaluate"),
    "evaluate-preprocess-output-is-a-file": Case(path_flag("--preprocess_output", lambda c: c["texts"] / "texts.txt"),
                                                 ["is a file; give the preprocess output folder"], "evaluate"),
    "evaluate-predictions-overwrite-a-split": Case(path_flag("--predictions", lambda c: c["pre"] / "test.jsonl"),
                                                   ["predictions", "is inside the input preprocess_output"],
                                                   "evaluate"),
    "evaluate-predictions-inside-the-model": Case(path_flag("--predictions", lambda c: c["ms"] / "p.jsonl"),
                                                  ["is inside the input model"], "evaluate"),
    "evaluate-model-missing": Case(path_flag("--model", lambda c: c["tmp"] / "nowhere"), ["model not found"],
                                   "evaluate"),
    "evaluate-data-missing": Case(path_flag("--preprocess_output", lambda c: c["tmp"] / "nowhere"),
                                  ["preprocess_output not found"], "evaluate"),
    "evaluate-split-missing": Case(remove("pre", "test.jsonl"), ["has no test split"], "evaluate"),
    "evaluate-unknown-split": Case(flags("--split", "dev"), ["--split", "invalid choice: 'dev'"], "evaluate"),
    "evaluate-batch-size-zero": Case(flags("--batch_size", "0"), ["batch_size must be >= 1"], "evaluate"),
    "evaluate-model-link-loop": Case(link("ms", "loop", lambda c: c["ms"]), ["loop", "is a symbolic link loop"],
                                     "evaluate"),
    "evaluate-data-link-out-of-the-input": Case(link("pre", "test.jsonl", lambda c: c["tmp"] / "elsewhere" / "t.jsonl"),
                                                ["preprocess_output/test.jsonl is a symbolic link to",
                                                 "outside the input folder"], "evaluate"),
    # --- symbolic links in the inputs ------------------------------------------------------------------------------
    "data-link-out-of-the-input": Case(link("pre", "train.jsonl", lambda c: c["tmp"] / "elsewhere" / "train.jsonl"),
                                       ["train.jsonl is a symbolic link to", "elsewhere/train.jsonl, outside the "
                                        "input folder", "copy the file into the folder"]),
    "model-link-out-of-the-input": Case(link("ms", "config.json", lambda c: c["tmp"] / "config.json"),
                                        ["model_selector_output/config.json is a symbolic link to",
                                         "outside the input folder"]),
    "model-broken-link": Case(link("ms", "notes.txt", lambda c: c["tmp"] / "nowhere.txt"),
                              ["notes.txt is a broken symbolic link"]),
    "preprocess-data-folder-link-out": Case(link("conll", "train.conll", lambda c: c["tmp"] / "corpus" / "all.conll",
                                                 as_flag="--train_data"),
                                            ["conll/train.conll is a symbolic link to", "outside the input folder"],
                                            "preprocess"),
    "preprocess-tokenizer-link-out": Case(link("ms", "tokenizer.json", lambda c: c["tmp"] / "tokenizer.json"),
                                          ["tokenizer.json is a symbolic link to", "outside the input folder"],
                                          "preprocess"),
    # --- data import -------------------------------------------------------------------------------------------------
    "data-import-no-source": Case(flags("--data_uri", ""), ["data_uri is required"], "data-import"),
    "data-import-source-missing": Case(path_flag("--data_uri", lambda c: c["tmp"] / "nowhere"),
                                       ["nowhere not found in this container"], "data-import"),
    "data-import-unknown-scheme": Case(flags("--data_uri", "ftp://host/data"),
                                       ["data_uri='ftp://host/data': scheme ftp:// is not supported"], "data-import"),
    "data-import-revision-of-a-path": Case(flags("--data_revision", "main"),
                                           ["is a path: a revision applies to Hugging Face hub sources only"],
                                           "data-import"),
    "data-import-minio-without-endpoint": Case(flags("--data_uri", "minio://mlpipeline/data"),
                                               ["minio:// names Kubeflow Pipelines' object store",
                                                "s3_endpoint_url"], "data-import"),
    "data-import-endpoint-not-http": Case(flags("--s3_endpoint_url", "minio:9000"),
                                          ["s3_endpoint_url='minio:9000' must be an http(s):// URL"], "data-import"),
    "data-import-hub-file-path": Case(flags("--data_uri", "hf://datasets/org/name/train.conll"),
                                      ["give the repository", "not a path inside it"], "data-import"),
    "data-import-hub-unreachable-creates-nothing": Case(flags("--data_uri", "hf://datasets/org/name",
                                                              "--hf_endpoint", "http://127.0.0.1:9"),
                                                        ["cannot download"], "data-import"),
    "data-import-output-not-empty": Case(write("data_out", "notes.txt", "keep me"),
                                         ["data_output", "already exists and is not empty"], "data-import"),
    "data-import-output-is-the-source": Case(path_flag("--data_output", lambda c: c["conll"]),
                                             ["data_output", "is the same as the input data_uri"], "data-import"),
    "data-import-output-inside-the-source": Case(path_flag("--data_output", lambda c: c["conll"] / "copy"),
                                                 ["is inside the input data_uri"], "data-import"),
    "data-import-output-holds-the-source-file": Case(lambda c: ["--data_uri", c["conll"] / "train.conll",
                                                                "--data_output", c["conll"]],
                                                     ["data_output", "contains the input data_uri"], "data-import"),
    # --- predict -------------------------------------------------------------------------------------------------
    "predict-predictions-exist": Case(write("out", "predictions.jsonl", "keep me"),
                                      ["predictions", "already exists; give a new path"], "predict"),
    "predict-predictions-is-a-folder": Case(write("predictions", "notes.txt", "keep me"),
                                            ["predictions", "is a folder; give a file path"], "predict"),
    "predict-data-missing": Case(path_flag("--data", lambda c: c["tmp"] / "nowhere.txt"), ["data not found"],
                                 "predict"),
    "predict-model-missing": Case(path_flag("--model", lambda c: c["tmp"] / "nowhere"), ["model not found"],
                                  "predict"),
    "predict-predictions-overwrite-the-data": Case(path_flag("--predictions", lambda c: c["texts"] / "texts.txt"),
                                                   ["predictions", "is the same as the input data"], "predict"),
    "predict-predictions-inside-the-model": Case(path_flag("--predictions", lambda c: c["ms"] / "p.jsonl"),
                                                 ["is inside the input model"], "predict"),
    "predict-data-folder-with-two-files": Case(predict_data("a.txt", "alice\n", "b.txt"),
                                               ["must hold exactly one data file", "'a.txt', 'b.txt'"], "predict"),
    "predict-unknown-suffix": Case(predict_data("texts.xyz", "alice\n"),
                                   ["cannot tell the format of texts.xyz", "set data_format"], "predict"),
    "predict-jsonl-row-without-text": Case(predict_data("rows.jsonl", '{"text": "alice"}\n{"words": "bob"}\n'),
                                           ["rows.jsonl line 2: expected a string column 'text' or a list column "
                                            "'tokens'"], "predict"),
    "predict-jsonl-invalid-line": Case(predict_data("rows.jsonl", '{"text": "alice"}\n{"text": \n'),
                                       ["rows.jsonl line 2: not valid JSON"], "predict"),
    "predict-csv-without-text-column": Case(predict_data("rows.csv", "id,body\n1,alice\n"),
                                            ["rows.csv: no column 'text' (text_column)"], "predict"),
    "predict-data-not-utf8": Case(predict_data("texts.txt", b"alice \xff\n"), ["texts.txt is not UTF-8 text"],
                                  "predict"),
    "predict-onnx-folder-without-a-model": Case(write("ms", "onnx_export.json", {"error": "export failed"}),
                                                ["holds no ONNX model: export failed"], "predict"),
    "predict-batch-size-zero": Case(flags("--batch_size", "0"), ["batch_size must be >= 1"], "predict"),
    "predict-unknown-format": Case(flags("--data_format", "xml"), ["--data_format", "invalid choice: 'xml'"],
                                   "predict"),
    "predict-data-folder-link-out": Case(link("texts", "texts.txt", lambda c: c["tmp"] / "corpus" / "texts.txt",
                                              as_flag="--data"),
                                         ["texts/texts.txt is a symbolic link to", "outside the input folder"],
                                         "predict"),
}


def test_the_suite_is_large_and_covers_every_program():
    assert len(CASES) + len(STANDALONE) >= 80
    assert {case.program for case in CASES.values()} == set(PROGRAMS)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_fast(name, ctx, capsys, caplog):
    case = CASES[name]
    extra = case.mutate(ctx)
    err = run_rejected(case.program, ctx, extra, capsys, caplog)
    for text in case.expected:
        assert text in err, f"{text!r} not in stderr: {err}"


# --- cases that need their own setup ----------------------------------------------------------------------------------
@contextlib.contextmanager
def mounted(folder: Path, options: str):
    """A tmpfs mounted at `folder` (root only; skips where mounting is not permitted)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_output_volume(ctx, capsys, caplog):
    volume = ctx["tmp"] / "readonly"
    if os.geteuid() != 0:  # an unprivileged user cannot write a folder without write permission
        volume.mkdir()
        volume.chmod(0o555)
        manager = contextlib.nullcontext(True)
    else:
        manager = mounted(volume, "ro,size=1m")
    with manager as ready:
        if not ready:
            pytest.skip("cannot make a read-only volume here (no mount permission)")
        err = run_rejected("finetune", ctx, ["--pytorch_model_folder", volume / "pt"], capsys, caplog)
    assert "pytorch_model_folder" in err and "is not writable (Read-only file system)" in err


def test_output_volume_too_small(ctx, capsys, caplog, monkeypatch):
    """A 1 MiB volume: the run's 8 checkpoints and models need about 2.6 MiB (where mounting is not permitted, the
    check is shown 1 MiB free instead)."""
    volume = ctx["tmp"] / "small"
    with mounted(volume, "size=1m") as ready:
        if not ready:
            real = shutil.disk_usage
            monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2**20)
                                if str(p).startswith(str(volume)) else real(p))
        err = run_rejected("finetune", ctx, ["--pytorch_model_folder", volume / "pt", "--mlflow_model_folder",
                                             volume / "mlflow", "--num_train_epochs", "8",
                                             "--per_device_train_batch_size", "16"], capsys, caplog)
    assert "not enough free space for pytorch_model_folder and mlflow_model_folder" in err
    assert "8 checkpoint(s)" in err and "lower save_total_limit" in err


def test_ort_without_torch_ort(ctx, capsys, caplog):
    try:
        import onnxruntime.training.ortmodule  # noqa: F401
        pytest.skip("ONNX Runtime training is installed here")
    except ImportError:
        pass
    err = run_rejected("finetune", ctx, ["--apply_ort", "true"], capsys, caplog)
    assert "apply_ort=true needs ONNX Runtime training (ORTModule" in err and "images/Dockerfile.ort" in err


def test_a_link_inside_an_input_folder_is_read(ctx):
    """A symbolic link that stays inside its input folder is allowed (read as its target); one out of it is not."""
    from trainer.config import FinetuneConfig
    from trainer.errors import InputError
    from trainer.validation import check_io

    link("pre", "train.jsonl", lambda c: c["pre"] / "splits" / "train.jsonl")(ctx)
    config = FinetuneConfig(preprocess_output=str(ctx["pre"]), model_selector_output=str(ctx["ms"]),
                            pytorch_model_folder=str(ctx["pt"]), mlflow_model_folder=str(ctx["mlflow"]))
    check_io(config)
    link("pre", "notes.txt", lambda c: c["texts"] / "texts.txt")(ctx)
    with pytest.raises(InputError, match="outside the input folder"):
        check_io(config)


STANDALONE = [test_read_only_output_volume, test_output_volume_too_small, test_ort_without_torch_ort]


@pytest.mark.parametrize("name", ["deepspeed-size-of-the-wrong-type", "evaluate-predictions-overwrite-a-split",
                                  "predict-jsonl-row-without-text", "data-import-unknown-scheme"])
def test_one_line_in_a_real_process(name, ctx):
    """As a real process prints it: stderr is the one error line (no log line, no warning, no progress bar)."""
    case = CASES[name]
    extra = case.mutate(ctx)
    module = {"finetune": "finetune_main", "preprocess": "preprocess_main", "evaluate": "evaluate_main",
              "predict": "predict_main", "data-import": "data_import_main"}[case.program]
    before = listing(ctx["tmp"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", f"import sys; from trainer.cli import {module}; "
                           f"sys.exit({module}(sys.argv[1:]))", *argv_of(case.program, ctx, extra)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr[-3000:]
    assert all(text in done.stderr for text in case.expected), done.stderr
    assert listing(ctx["tmp"]) == before
