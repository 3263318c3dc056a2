"""The finetune_pytorchjob KFP component: its surface, its compiled YAML, and its body against the fake API."""

import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kube_fake import FakeApiServer, artifacts, make_clients  # noqa: F401 (fixture)
from components.finetune_pytorchjob.component import finetune_pytorchjob

REPO = Path(__file__).resolve().parents[2]


def test_signature_is_the_launch_config_plus_the_finetune_config_with_their_defaults():
    from launcher.config import LaunchConfig
    from trainer.config import FinetuneConfig
    from trainer.params import default_text

    fields = {f.name: f for cls in (LaunchConfig, FinetuneConfig) for f in dataclasses.fields(cls)}
    spec = finetune_pytorchjob.component_spec
    assert set(spec.inputs) | set(spec.outputs) == set(fields) | {"metrics", "report"}
    for name, param in inspect.signature(finetune_pytorchjob.python_func).parameters.items():
        if name in fields and default_text(fields[name]) is not None:
            assert param.default == default_text(fields[name]), name
    # the pods' image defaults to the CUDA image, set on the compiled spec (components/definitions.py)
    from components.images import TRAINER_CUDA_IMAGE

    assert spec.inputs["image"].default == TRAINER_CUDA_IMAGE


def test_compiled_yaml_is_current_and_names_the_images():
    from components.images import TRAINER_CPU_IMAGE, TRAINER_CUDA_IMAGE

    text = (REPO / "components" / "finetune_pytorchjob" / "component.yaml").read_text()
    spec = yaml.safe_load(text)
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == TRAINER_CPU_IMAGE
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["image"]["defaultValue"] == TRAINER_CUDA_IMAGE
    # staging: a PVC or an object store, exactly one (checked at run time)
    assert inputs["shared_pvc_name"]["defaultValue"] == "" and inputs["staging_uri"]["defaultValue"] == ""
    assert inputs["staging_access_key_key"]["defaultValue"] == "AWS_ACCESS_KEY_ID"
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"pytorch_model_folder", "mlflow_model_folder",
                                                                   "onnx_model_folder", "metrics", "report"}


class _Artifact(SimpleNamespace):
    def log_metric(self, name, value):
        self.metadata[name] = value


def _artifact(path: str):
    return _Artifact(path=path, metadata={})


def _run_component(artifacts, monkeypatch, server, **overrides):
    import launcher.launch as launch_module

    monkeypatch.setattr(launch_module, "load_clients", lambda: make_clients(server))
    outputs = {k: _artifact(artifacts[k]) for k in ("pytorch_model_folder", "mlflow_model_folder")}
    outputs.update(onnx_model_folder=_artifact(str(Path(artifacts["shared"]).parent / "onnx_model_folder")),
                   metrics=_artifact(str(Path(artifacts["shared"]).parent / "metrics")),
                   report=_artifact(str(Path(artifacts["shared"]).parent / "report.md")))
    kwargs = {name: p.default for name, p in inspect.signature(finetune_pytorchjob.python_func).parameters.items()
              if p.default is not inspect.Parameter.empty}
    kwargs.update(preprocess_output=_artifact(artifacts["preprocess_output"]),
                  model_selector_output=_artifact(artifacts["model_selector_output"]), **outputs,
                  shared_pvc_name="tokcls-shared", shared_mount_path=artifacts["shared"], namespace="team-a",
                  image="registry.local/trainer-cuda:test", poll_interval_seconds=1, backend="pytorchjob")
    kwargs.update(overrides)
    finetune_pytorchjob.python_func(**kwargs)
    return outputs


def test_component_body_runs_the_job_and_fills_the_outputs(artifacts, monkeypatch):
    server = FakeApiServer(["succeeded"])
    outputs = _run_component(artifacts, monkeypatch, server, num_nodes=3, gpus_per_node=2, apply_deepspeed="true",
                             deepspeed_preset="zero3", learning_rate=5e-5, lora_r=16, warmup_steps=10,
                             tolerations_json='[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
                             resources_json='{"limits": {"memory": "64Gi"}}')
    (job,) = server.created
    command = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][2]
    for piece in ("--nnodes 3", "--nproc_per_node 2", "--deepspeed_preset zero3", "--apply_deepspeed true",
                  "--learning_rate 5e-05", "--lora_r 16", "--warmup_steps 10"):
        assert piece in command
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert job["metadata"]["namespace"] == "team-a"
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    assert outputs["pytorch_model_folder"].metadata["job"] == job["metadata"]["name"]
    assert outputs["pytorch_model_folder"].metadata["backend"] == "pytorchjob"
    assert outputs["mlflow_model_folder"].metadata["framework"] == "mlflow"
    # the ONNX export runs in this step, from the collected model (the fake pods' model is not exportable: recorded)
    assert outputs["onnx_model_folder"].metadata["exported"] is False
    assert "no tokenizer files" in outputs["onnx_model_folder"].metadata["error"]
    # Metrics and report come from rank 0's metrics.json, as in the single-pod finetune
    assert outputs["metrics"].metadata["test_f1"] == 0.4 and outputs["metrics"].metadata["entity_person_f1"] == 0.375
    assert "| person | 0.5000 | 0.3000 | 0.3750 | 8 |" in Path(outputs["report"].path).read_text()


