"""The generated PyTorchJob against the Training Operator's CRD schema and the Kubernetes pod model."""

from __future__ import annotations

import re
import shlex

import pytest

from kube_fake import crd_errors, load_crd_schema, unknown_fields
from launcher.manifest import JobSpec, ManifestError, build_pytorchjob


def spec(**overrides) -> JobSpec:
    values = dict(name="tokcls-finetune-1a2b3c4d", namespace="kubeflow-user-example-com",
                  image="ghcr.io/kfp-token-classification/trainer-cuda:0.1.0",
                  trainer_args=["--preprocess_output", "/mnt/shared/tokcls-runs/r1/inputs/preprocess_output",
                                "--apply_deepspeed", "true", "--deepspeed", "zero3",
                                "--learning_rate", "3e-05"],
                  num_nodes=3, gpus_per_node=4, pvc_name="tokcls-shared", mount_path="/mnt/shared",
                  resources={"limits": {"cpu": "16", "memory": "128Gi"}, "requests": {"cpu": 8, "memory": "96Gi"}},
                  node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  ttl_seconds_after_finished=3600, active_deadline_seconds=7200, service_account="default-editor",
                  image_pull_secrets=["regcred"])
    values.update(overrides)
    return JobSpec(**values)


def test_crd_copy_is_the_pytorchjob_crd():
    schema = load_crd_schema()
    assert "pytorchReplicaSpecs" in schema["properties"]["spec"]["required"]
    assert schema["properties"]["spec"]["properties"]["nprocPerNode"]["type"] == "string"


@pytest.mark.parametrize("num_nodes,gpus", [(1, 1), (2, 1), (3, 4), (8, 8)])
def test_manifest_validates_against_crd(num_nodes, gpus):
    manifest = build_pytorchjob(spec(num_nodes=num_nodes, gpus_per_node=gpus))
    assert crd_errors(manifest) == []


def test_cpu_manifest_validates_and_has_no_gpu():
    manifest = build_pytorchjob(spec(gpus_per_node=0, procs_per_node=2, resources={}, tolerations=[],
                                     node_selector={}))
    assert crd_errors(manifest) == []
    container = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "resources" not in container
    assert "--nproc_per_node 2" in container["command"][2]
    assert {"name": "DS_ACCELERATOR", "value": "cpu"} in container["env"]


