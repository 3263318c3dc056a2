"""The launcher against a real kube-apiserver (kube_apiserver.py): the server itself validates and prunes our
PyTorchJobs and TrainJobs against the CRDs, enforces manifests/rbac.yaml, validates our pod templates as Pods, and
answers every launch / watch / collect / delete call; its garbage collector acts on our ownerReferences. The test
plays only the operators (Training Operator v1, Trainer v2), through the same API (status subresource, pods)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiException

from kube_apiserver import NAMESPACE, REQUIRE_ENV, TOKENS, kube_apiserver  # noqa: F401 (fixture)
from kube_fake import (STATUS_FILES, FakeApiServer, artifacts, crd_errors, error_response,  # noqa: F401 (fixture)
                       response_json, run_launch)
from launcher import JobFailed, JobTimeout
from launcher.manifest import JobSpec, ObjectStoreSpec, build_pytorchjob
from launcher.trainjob import build_trainjob
from launcher.watch import BACKENDS, COMPLETION_INDEX, PYTORCHJOB, TRAINJOB, create_job, delete_job, failure_report

REPO = Path(__file__).resolve().parents[2]


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
                                "--apply_deepspeed", "true", "--deepspeed_preset", "zero3"],
                  num_nodes=3, gpus_per_node=4, pvc_name="tokcls-shared",
                  resources={"limits": {"cpu": "16", "memory": "128Gi"}, "requests": {"cpu": 8, "memory": "96Gi"}},
                  node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  env={"NCCL_DEBUG": "INFO"}, secret_env={"HF_TOKEN": ("hf-token", "token")},
                  active_deadline_seconds=7200, service_account="default-editor", image_pull_secrets=["regcred"],
                  labels={"tokcls.run-id": "r1"}, annotations={"note": "test"})
    values.update(overrides)
    return JobSpec(**values)


def manifest_of(backend: str, spec: JobSpec) -> dict:
    if backend == "trainjob":
        return build_trainjob(spec)
    spec.ttl_seconds_after_finished = 3600
    return build_pytorchjob(spec)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def rank0_pod_spec(job: dict) -> dict:
    """The pod spec the operator makes of the job for node rank 0."""
    if job["kind"] == "TrainJob":
        from test_launcher_manifest import RUNTIMES, trainjob_pod

        return trainjob_pod(job, RUNTIMES[job["spec"]["runtimeRef"]["name"]])["spec"]
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


class Operator(threading.Thread):
    """Plays the operator as admin: waits for the job named `prefix-*`, creates its rank-0 pod with the operator's
    labels (the server validates our pod as a real Pod), then writes each stage's status
    (tests/launcher/responses) to the job's status subresource; before 'succeeded' it leaves rank 0's outputs in
    the run folder, as the trainer does. `failed_pods`: also a worker pod, both pods' containers marked failed."""

    def __init__(self, server, prefix: str, stages: list[str], delay: float = 0.3, backend: str = "pytorchjob",
                 failed_pods: bool = False):
        super().__init__(daemon=True)
        self.server, self.prefix, self.stages, self.delay = server, prefix, stages, delay
        self.backend, self.failed_pods = BACKENDS[backend], failed_pods
        self.error: BaseException | None = None
        self.job_name = ""

    def pod(self, job: dict, suffix: str, rank: int) -> dict:
        b = self.backend
        labels = ({b.job_label: self.job_name, "training.kubeflow.org/replica-type": "master" if rank == 0 else "worker"}
                  if b is PYTORCHJOB else
                  {b.job_label: self.job_name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                   COMPLETION_INDEX: str(rank)})
        spec = json.loads(json.dumps(rank0_pod_spec(job)))
        spec.pop("restartPolicy", None)
        return {"metadata": {"name": f"{self.job_name}-{suffix}", "labels": labels,
                             "annotations": {COMPLETION_INDEX: str(rank)},
                             "ownerReferences": [{"apiVersion": f"{b.group}/{b.version}", "kind": b.kind,
                                                  "name": self.job_name, "uid": job["metadata"]["uid"],
                                                  "controller": True}]},
                "spec": {**spec, "restartPolicy": "Never"}}

    def run(self):
        try:
            b = self.backend
            custom, core = self.server.clients("admin")
            deadline = time.monotonic() + 30
            while not self.job_name and time.monotonic() < deadline:
                items = custom.list_namespaced_custom_object(b.group, b.version, NAMESPACE, b.plural)["items"]
                names = [j["metadata"]["name"] for j in items if j["metadata"]["name"].startswith(self.prefix)]
                self.job_name = names[0] if names else ""
                time.sleep(0.05)
            assert self.job_name, f"no job {self.prefix}-* was created"
            job = custom.get_namespaced_custom_object(b.group, b.version, NAMESPACE, b.plural, self.job_name)
            rank0 = "master-0" if b is PYTORCHJOB else "node-0-0-abcde"
            core.create_namespaced_pod(NAMESPACE, self.pod(job, rank0, 0))
            if self.failed_pods:
                core.create_namespaced_pod(NAMESPACE, self.pod(job, "worker-0", 1))
            for stage in self.stages:
                time.sleep(self.delay)
                job = custom.get_namespaced_custom_object(b.group, b.version, NAMESPACE, b.plural, self.job_name)
                if stage == "succeeded":
                    FakeApiServer.write_rank0_outputs(job)
                if stage == "failed" and self.failed_pods:
                    self.fail(core, rank0, 1, "2026-11-24T18:05:29Z")
                    self.fail(core, "worker-0", 137, "2026-11-24T18:05:02Z")
                status = STATUS_FILES[b.plural][stage]
                if status is not None:
                    job["status"] = response_json(status, name=self.job_name, namespace=NAMESPACE)
                    custom.replace_namespaced_custom_object_status(b.group, b.version, NAMESPACE, b.plural,
                                                                   self.job_name, job)
        except BaseException as err:  # surfaced by finish()
            self.error = err

    def fail(self, core, suffix: str, code: int, finished: str) -> None:
        name = f"{self.job_name}-{suffix}"
        pod = core.read_namespaced_pod(name, NAMESPACE)
        pod.status.phase = "Failed"
        pod.status.container_statuses = [{
            "name": self.backend.container, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": "Error", "startedAt": "2026-11-24T18:00:38Z",
                                     "finishedAt": finished}}}]
        core.replace_namespaced_pod_status(name, NAMESPACE, pod)

    def finish(self):
        self.join(timeout=30)
        if self.error:
            raise self.error


