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


@pytest.mark.parametrize("gpus,procs,resources,threads", [
    (0, None, {"limits": {"cpu": "8"}}, "8"),  # a CPU pod, one process: all its cores (was forced to 1)
    (0, 2, {"limits": {"cpu": "8"}}, "4"),
    (0, 3, {"requests": {"cpu": "4500m"}}, "1"),  # 4.5 cores / 3 processes
    (4, None, {"limits": {"cpu": "16"}, "requests": {"cpu": 8}}, "4"),  # the limit, shared by 4 GPU processes
    (0, 2, {}, None),  # no CPUs named: torchrun's choice (1 per process when there are several)
])
def test_threads_per_process_follow_the_pods_cpus(gpus, procs, resources, threads):
    manifest = build_pytorchjob(spec(gpus_per_node=gpus, procs_per_node=procs, resources=resources))
    env = {e["name"]: e.get("value") for e in
           manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("OMP_NUM_THREADS") == threads
    custom = build_pytorchjob(spec(gpus_per_node=gpus, procs_per_node=procs, resources=resources,
                                   env={"OMP_NUM_THREADS": "3"}))  # the user's env_json wins
    assert {"name": "OMP_NUM_THREADS", "value": "3"} in \
        custom["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize("build", ["pytorchjob", "trainjob"])
def test_gpus_are_requested_as_the_named_resource(build):
    """MIG slices, AMD or other accelerators: the GPUs were always requested as nvidia.com/gpu."""
    if build == "pytorchjob":
        manifest = build_pytorchjob(spec(gpu_resource="nvidia.com/mig-1g.10gb", gpus_per_node=2))
        limits = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "resources"]["limits"]
    else:
        manifest = build_trainjob(tj_spec(gpu_resource="nvidia.com/mig-1g.10gb", gpus_per_node=2))
        limits = manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits["nvidia.com/mig-1g.10gb"] == "2" and "nvidia.com/gpu" not in limits
    assert crd_errors(manifest) == []


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
    ({"gpu_resource": "nvidia.com/mig-1g.10gb", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}},
     "gpus_per_node"),
    ({"gpu_resource": "gpu"}, "not an extended resource name"),
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


# ---- Pod Security "restricted" ---------------------------------------------------------------------------------------
import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from launcher.manifest import ObjectStoreSpec  # noqa: E402
from launcher.trainjob import build_trainjob  # noqa: E402
from pod_security import violations  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = {"torch-distributed": REPO / "tests" / "data" / "crds" / "torch_distributed_runtime.yaml",
            "tokcls-torch-distributed": REPO / "manifests" / "trainer-runtime.yaml"}
STORE = ObjectStoreSpec(run_uri="s3://mlpipeline/tokcls-staging/tokcls-runs/r1", secret_name="mlpipeline-minio-artifact",
                        secret_env={"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"},
                        endpoint_url="http://minio-service.kubeflow:9000")
VARIANTS = {
    "gpu-pvc": {},
    "cpu": {"gpus_per_node": 0, "procs_per_node": 2, "resources": {}, "node_selector": {}, "tolerations": []},
    "object-store": {"num_nodes": 1, "pvc_name": "", "object_store": STORE},
    "secrets": {"secret_env": {"HF_TOKEN": ("hf-token", "token")}},
}


def tj_spec(**overrides) -> JobSpec:
    """spec() without the PyTorchJob-only TTL (a TrainJob's comes from its runtime)."""
    return spec(**{"ttl_seconds_after_finished": None, **overrides})


