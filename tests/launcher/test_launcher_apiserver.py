"""The launcher against a real kube-apiserver (kube_apiserver.py): the server itself validates and prunes our
PyTorchJobs against the CRD, enforces manifests/rbac.yaml, and answers every launch / watch / collect / delete
call. The test plays only the Training Operator, through the same API (status subresource, master pod)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from kubernetes.client import ApiException

from kube_apiserver import NAMESPACE, kube_apiserver  # noqa: F401 (fixture)
from kube_fake import FakeApiServer, artifacts, crd_errors, error_response, response_json  # noqa: F401 (fixture)
from launcher import PyTorchJobFailed, PyTorchJobTimeout, run_pytorchjob
from launcher.manifest import GROUP, PLURAL, VERSION, JobSpec, ObjectStoreSpec, build_pytorchjob
from launcher.watch import JOB_NAME_LABEL, REPLICA_TYPE_LABEL, create_job, delete_job


def is_subset(sent, got, path="") -> list[str]:
    """Where `got` lost or changed something of `sent` (what the server's pruning would do)."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [f"{path}: not an object"]
        return [d for k, v in sent.items() for d in (is_subset(v, got[k], f"{path}.{k}") if k in got
                                                       else [f"{path}.{k}: pruned"])]
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [f"{path}: list changed"]
        return [d for i, (a, b) in enumerate(zip(sent, got)) for d in is_subset(a, b, f"{path}[{i}]")]
    return [] if sent == got else [f"{path}: {sent!r} -> {got!r}"]


def job_spec(name: str, **overrides) -> JobSpec:
    values = dict(name=name, namespace=NAMESPACE, image="ghcr.io/kfp-token-classification/trainer-cuda:0.1.0",
                  trainer_args=["--preprocess_output", "/mnt/shared/tokcls-runs/r1/inputs/preprocess_output",
                                "--apply_deepspeed", "true", "--deepspeed", "zero3"],
                  num_nodes=3, gpus_per_node=4, pvc_name="tokcls-shared",
                  resources={"limits": {"cpu": "16", "memory": "128Gi"}, "requests": {"cpu": 8, "memory": "96Gi"}},
                  node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  env={"NCCL_DEBUG": "INFO"}, ttl_seconds_after_finished=3600, active_deadline_seconds=7200,
                  service_account="default-editor", image_pull_secrets=["regcred"],
                  labels={"tokcls.run-id": "r1"}, annotations={"note": "test"})
    values.update(overrides)
    return JobSpec(**values)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Operator(threading.Thread):
    """Plays the Training Operator as admin: waits for the job named `prefix-*`, creates its master pod with the
    operator's labels, then writes each stage's status (tests/launcher/responses/job_status_<stage>.json) to the
    job's status subresource; before 'succeeded' it leaves rank 0's outputs in the run folder, as the trainer does."""

    def __init__(self, server, prefix: str, stages: list[str], delay: float = 0.3):
        super().__init__(daemon=True)
        self.server, self.prefix, self.stages, self.delay = server, prefix, stages, delay
        self.error: BaseException | None = None
        self.job_name = ""

    def run(self):
        try:
            custom, core = self.server.clients("admin")
            deadline = time.monotonic() + 30
            while not self.job_name and time.monotonic() < deadline:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
                names = [j["metadata"]["name"] for j in items if j["metadata"]["name"].startswith(self.prefix)]
                self.job_name = names[0] if names else ""
                time.sleep(0.05)
            assert self.job_name, f"no job {self.prefix}-* was created"
            job = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, self.job_name)
            core.create_namespaced_pod(NAMESPACE, {
                "metadata": {"name": f"{self.job_name}-master-0",
                             "labels": {JOB_NAME_LABEL: self.job_name, REPLICA_TYPE_LABEL: "master"},
                             "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "PyTorchJob",
                                                  "name": self.job_name, "uid": job["metadata"]["uid"],
                                                  "controller": True}]},
                "spec": job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]})
            for stage in self.stages:
                time.sleep(self.delay)
                job = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, self.job_name)
                if stage == "succeeded":
                    FakeApiServer.write_rank0_outputs(job)
                job["status"] = response_json(f"job_status_{stage}.json", name=self.job_name, namespace=NAMESPACE)
                custom.replace_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, self.job_name, job)
        except BaseException as err:  # surfaced by finish()
            self.error = err

    def finish(self):
        self.join(timeout=30)
        if self.error:
            raise self.error