def admin_get(server, name: str, backend=PYTORCHJOB):
    custom, _ = server.clients("admin")
    try:
        return custom.get_namespaced_custom_object(backend.group, backend.version, NAMESPACE, backend.plural, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def gone_or_deleting(server, name: str, backend=PYTORCHJOB, wait: float = 0) -> bool:
    deadline = time.monotonic() + wait
    while True:
        job = admin_get(server, name, backend)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def launch(server, artifacts, prefix: str, **overrides):
    custom, core = server.clients("launcher")
    values = dict(backend="pytorchjob", num_train_epochs=2, apply_deepspeed=True, deepspeed_preset="zero3",
                  precision="16", num_nodes=2, gpus_per_node=1, image="registry.local/trainer-cuda:test",
                  namespace=NAMESPACE, shared_pvc_name="tokcls-shared", shared_mount_path=artifacts["shared"],
                  timeout_seconds=60, poll_interval_seconds=1, cleanup_policy="on_success", job_name_prefix=prefix)
    values.update(overrides)
    return run_launch(custom, core, artifacts, **values)


VARIANTS = {
    "gpu-deepspeed": {},
    "cpu": {"num_nodes": 1, "gpus_per_node": 0, "procs_per_node": 2, "resources": {}, "node_selector": {},
            "tolerations": [], "image": "ghcr.io/kfp-token-classification/trainer-cpu:0.1.0"},
    "8x8": {"num_nodes": 8, "gpus_per_node": 8, "shm_size": "64Gi"},
    "object-store": {"num_nodes": 1, "gpus_per_node": 8, "pvc_name": "", "object_store": ObjectStoreSpec(
        run_uri="s3://mlpipeline/tokcls-staging/tokcls-runs/r1", secret_name="mlpipeline-minio-artifact",
        secret_env={"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"},
        endpoint_url="http://minio-service.kubeflow:9000")},
    "owned": {},  # + an ownerReference to a live pod, below
}


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_the_server_accepts_our_manifests_without_pruning_a_field(kube_apiserver, variant, backend):
    name = unique("manifest")
    spec = job_spec(name, **VARIANTS[variant])
    if variant == "owned":  # (a live owner: the garbage collector deletes a job whose owner does not exist)
        spec.owner_references = [{"apiVersion": "v1", "kind": "Pod", **_step_pod(kube_apiserver)}]
    manifest = manifest_of(backend, spec)
    b = BACKENDS[backend]
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, b, manifest)
    stored = custom.get_namespaced_custom_object(b.group, b.version, NAMESPACE, b.plural, name)
    assert is_subset(manifest["spec"], stored["spec"]) == []
    assert is_subset(manifest["metadata"], stored["metadata"]) == []
    assert delete_job(custom, b, name, NAMESPACE) is True


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_the_server_creates_our_pods_as_real_pods(kube_apiserver, backend):
    """The pod the operator makes of our job (for a TrainJob: over each runtime) passes the server's Pod validation."""
    from test_launcher_manifest import RUNTIMES, trainjob_pod

    _, core = kube_apiserver.clients("admin")
    job = manifest_of(backend, job_spec(unique("pods")))
    specs = ([rank0_pod_spec(job)] if backend == "pytorchjob" else
             [trainjob_pod(build_trainjob(job_spec(unique("pods")), runtime=r), RUNTIMES[r])["spec"] for r in RUNTIMES])
    for spec in specs:
        name = unique("pod")
        created = core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": name}, "spec": spec})
        assert created.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        assert created.spec.containers[0].security_context.capabilities.drop == ["ALL"]
        core.delete_namespaced_pod(name, NAMESPACE)