def _merge(base: dict, patch: dict) -> dict:
    """Strategic-merge-like: maps merge, lists of named items merge by name, other lists replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif isinstance(value, list) and value and isinstance(value[0], dict) and "name" in value[0]:
            items = {item["name"]: item for item in out.get(key) or []}
            for item in value:
                items[item["name"]] = _merge(items.get(item["name"], {}), item)
            out[key] = list(items.values())
        else:
            out[key] = copy.deepcopy(value)
    return out


def trainjob_pod(job: dict, runtime_file: Path) -> dict:
    """The node pod template the Trainer makes of `job` on the runtime: the runtime's template, our runtime patch,
    then spec.trainer (image, command, env, resources) on the `node` container (Trainer v2.2's merge order)."""
    runtime = yaml.safe_load(runtime_file.read_text())
    (node,) = [r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"] if r["name"] == "node"]
    template = node["template"]["spec"]["template"]
    for patch in job["spec"].get("runtimePatches", []):
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rjob["name"] == "node":
                template = _merge(template, rjob["template"]["spec"]["template"])
    trainer = job["spec"]["trainer"]
    container = {"name": "node", "image": trainer["image"], "command": trainer["command"], "env": trainer["env"]}
    if "resourcesPerNode" in trainer:
        container["resources"] = trainer["resourcesPerNode"]
    return _merge(template, {"spec": {"containers": [container]}})


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_pytorchjob_pods_pass_the_restricted_profile(variant):
    manifest = build_pytorchjob(spec(**VARIANTS[variant]))
    for role, replica in manifest["spec"]["pytorchReplicaSpecs"].items():
        template = replica["template"]
        assert violations(template["spec"], template["metadata"].get("annotations")) == [], role
        assert _model_errors(template, "V1PodTemplateSpec", role) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_trainjob_pods_pass_the_restricted_profile(variant, runtime):
    job = build_trainjob(tj_spec(**VARIANTS[variant]), runtime=runtime)
    pod = trainjob_pod(job, RUNTIMES[runtime])
    assert violations(pod["spec"], pod["metadata"].get("annotations")) == []
    assert _model_errors(pod, "V1PodTemplateSpec") == []


def test_the_torch_distributed_runtime_alone_is_not_restricted_so_the_patch_is_what_makes_it():
    """The control: Trainer's runtime sets no security context; without our patch its pod fails the profile."""
    job = build_trainjob(tj_spec())
    del job["spec"]["runtimePatches"]
    pod = trainjob_pod(job, RUNTIMES["torch-distributed"])
    found = " | ".join(violations(pod["spec"]))
    for control in ("Privilege escalation", "Capabilities", "Running as Non-root", "Seccomp"):
        assert control in found


@pytest.mark.parametrize("mutate,control", [
    (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "Privilege escalation"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "Capabilities"),
    (lambda p: [c["securityContext"].pop("seccompProfile") for c in p["containers"]]
     and p["securityContext"].pop("seccompProfile"), "Seccomp"),
    (lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "Unconfined"),
    (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False), "Non-root"),
    (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser 0"),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "Privileged"),
    (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "HostPath"),
    (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "Volume types"),
    (lambda p: p["containers"][0]["ports"][0].update(hostPort=23456), "Host ports"),
    (lambda p: p.update(hostNetwork=True), "Host namespaces"),
    (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "Sysctls"),
])
def test_the_restricted_check_catches_each_violation(mutate, control):
    pod = build_pytorchjob(spec())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    mutate(pod)
    assert any(control in v for v in violations(pod)), violations(pod)


# ---- Kubeflow Trainer v2 TrainJob ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_trainjob_validates_against_the_trainjob_crd(variant):
    job = build_trainjob(tj_spec(**VARIANTS[variant]))
    assert crd_errors(job) == []
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"


def test_trainjob_names_satisfy_the_crds_validation_rules():
    """The CRD's CEL rules (not evaluated by a v1.20 API server): the name is an RFC 1035 label of <= 63 chars."""
    from launcher.launch import _job_name

    crd = yaml.safe_load((REPO / "tests" / "data" / "crds" / "trainer.kubeflow.org_trainjobs.yaml").read_text())
    rules = [r["rule"] for r in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]]
    (pattern,) = [re.search(r"matches\('(.+)'\)", r).group(1) for r in rules if "matches" in r]
    for prefix in ("tokcls-finetune", "0-weird_Prefix!", "x" * 80):
        name = _job_name(prefix)
        assert re.fullmatch(pattern, name) and len(name) <= 63, name


def test_trainjob_carries_the_pod_as_patches_and_trainer_fields():
    job = build_trainjob(tj_spec(num_nodes=3, gpus_per_node=4, secret_env={"HF_TOKEN": ("hf-token", "token")}),
                         runtime="tokcls-torch-distributed")
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"}
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in trainer["env"]
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])  # reserved: the Trainer sets them
    (patch,) = job["spec"]["runtimePatches"]
    assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9-]+", patch["manager"])  # the webhook wants a domain-prefixed path
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert node["name"] == "node" and pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["containers"] == [{"name": "node", "volumeMounts": [
        {"name": "shared", "mountPath": "/mnt/shared"}, {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]
    assert "env" not in pod["spec"]["containers"][0]  # the webhook refuses env patches of `node`
    assert pod["spec"]["nodeSelector"] and pod["spec"]["tolerations"] and pod["spec"]["serviceAccountName"]
    words = shlex.split(trainer["command"][2].split("\n", 1)[1])
    assert words[:2] == ["exec", "torchrun"] and "--nproc_per_node" in words


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtimes_validate_against_the_clustertrainingruntime_crd(runtime):
    assert crd_errors(yaml.safe_load(RUNTIMES[runtime].read_text())) == []


def test_the_shipped_runtime_does_not_retry_failed_trainers():
    runtime = yaml.safe_load(RUNTIMES["tokcls-torch-distributed"].read_text())
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["spec"]["backoffLimit"] == 0
    pod = node["template"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never" and violations(pod["spec"]) == []


@pytest.mark.parametrize("overrides,message", [
    ({"restart_policy": "OnFailure"}, "PyTorchJob settings"),
    ({"ttl_seconds_after_finished": 60}, "PyTorchJob settings"),
])
def test_pytorchjob_only_settings_are_refused_for_a_trainjob(overrides, message):
    with pytest.raises(ManifestError, match=message):
        build_trainjob(tj_spec(**overrides))