def test_component_runs_a_trainjob_when_the_backend_says_so(artifacts, monkeypatch):
    server = FakeApiServer(["running", "succeeded"])
    outputs = _run_component(artifacts, monkeypatch, server, backend="trainjob", num_nodes=2, gpus_per_node=8)
    (job,) = server.created
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["numProcPerNode"] == 8
    assert outputs["pytorch_model_folder"].metadata["backend"] == "trainjob"
    assert outputs["metrics"].metadata["test_f1"] == 0.4


@pytest.mark.parametrize("gpus,expected", [(0, "TRAINER_CPU_IMAGE"), (2, "TRAINER_CUDA_IMAGE")])
def test_an_empty_image_runs_the_pods_on_the_image_for_their_device(artifacts, monkeypatch, gpus, expected):
    import components.images

    server = FakeApiServer(["succeeded"])
    _run_component(artifacts, monkeypatch, server, image="", gpus_per_node=gpus)
    (job,) = server.created
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["image"] == getattr(components.images, expected)


def test_a_terminated_step_deletes_its_job_and_exits_143(artifacts, monkeypatch):
    import os
    import signal

    def on_request(method, path):
        if method == "GET" and "/pytorchjobs/" in path and server.gets:
            os.kill(os.getpid(), signal.SIGTERM)  # what Argo sends when the run is terminated in the KFP UI

    server = FakeApiServer(["running"], on_request=on_request)
    with pytest.raises(SystemExit) as info:
        _run_component(artifacts, monkeypatch, server)
    assert info.value.code == 143
    assert len(server.deleted) == 1 and server.jobs == {}


@pytest.mark.parametrize("overrides,message", [
    ({"resources_json": "[1]"}, "resources_json must be a JSON object"),
    ({"tolerations_json": "{"}, "tolerations_json is not valid JSON"),
    ({"learning_rate": -1.0}, "learning_rate must be > 0"),
])
def test_component_rejects_bad_values_before_any_api_call(artifacts, monkeypatch, capsys, overrides, message):
    server = FakeApiServer(["succeeded"])
    with pytest.raises(SystemExit) as info:  # one line and exit 2, as the CLIs end bad input
        _run_component(artifacts, monkeypatch, server, **overrides)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err, err
    assert server.requests == []


def test_pipeline_usage_from_the_docs_compiles(tmp_path):
    """The docs/distributed.md example: the launcher step mounts the shared PVC and runs the job."""
    from kfp import compiler, dsl, kubernetes
    from kfp.dsl import Dataset, Model

    @dsl.pipeline(name="finetune-distributed")
    def pipeline(pvc: str = "tokcls-shared", nodes: int = 2, backend: str = "trainjob"):
        pre = dsl.importer(artifact_uri="gs://bucket/preprocess_output", artifact_class=Dataset)
        sel = dsl.importer(artifact_uri="gs://bucket/model_selector_output", artifact_class=Model)
        task = finetune_pytorchjob(preprocess_output=pre.output, model_selector_output=sel.output,
                                   backend=backend, shared_pvc_name=pvc, num_nodes=nodes, gpus_per_node=4,
                                   apply_deepspeed="true", deepspeed_preset="zero3", precision="16",
                                   tolerations_json='[{"key": "nvidia.com/gpu", "operator": "Exists", '
                                                    '"effect": "NoSchedule"}]',
                                   secret_env_json='{"MLFLOW_TRACKING_TOKEN": {"name": "mlflow", "key": "token"}}')
        kubernetes.mount_pvc(task, pvc_name=pvc, mount_path="/mnt/shared")
        task.set_caching_options(False)

    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (executor,) = platform.values()
    assert executor["pvcMount"][0]["mountPath"] == "/mnt/shared"
    task = docs[0]["root"]["dag"]["tasks"]["finetune-pytorchjob"]["inputs"]["parameters"]
    assert task["backend"] == {"componentInputParameter": "backend"}
