"""The trainer pods of a distributed run (shared by both backends) and the `kubeflow.org/v1` PyTorchJob.

`JobSpec` holds everything a job depends on; `pod_template(spec, container_name)` is the pod both backends run
(`launcher.trainjob` builds the Trainer v2 TrainJob from the same pieces). Every pod passes the Pod Security
Standards "restricted" profile: non-root uid/gid 1000, `seccompProfile: RuntimeDefault`, no privilege
escalation, `capabilities.drop: [ALL]`, only PVC / emptyDir volumes. Secrets reach the pods only through
`env[].valueFrom.secretKeyRef` (`JobSpec.secret_env`), never as plain values.

PyTorchJob layout: one `Master` replica (node rank 0, writes the outputs) plus `num_nodes - 1` `Worker` replicas,
each pod running

    torchrun --nnodes N --nproc_per_node G --node_rank R --master_addr A --master_port P \
             -m trainer.cli --<field> <value> ...

The Kubeflow Training Operator (v1) injects into every container of the job: `MASTER_ADDR`,
`MASTER_PORT` (the Master's service and the port named `pytorchjob-port`), `WORLD_SIZE`, `RANK`
(the pod's index: Master 0, Worker i -> i + 1) and, from v1.7 on, the torchrun variables
`PET_NNODES`, `PET_NPROC_PER_NODE` (from `spec.nprocPerNode`) and `PET_NODE_RANK` (= `RANK`);
`PET_MASTER_ADDR`/`PET_MASTER_PORT` are honoured too where an operator sets them. torchrun reads `PET_*` variables as defaults of its own flags; we still pass the
flags explicitly, falling back from the `PET_` variables to the older `RANK`/`MASTER_*` ones so the
same manifest works on operators before and after v1.7. Static rendezvous (master address/port,
no `--rdzv_*`) with `elasticPolicy` left out: the job is not elastic, every node must be there.

Staging: either a shared ReadWriteMany PVC (`pvc_name`, mounted at `mount_path`), or an object store
(`object_store`): then each pod mounts an emptyDir at `work_dir`, pulls the run's inputs and earlier
checkpoints with `python -m launcher.objstore`, the master uploads complete checkpoints in the
background while torchrun runs and, after torchrun succeeded, pushes its outputs and then the
completion marker. A failed torchrun exits the container with its code and writes no marker. The folders
the script names come from `launcher.layout.RunLayout`, as do the staged ones.

The dict returned is plain JSON-able data: pass it to `CustomObjectsApi.create_namespaced_custom_object`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from launcher.layout import RunLayout
from trainer.constants import SUCCESS_MARKER

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
# The operator's webhook requires this container name; env vars and the port are looked up by it.
CONTAINER_NAME = "pytorch"
PORT_NAME = "pytorchjob-port"
DEFAULT_PORT = 23456
GPU_RESOURCE = "nvidia.com/gpu"

RESTART_POLICIES = ("Never", "OnFailure", "Always", "ExitCode")
CLEAN_POD_POLICIES = ("None", "Running", "All")

# (PYTHONUNBUFFERED is set by the operator itself.)
# Every pod works offline against the staged artifacts; caches go to writable places for a non-root user.
BASE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": "/tmp/hf-home",
    "TOKENIZERS_PARALLELISM": "false",
    "TORCH_EXTENSIONS_DIR": "/tmp/torch-extensions",  # DeepSpeed JIT-builds ops here
    "TRITON_CACHE_DIR": "/tmp/triton-cache",
    "NCCL_DEBUG": "WARN",
}

_EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


@dataclass
class ObjectStoreSpec:
    """Object-store staging of the pods: where the run lives and how the pods reach it."""

    run_uri: str  # s3://bucket/prefix/tokcls-runs/<run_id>
    work_dir: str = "/workspace/run"
    secret_name: str = ""  # Secret with the credentials; empty: the pods' ambient credentials
    secret_env: dict[str, str] = field(default_factory=dict)  # env var -> key in secret_name
    endpoint_url: str = ""  # AWS_ENDPOINT_URL of the pods (MinIO, GCS, ...)
    sync_interval_s: int = 300  # seconds between checkpoint uploads of the master
    marker: str = SUCCESS_MARKER  # written under outputs/ after the master's final push


_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def validate_secret_ref(env_name: str, secret: str, key: str) -> None:
    if not secret or len(secret) > 253 or not _DNS_1123_SUBDOMAIN.match(secret):
        raise ManifestError(f"Secret name {secret!r} (for {env_name}) is not a valid Secret name")
    if not key or len(key) > 253 or not _SECRET_KEY.match(key):
        raise ManifestError(f"Secret key {key!r} (for {env_name}) is not a valid Secret key "
                            "(letters, digits, '-', '_', '.')")


class ManifestError(ValueError):
    """An input that can never make a valid PyTorchJob."""


def is_dns_label(name: str, max_len: int = 63) -> bool:
    return bool(name) and len(name) <= max_len and bool(_DNS_1123.match(name))


@dataclass
class JobSpec:
    """Everything the manifest depends on; `trainer_args` are the `--flag value` pairs after `-m trainer.cli`."""

    name: str
    namespace: str
    image: str
    trainer_args: list[str]
    num_nodes: int = 2
    gpus_per_node: int = 1
    procs_per_node: Optional[int] = None  # CPU-only jobs (gpus_per_node=0): processes per pod, default 1
    gpu_resource: str = GPU_RESOURCE  # the extended resource the GPUs are requested as (a MIG slice, amd.com/gpu)
    pvc_name: str = ""
    mount_path: str = "/mnt/shared"
    object_store: Optional[ObjectStoreSpec] = None  # instead of pvc_name
    resources: dict[str, Any] = field(default_factory=dict)  # {"limits": {...}, "requests": {...}}
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)  # env var -> (Secret name, key)
    owner_references: list[dict[str, Any]] = field(default_factory=list)  # e.g. the launcher's own pod
    shm_size: str = "16Gi"
    service_account: str = ""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)
    restart_policy: str = "Never"
    backoff_limit: int = 0
    clean_pod_policy: str = "None"  # keep finished pods (their logs) until we delete the job
    ttl_seconds_after_finished: Optional[int] = None
    active_deadline_seconds: Optional[int] = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    port: int = DEFAULT_PORT
    run_as_user: int = 1000
    fs_group: int = 1000

    @property
    def nproc_per_node(self) -> int:
        if self.gpus_per_node > 0:
            return self.gpus_per_node
        return self.procs_per_node or 1

    def validate(self) -> None:
        if not is_dns_label(self.name, 50):  # pod names add "-worker-<i>"; stay under 63
            raise ManifestError(f"job name {self.name!r} must be a DNS-1123 label of at most 50 characters")
        if not is_dns_label(self.namespace):
            raise ManifestError(f"namespace {self.namespace!r} is not a valid DNS-1123 label")
        if not self.image or any(c.isspace() for c in self.image):
            raise ManifestError(f"image {self.image!r} is empty or has whitespace")
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ManifestError(f"num_nodes must be an integer >= 1, got {self.num_nodes!r}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 0:
            raise ManifestError(f"gpus_per_node must be an integer >= 0, got {self.gpus_per_node!r}")
        if self.procs_per_node is not None and self.procs_per_node < 1:
            raise ManifestError(f"procs_per_node must be >= 1, got {self.procs_per_node}")
        if bool(self.pvc_name) == (self.object_store is not None):
            raise ManifestError("give exactly one of pvc_name (shared PVC) and object_store (object-store staging)")
        if self.object_store is not None:
            validate_object_store(self.object_store)
            if self.num_nodes > 1:
                raise ManifestError(
                    "object-store staging runs single-node jobs (num_nodes=1, up to gpus_per_node GPUs in one pod): "
                    "with several nodes every pod has its own disk, while DeepSpeed's per-rank checkpoint shards, the "
                    "best-model reload at the end and resume need one shared folder; use a ReadWriteMany PVC "
                    "(shared_pvc_name) for multi-node runs")
        elif not is_dns_label(self.pvc_name, 253):
            raise ManifestError(f"shared PVC name {self.pvc_name!r} is not a valid name")
        elif not self.mount_path.startswith("/"):
            raise ManifestError(f"mount_path {self.mount_path!r} must be absolute")
        if self.restart_policy not in RESTART_POLICIES:
            raise ManifestError(f"restart_policy {self.restart_policy!r} is not one of {list(RESTART_POLICIES)}")
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            raise ManifestError(f"clean_pod_policy {self.clean_pod_policy!r} is not one of {list(CLEAN_POD_POLICIES)}")
        if self.backoff_limit < 0:
            raise ManifestError("backoff_limit must be >= 0")
        if not _QUANTITY.match(self.shm_size):
            raise ManifestError(f"shm_size {self.shm_size!r} is not a Kubernetes quantity")
        validate_resources(self.resources)
        for secret in self.image_pull_secrets:
            if len(secret) > 253 or not _DNS_1123_SUBDOMAIN.match(secret):
                raise ManifestError(f"image pull Secret name {secret!r} is not a valid Secret name")
        if not _EXTENDED_RESOURCE.match(self.gpu_resource or ""):
            raise ManifestError(f"gpu_resource {self.gpu_resource!r} is not an extended resource name such as "
                                f"{GPU_RESOURCE} (a domain, '/', a name)")
        if self.gpu_resource in self.resources.get("limits", {}):
            raise ManifestError(f"set GPUs with gpus_per_node, not resources.limits[{self.gpu_resource!r}]")
        if not isinstance(self.node_selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            raise ManifestError("node_selector must be a mapping of strings to strings")
        validate_tolerations(self.tolerations)
        for key in [*self.env, *self.secret_env]:
            if not _ENV_NAME.match(key):
                raise ManifestError(f"env name {key!r} is not valid")
        clash = sorted(set(self.env) & set(self.secret_env))
        if clash:
            raise ManifestError(f"{clash} set both as plain env and from a Secret")
        for key, (secret, secret_key) in self.secret_env.items():
            validate_secret_ref(key, secret, secret_key)
        for ref in self.owner_references:
            if not {"apiVersion", "kind", "name", "uid"} <= set(ref):
                raise ManifestError(f"owner reference {ref} needs apiVersion, kind, name and uid")


def validate_object_store(store: ObjectStoreSpec) -> None:
    if not store.run_uri.startswith("s3://"):
        raise ManifestError(f"object-store run URI {store.run_uri!r} must be an s3:// URI")
    if not store.work_dir.startswith("/") or store.work_dir.rstrip("/") in ("", "/dev/shm"):
        raise ManifestError(f"object-store work_dir {store.work_dir!r} must be an absolute path (not / or /dev/shm)")
    if store.secret_name and (len(store.secret_name) > 253 or not _DNS_1123_SUBDOMAIN.match(store.secret_name)):
        raise ManifestError(f"staging secret name {store.secret_name!r} is not a valid Secret name")
    if store.secret_env and not store.secret_name:
        raise ManifestError("staging secret keys were given without a staging secret name")
    for env_name, key in store.secret_env.items():
        if not key or len(key) > 253 or not _SECRET_KEY.match(key):
            raise ManifestError(f"staging secret key {key!r} (for {env_name}) is not a valid Secret key "
                                "(letters, digits, '-', '_', '.')")
    if store.endpoint_url and (not re.match(r"^https?://[^\s/]+", store.endpoint_url)
                               or any(c.isspace() for c in store.endpoint_url)):
        raise ManifestError(f"staging endpoint URL {store.endpoint_url!r} must be http(s)://host[:port]")
    if not isinstance(store.sync_interval_s, int) or store.sync_interval_s < 1:
        raise ManifestError(f"checkpoint sync interval must be an integer >= 1 s, got {store.sync_interval_s!r}")
    if not store.marker or "/" in store.marker:
        raise ManifestError(f"marker {store.marker!r} must be a plain object name")


def validate_resources(resources: Any) -> None:
    if not isinstance(resources, dict):
        raise ManifestError("resources must be a mapping with 'limits' and/or 'requests'")
    unknown = set(resources) - {"limits", "requests"}
    if unknown:
        raise ManifestError(f"resources has unknown key(s) {sorted(unknown)}; use 'limits' and 'requests'")
    for kind, values in resources.items():
        if not isinstance(values, dict):
            raise ManifestError(f"resources.{kind} must be a mapping")
        for name, qty in values.items():
            if isinstance(qty, bool) or not (isinstance(qty, int) or (isinstance(qty, str) and _QUANTITY.match(qty))):
                raise ManifestError(f"resources.{kind}.{name}={qty!r} is not a Kubernetes quantity")


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def validate_tolerations(tolerations: Any) -> None:
    if not isinstance(tolerations, list):
        raise ManifestError("tolerations must be a list of objects")
    for t in tolerations:
        if not isinstance(t, dict) or set(t) - _TOLERATION_KEYS:
            raise ManifestError(f"toleration {t!r} must be an object with keys among {sorted(_TOLERATION_KEYS)}")
        if t.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ManifestError(f"toleration operator must be Equal or Exists, got {t.get('operator')!r}")
        if t.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ManifestError(f"toleration effect {t.get('effect')!r} is not valid")


def torchrun_line(spec: JobSpec) -> str:
    """`torchrun ... -m trainer.cli ...`; the operator's env vars are expanded by the pod's shell."""
    args = " ".join(shlex.quote(a) for a in spec.trainer_args)
    return (
        "torchrun"
        f" --nnodes {spec.num_nodes}"
        f" --nproc_per_node {spec.nproc_per_node}"
        ' --node_rank "${PET_NODE_RANK:-${RANK:-0}}"'
        ' --master_addr "${PET_MASTER_ADDR:-${MASTER_ADDR:-localhost}}"'
        f' --master_port "${{PET_MASTER_PORT:-${{MASTER_PORT:-{spec.port}}}}}"'
        " -m trainer.cli"
        + (f" {args}" if args else "")
    )


OBJSTORE_CLI = "python -m launcher.objstore"


def object_store_script(spec: JobSpec, store: ObjectStoreSpec) -> str:
    """The pod's shell script with object-store staging: pull, train (master: sync checkpoints), push, mark.

    torchrun runs in the background so that the shell (PID 1 of the container) can forward SIGTERM to it;
    its exit code is the container's. Only the master (node rank 0) uploads: complete checkpoints while
    training and once more after a failure (for resume); after a successful torchrun it pushes the outputs
    (mirroring them: rotated checkpoints go) and then writes the marker.
    """
    q = shlex.quote
    inputs, outputs = RunLayout.INPUTS, RunLayout.OUTPUTS
    pytorch, mlflow = RunLayout.PYTORCH_MODEL_FOLDER, RunLayout.MLFLOW_MODEL_FOLDER
    return "\n".join([
        "set -u",
        f'W={q(store.work_dir.rstrip("/"))}; U={q(store.run_uri.rstrip("/"))}; R="${{PET_NODE_RANK:-${{RANK:-0}}}}"',
        # A signal during the pulls ends them and the pod at once: the shell is PID 1 in the container, and PID 1
        # ignores TERM without a handler, so a cancel waited the grace period; the pulls run in the background so
        # that `wait` lets the trap run.
        'P=""',
        """trap '[ -n "$P" ] && kill -TERM "$P" 2>/dev/null; exit 143' TERM INT""",
        f'{OBJSTORE_CLI} pull "$U/{inputs}" "$W/{inputs}" & P=$!; wait "$P" || exit 1',
        f'{OBJSTORE_CLI} pull "$U/{pytorch}" "$W/{pytorch}" & P=$!; wait "$P" || exit 1',
        'P=""',
        # (a restarted container finds its emptyDir as it left it: the trainer wants an empty mlflow folder)
        f'rm -rf "$W/{mlflow}" && mkdir -p "$W/{mlflow}" || exit 1',
        'S=""',
        f'if [ "$R" = 0 ]; then {OBJSTORE_CLI} sync-checkpoints "$W/{pytorch}" "$U/{pytorch}" '
        f'--interval {int(store.sync_interval_s)} --parent-pid $$ & S=$!; fi',
        f"{torchrun_line(spec)} &",
        "T=$!",
        """trap 'kill -TERM "$T" 2>/dev/null' TERM INT""",
        'while :; do wait "$T"; RC=$?; kill -0 "$T" 2>/dev/null || break; done',
        'if [ -n "$S" ]; then kill -TERM "$S" 2>/dev/null; wait "$S"; fi',
        'if [ "$RC" -ne 0 ]; then echo "torchrun failed with exit code $RC" >&2',
        f'  if [ "$R" = 0 ]; then {OBJSTORE_CLI} sync-checkpoints --once "$W/{pytorch}" "$U/{pytorch}"; fi',
        '  exit "$RC"',
        "fi",
        f'if [ "$R" = 0 ]; then {OBJSTORE_CLI} push --mirror --marker {q(store.marker)} "$W/{outputs}" '
        f'"$U/{outputs}" || exit 1; fi',
        "exit 0",
    ])


def torchrun_command(spec: JobSpec) -> list[str]:
    """The container command: a shell line so the operator's env vars are expanded inside the pod."""
    if spec.object_store is not None:
        return ["/bin/sh", "-c", object_store_script(spec, spec.object_store)]
    return ["/bin/sh", "-c", f"exec {torchrun_line(spec)}"]


