"""Build the Kubeflow Trainer v2 `trainer.kubeflow.org/v1alpha1` TrainJob that runs the trainer on several pods.

The TrainJob references a training runtime (`runtimeRef`; default the `torch-distributed` ClusterTrainingRuntime
that Kubeflow Trainer installs, or `manifests/trainer-runtime.yaml`, ours) and fills in the same pod as the
PyTorchJob backend (`launcher.manifest`): `spec.trainer` carries the image, the same shell command (torchrun +
DeepSpeed, or the object-store script), env (plain and `secretKeyRef`), `numNodes`, `numProcPerNode` and
`resourcesPerNode`; one `runtimePatches` entry (managed by us) adds to the runtime's `node` job the volumes, the
container's mounts and security context, the pod's security context, scheduling, service account and labels.

The Trainer's torch plugin injects `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK` (the Job completion index)
and `PET_MASTER_ADDR`/`PET_MASTER_PORT` (node 0's headless service) into the `node` container; the command's
torchrun line reads exactly those, as it does under the Training Operator.

API: Kubeflow Trainer v2.2+ (`runtimePatches`; v2.0 had `podSpecOverrides`, v2.1 `podTemplateOverrides`). The
TrainJob reports `Complete` or `Failed` conditions (copied from its JobSet); its pods carry
`jobset.sigs.k8s.io/jobset-name=<TrainJob name>` and node 0 has Job completion index 0.
"""

from __future__ import annotations

from typing import Any

from launcher.manifest import (JobSpec, ManifestError, container_env, container_resources,
                               container_security_context, job_metadata, pod_metadata, pod_spec_extras, torchrun_command,
                               volume_mounts, volumes)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
NODE = "node"  # the trainer's replicated job and container in Trainer's torch runtimes
RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")
DEFAULT_RUNTIME = "torch-distributed"
# Who owns our runtimePatches entry (the Trainer webhook wants a domain-prefixed path).
PATCH_MANAGER = "kfp-token-classification.kubeflow.org/launcher"


def build_trainjob(spec: JobSpec, runtime: str = DEFAULT_RUNTIME,
                   runtime_kind: str = "ClusterTrainingRuntime") -> dict[str, Any]:
    """The TrainJob manifest (a dict) for `spec`, validated first."""
    spec.validate()
    if runtime_kind not in RUNTIME_KINDS:
        raise ManifestError(f"trainjob runtime kind {runtime_kind!r} is not one of {list(RUNTIME_KINDS)}")
    if not runtime or len(runtime) > 253:
        raise ManifestError(f"trainjob runtime name {runtime!r} is not valid")
    if spec.restart_policy != "Never" or spec.clean_pod_policy != "None" or spec.ttl_seconds_after_finished:
        raise ManifestError("restart_policy, clean_pod_policy and ttl_seconds_after_finished are PyTorchJob "
                            "settings; a TrainJob takes them from its runtime")
    shell, flag, script = torchrun_command(spec)
    trainer: dict[str, Any] = {
        "image": spec.image,
        # (a runtime patch cannot set workingDir, which the PyTorchJob pod has at /tmp: the script moves there)
        "command": [shell, flag, f"cd /tmp || exit 1\n{script}"],
        "env": container_env(spec),
        "numNodes": spec.num_nodes,
        "numProcPerNode": spec.nproc_per_node,
    }
    resources = container_resources(spec)
    if resources:
        trainer["resourcesPerNode"] = resources
    pod_patch = {"volumes": volumes(spec),
                 "containers": [{"name": NODE, "volumeMounts": volume_mounts(spec),
                                 "securityContext": container_security_context()}],
                 **pod_spec_extras(spec)}
    job: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job_metadata(spec),
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": GROUP, "kind": runtime_kind},
            "trainer": trainer,
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": NODE,
                    "template": {"spec": {"template": {"metadata": pod_metadata(spec, NODE), "spec": pod_patch}}},
                }]}}},
            }],
        },
    }
    if spec.active_deadline_seconds is not None:
        job["spec"]["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    return job