def admin_get(server, name: str):
    custom, _ = server.clients("admin")
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def launch(server, artifacts, prefix: str, **overrides):
    custom, core = server.clients("launcher")
    kwargs = dict(
        preprocess_output=artifacts["preprocess_output"], model_selector_output=artifacts["model_selector_output"],
        pytorch_model_folder=artifacts["pytorch_model_folder"], mlflow_model_folder=artifacts["mlflow_model_folder"],
        finetune_args={"num_train_epochs": 2, "apply_deepspeed": "true", "deepspeed": "zero3", "precision": "16"},
        num_nodes=2, gpus_per_node=1, image="registry.local/trainer-cuda:test", namespace=NAMESPACE,
        shared_pvc_name="tokcls-shared", shared_mount_path=artifacts["shared"], timeout_s=60, poll_interval_s=0.2,
        cleanup_policy="on_success", job_name_prefix=prefix, custom_api=custom, core_api=core)
    kwargs.update(overrides)
    return run_pytorchjob(**kwargs)


@pytest.mark.parametrize("variant", [
    {},
    {"num_nodes": 1, "gpus_per_node": 0, "procs_per_node": 2, "resources": {}, "node_selector": {},
     "tolerations": [], "image": "ghcr.io/kfp-token-classification/trainer-cpu:0.1.0"},
    {"num_nodes": 8, "gpus_per_node": 8, "shm_size": "64Gi", "restart_policy": "OnFailure", "backoff_limit": 3},
    {"num_nodes": 1, "gpus_per_node": 8, "pvc_name": "", "object_store": ObjectStoreSpec(
        run_uri="s3://mlpipeline/tokcls-staging/tokcls-runs/r1", secret_name="mlpipeline-minio-artifact",
        secret_env={"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"},
        endpoint_url="http://minio-service.kubeflow:9000")},
], ids=["gpu-deepspeed", "cpu", "8x8-onfailure", "object-store"])
def test_the_server_accepts_our_manifests_without_pruning_a_field(kube_apiserver, variant):
    name = unique("manifest")
    manifest = build_pytorchjob(job_spec(name, **variant))
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, manifest)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    assert is_subset(manifest["spec"], stored["spec"]) == []
    assert is_subset(manifest["metadata"]["labels"], stored["metadata"]["labels"]) == []
    assert delete_job(custom, name, NAMESPACE) is True


def test_the_server_rejects_what_our_offline_crd_check_rejects(kube_apiserver):
    name = unique("invalid")
    manifest = build_pytorchjob(job_spec(name))
    manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    assert any("replicas" in e for e in crd_errors(manifest))
    custom, _ = kube_apiserver.clients("launcher")
    with pytest.raises(PyTorchJobFailed) as info:
        create_job(custom, manifest)
    assert info.value.reason == "CreateFailed" and "422" in info.value.message
    assert admin_get(kube_apiserver, name) is None


def test_a_second_create_of_the_same_name_is_a_conflict(kube_apiserver):
    name = unique("twice")
    manifest = build_pytorchjob(job_spec(name))
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, manifest)
    with pytest.raises(PyTorchJobFailed, match="409.*already exists"):
        create_job(custom, manifest)
    delete_job(custom, name, NAMESPACE)


def test_rbac_grants_the_launcher_what_it_needs_and_nothing_more(kube_apiserver):
    custom, core = kube_apiserver.clients("launcher")
    # what the launcher does is covered by the launch tests below; here: what it must not be able to do
    forbidden = {
        "create pods": lambda: core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "x"}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}]}}),
        "delete pods": lambda: core.delete_collection_namespaced_pod(NAMESPACE),
        "read secrets": lambda: core.list_namespaced_secret(NAMESPACE),
        "write job status": lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, "any", {"status": {}}),
        "jobs in another namespace": lambda: custom.list_namespaced_custom_object(GROUP, VERSION, "other-team",
                                                                                  PLURAL),
        "cluster-wide jobs": lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL),
    }
    for what, call in forbidden.items():
        with pytest.raises(ApiException) as info:
            call()
        assert info.value.status == 403, what
    # an account the RoleBinding does not name gets a 403 and the hint to apply the manifest
    stranger, _ = kube_apiserver.clients("stranger")
    with pytest.raises(PyTorchJobFailed, match="403.*manifests/rbac.yaml"):
        create_job(stranger, build_pytorchjob(job_spec(unique("stranger"))))


def test_launch_watch_collect_and_delete_through_the_real_api(kube_apiserver, artifacts, capsys):
    prefix = unique("ok")
    operator = Operator(kube_apiserver, prefix, ["created", "running", "succeeded"])
    operator.start()
    result = launch(kube_apiserver, artifacts, prefix)
    operator.finish()
    assert result.state == "Succeeded" and result.job_name == operator.job_name and result.deleted
    out = Path(artifacts["pytorch_model_folder"])
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    assert not Path(result.run_dir).exists()
    # a foreground delete: the server marks the job (the garbage collector then removes its pods, then it)
    job = admin_get(kube_apiserver, result.job_name)
    assert job is None or (job["metadata"].get("deletionTimestamp")
                           and "foregroundDeletion" in job["metadata"].get("finalizers", []))


