"""Data import writes what preprocess reads (extensionless files, the hub's data/ layout, symlinked files), refuses
what preprocess would refuse, and a download that breaks off mid-way is one line of a run failure."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import make_sentences, write_conll
from hub_server import HubServer
from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)
from trainer.cli import data_import_main
from trainer.config import DataImportConfig, PreprocessConfig
from trainer.data_import import data_import
from trainer.errors import InputError


def _preprocess(data: Path, tiny_model_selector: Path, out: Path) -> dict:
    from trainer.preprocess import preprocess

    return preprocess(PreprocessConfig(train_data=str(data), model_selector_output=str(tiny_model_selector),
                                       preprocess_output=str(out)))


# ---- 5a: a single file without a data suffix -----------------------------------------------------------------------

def test_an_extensionless_file_is_saved_under_its_detected_format(tmp_path, s3, tiny_model_selector):
    client, bucket, _ = s3
    (tmp_path / "in").mkdir()
    source = write_conll(tmp_path / "in" / "ner_train", make_sentences(20, seed=1))
    summary = data_import(DataImportConfig(data_output=str(tmp_path / "a"), data_uri=str(source)))
    assert summary["files"] == ["train.conll"]
    assert _preprocess(tmp_path / "a", tiny_model_selector, tmp_path / "pre_a")["data_formats"]["train"] == "conll"
    (tmp_path / "in" / "rows").write_text("\n".join(json.dumps({"tokens": t, "ner_tags": g})
                                                     for t, g in make_sentences(20, seed=2)))
    client.upload_file(str(tmp_path / "in" / "rows"), bucket, "data/rows")
    summary = data_import(DataImportConfig(data_output=str(tmp_path / "b"), data_uri=f"s3://{bucket}/data/rows"))
    assert summary["files"] == ["train.jsonl"]
    assert _preprocess(tmp_path / "b", tiny_model_selector, tmp_path / "pre_b")["data_formats"]["train"] == "jsonl"
    (tmp_path / "in" / "blob").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(InputError, match="data_uri .*blob: the file is neither UTF-8 text nor Parquet"):
        data_import(DataImportConfig(data_output=str(tmp_path / "c"), data_uri=str(tmp_path / "in" / "blob")))
    assert not (tmp_path / "c").exists()


# ---- 5b: the hub's dataset layout ----------------------------------------------------------------------------------

def test_a_hub_dataset_in_the_push_to_hub_layout_is_imported_for_preprocess(tmp_path, tiny_model_selector,
                                                                            monkeypatch, capsys):
    import datasets

    repo = tmp_path / "hub" / "ner"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# ner\n")
    (repo / ".gitattributes").write_text("*.parquet filter=lfs\n")
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        rows = make_sentences(20, seed=seed)
        datasets.Dataset.from_dict({"tokens": [t for t, _ in rows], "ner_tags": [g for _, g in rows]}).to_parquet(
            repo / "data" / f"{split}-00000-of-00001.parquet")
    other = tmp_path / "hub" / "other"
    (other / "corpus").mkdir(parents=True)
    (other / "README.md").write_text("# not a layout preprocess reads\n")
    for name in ("a.conll", "b.conll"):
        write_conll(other / "corpus" / name, make_sentences(5, seed=4))
    server = HubServer()
    server.add("org/ner", repo, sha="e" * 40, repo_type="dataset")
    server.add("org/other", other, sha="f" * 40, repo_type="dataset")
    url = server.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        summary = data_import(DataImportConfig(data_output=str(tmp_path / "data"), data_uri="hf://datasets/org/ner",
                                               hf_endpoint=url))
        assert "train-00000-of-00001.parquet" in summary["files"]
        result = _preprocess(tmp_path / "data", tiny_model_selector, tmp_path / "pre")
        assert (result["train_size"], result["validation_size"], result["test_size"]) == (20, 20, 20)
        assert result["data_formats"]["train"] == "parquet"
        out = tmp_path / "o" / "other"
        capsys.readouterr()
        assert data_import_main(["--data_output", str(out), "--data_uri", "hf://datasets/org/other",
                                 "--hf_endpoint", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hf://datasets/org/other holds no training data preprocess can read" in err[0]
        assert "'corpus'" in err[0] and "'README.md'" in err[0]
        assert not out.exists()
    finally:
        server.stop()


# ---- 6: a symlinked single file ------------------------------------------------------------------------------------

def test_a_single_file_given_as_a_link_is_imported(tmp_path):
    real = write_conll(tmp_path / "elsewhere.conll", make_sentences(5, seed=3))
    (tmp_path / "in2").mkdir()
    (tmp_path / "in2" / "f.conll").symlink_to(real)
    link = tmp_path / "in2" / "f.conll"
    summary = data_import(DataImportConfig(data_output=str(tmp_path / "a"), data_uri=str(link)))
    assert summary["files"] == ["train.conll"] and not (tmp_path / "a" / "train.conll").is_symlink()
    assert (tmp_path / "a" / "train.conll").read_bytes() == real.read_bytes()


# ---- 8: the hub advice speaks of data ------------------------------------------------------------------------------

def test_a_failed_hub_dataset_download_speaks_of_data(tmp_path, capsys, monkeypatch):
    from s3_server import free_port

    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    assert data_import_main(["--data_output", str(tmp_path / "x2"), "--data_uri", "hf://datasets/org/ner-data",
                             "--hf_endpoint", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "put the data on a PVC" in err[0] and "model" not in err[0]


# ---- 2: the object store goes away mid-download --------------------------------------------------------------------

class _BreakingStore:
    """An S3 endpoint that lists and heads its objects, then breaks every object download off half-way (the
    connection closes after half the body): what a store or network lost mid-download looks like to boto3."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _key(self):
                url = urlparse(self.path)
                bucket, _, key = url.path.lstrip("/").partition("/")
                return bucket, key, parse_qs(url.query)

            def do_HEAD(self):
                _, key, _ = self._key()
                body = store.objects.get(key)
                self.send_response(200 if body is not None or not key else 404)
                self.send_header("Content-Length", str(len(body) if body is not None else 0))
                self.send_header("ETag", '"etag"')
                self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                self.end_headers()

            def do_GET(self):
                bucket, key, query = self._key()
                if not key:
                    prefix = query.get("prefix", [""])[0]
                    items = "".join(f"<Contents><Key>{k}</Key><Size>{len(v)}</Size><ETag>\"etag\"</ETag>"
                                    "<LastModified>2024-01-01T00:00:00.000Z</LastModified></Contents>"
                                    for k, v in sorted(store.objects.items()) if k.startswith(prefix))
                    body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>{bucket}</Name>'
                            f"<Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{items}</ListBucketResult>")
                    data = body.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                data = store.objects[key]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"etag"')
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_download_that_breaks_off_is_one_line_of_a_run_failure(tmp_path, tiny_model_selector, monkeypatch,
                                                                  capsys):
    from trainer.config import ModelImportConfig
    from trainer.model_import import model_import
    from trainer.objstore import TransferError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    objects = {f"models/tiny/{p.name}": p.read_bytes() for p in tiny_model_selector.iterdir()}
    objects["data/train.conll"] = "\n".join(f"w{i}\tO" for i in range(5000)).encode()
    store = _BreakingStore(objects)
    try:
        for run, uri, out in (
                (model_import, "s3://bucket/models/tiny", tmp_path / "o" / "model"),
                (data_import, "s3://bucket/data/train.conll", tmp_path / "o" / "data")):
            config = (ModelImportConfig(model_selector_output=str(out), model_path=uri, s3_endpoint_url=store.url)
                      if run is model_import else
                      DataImportConfig(data_output=str(out), data_uri=uri, s3_endpoint_url=store.url))
            with pytest.raises(TransferError) as info:
                run(config)
            assert not isinstance(info.value, (InputError, ValueError))  # a run failure, not bad input
            message = str(info.value)
            assert "\n" not in message and message.startswith(f"cannot download {uri}: the transfer of s3://bucket/")
            assert not (tmp_path / "o").exists()  # no output, no work folder, no staging folder left behind
        # through the CLI: exit 1 (the input was fine) and that one line, no traceback
        from trainer.cli import data_import_main

        rc = data_import_main(["--data_uri", "s3://bucket/data/train.conll", "--data_output", str(tmp_path / "o"),
                               "--s3_endpoint_url", store.url])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("error: cannot download s3://bucket/data/train.conll: ") and \
            err.count("\n") == 1, err
    finally:
        store.stop()