def test_the_runtimes_are_installed_as_the_crd_says(kube_apiserver):
    custom, _ = kube_apiserver.clients("admin")
    for path in ("tests/data/crds/torch_distributed_runtime.yaml", "manifests/trainer-runtime.yaml"):
        sent = yaml.safe_load((REPO / path).read_text())
        stored = custom.get_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes",
                                                  sent["metadata"]["name"])
        assert is_subset(sent["spec"], stored["spec"]) == [], path


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_the_server_rejects_what_our_offline_crd_check_rejects(kube_apiserver, backend):
    name = unique("invalid")
    manifest = manifest_of(backend, job_spec(name))
    if backend == "trainjob":
        manifest["spec"]["trainer"]["numNodes"] = "two"
    else:
        manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    assert crd_errors(manifest)
    custom, _ = kube_apiserver.clients("launcher")
    with pytest.raises(JobFailed) as info:
        create_job(custom, BACKENDS[backend], manifest)
    assert info.value.reason == "CreateFailed" and "422" in info.value.message
    assert admin_get(kube_apiserver, name, BACKENDS[backend]) is None


def test_a_second_create_of_the_same_name_is_a_conflict(kube_apiserver):
    name = unique("twice")
    manifest = manifest_of("pytorchjob", job_spec(name))
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, PYTORCHJOB, manifest)
    with pytest.raises(JobFailed, match="409.*already exists"):
        create_job(custom, PYTORCHJOB, manifest)
    delete_job(custom, PYTORCHJOB, name, NAMESPACE)