# Pod Security Standards, "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
SECCOMP = {"type": "RuntimeDefault"}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": dict(SECCOMP)}


def pod_security_context(spec: JobSpec) -> dict[str, Any]:
    return {"runAsUser": spec.run_as_user, "runAsGroup": spec.fs_group, "fsGroup": spec.fs_group,
            "runAsNonRoot": True, "seccompProfile": dict(SECCOMP)}


def container_resources(spec: JobSpec) -> dict[str, Any]:
    """limits/requests as strings (what the API returns), with the GPU limit from gpus_per_node."""
    limits = {k: str(v) for k, v in spec.resources.get("limits", {}).items()}
    requests = {k: str(v) for k, v in spec.resources.get("requests", {}).items()}
    if spec.gpus_per_node > 0:
        limits[spec.gpu_resource] = str(spec.gpus_per_node)
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def cpu_quantity(value: Any) -> Optional[float]:
    """Cores of a Kubernetes CPU quantity ("4", "2.5", "500m"); None for one this does not read."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def omp_threads(spec: JobSpec) -> Optional[int]:
    """Threads per process: the pod's CPUs (limit, else request) shared by its processes. None when the pod names no
    CPUs: torchrun then sets 1 for several processes, and one process takes what torch finds."""
    cpus = next((cpu_quantity(spec.resources.get(kind, {}).get("cpu")) for kind in ("limits", "requests")
                 if spec.resources.get(kind, {}).get("cpu") is not None), None)
    return None if cpus is None else max(1, int(cpus // spec.nproc_per_node))


def container_env(spec: JobSpec) -> list[dict[str, Any]]:
    """Plain values (BASE_ENV, DS_ACCELERATOR, OMP_NUM_THREADS from the pod's CPUs, the user's env), then values from
    Secrets (secretKeyRef)."""
    threads = omp_threads(spec)
    env = {**BASE_ENV, "DS_ACCELERATOR": "cuda" if spec.gpus_per_node > 0 else "cpu",
           **({"OMP_NUM_THREADS": str(threads)} if threads else {}), **spec.env}
    secret_env = dict(spec.secret_env)
    store = spec.object_store
    if store is not None:
        if store.endpoint_url:
            env["AWS_ENDPOINT_URL"] = store.endpoint_url
        secret_env.update({name: (store.secret_name, key) for name, key in store.secret_env.items()})
    for name in secret_env:
        env.pop(name, None)
    return ([{"name": k, "value": str(v)} for k, v in env.items()]
            + [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
               for k, (secret, key) in secret_env.items()])


def volume_mounts(spec: JobSpec) -> list[dict[str, Any]]:
    data = ({"name": "work", "mountPath": spec.object_store.work_dir} if spec.object_store is not None
            else {"name": "shared", "mountPath": spec.mount_path})
    return [data, {"name": "dshm", "mountPath": "/dev/shm"}]


def volumes(spec: JobSpec) -> list[dict[str, Any]]:
    data = ({"name": "work", "emptyDir": {}} if spec.object_store is not None
            else {"name": "shared", "persistentVolumeClaim": {"claimName": spec.pvc_name}})
    return [data, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}]


def pod_metadata(spec: JobSpec, role: str) -> dict[str, Any]:
    # Istio sidecars keep pods alive after training ends; Kubeflow profiles inject them by default.
    return {"labels": {**spec.labels, "app.kubernetes.io/component": role},
            "annotations": {**spec.annotations, "sidecar.istio.io/inject": "false"}}


def pod_spec_extras(spec: JobSpec) -> dict[str, Any]:
    """The pod-level fields besides containers and volumes: security context and scheduling."""
    extras: dict[str, Any] = {"securityContext": pod_security_context(spec)}
    if spec.node_selector:
        extras["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        extras["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        extras["serviceAccountName"] = spec.service_account
    if spec.image_pull_secrets:
        extras["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    return extras


def _container(spec: JobSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": torchrun_command(spec),
        "workingDir": "/tmp",
        "env": container_env(spec),
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "volumeMounts": volume_mounts(spec),
        "securityContext": container_security_context(),
    }
    resources = container_resources(spec)
    if resources:
        container["resources"] = resources
    return container


def _replica(spec: JobSpec, replicas: int, role: str) -> dict[str, Any]:
    pod_spec = {"containers": [_container(spec)], "volumes": volumes(spec), **pod_spec_extras(spec)}
    return {
        "replicas": replicas,
        "restartPolicy": spec.restart_policy,
        "template": {"metadata": pod_metadata(spec, role), "spec": pod_spec},
    }


def job_metadata(spec: JobSpec) -> dict[str, Any]:
    """metadata of the job object: name, namespace, our labels, annotations and owner references."""
    metadata: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace,
                                "labels": {"app.kubernetes.io/name": "token-classification-finetune",
                                           "app.kubernetes.io/managed-by": "kfp-token-classification-launcher",
                                           **spec.labels}}
    if spec.annotations:
        metadata["annotations"] = dict(spec.annotations)
    if spec.owner_references:
        metadata["ownerReferences"] = [dict(r) for r in spec.owner_references]
    return metadata


def build_pytorchjob(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob manifest (a dict) for `spec`, validated first."""
    spec.validate()
    replica_specs = {"Master": _replica(spec, 1, "master")}
    if spec.num_nodes > 1:
        replica_specs["Worker"] = _replica(spec, spec.num_nodes - 1, "worker")
    run_policy: dict[str, Any] = {"cleanPodPolicy": spec.clean_pod_policy, "backoffLimit": spec.backoff_limit}
    if spec.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = int(spec.ttl_seconds_after_finished)
    if spec.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job_metadata(spec),
        "spec": {
            "nprocPerNode": str(spec.nproc_per_node),
            "pytorchReplicaSpecs": replica_specs,
            "runPolicy": run_policy,
        },
    }
