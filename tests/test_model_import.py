"""trainer.model_import: HF folders, earlier fine-tunes, LoRA adapters, MLflow models, metadata and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_model_import
from trainer.cli import model_import_main as main
from trainer.errors import ConfigError, InputError
from trainer.model_io import read_model_selector_args, resolve_model_dir


def _plain_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "model_selector_args.json").unlink()
    return dst


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_hf_folder_roundtrip(tmp_path, tiny_model_selector):
    src = _plain_model(tiny_model_selector, tmp_path / "my-bert")
    out = tmp_path / "out"
    meta = run_model_import(model_selector_output=str(out), model_path=str(src))
    assert meta["model_name"] == "my-bert" and meta["model_family"] == "bert" and meta["source"] == "model_path"
    assert meta["model_name_or_path"] == str(src.resolve()) and meta["has_tokenizer"] is True
    assert read_model_selector_args(out) == meta
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "model_selector_args.json"} <= _names(out)
    assert resolve_model_dir(out) == out
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    assert AutoModelForTokenClassification.from_pretrained(out).config.model_type == "bert"
    assert AutoTokenizer.from_pretrained(out).is_fast
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]

    named = run_model_import(model_selector_output=str(tmp_path / "named"), model_path=str(src), model_name="custom")
    assert named["model_name"] == "custom"


def test_model_import_output_and_finetune_output(tmp_path, tiny_model_selector):
    # An earlier model-import output keeps its name.
    meta = run_model_import(model_selector_output=str(tmp_path / "again"), model_path=str(tiny_model_selector))
    assert meta["model_name"] == "tiny-bert" and meta["model_family"] == "bert"
    # An earlier fine-tune output: the best model at the root; checkpoints and trainer state are not copied.
    finetuned = _plain_model(tiny_model_selector, tmp_path / "finetuned")
    (finetuned / "checkpoint-10").mkdir()
    (finetuned / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    (finetuned / "training_args.bin").write_bytes(b"x")
    (finetuned / "metrics.json").write_text("{}")
    out = tmp_path / "from_finetune"
    run_model_import(model_selector_output=str(out), model_path=str(finetuned))
    assert "checkpoint-10" not in _names(out) and "training_args.bin" not in _names(out)
    assert "config.json" in _names(out)


def test_lora_adapter_folder(tmp_path, tiny_model_selector):
    base = _plain_model(tiny_model_selector, tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(base), "task_type": "TOKEN_CLS", "r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0")
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json"):
        if (base / name).exists():
            shutil.copy(base / name, adapter / name)
    meta = run_model_import(model_selector_output=str(tmp_path / "out"), model_path=str(adapter))
    assert meta["is_lora_adapter"] is True and meta["model_family"] == "bert"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= _names(tmp_path / "out")


def _mlflow_layout(tmp_path: Path, src: Path) -> Path:
    """The layout mlflow.transformers.save_model writes (checked by hand with mlflow 3.17): MLmodel, model/,
    components/tokenizer/."""
    root = tmp_path / "mlflow_model"
    (root / "model").mkdir(parents=True)
    (root / "components" / "tokenizer").mkdir(parents=True)
    for f in src.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, root / "model" / f.name)
        elif f.name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(f, root / "components" / "tokenizer" / f.name)
    (root / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.transformers\n  transformers:\n"
        "    components:\n    - tokenizer\n    model_binary: model\n    source_model_name: org/tiny-bert\n"
        "    task: token-classification\n    transformers_version: 5.24.0\nmlflow_version: 3.17.2\n")
    return root


def test_mlflow_model(tmp_path, tiny_model_selector):
    root = _mlflow_layout(tmp_path, tiny_model_selector)
    out = tmp_path / "out"
    meta = run_model_import(model_selector_output=str(out), mlflow_model_path=str(root))
    assert meta["source"] == "mlflow_model_path" and meta["model_name"] == "org/tiny-bert"
    assert meta["model_family"] == "bert" and meta["mlflow_flavor"]["task"] == "token-classification"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= _names(out)
    assert "MLmodel" not in _names(out)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).is_fast
    # The same folder given as model_path is recognised by its MLmodel file.
    meta = run_model_import(model_selector_output=str(tmp_path / "out2"), model_path=str(root))
    assert meta["source"] == "model_path (MLflow)" and (tmp_path / "out2" / "config.json").exists()


def test_mlflow_without_weights_is_explained(tmp_path):
    root = tmp_path / "mlflow_ref"
    root.mkdir()
    (root / "MLmodel").write_text("flavors:\n  transformers:\n    source_model_name: bert-base-cased\n")
    with pytest.raises(InputError, match="without saved weights"):
        run_model_import(model_selector_output=str(tmp_path / "out"), mlflow_model_path=str(root))
    plain = tmp_path / "not_mlflow"
    plain.mkdir()
    with pytest.raises(InputError, match="no MLmodel"):
        run_model_import(model_selector_output=str(tmp_path / "out"), mlflow_model_path=str(plain))


def test_errors(tmp_path, tiny_model_selector):
    with pytest.raises(ConfigError, match="exactly one"):
        run_model_import(model_selector_output=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="exactly one"):
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path=str(tiny_model_selector),
                         mlflow_model_path=str(tiny_model_selector))
    with pytest.raises(InputError, match="not found"):
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="config.json"):
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path=str(empty))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli(tmp_path, tiny_model_selector, capsys):
    assert main(["--model_selector_output", str(tmp_path / "o"), "--model_path", str(tiny_model_selector)]) == 0
    assert json.loads(capsys.readouterr().out)["model_family"] == "bert"
    assert main(["--model_selector_output", str(tmp_path / "o2")]) == 2