def test_rbac_grants_the_launcher_what_it_needs_and_nothing_more(kube_apiserver):
    custom, core = kube_apiserver.clients("launcher")
    # what the launcher does is covered by the launch tests below; here: what it must not be able to do
    forbidden = {
        "create pods": lambda: core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "x"}, "spec": {
            "containers": [{"name": "c", "image": "busybox"}]}}),
        "delete pods": lambda: core.delete_collection_namespaced_pod(NAMESPACE),
        "read secrets": lambda: core.list_namespaced_secret(NAMESPACE),
        "watch pods": lambda: core.list_namespaced_pod(NAMESPACE, watch=True, timeout_seconds=1),
        "list pytorchjobs": lambda: custom.list_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs"),
        "list trainjobs": lambda: custom.list_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", NAMESPACE,
                                                                      "trainjobs"),
        "patch a trainjob": lambda: custom.patch_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", NAMESPACE, "trainjobs", "any", {"spec": {"suspend": True}}),
        "write job status": lambda: custom.patch_namespaced_custom_object_status(
            "kubeflow.org", "v1", NAMESPACE, "pytorchjobs", "any", {"status": {}}),
        "runtimes": lambda: custom.list_cluster_custom_object("trainer.kubeflow.org", "v1alpha1",
                                                              "clustertrainingruntimes"),
        "jobs in another namespace": lambda: custom.get_namespaced_custom_object("kubeflow.org", "v1", "other-team",
                                                                                 "pytorchjobs", "x"),
        "cluster-wide jobs": lambda: custom.list_cluster_custom_object("kubeflow.org", "v1", "pytorchjobs"),
    }
    for what, call in forbidden.items():
        with pytest.raises(ApiException) as info:
            call()
        assert info.value.status == 403, what
    # an account the RoleBinding does not name gets a 403 and the hint to apply the manifest
    stranger, _ = kube_apiserver.clients("stranger")
    with pytest.raises(JobFailed, match="403.*manifests/rbac.yaml"):
        create_job(stranger, TRAINJOB, build_trainjob(job_spec(unique("stranger"))))


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_launch_watch_collect_and_delete_through_the_real_api(kube_apiserver, artifacts, backend):
    prefix = unique("ok")
    operator = Operator(kube_apiserver, prefix, ["created", "running", "succeeded"], backend=backend)
    operator.start()
    result = launch(kube_apiserver, artifacts, prefix, backend=backend)
    operator.finish()
    assert result.state == "Succeeded" and result.job_name == operator.job_name and result.deleted
    out = Path(artifacts["pytorch_model_folder"])
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    assert not Path(result.run_dir).exists()
    # a foreground delete: the server marks the job, the garbage collector removes its pods, then the job
    assert gone_or_deleting(kube_apiserver, result.job_name, BACKENDS[backend])
    if kube_apiserver.garbage_collector:
        deadline = time.monotonic() + 30
        while admin_get(kube_apiserver, result.job_name, BACKENDS[backend]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert admin_get(kube_apiserver, result.job_name, BACKENDS[backend]) is None


@pytest.mark.parametrize("backend,reason", [("pytorchjob", "PyTorchJobFailed"), ("trainjob", "FailedJobs")])
def test_a_failed_job_fails_the_launch_with_the_first_failing_pod_and_is_kept(kube_apiserver, artifacts, backend,
                                                                              reason):
    prefix = unique("fail")
    operator = Operator(kube_apiserver, prefix, ["created", "running", "failed"], backend=backend, failed_pods=True)
    operator.start()
    with pytest.raises(JobFailed) as info:
        launch(kube_apiserver, artifacts, prefix, backend=backend)
    operator.finish()
    assert info.value.reason == reason
    # the worker (exit 137 at 18:05:02) failed before rank 0 (exit 1 at 18:05:29): its pod is named
    assert info.value.pod == f"pod {operator.job_name}-worker-0, exit code 137 (the first of 2 to fail)"
    job = admin_get(kube_apiserver, operator.job_name, BACKENDS[backend])
    assert job is not None and not job["metadata"].get("deletionTimestamp")  # on_success: kept to debug
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_a_job_that_never_finishes_times_out_and_is_deleted_even_on_success_policy(kube_apiserver, artifacts):
    prefix = unique("slow")
    operator = Operator(kube_apiserver, prefix, ["created", "running"])
    operator.start()
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="not finished after 3 s"):
        launch(kube_apiserver, artifacts, prefix, timeout_seconds=3, cleanup_policy="on_success")
    operator.finish()
    assert time.monotonic() - started < 30
    assert gone_or_deleting(kube_apiserver, operator.job_name)


