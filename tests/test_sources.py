"""Models and data from where they live on a cluster: the Hugging Face hub (a local server speaking its protocol,
through HF_ENDPOINT), an object store (moto's S3 server), a path in the container (a PVC); symlinks in inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_model_import, write_conll, make_sentences
from hub_server import HubServer
from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)
from trainer.errors import ConfigError, InputError
from trainer.sources import parse_source

SHA_MAIN, SHA_V1 = "a" * 40, "b" * 40


@pytest.fixture
def hub(tmp_path, tiny_model_selector, monkeypatch):
    """A hub with org/tiny-bert: main = the tiny model, v1 = the same with another config; offline mode on, as in
    the images."""
    main = tmp_path / "hub" / "main"
    shutil.copytree(tiny_model_selector, main)
    (main / "model_selector_args.json").unlink()
    (main / "pytorch_model.bin").write_bytes(b"pickle weights: not downloaded when safetensors exist")
    (main / "onnx").mkdir()
    (main / "onnx" / "model.onnx").write_bytes(b"not downloaded")
    v1 = tmp_path / "hub" / "v1"
    shutil.copytree(main, v1)
    config = json.loads((v1 / "config.json").read_text())
    (v1 / "config.json").write_text(json.dumps({**config, "label2id": {"O": 0, "X": 1}, "id2label": {"0": "O",
                                                                                                       "1": "X"}}))
    data = tmp_path / "hub" / "dataset"
    data.mkdir()
    write_conll(data / "train.conll", make_sentences(20, seed=5))
    server = HubServer()
    server.add("org/tiny-bert", main, sha=SHA_MAIN)
    server.add("org/tiny-bert", v1, sha=SHA_V1, names=("v1",))
    server.add("org/ner-data", data, sha="c" * 40, repo_type="dataset")
    server.add("org/gated-bert", main, sha="d" * 40, token="hf_secret_token")
    url = server.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server, url
    server.stop()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# ---- parsing (no I/O) ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,kind,location,revision", [
    ("/mnt/pvc/models/bert", "path", "/mnt/pvc/models/bert", ""),
    ("./models/bert", "path", "models/bert", ""),
    ("s3://bucket/models/bert", "store", "s3://bucket/models/bert", ""),
    ("gs://bucket/models/bert", "store", "s3://bucket/models/bert", ""),
    ("hf://dslim/bert-base-NER@v1.0", "hub", "dslim/bert-base-NER", "v1.0"),
    ("dslim/bert-base-NER", "hub", "dslim/bert-base-NER", ""),
    ("bert-base-cased", "hub", "bert-base-cased", ""),
    ("https://huggingface.co/dslim/bert-base-NER", "hub", "dslim/bert-base-NER", ""),
])
def test_sources_are_classified_like_from_pretrained_does(text, kind, location, revision):
    source = parse_source(text, "model_path")
    assert (source.kind, source.location.lstrip("./") if kind == "path" and text.startswith(".") else source.location,
            source.revision) == (kind, location, revision)
    if text.startswith("gs://"):
        assert source.endpoint_url == "https://storage.googleapis.com"  # GCS through its S3 API


def test_a_dataset_repository_is_a_dataset():
    source = parse_source("hf://datasets/org/ner-data@main", "data_uri")
    assert (source.kind, source.repo_type, source.location, source.revision) == ("hub", "dataset", "org/ner-data", "main")


@pytest.mark.parametrize("text,kwargs,message", [
    ("", {}, "is empty"),
    ("ftp://host/x", {}, "ftp:// is not supported"),
    ("minio://mlpipeline/v2/artifacts/x", {}, "s3_endpoint_url"),
    ("s3://bucket/x", {"revision": "v1"}, "hub sources only"),
    ("/mnt/pvc/x", {"revision": "v1"}, "hub sources only"),
    ("s3://Bad_Bucket/x", {}, "not a valid bucket name"),
    ("org/a--b", {}, "neither a path in the container nor a valid Hugging Face hub id"),
    ("hf://org/name@v1", {"revision": "v2"}, "names revision 'v1'"),
    ("hf://org/name/sub/dir", {}, "not a path inside it"),
    ("hf://spaces/org/app", {}, "only model and dataset"),
])
def test_bad_sources_are_config_errors_naming_the_parameter(text, kwargs, message, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ConfigError, match=message):
        parse_source(text, "model_path", **kwargs)


def test_bad_sources_fail_the_cli_with_exit_2_before_anything_is_written(tmp_path, capsys):
    from trainer.cli import data_import_main, model_import_main

    out = tmp_path / "out"
    assert model_import_main(["--model_selector_output", str(out), "--model_path", "s3://x/y",
                              "--model_revision", "v1"]) == 2
    assert data_import_main(["--data_output", str(out), "--data_uri", "ftp://host/data.conll"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert not out.exists()


# ---- the Hugging Face hub -------------------------------------------------------------------------------------------

def test_a_hub_model_is_downloaded_at_the_pinned_revision_and_imported(tmp_path, hub):
    from huggingface_hub import constants
    from transformers import AutoModelForTokenClassification

    server, url = hub
    out = tmp_path / "imported"
    meta = run_model_import(model_selector_output=str(out), model_path="hf://org/tiny-bert", model_revision="v1",
                            hf_endpoint=url)
    assert meta["revision"] == SHA_V1 and meta["source_uri"] == "hf://org/tiny-bert"
    assert meta["model_name"] == "org/tiny-bert" and meta["model_name_or_path"] == "org/tiny-bert"
    assert meta["model_family"] == "bert" and meta["has_tokenizer"]
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label == {0: "O", 1: "X"}  # v1's config, not main's
    # files were asked for at the resolved commit, not at the moving branch name
    assert any(path.startswith(f"/org/tiny-bert/resolve/{SHA_V1}/") for _, path in server.requests)
    # weights in formats the trainer never loads were not downloaded; huggingface_hub's bookkeeping is not copied
    assert "pytorch_model.bin" not in _files(out) and "onnx/model.onnx" not in _files(out)
    assert not any(name.startswith(".") for name in _files(out))
    assert not any(p.name.startswith(".imported.") for p in tmp_path.iterdir())  # work folders removed
    assert constants.HF_HUB_OFFLINE is True  # offline mode lifted for the download only


def test_the_hub_endpoint_also_comes_from_hf_endpoint_env(tmp_path, hub, monkeypatch):
    _, url = hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    meta = run_model_import(model_selector_output=str(tmp_path / "out"), model_path="org/tiny-bert")
    assert meta["revision"] == SHA_MAIN and meta["hub_endpoint"] == url


def test_a_gated_repository_needs_the_token(tmp_path, hub, monkeypatch):
    _, url = hub
    with pytest.raises(InputError, match="gated.*HF_TOKEN"):
        run_model_import(model_selector_output=str(tmp_path / "a"), model_path="org/gated-bert", hf_endpoint=url)
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")  # on a cluster: from a Secret (secretKeyRef)
    assert run_model_import(model_selector_output=str(tmp_path / "b"), model_path="org/gated-bert",
                            hf_endpoint=url)["revision"] == "d" * 40


@pytest.mark.parametrize("model_path,revision,message", [
    ("org/missing", "", "no such model repository"),
    ("org/tiny-bert", "v9", "revision 'v9' not found"),
])
def test_hub_errors_are_one_clear_line(tmp_path, hub, model_path, revision, message):
    _, url = hub
    with pytest.raises(InputError, match=message) as info:
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path=model_path, model_revision=revision,
                         hf_endpoint=url)
    assert "\n" not in str(info.value)


def test_no_network_is_one_clear_error(tmp_path, capsys, monkeypatch):
    """A cluster without network: the hub cannot be reached (a closed port here)."""
    from s3_server import free_port
    from trainer.cli import model_import_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    code = model_import_main(["--model_selector_output", str(tmp_path / "o"), "--model_path", "org/tiny-bert",
                              "--hf_endpoint", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "cannot download org/tiny-bert@main from the Hugging Face hub" in err[0]
    assert "put the model on a PVC or in an object store" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_hub_dataset_is_imported_as_data(tmp_path, hub):
    from trainer.config import DataImportConfig
    from trainer.data_import import data_import

    _, url = hub
    summary = data_import(DataImportConfig(data_output=str(tmp_path / "data"), data_uri="hf://datasets/org/ner-data",
                                           hf_endpoint=url))
    assert summary["files"] == ["train.conll"] and summary["revision"] == "c" * 40
    assert (tmp_path / "data" / "train.conll").read_text().startswith(make_sentences(1, seed=5)[0][0][0])


# ---- object stores --------------------------------------------------------------------------------------------------

def _upload(client, bucket: str, folder: Path, prefix: str) -> None:
    from trainer import objstore

    objstore.upload_tree(client, folder, objstore.S3Uri(bucket, prefix))


def test_a_model_in_an_object_store_is_imported(tmp_path, s3, tiny_model_selector):
    from transformers import AutoModelForTokenClassification

    client, bucket, endpoint = s3
    _upload(client, bucket, tiny_model_selector, "models/tiny")
    out = tmp_path / "out"
    meta = run_model_import(model_selector_output=str(out), model_path=f"s3://{bucket}/models/tiny",
                            s3_endpoint_url=endpoint)
    assert meta["source_uri"] == f"s3://{bucket}/models/tiny" and meta["model_name"] == "tiny-bert"
    assert meta["model_name_or_path"] == f"s3://{bucket}/models/tiny"
    assert AutoModelForTokenClassification.from_pretrained(out).config.model_type == "bert"
    # Kubeflow Pipelines' own artifact URIs (an earlier run's model) are the same store under minio://
    meta = run_model_import(model_selector_output=str(tmp_path / "out2"), model_path=f"minio://{bucket}/models/tiny",
                            s3_endpoint_url=endpoint)
    assert meta["source_uri"] == f"minio://{bucket}/models/tiny"


def test_store_errors_name_the_uri(tmp_path, s3):
    client, bucket, endpoint = s3
    with pytest.raises(InputError, match=f"nothing found at s3://{bucket}/models/none"):
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path=f"s3://{bucket}/models/none")
    with pytest.raises(InputError, match="does not exist"):
        run_model_import(model_selector_output=str(tmp_path / "o"), model_path="s3://no-such-bucket-9/m")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_data_in_an_object_store_is_imported(tmp_path, s3, layout):
    from trainer.config import DataImportConfig
    from trainer.data_import import data_import

    client, bucket, _ = s3
    local = tmp_path / "local"
    local.mkdir()
    write_conll(local / "train.conll", make_sentences(30, seed=1))
    write_conll(local / "test.conll", make_sentences(10, seed=2))
    if layout == "file":
        client.upload_file(str(local / "train.conll"), bucket, "data/wnut.conll")
        uri, expected = f"s3://{bucket}/data/wnut.conll", ["train.conll"]
    else:
        _upload(client, bucket, local, "data/set")
        uri, expected = f"s3://{bucket}/data/set", ["test.conll", "train.conll"]
    out = tmp_path / "data"
    summary = data_import(DataImportConfig(data_output=str(out), data_uri=uri))
    assert summary["files"] == expected and sorted(_files(out)) == expected
    assert (out / "train.conll").read_bytes() == (local / "train.conll").read_bytes()


def test_a_downloaded_object_appears_whole_and_readable_or_not_at_all(tmp_path):
    """objstore.download_file: the object lands complete, readable by all (0644, like every other output, whatever
    user the next step runs as); a download failing half-way leaves neither the file nor a temporary beside it."""
    from trainer import objstore

    class Client:
        def __init__(self, fail: bool):
            self.fail = fail

        def download_file(self, bucket, key, filename):
            with open(filename, "w", encoding="utf-8") as handle:
                handle.write("half" if self.fail else f"{bucket}/{key}")
            if self.fail:
                raise ConnectionError("connection reset")

    uri = objstore.parse_uri("s3://bucket/data/train.conll", "data_uri")
    target = tmp_path / "in" / "train.conll"
    objstore.download_file(Client(fail=False), uri, target)
    assert target.read_text(encoding="utf-8") == "bucket/data/train.conll"
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(ConnectionError):
        objstore.download_file(Client(fail=True), uri, tmp_path / "in" / "test.conll")
    assert sorted(p.name for p in target.parent.iterdir()) == ["train.conll"]


def test_data_on_a_pvc_path_is_copied_and_an_empty_folder_is_refused(tmp_path):
    from trainer.config import DataImportConfig
    from trainer.data_import import data_import

    pvc = tmp_path / "pvc" / "data"
    pvc.mkdir(parents=True)
    write_conll(pvc / "corpus.conll", make_sentences(5, seed=3))
    summary = data_import(DataImportConfig(data_output=str(tmp_path / "a"), data_uri=str(pvc / "corpus.conll")))
    assert summary["files"] == ["train.conll"]  # a single file is the training data (preprocess splits it)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no files"):
        data_import(DataImportConfig(data_output=str(tmp_path / "b"), data_uri=str(tmp_path / "empty")))
    with pytest.raises(InputError, match="not found in this container"):
        data_import(DataImportConfig(data_output=str(tmp_path / "c"), data_uri="/mnt/pvc/not/mounted"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# ---- symbolic links ---------------------------------------------------------------------------------------------

def _model_with_link(tmp_path: Path, tiny_model_selector: Path, target: Path, name: str = "vocab.txt") -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_selector, model)
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(target)
    return model


def test_a_link_out_of_the_model_folder_is_refused_before_anything_is_written(tmp_path, tiny_model_selector):
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not part of the model")
    model = _model_with_link(tmp_path, tiny_model_selector, secret)
    with pytest.raises(InputError, match="symbolic link to .*secret.txt, outside the input folder"):
        run_model_import(model_selector_output=str(tmp_path / "out"), model_path=str(model))
    assert not (tmp_path / "out").exists()


def test_a_link_inside_the_model_folder_is_copied_as_the_file(tmp_path, tiny_model_selector):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_selector, model)
    (model / "files").mkdir()
    os.replace(model / "config.json", model / "files" / "config.json")
    (model / "config.json").symlink_to("files/config.json")
    run_model_import(model_selector_output=str(tmp_path / "out"), model_path=str(model))
    copied = tmp_path / "out" / "config.json"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == (model / "files" / "config.json").read_bytes()


def test_a_hugging_face_cache_snapshot_is_a_valid_source(tmp_path, tiny_model_selector):
    """models--org--name/snapshots/<sha>/ holds links to ../../blobs/: inside the repository's cache folder."""
    repo = tmp_path / "hub-cache" / "models--org--tiny"
    snapshot = repo / "snapshots" / SHA_MAIN
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(tiny_model_selector.iterdir())):
        if f.name != "model_selector_args.json":
            shutil.copy(f, repo / "blobs" / f"blob{i}")
            (snapshot / f.name).symlink_to(f"../../blobs/blob{i}")
    meta = run_model_import(model_selector_output=str(tmp_path / "out"), model_path=str(snapshot))
    assert meta["model_family"] == "bert" and not (tmp_path / "out" / "config.json").is_symlink()


def test_staging_and_uploads_refuse_links_out_of_an_artifact(tmp_path, s3):
    from trainer import objstore
    from trainer.publish import copy_tree_atomic

    client, bucket, _ = s3
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "ok.json").write_text("{}")
    (artifact / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="outside the input folder"):
        copy_tree_atomic(artifact, tmp_path / "staged")  # shared-volume staging of the launcher
    assert not (tmp_path / "staged").exists()
    with pytest.raises(objstore.ObjectStoreError, match="outside the input folder"):
        objstore.upload_tree(client, artifact, objstore.S3Uri(bucket, "run"))  # object-store staging
    assert not list(objstore.list_keys(client, objstore.S3Uri(bucket, "run")))
    (artifact / "passwd").unlink()
    (artifact / "loop").symlink_to(artifact)
    with pytest.raises(InputError, match="loop"):
        copy_tree_atomic(artifact, tmp_path / "staged")