def test_a_failed_job_fails_the_launch_with_the_operators_reason_and_is_kept(kube_apiserver, artifacts):
    prefix = unique("fail")
    operator = Operator(kube_apiserver, prefix, ["created", "running", "failed"])
    operator.start()
    with pytest.raises(PyTorchJobFailed) as info:
        launch(kube_apiserver, artifacts, prefix)
    operator.finish()
    assert info.value.reason == "PyTorchJobFailed" and "Master replica(s) failed" in info.value.message
    job = admin_get(kube_apiserver, operator.job_name)
    assert job is not None and not job["metadata"].get("deletionTimestamp")  # on_success: kept to debug
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_a_job_that_never_finishes_times_out_and_is_deleted_per_policy(kube_apiserver, artifacts):
    prefix = unique("slow")
    operator = Operator(kube_apiserver, prefix, ["created", "running"])
    operator.start()
    started = time.monotonic()
    with pytest.raises(PyTorchJobTimeout, match="not finished after 3 s"):
        launch(kube_apiserver, artifacts, prefix, timeout_s=3, cleanup_policy="always")
    operator.finish()
    assert time.monotonic() - started < 30
    job = admin_get(kube_apiserver, operator.job_name)
    assert job is None or job["metadata"].get("deletionTimestamp")


def test_a_field_the_crd_does_not_declare_is_pruned_and_our_check_sees_it(kube_apiserver):
    # the control for the no-pruning test above: the server really prunes, and is_subset really notices
    name = unique("pruned")
    manifest = build_pytorchjob(job_spec(name))
    manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["gpuCount"] = 4
    assert crd_errors(manifest)  # the offline check flags it too
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, manifest)
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    assert is_subset(manifest["spec"], stored["spec"]) == [
        ".pytorchReplicaSpecs.Master.template.spec.containers[0].gpuCount: pruned"]
    delete_job(custom, name, NAMESPACE)


def test_the_master_log_of_an_unscheduled_pod_is_empty(kube_apiserver):
    # no scheduler or kubelet here: the master pod is never placed, so there is no log yet
    from launcher.watch import master_logs

    prefix = unique("nolog")
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, build_pytorchjob(job_spec(f"{prefix}-job")))
    operator = Operator(kube_apiserver, prefix, [])
    operator.start()
    operator.finish()
    _, core = kube_apiserver.clients("launcher")
    # v1.20 answers 200 with an empty body while the pod has no node (a kubelet answers 400 while the container
    # is being created: the fake-server tests cover that one)
    assert core.read_namespaced_pod_log(f"{prefix}-job-master-0", NAMESPACE, container="pytorch") == ""
    assert master_logs(core, f"{prefix}-job", NAMESPACE) == ""
    delete_job(custom, f"{prefix}-job", NAMESPACE)


def real_error(call) -> dict:
    with pytest.raises(ApiException) as info:
        call()
    return json.loads(info.value.body)


def test_the_fake_servers_error_bodies_are_this_servers(kube_apiserver):
    """tests/launcher/responses/status_*.json, which the fake-server tests replay, against the real answers."""
    custom, _ = kube_apiserver.clients("launcher")
    stranger, _ = kube_apiserver.clients("stranger")
    admin, _ = kube_apiserver.clients("admin")
    name = unique("errors")
    manifest = build_pytorchjob(job_spec(name))
    assert real_error(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)) \
        == response_json("status_404_not_found.json", name=name)
    forbidden = real_error(lambda: stranger.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL,
                                                                            manifest))
    forbidden["message"] = forbidden["message"].replace(":someone-else\"", ":default-editor\"")
    assert forbidden == response_json("status_403_forbidden.json", namespace=NAMESPACE)
    with pytest.raises(ApiException) as info:  # what a cluster without the Training Operator's CRD answers
        admin.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL.replace("pytorch", "nosuch"), manifest)
    assert (info.value.status, info.value.body) == error_response("status_404_no_route.txt")[:2]
    create_job(custom, manifest)
    assert real_error(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, manifest)) \
        == response_json("status_409_exists.json", name=name)
    delete_job(custom, name, NAMESPACE)
    manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    invalid = real_error(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, manifest))
    fake = response_json("status_422_invalid.json", name=name, detail="x", field="spec")
    for body in (invalid, fake):  # the validation wording is the server's own; the structure must agree
        body["message"] = body["message"].split(" is invalid: ")[0]
        body["details"]["causes"] = sorted({(c["reason"], "field" in c) for c in body["details"]["causes"]})
    assert invalid == fake