def test_a_field_the_crd_does_not_declare_is_pruned_and_our_check_sees_it(kube_apiserver):
    # the control for the no-pruning test above: the server really prunes, and is_subset really notices
    name = unique("pruned")
    manifest = manifest_of("pytorchjob", job_spec(name))
    manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["gpuCount"] = 4
    assert crd_errors(manifest)  # the offline check flags it too
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, PYTORCHJOB, manifest)
    stored = custom.get_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs", name)
    assert is_subset(manifest["spec"], stored["spec"]) == [
        ".pytorchReplicaSpecs.Master.template.spec.containers[0].gpuCount: pruned"]
    delete_job(custom, PYTORCHJOB, name, NAMESPACE)


def test_the_rank0_log_of_an_unscheduled_pod_is_empty(kube_apiserver):
    # no scheduler or kubelet here: the pod is never placed, so there is no log yet
    from launcher.watch import rank0_logs

    prefix = unique("nolog")
    custom, _ = kube_apiserver.clients("launcher")
    create_job(custom, PYTORCHJOB, manifest_of("pytorchjob", job_spec(f"{prefix}-job")))
    operator = Operator(kube_apiserver, prefix, [])
    operator.start()
    operator.finish()
    _, core = kube_apiserver.clients("launcher")
    # v1.20 answers 200 with an empty body while the pod has no node (a kubelet answers 400 while the container
    # is being created: the fake-server tests cover that one)
    assert core.read_namespaced_pod_log(f"{prefix}-job-master-0", NAMESPACE, container="pytorch") == ""
    assert rank0_logs(core, PYTORCHJOB, f"{prefix}-job", NAMESPACE) == ""
    assert failure_report(core, PYTORCHJOB, f"{prefix}-job", NAMESPACE) == (
        f"pod {prefix}-job-master-0 (node rank 0)", "")
    delete_job(custom, PYTORCHJOB, f"{prefix}-job", NAMESPACE)


# ---- ownerReference and garbage collection, SIGTERM -----------------------------------------------------------------

def _step_pod(server) -> dict:
    """A pod standing for the KFP step the launcher runs in."""
    _, core = server.clients("admin")
    pod = core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": unique("step")}, "spec": {
        "containers": [{"name": "main", "image": "ghcr.io/kfp-token-classification/trainer-cpu:0.1.0"}]}})
    return {"name": pod.metadata.name, "uid": pod.metadata.uid}


def _need_garbage_collector(server):
    if not server.garbage_collector:
        message = "kube-controller-manager not built (scripts/install_kube_apiserver.sh): no garbage collector"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_deleting_the_step_pod_garbage_collects_the_job(kube_apiserver, artifacts, backend, monkeypatch):
    """The launcher's job is owned by its step's pod: while the pod lives the job stays (a wrong reference would
    have the collector delete it at once), and when the pod is deleted the garbage collector deletes the job."""
    _need_garbage_collector(kube_apiserver)
    step = _step_pod(kube_apiserver)
    monkeypatch.setenv("KFP_POD_NAME", step["name"])
    monkeypatch.setenv("KFP_POD_UID", step["uid"])
    monkeypatch.setenv("KFP_NAMESPACE", NAMESPACE)
    prefix = unique("owned")
    operator = Operator(kube_apiserver, prefix, ["created"] + ["running"] * 200, delay=0.2, backend=backend)
    operator.start()
    errors: list[BaseException] = []

    def run():
        try:
            launch(kube_apiserver, artifacts, prefix, backend=backend, timeout_seconds=120)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    launcher = threading.Thread(target=run, daemon=True)
    launcher.start()
    deadline = time.monotonic() + 30
    while not operator.job_name and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the collector has seen the job and its (live) owner
    job = admin_get(kube_apiserver, operator.job_name, BACKENDS[backend])
    assert job is not None and not job["metadata"].get("deletionTimestamp")
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": step["name"],
                                                   "uid": step["uid"]}]
    _, core = kube_apiserver.clients("admin")
    core.delete_namespaced_pod(step["name"], NAMESPACE)
    assert gone_or_deleting(kube_apiserver, operator.job_name, BACKENDS[backend], wait=30)
    launcher.join(60)
    assert len(errors) == 1 and isinstance(errors[0], JobFailed) and errors[0].reason == "JobDeleted"


