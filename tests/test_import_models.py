"""Model import: weights per folder from the hub, folders without PyTorch weights, config files that are not JSON
objects, LoRA adapters with their base model, and messages that name the source the user gave."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_model_import
from hub_server import HubServer
from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)
from trainer.cli import model_import_main
from trainer.constants import BASE_MODEL_SUBDIR
from trainer.errors import InputError


def _plain(tiny_model_selector: Path, dst: Path) -> Path:
    shutil.copytree(tiny_model_selector, dst)
    (dst / "model_selector_args.json").unlink()
    return dst


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _refused(capsys, out: Path, *args: str) -> str:
    """model import's CLI on `args`: exit 2, one line, nothing written; the line."""
    assert model_import_main(["--model_selector_output", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.glob(f".{out.name}.*")))
    return err[0]


def _adapter(base: Path, folder: Path, base_name: str) -> Path:
    """A peft LoRA adapter of the model in `base` (no tokenizer), its adapter_config.json naming `base_name`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForTokenClassification

    model = get_peft_model(AutoModelForTokenClassification.from_pretrained(base),
                           LoraConfig(task_type="TOKEN_CLS", r=4, target_modules=["query", "value"]))
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base_name}))
    return folder


@pytest.fixture
def hub(tmp_path, tiny_model_selector, monkeypatch):
    """A hub: org/tiny-bert, org/mixed (root pytorch_model.bin, safetensors only in 2_Dense/), org/tf-only
    (tf_model.h5 and flax_model.msgpack), org/lora (an adapter of org/tiny-bert); offline mode on, as in the
    images."""
    from safetensors.torch import load_file, save_file
    import torch

    plain = _plain(tiny_model_selector, tmp_path / "hub" / "tiny-bert")
    mixed = tmp_path / "hub" / "mixed"
    shutil.copytree(plain, mixed)
    torch.save(load_file(mixed / "model.safetensors"), mixed / "pytorch_model.bin")
    (mixed / "model.safetensors").unlink()
    (mixed / "2_Dense").mkdir()
    save_file({"linear.weight": torch.zeros(2, 2)}, mixed / "2_Dense" / "model.safetensors")
    (mixed / "2_Dense" / "pytorch_model.bin").write_bytes(b"pickle beside safetensors: not downloaded")
    tf_only = tmp_path / "hub" / "tf-only"
    shutil.copytree(plain, tf_only)
    (tf_only / "model.safetensors").unlink()
    (tf_only / "tf_model.h5").write_bytes(b"h5")
    (tf_only / "flax_model.msgpack").write_bytes(b"msgpack")
    lora = _adapter(plain, tmp_path / "hub" / "lora", "org/tiny-bert")
    server = HubServer()
    for name, folder, sha in (("tiny-bert", plain, "a"), ("mixed", mixed, "b"), ("tf-only", tf_only, "c"),
                              ("lora", lora, "d")):
        server.add(f"org/{name}", folder, sha=sha * 40)
    url = server.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server, url
    server.stop()


# ---- 1: weights ---------------------------------------------------------------------------------------------------

def test_a_root_bin_is_downloaded_when_only_a_sub_folder_has_safetensors(tmp_path, hub):
    from transformers import AutoModelForTokenClassification

    _, url = hub
    out = tmp_path / "o" / "mixed"
    assert model_import_main(["--model_selector_output", str(out), "--model_path", "org/mixed",
                              "--hf_endpoint", url]) == 0
    assert {"pytorch_model.bin", "2_Dense/model.safetensors"} <= _files(out)
    assert "2_Dense/pytorch_model.bin" not in _files(out)  # its folder has safetensors
    assert AutoModelForTokenClassification.from_pretrained(out).config.model_type == "bert"
    from trainer.sources import pickles_beside_safetensors

    assert pickles_beside_safetensors(["model.safetensors", "pytorch_model.bin", "a/model.bin", "b/x.pt",
                                       "b/y.safetensors", "c[1]/m.safetensors", "c[1]/m.bin"]) == \
        ["pytorch_model.bin", "b/x.pt", "c[[]1]/m.bin"]


def test_a_model_without_pytorch_weights_is_refused(tmp_path, hub, tiny_model_selector, capsys):
    _, url = hub
    line = _refused(capsys, tmp_path / "o" / "tf", "--model_path", "org/tf-only", "--hf_endpoint", url)
    assert "no PyTorch weights (*.safetensors or *.bin) in org/tf-only" in line
    # the listing names the repository's weights, also those the hub download skips
    assert "tf_model.h5 (not downloaded)" in line and "flax_model.msgpack (not downloaded)" in line
    local = _plain(tiny_model_selector, tmp_path / "flax")
    (local / "model.safetensors").unlink()
    (local / "flax_model.msgpack").write_bytes(b"msgpack")
    (local / "training_args.bin").write_bytes(b"not weights")
    line = _refused(capsys, tmp_path / "o" / "flax", "--model_path", str(local))
    assert f"no PyTorch weights (*.safetensors or *.bin) in {local}" in line and "flax_model.msgpack" in line
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_selector)}))
    line = _refused(capsys, tmp_path / "o" / "adapter", "--model_path", str(adapter))
    assert "no PyTorch weights (adapter_model*.safetensors or adapter_model*.bin)" in line
    # sharded weights count
    sharded = _plain(tiny_model_selector, tmp_path / "sharded")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"x": "model-00001-of-00001.safetensors"}}))
    run_model_import(model_selector_output=str(tmp_path / "o" / "sharded"), model_path=str(sharded))


def test_a_model_type_without_a_token_classification_head_is_refused_at_import(tmp_path, tiny_model_selector,
                                                                                capsys):
    """A ViT (no token-classification head in transformers) imported with exit 0 and passed preprocess; only the
    fine-tune, two steps later, refused it."""
    vit = _plain(tiny_model_selector, tmp_path / "vit")
    config = json.loads((vit / "config.json").read_text())
    (vit / "config.json").write_text(json.dumps({**config, "model_type": "vit", "architectures": ["ViTModel"]}))
    line = _refused(capsys, tmp_path / "o" / "vit", "--model_path", str(vit))
    assert f"{vit}/config.json: transformers has no token-classification head for model type 'vit'" in line


# ---- 3: config files that are not JSON objects ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["config.json", "adapter_config.json"])
@pytest.mark.parametrize("content,message", [
    (b"[1, 2]", "must hold a JSON object, not list"), (b'"bert"', "must hold a JSON object, not str"),
    (b"[]", "must hold a JSON object, not list"), (b"\xff\xfe{}", "is not UTF-8 text"),
])
def test_a_config_that_is_not_a_json_object_is_refused(tmp_path, tiny_model_selector, capsys, name, content,
                                                       message):
    model = _plain(tiny_model_selector, tmp_path / "model")
    if name == "adapter_config.json":
        (model / "config.json").unlink()
        (model / "model.safetensors").rename(model / "adapter_model.safetensors")
    (model / name).write_bytes(content)
    line = _refused(capsys, tmp_path / "o", "--model_path", str(model))
    assert f"{model / name}" in line and message in line


# ---- 4: a LoRA adapter brings its base model -----------------------------------------------------------------------

def test_a_lora_adapter_brings_the_base_model_it_names(tmp_path, hub, tiny_model_selector, capsys):
    from trainer.model_io import load_token_classification_model, resolve_model_dir

    _, url = hub
    for given, out in (("org/lora", tmp_path / "o" / "hub"),
                       (str(_adapter(tiny_model_selector, tmp_path / "local", str(tiny_model_selector))),
                        tmp_path / "o" / "local")):
        meta = run_model_import(model_selector_output=str(out), model_path=given, hf_endpoint=url)
        assert meta["is_lora_adapter"] and meta["model_family"] == "bert" and meta["has_tokenizer"]
        assert {"adapter_config.json", "adapter_model.safetensors", f"{BASE_MODEL_SUBDIR}/config.json",
                f"{BASE_MODEL_SUBDIR}/model.safetensors", "tokenizer.json"} <= _files(out)
        assert f"{BASE_MODEL_SUBDIR}/model_selector_args.json" not in _files(out)
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_MODEL_SUBDIR
        model = load_token_classification_model(resolve_model_dir(out))  # as finetune loads it
        assert model.config.model_type == "bert"
    assert meta["base_model"]["name"] == str(tiny_model_selector)
    # the hub base was fetched like model_path: same endpoint, pinned commit
    hub_meta = json.loads((tmp_path / "o" / "hub" / "model_selector_args.json").read_text())
    assert hub_meta["base_model"] == {"name": "org/tiny-bert", "source_uri": "org/tiny-bert", "revision": "a" * 40,
                                      "hub_endpoint": url}
    # the import output is itself an adapter with its base_model/: imported again as it is
    again = run_model_import(model_selector_output=str(tmp_path / "o" / "again"), model_path=str(out))
    assert "base_model" not in again and (tmp_path / "o" / "again" / BASE_MODEL_SUBDIR / "config.json").exists()


def test_a_lora_adapter_whose_base_cannot_be_found_is_refused(tmp_path, hub, tiny_model_selector, capsys):
    _, url = hub
    for base, message in (("org/missing", "no such model repository"),
                          (str(tmp_path / "gone"), "not found in this container"),
                          ("", "names no base model we can import")):
        adapter = _adapter(tiny_model_selector, tmp_path / f"adapter{len(message)}", base)
        line = _refused(capsys, tmp_path / "o" / "x", "--model_path", str(adapter), "--hf_endpoint", url)
        assert "adapter_config.json" in line and message in line, line


# ---- 7: messages name the source the user gave ---------------------------------------------------------------------

def test_no_model_in_a_store_prefix_names_the_uri_and_where_a_model_lies(tmp_path, s3, tiny_model_selector):
    from trainer import objstore

    client, bucket, endpoint = s3
    objstore.upload_tree(client, tiny_model_selector, objstore.S3Uri(bucket, "models/hf/tiny-bert"))
    with pytest.raises(InputError) as info:
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path=f"s3://{bucket}/models",
                         s3_endpoint_url=endpoint)
    message = str(info.value)
    assert message.startswith(f"no model found in s3://{bucket}/models:") and "download" not in message
    assert "a model lies in hf/tiny-bert/" in message


def test_the_head_check_reads_transformers_table_without_importing_torch(tmp_path, tiny_model_selector):
    """Model import checks the model type against transformers' auto-model table as read from its source: the same
    types as the imported table, and the step never loads torch (1.35 s of a 1.7 s local import)."""
    import subprocess
    import sys

    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

    from trainer.validation import token_classification_types

    assert token_classification_types() == frozenset(MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)
    code = ("import sys\nfrom trainer.cli import model_import_main\n"
            "status = model_import_main(sys.argv[1:])\nprint('torch imported:', 'torch' in sys.modules)\n"
            "sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, "--model_path", str(tiny_model_selector),
                           "--model_selector_output", str(tmp_path / "imported")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported: False" in done.stdout
