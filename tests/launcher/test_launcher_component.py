"""The finetune_pytorchjob KFP component: its surface, its compiled YAML, and its body against the fake API."""

import dataclasses
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kube_fake import FakeApiServer, artifacts, make_clients  # noqa: F401 (fixture)
from components.finetune_pytorchjob.component import finetune_pytorchjob
from launcher import LaunchConfigError

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_INPUTS = {"shared_pvc_name", "num_nodes", "gpus_per_node", "procs_per_node", "image", "namespace",
                   "shared_mount_path", "staging_uri", "staging_endpoint_url", "staging_secret_name",
                   "staging_access_key_key", "staging_secret_key_key", "resources_json", "node_selector_json", "tolerations_json",
                   "env_json", "service_account", "shm_size", "timeout_seconds", "poll_interval_seconds",
                   "cleanup_policy", "run_id", "deepspeed_preset", "deepspeed_config_json", "finetune_args"}


def test_explicit_trainer_inputs_are_finetune_config_fields_with_its_defaults():
    from trainer.config import FinetuneConfig, spec_default

    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    params = inspect.signature(finetune_pytorchjob.python_func).parameters
    artifacts = {"preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder"}
    for name, param in params.items():
        if name in artifacts | LAUNCHER_INPUTS:
            continue
        assert name in fields, f"{name} is neither a launcher input nor a FinetuneConfig field"
        if name != "apply_deepspeed":  # the point of this component: DeepSpeed on by default
            assert param.default == spec_default(fields[name]), name


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
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"pytorch_model_folder", "mlflow_model_folder"}


def _artifact(path: str):
    return SimpleNamespace(path=path, metadata={})


def _run_component(artifacts, monkeypatch, server, **overrides):
    import launcher.launch as launch_module

    monkeypatch.setattr(launch_module, "_load_clients", lambda: make_clients(server))
    outputs = {k: _artifact(artifacts[k]) for k in ("pytorch_model_folder", "mlflow_model_folder")}
    kwargs = {name: p.default for name, p in inspect.signature(finetune_pytorchjob.python_func).parameters.items()
              if p.default is not inspect.Parameter.empty}
    kwargs.update(preprocess_output=_artifact(artifacts["preprocess_output"]),
                  model_selector_output=_artifact(artifacts["model_selector_output"]), **outputs,
                  shared_pvc_name="tokcls-shared", shared_mount_path=artifacts["shared"], namespace="team-a",
                  image="registry.local/trainer-cuda:test", poll_interval_seconds=1)
    kwargs.update(overrides)
    finetune_pytorchjob.python_func(**kwargs)
    return outputs


def test_component_body_runs_the_job_and_fills_the_outputs(artifacts, monkeypatch):
    server = FakeApiServer(["succeeded"])
    outputs = _run_component(artifacts, monkeypatch, server, num_nodes=3, gpus_per_node=2,
                             deepspeed_preset="zero3", learning_rate=5e-5,
                             finetune_args=json.dumps({"lora_r": 16, "warmup_steps": 10}),
                             tolerations_json='[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
                             resources_json='{"limits": {"memory": "64Gi"}}')
    (job,) = server.created
    command = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][2]
    for piece in ("--nnodes 3", "--nproc_per_node 2", "--deepspeed zero3", "--apply_deepspeed true",
                  "--learning_rate 5e-05", "--lora_r 16", "--warmup_steps 10"):
        assert piece in command
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert job["metadata"]["namespace"] == "team-a"
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    assert outputs["pytorch_model_folder"].metadata["pytorchjob"] == job["metadata"]["name"]
    assert outputs["mlflow_model_folder"].metadata["framework"] == "mlflow.transformers"


@pytest.mark.parametrize("overrides,message", [
    ({"finetune_args": '{"learning_rate": 1}'}, "inputs of their own"),
    ({"finetune_args": "[1]"}, "JSON object"),
    ({"tolerations_json": "{"}, "not valid JSON"),
])
def test_component_rejects_bad_json_before_any_api_call(artifacts, monkeypatch, overrides, message):
    server = FakeApiServer(["succeeded"])
    with pytest.raises(LaunchConfigError, match=message):
        _run_component(artifacts, monkeypatch, server, **overrides)
    assert server.requests == []


def test_pipeline_usage_from_the_docs_compiles(tmp_path):
    """The docs/distributed.md example: the launcher step mounts the shared PVC and runs the job."""
    from kfp import compiler, dsl, kubernetes
    from kfp.dsl import Dataset, Model

    @dsl.pipeline(name="finetune-distributed")
    def pipeline(pvc: str = "tokcls-shared", nodes: int = 2):
        pre = dsl.importer(artifact_uri="gs://bucket/preprocess_output", artifact_class=Dataset)
        sel = dsl.importer(artifact_uri="gs://bucket/model_selector_output", artifact_class=Model)
        task = finetune_pytorchjob(preprocess_output=pre.output, model_selector_output=sel.output,
                                   shared_pvc_name=pvc, num_nodes=nodes, gpus_per_node=4,
                                   deepspeed_preset="zero3", precision="16",
                                   tolerations_json='[{"key": "nvidia.com/gpu", "operator": "Exists", '
                                                    '"effect": "NoSchedule"}]')
        kubernetes.mount_pvc(task, pvc_name=pvc, mount_path="/mnt/shared")
        task.set_caching_options(False)

    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (executor,) = platform.values()
    assert executor["pvcMount"][0]["mountPath"] == "/mnt/shared"