LAUNCH_SCRIPT = """
import json, logging, sys
from kubernetes import client
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
from kube_fake import run_launch
from launcher import Cancelled
configuration = client.Configuration()
configuration.host, configuration.ssl_ca_cert = {url!r}, {ca!r}
configuration.api_key = {{"authorization": "Bearer {token}"}}
api = client.ApiClient(configuration)
try:
    run_launch(client.CustomObjectsApi(api), client.CoreV1Api(api), json.loads({artifacts!r}), **json.loads({values!r}))
except Cancelled as err:
    sys.exit(err.exit_code)
"""


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_sigterm_deletes_the_job_through_the_real_api(kube_apiserver, artifacts, tmp_path, backend):
    """A launcher process (as the pipeline's account) gets SIGTERM, as Argo sends it when a KFP run is terminated:
    it deletes its job and exits 143."""
    prefix = unique("term")
    operator = Operator(kube_apiserver, prefix, ["created"] + ["running"] * 200, delay=0.2, backend=backend)
    operator.start()
    values = dict(backend=backend, num_nodes=2, gpus_per_node=1, image="registry.local/trainer-cuda:test",
                  namespace=NAMESPACE, shared_pvc_name="tokcls-shared", shared_mount_path=artifacts["shared"], timeout_seconds=120,
                  poll_interval_seconds=1, cleanup_policy="never", job_name_prefix=prefix)
    script = LAUNCH_SCRIPT.format(tests=str(Path(__file__).parent), url=kube_apiserver.url, ca=kube_apiserver.ca_file,
                                  token=TOKENS["launcher"], artifacts=json.dumps(artifacts), values=json.dumps(values))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (operator.job_name and admin_get(kube_apiserver, operator.job_name, BACKENDS[backend])) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert operator.job_name, proc.communicate(timeout=5)[0] if proc.poll() is not None else "no job"
        time.sleep(1.5)  # watching
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert f"cancelled: deleted {BACKENDS[backend].kind}" in out
    assert gone_or_deleting(kube_apiserver, operator.job_name, BACKENDS[backend])  # even with cleanup_policy=never


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
    manifest = manifest_of("pytorchjob", job_spec(name))
    group, version, plural = "kubeflow.org", "v1", "pytorchjobs"
    assert real_error(lambda: custom.get_namespaced_custom_object(group, version, NAMESPACE, plural, name)) \
        == response_json("status_404_not_found.json", name=name)
    forbidden = real_error(lambda: stranger.create_namespaced_custom_object(group, version, NAMESPACE, plural,
                                                                            manifest))
    forbidden["message"] = forbidden["message"].replace(":someone-else\"", ":default-editor\"")
    assert forbidden == response_json("status_403_forbidden.json", namespace=NAMESPACE)
    with pytest.raises(ApiException) as info:  # what a cluster without the Training Operator's CRD answers
        admin.create_namespaced_custom_object(group, version, NAMESPACE, plural.replace("pytorch", "nosuch"), manifest)
    assert (info.value.status, info.value.body) == error_response("status_404_no_route.txt")[:2]
    create_job(custom, PYTORCHJOB, manifest)
    assert real_error(lambda: custom.create_namespaced_custom_object(group, version, NAMESPACE, plural, manifest)) \
        == response_json("status_409_exists.json", name=name)
    delete_job(custom, PYTORCHJOB, name, NAMESPACE)
    manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    invalid = real_error(lambda: custom.create_namespaced_custom_object(group, version, NAMESPACE, plural, manifest))
    fake = response_json("status_422_invalid.json", name=name, detail="x", field="spec")
    for body in (invalid, fake):  # the validation wording is the server's own; the structure must agree
        body["message"] = body["message"].split(" is invalid: ")[0]
        body["details"]["causes"] = sorted({(c["reason"], "field" in c) for c in body["details"]["causes"]})
    assert invalid == fake