def test_the_schema_check_catches_mistakes():
    """The checks would fail on real mistakes (so a pass above means something)."""
    manifest = build_pytorchjob(spec())
    master = manifest["spec"]["pytorchReplicaSpecs"]["Master"]
    master["replicas"] = "one"
    master["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    master["template"]["spec"]["containers"][0]["volumeMount"] = []  # typo of volumeMounts
    del manifest["spec"]["pytorchReplicaSpecs"]
    errors = crd_errors(manifest)
    assert any("pytorchReplicaSpecs" in e for e in errors)
    manifest = build_pytorchjob(spec())
    master = manifest["spec"]["pytorchReplicaSpecs"]["Master"]
    master["replicas"] = "one"
    master["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    master["template"]["spec"]["containers"][0]["volumeMount"] = []
    errors = " | ".join(crd_errors(manifest))
    assert "'one' is not of type 'integer'" in errors
    assert "'lots' does not match" in errors
    assert "volumeMount: unknown field" in errors


def _model_errors(data, type_name: str, path: str = "") -> list[str]:
    """Check `data` field by field against the kubernetes client's generated model `type_name`."""
    from kubernetes import client

    if data is None:
        return []
    match = re.match(r"list\[(.+)\]$", type_name)
    if match:
        if not isinstance(data, list):
            return [f"{path}: not a list"]
        return [e for i, item in enumerate(data) for e in _model_errors(item, match.group(1), f"{path}[{i}]")]
    match = re.match(r"dict\(str, (.+)\)$", type_name)
    if match:
        if not isinstance(data, dict):
            return [f"{path}: not a mapping"]
        return [e for k, v in data.items() for e in _model_errors(v, match.group(1), f"{path}.{k}")]
    if type_name in ("str",):
        return [] if isinstance(data, str) else [f"{path}: {data!r} is not a string"]
    if type_name == "int":
        return [] if isinstance(data, int) and not isinstance(data, bool) else [f"{path}: {data!r} is not an int"]
    if type_name == "bool":
        return [] if isinstance(data, bool) else [f"{path}: {data!r} is not a bool"]
    if type_name == "object":  # resource.Quantity / IntOrString
        return [] if isinstance(data, (str, int)) else [f"{path}: {data!r} is not a quantity"]
    model = getattr(client, type_name)
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: not a field of {type_name}")
            continue
        errors += _model_errors(value, model.openapi_types[by_json[key]], f"{path}.{key}")
    return errors


def test_pod_templates_match_the_kubernetes_pod_model():
    manifest = build_pytorchjob(spec())
    for role, replica in manifest["spec"]["pytorchReplicaSpecs"].items():
        assert _model_errors(replica["template"], "V1PodTemplateSpec", role) == []
    broken = build_pytorchjob(spec())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    broken["spec"]["containers"][0]["volumeMounts"][0]["mount_path"] = "/x"
    assert _model_errors(broken, "V1PodTemplateSpec") == [
        ".spec.containers[0].volumeMounts[0].mount_path: not a field of V1VolumeMount"]


def test_replicas_torchrun_and_operator_contract():
    manifest = build_pytorchjob(spec(num_nodes=3, gpus_per_node=4))
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert manifest["spec"]["nprocPerNode"] == "4"
    assert "elasticPolicy" not in manifest["spec"]
    assert manifest["spec"]["runPolicy"] == {"cleanPodPolicy": "None", "backoffLimit": 0,
                                             "ttlSecondsAfterFinished": 3600, "activeDeadlineSeconds": 7200}
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the operator finds its env/port by this name
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["resources"]["requests"]["cpu"] == "8"
        assert container["command"][:2] == ["/bin/sh", "-c"]
        words = shlex.split(container["command"][2])
        assert words[:2] == ["exec", "torchrun"]
        flags = dict(zip(words[2:16:2], words[3:16:2]))
        assert flags["--nnodes"] == "3" and flags["--nproc_per_node"] == "4"
        assert flags["--node_rank"] == "${PET_NODE_RANK:-${RANK:-0}}"
        assert flags["--master_addr"] == "${PET_MASTER_ADDR:-${MASTER_ADDR:-localhost}}"
        assert words[words.index("-m") + 1] == "trainer.cli"
        assert words[-2:] == ["--learning_rate", "3e-05"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HF_HUB_OFFLINE"] == "1" and env["DS_ACCELERATOR"] == "cuda"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": "tokcls-shared"}} in pod["volumes"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert replica["restartPolicy"] == "Never"


def test_single_node_has_no_worker():
    manifest = build_pytorchjob(spec(num_nodes=1))
    assert list(manifest["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_the_shell_line_expands_operator_env_and_quotes_args(tmp_path):
    """Run the generated line in a real shell with a fake torchrun: env fallbacks and quoting work."""
    import os
    import subprocess

    fake = tmp_path / "torchrun"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    manifest = build_pytorchjob(spec(num_nodes=2, gpus_per_node=2,
                                     trainer_args=["--lora_target_modules", "query, value", "--x", "$HOME"]))
    line = manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][2]
    base = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    old = subprocess.run(["/bin/sh", "-c", line], env={**base, "RANK": "1", "MASTER_ADDR": "job-master-0",
                                                        "MASTER_PORT": "23456"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert old[old.index("--node_rank") + 1] == "1"
    assert old[old.index("--master_addr") + 1] == "job-master-0"
    assert old[old.index("--lora_target_modules") + 1] == "query, value"
    assert old[-1] == "$HOME"  # user values are never expanded
    new = subprocess.run(["/bin/sh", "-c", line], env={**base, "RANK": "9", "PET_NODE_RANK": "1",
                                                        "PET_MASTER_ADDR": "a", "PET_MASTER_PORT": "1234"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert new[new.index("--node_rank") + 1] == "1" and new[new.index("--master_port") + 1] == "1234"


@pytest.mark.parametrize("overrides,message", [
    ({"name": "Bad_Name"}, "DNS-1123"),
    ({"namespace": ""}, "namespace"),
    ({"num_nodes": 0}, "num_nodes"),
    ({"gpus_per_node": -1}, "gpus_per_node"),
    ({"pvc_name": ""}, "PVC"),
    ({"resources": {"limits": {"memory": "lots"}}}, "quantity"),
    ({"resources": {"limit": {}}}, "unknown key"),
    ({"resources": {"limits": {"nvidia.com/gpu": 2}}}, "gpus_per_node"),
    ({"tolerations": [{"key": "a", "operator": "Maybe"}]}, "operator"),
    ({"tolerations": [{"key": "a", "effect": "NoSchedule", "tolerationSecs": 3}]}, "toleration"),
    ({"node_selector": {"a": 1}}, "node_selector"),
    ({"restart_policy": "Sometimes"}, "restart_policy"),
    ({"shm_size": "big"}, "shm_size"),
    ({"image": ""}, "image"),
])
def test_invalid_specs_are_rejected(overrides, message):
    with pytest.raises(ManifestError, match=message):
        build_pytorchjob(spec(**overrides))


def test_unknown_fields_walks_maps_and_lists():
    schema = load_crd_schema()
    manifest = build_pytorchjob(spec())
    manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"][0]["pvc"] = {}
    assert unknown_fields(manifest, schema) == [".spec.pytorchReplicaSpecs.Worker.template.spec.volumes[0].pvc"]
