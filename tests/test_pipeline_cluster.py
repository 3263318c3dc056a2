"""The shipped pipeline YAMLs run on a cluster with only run parameters set: model and data sources, the PVC, the
credential Secrets are run parameters; and the same pipeline runs end to end from a hub model and S3 data.

No `from __future__ import annotations` here: KFP reads the annotations of the pipelines defined below.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import make_sentences, write_conll
from hub_server import HubServer
from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
YAMLS = {"default": REPO / "pipelines" / "token_classification_pipeline.yaml",
         "pvc": REPO / "pipelines" / "token_classification_pipeline_pvc.yaml"}


def _load(variant: str):
    spec, platform = yaml.safe_load_all(YAMLS[variant].read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("variant", YAMLS)
def test_the_shipped_yaml_needs_only_run_parameters(variant):
    spec, executors = _load(variant)
    params = spec["root"]["inputDefinitions"]["parameters"]
    required = sorted(name for name, p in params.items() if "defaultValue" not in p and not p.get("isOptional"))
    assert required == (["data_uri", "pvc_name"] if variant == "pvc" else ["data_uri"])
    for name in ("model_path", "model_revision", "mlflow_model_path", "hf_endpoint", "s3_endpoint_url",
                 "data_revision", "s3_secret_name", "hf_token_secret_name"):
        assert name in params, name
    assert params["s3_secret_name"]["defaultValue"] == "mlpipeline-minio-artifact"
    # no importer: data and model are fetched by the import steps from what the run parameters say
    assert not any("importer" in e for e in spec["deploymentSpec"]["executors"].values())
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["data-import"]["inputs"]["parameters"]["data_uri"] == {"componentInputParameter": "data_uri"}
    assert tasks["model-import"]["inputs"]["parameters"]["model_path"] == {"componentInputParameter": "model_path"}
    assert tasks["preprocess"]["inputs"]["artifacts"]["train_data"]["taskOutputArtifact"] == {
        "outputArtifactKey": "data_output", "producerTask": "data-import"}
    for step in ("exec-data-import", "exec-model-import"):
        secrets = {s["secretNameParameter"]["componentInputParameter"]: s for s in executors[step]["secretAsEnv"]}
        assert set(secrets) == {"s3_secret_name", "hf_token_secret_name"}
        assert all(s["optional"] for s in secrets.values())  # a Secret that does not exist is skipped
        assert {e["envVar"] for e in secrets["hf_token_secret_name"]["keyToEnv"]} == {"HF_TOKEN"}
        assert {e["envVar"] for e in secrets["s3_secret_name"]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID",
                                                                              "AWS_SECRET_ACCESS_KEY"}
        mounts = executors[step].get("pvcMount", [])
        if variant == "pvc":  # the PVC named by the run parameter, mounted at the compiled path
            assert [(m["pvcNameParameter"], m["mountPath"]) for m in mounts] == [
                ({"componentInputParameter": "pvc_name"}, "/mnt/pvc")]
        else:
            assert mounts == []
    assert "pvcMount" not in executors["exec-finetune"]  # the fine-tune reads artifacts, not the PVC


def test_the_compiled_yamls_are_the_pipeline_module(tmp_path):
    from kfp import compiler

    from pipelines.token_classification_pipeline import token_classification_pipeline_pvc

    out = tmp_path / "pvc.yaml"
    compiler.Compiler().compile(token_classification_pipeline_pvc, str(out))
    assert out.read_text() == YAMLS["pvc"].read_text()


def test_the_pipeline_runs_from_a_hub_model_and_s3_data(tmp_path, s3, tiny_model_selector, monkeypatch):
    """Run parameters only: the model from a hub repository (HF_ENDPOINT's protocol, served locally), the data from
    an S3 bucket (moto), as on a cluster; kfp.local runs every step as a subprocess."""
    from kfp import local

    from pipelines.token_classification_pipeline import token_classification_pipeline

    client, bucket, endpoint = s3
    model = tmp_path / "hub" / "tiny"
    shutil.copytree(tiny_model_selector, model)
    (model / "model_selector_args.json").unlink()
    hub = HubServer()
    hub.add("org/tiny-bert", model, sha="e" * 40, names=("main", "v2"))
    url = hub.start()
    data = tmp_path / "data"
    data.mkdir()
    write_conll(data / "corpus.conll", make_sentences(120, seed=7))
    client.upload_file(str(data / "corpus.conll"), bucket, "datasets/ner/corpus.conll")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as in the images: the import step lifts it for its download
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    try:
        run = token_classification_pipeline(
            data_uri=f"s3://{bucket}/datasets/ner/corpus.conll", s3_endpoint_url=endpoint,
            model_path="hf://org/tiny-bert", model_revision="v2", hf_endpoint=url, max_seq_length=64, max_steps=4,
            per_device_train_batch_size=8, per_device_eval_batch_size=16, evaluation_strategy="steps",
            eval_steps=4, logging_strategy="steps", logging_steps=2, run_evaluation=False)
    finally:
        hub.stop()
    metrics = run.outputs["metrics"].metadata
    assert "test_f1" in metrics and "eval_loss" in metrics
    run_dir = Path(run.outputs["pytorch_model_folder"].path).parent.parent
    imported = json.loads((run_dir / "model-import" / "model_selector_output" / "model_selector_args.json").read_text())
    assert imported["revision"] == "e" * 40 and imported["source_uri"] == "hf://org/tiny-bert"
    prep = json.loads((run_dir / "preprocess" / "preprocess_output" / "preprocess_args.json").read_text())
    assert prep["train_size"] + prep["validation_size"] + prep["test_size"] == 120  # the one file, split 80/10/10


def test_a_model_artifact_from_an_importer_feeds_model_import(tmp_path, tiny_model_selector):
    """In your own pipeline, a Model artifact (dsl.importer of a registered model, an earlier run's output) is
    model_import's `model` input."""
    from kfp import dsl, local

    from components.model_import.component import model_import

    @dsl.pipeline(name="import-a-model")
    def pipe(model_uri: str):
        imported = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        model_import(model=imported.output, model_name="registered-tiny")

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    pipe(model_uri=str(tiny_model_selector))
    (out,) = (tmp_path / "root").glob("import-a-model-*/model-import/model_selector_output")
    meta = json.loads((out / "model_selector_args.json").read_text())
    assert meta["source"] == "model" and meta["model_name"] == "registered-tiny" and meta["model_family"] == "bert"
