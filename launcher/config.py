"""The typed parameter surface of a distributed launch (the `finetune_pytorchjob` component's own inputs).

The trainer's parameters come from `trainer.config.FinetuneConfig`; these are the launch's: backend, pod shape,
staging storage, scheduling, watch and cleanup. Both generate the component's signature
(`scripts/compile_components.py`), and `launcher.launch.launch(LaunchConfig, FinetuneConfig)` takes both.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trainer.errors import ConfigError
from trainer.params import Params, param, surface

CLEANUP_POLICIES = ("always", "on_success", "never")
BACKENDS = ("pytorchjob", "trainjob")
RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_json(name: str, text: str, kind: type) -> Any:
    """A JSON object/list parameter, or a ConfigError naming it."""
    try:
        value = json.loads(text or ("[]" if kind is list else "{}"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name} is not valid JSON: {err}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a JSON {'list' if kind is list else 'object'}, got {text!r}")
    return value


@surface
class LaunchConfig(Params):
    """Where and how the distributed fine-tune runs: pods, staging, scheduling, watch, cleanup."""

    GROUPS = {"backend": "backend", "pods": "pods", "staging": "staging", "scheduling": "scheduling",
              "watch": "watch and cleanup"}

    backend: str = param("trainjob", "Which Kubeflow training API runs the job: trainjob (Kubeflow Trainer v2, "
                         "trainer.kubeflow.org/v1alpha1 TrainJob: the current API, the only one of new Kubeflow "
                         "installs) or pytorchjob (Training Operator v1, kubeflow.org/v1 PyTorchJob).",
                         choices=BACKENDS, group="backend")
    trainjob_runtime: str = param("torch-distributed", "Training runtime of a TrainJob: Trainer's torch-distributed "
                                  "ClusterTrainingRuntime, or ours from manifests/trainer-runtime.yaml "
                                  "(tokcls-torch-distributed: no pod retries).", group="backend")
    trainjob_runtime_kind: str = param("ClusterTrainingRuntime", "Kind of trainjob_runtime (a namespaced "
                                       "TrainingRuntime must be in the job's namespace).", choices=RUNTIME_KINDS,
                                       group="backend")
    shared_pvc_name: str = param("", "ReadWriteMany PVC mounted by every trainer pod, and by this step at "
                                 "shared_mount_path. Empty: use staging_uri.", group="staging")
    num_nodes: int = param(2, "Number of pods: 1 Master + num_nodes-1 Workers.", group="pods", minimum=1)
    gpus_per_node: int = param(1, "GPUs per pod (the gpu_resource limit and torchrun --nproc_per_node); 0 for CPU "
                               "pods.", group="pods", minimum=0)
    gpu_resource: str = param("nvidia.com/gpu", "The extended resource the GPUs are requested as: nvidia.com/gpu, a "
                              "MIG slice (nvidia.com/mig-1g.10gb), amd.com/gpu (with a ROCm image), ...",
                              group="pods")
    procs_per_node: int = param(0, "Processes per pod when gpus_per_node is 0 (0: one).", group="pods", minimum=0)
    image: str = param("", "Trainer image of the pods. The component's default is the CUDA image, for CPU pods too "
                       "(it runs there; the CPU image is smaller: pass it for gpus_per_node=0); empty: the CUDA "
                       "image for GPU pods, the CPU image for gpus_per_node=0.", group="pods")
    namespace: str = param("", "Namespace of the job; empty: this step's own namespace.", group="pods")
    shared_mount_path: str = param("/mnt/shared", "Where the PVC is mounted, in this step and in the trainer pods.",
                                   group="staging")
    staging_uri: str = param("", "Object-store staging instead of a PVC, for single-node jobs (num_nodes=1): "
                             "s3://bucket/prefix (MinIO, GCS and other S3-compatible stores with "
                             "staging_endpoint_url). The run lives under <staging_uri>/tokcls-runs/<run_id>/; this "
                             "step uses the AWS_* env vars for its own access.", group="staging")
    staging_endpoint_url: str = param("", "S3 endpoint of the store (AWS_ENDPOINT_URL of this step and the pods), "
                                      "e.g. http://minio-service.kubeflow:9000; empty: AWS S3.", group="staging")
    staging_secret_name: str = param("", "Secret in the job's namespace holding the pods' store credentials (e.g. "
                                     "mlpipeline-minio-artifact); empty: the pods' ambient credentials.",
                                     group="staging")
    staging_access_key_key: str = param("AWS_ACCESS_KEY_ID", "Key of staging_secret_name that holds the access key "
                                        "id (accesskey for KFP's MinIO secret).", group="staging")
    staging_secret_key_key: str = param("AWS_SECRET_ACCESS_KEY", "Key of staging_secret_name that holds the secret "
                                        "access key (secretkey for KFP's MinIO secret).", group="staging")
    resources_json: str = param("{}", "Pod resources as JSON, e.g. {\"limits\": {\"cpu\": \"16\", \"memory\": "
                                "\"128Gi\"}} (GPUs come from gpus_per_node).", group="scheduling")
    node_selector_json: str = param("{}", "Node selector of the trainer pods as a JSON object.", group="scheduling")
    tolerations_json: str = param("[]", "Tolerations of the trainer pods as a JSON list of Kubernetes toleration "
                                  "objects.", group="scheduling")
    env_json: str = param("{}", "Extra environment variables of the trainer pods as a JSON object (e.g. NCCL "
                          "settings, MLFLOW_TRACKING_URI); not for secrets: see secret_env_json.", group="scheduling")
    secret_env_json: str = param("{}", "Environment variables of the trainer pods taken from Secrets in the job's "
                                 "namespace (secretKeyRef), as a JSON object {\"ENV\": {\"name\": secret, \"key\": "
                                 "key}}, e.g. {\"MLFLOW_TRACKING_TOKEN\": {\"name\": \"mlflow\", \"key\": "
                                 "\"token\"}}.", group="scheduling")
    service_account: str = param("", "Service account of the trainer pods (empty: the namespace default).",
                                 group="scheduling")
    image_pull_secrets: str = param("", "Comma-separated Secrets (docker-registry, in the job's namespace) the "
                                    "pods pull a private image with; empty: the service account's.",
                                    group="scheduling")
    shm_size: str = param("16Gi", "Size of the in-memory /dev/shm of each pod.", group="scheduling")
    timeout_seconds: int = param(86400, "Fail if the job has not finished after this many seconds, and delete it "
                                 "unless cleanup_policy=never (the job also gets this plus 120 s as its "
                                 "activeDeadlineSeconds).", group="watch", minimum=1)
    start_timeout_seconds: int = param(900, "Fail (and delete the job unless cleanup_policy=never) when a pod has "
                                       "not been able to start for this many seconds: a container waiting on an "
                                       "image pull or a missing Secret, or a pod no node can take. No condition of "
                                       "the job says so; it would otherwise wait for timeout_seconds.",
                                       group="watch", minimum=1)
    poll_interval_seconds: int = param(30, "Seconds between status polls (rank 0's log is followed as it is "
                                       "written).", group="watch", minimum=1)
    checkpoint_sync_interval_seconds: int = param(300, "With staging_uri: seconds between the master pod's uploads "
                                                  "of new complete checkpoints.", group="staging", minimum=1)
    cleanup_policy: str = param("on_success", "When to delete the job: always, on_success (keep a failed job's "
                                "pods and logs) or never. A job still running when the launcher stops following it "
                                "(timeout) is deleted unless never.", choices=CLEANUP_POLICIES, group="watch")
    run_id: str = param("", "Folder name of the run on the shared volume or in the store; reuse a failed run's id "
                        "with resume_from_checkpoint=true to resume it. Empty: a new unique id.", group="watch")

    def validate(self) -> None:
        for name in ("resources", "node_selector", "tolerations", "env", "secret_env"):
            getattr(self, name)  # each JSON parameter parses, or a ConfigError names it
        if self.backend != "trainjob" and (self.trainjob_runtime != "torch-distributed"
                                           or self.trainjob_runtime_kind != "ClusterTrainingRuntime"):
            raise ConfigError("trainjob_runtime / trainjob_runtime_kind apply to backend=trainjob only")

    @property
    def resources(self) -> dict:
        return parse_json("resources_json", self.resources_json, dict)

    @property
    def node_selector(self) -> dict:
        return parse_json("node_selector_json", self.node_selector_json, dict)

    @property
    def tolerations(self) -> list:
        return parse_json("tolerations_json", self.tolerations_json, list)

    @property
    def env(self) -> dict:
        return parse_json("env_json", self.env_json, dict)

    @property
    def secret_env(self) -> dict[str, tuple[str, str]]:
        """env var -> (Secret name, key)."""
        out = {}
        for name, ref in parse_json("secret_env_json", self.secret_env_json, dict).items():
            if not _ENV_NAME.match(name) or not isinstance(ref, dict) or set(ref) != {"name", "key"} \
                    or not all(isinstance(v, str) and v for v in ref.values()):
                raise ConfigError(f"secret_env_json: {name!r}: {ref!r} must be {{\"name\": <Secret>, \"key\": <key>}}")
            out[name] = (ref["name"], ref["key"])
        return out
