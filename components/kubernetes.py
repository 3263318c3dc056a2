"""Kubernetes placement of a pipeline task: CPU/memory/GPU, accelerator type, node selectors, tolerations, PVCs.

Each setting takes either a compile-time value or, where KFP allows it, a pipeline parameter (a
`PipelineChannel`): CPU/memory requests and limits, accelerator type and count, the node selector (a dict
parameter, `add_node_selector_json`), tolerations (a list/dict parameter, `add_toleration_json`) and the PVC name
(`mount_pvc`). The mount path of a PVC is compile-time only (KFP limitation).

    from components.kubernetes import TaskPlacement, apply_placement
    apply_placement(task, TaskPlacement(cpu_limit="4", memory_limit="16Gi", accelerator_type="nvidia.com/gpu",
                                        accelerator_limit=1, node_selector={"pool": "gpu"},
                                        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                                      "effect": "NoSchedule"}],
                                        pvc_mounts=[PvcMount("models-pvc", "/mnt/models")]))

Empty compile-time values ("", None, {} and []) are skipped, so a pipeline can pass its options through as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

Value = Union[str, int, PipelineChannel, None]
TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds", "tolerationSeconds")


@dataclass
class PvcMount:
    """Mount an existing PersistentVolumeClaim (name: str or pipeline parameter) at a compile-time path."""

    pvc_name: Union[str, PipelineChannel]
    mount_path: str
    sub_path: str = ""


@dataclass
class TaskPlacement:
    """Resources and scheduling of one task; every field optional."""

    cpu_request: Value = None
    cpu_limit: Value = None
    memory_request: Value = None
    memory_limit: Value = None
    accelerator_type: Value = None  # e.g. "nvidia.com/gpu"
    accelerator_limit: Value = None  # number of accelerators
    node_selector: Union[dict, PipelineChannel, None] = None
    tolerations: Union[list, dict, PipelineChannel, None] = None
    pvc_mounts: list[PvcMount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    caching: Optional[bool] = None
    retries: int = 0


def _given(value: Any) -> bool:
    if isinstance(value, PipelineChannel):
        return True
    return value not in (None, "", {}, []) and not (isinstance(value, (int, float)) and value == 0
                                                     and not isinstance(value, bool))


def _check_toleration(tol: dict) -> None:
    unknown = sorted(set(tol) - set(TOLERATION_KEYS))
    if unknown:
        raise ValueError(f"toleration {tol} has unknown key(s) {unknown}; allowed: {list(TOLERATION_KEYS)}")
    if tol.get("operator") not in (None, "Equal", "Exists"):
        raise ValueError(f"toleration operator must be 'Equal' or 'Exists', got {tol.get('operator')!r}")
    if tol.get("effect") not in (None, "NoExecute", "NoSchedule", "PreferNoSchedule"):
        raise ValueError(f"toleration effect must be NoExecute/NoSchedule/PreferNoSchedule, got {tol.get('effect')!r}")


def apply_placement(task: PipelineTask, placement: Optional[TaskPlacement] = None, **overrides: Any) -> PipelineTask:
    """Apply a TaskPlacement (or keyword fields of one) to a task; returns the task."""
    p = placement or TaskPlacement()
    if overrides:
        p = TaskPlacement(**{**p.__dict__, **overrides})
    if _given(p.cpu_request):
        task.set_cpu_request(p.cpu_request if isinstance(p.cpu_request, PipelineChannel) else str(p.cpu_request))
    if _given(p.cpu_limit):
        task.set_cpu_limit(p.cpu_limit if isinstance(p.cpu_limit, PipelineChannel) else str(p.cpu_limit))
    if _given(p.memory_request):
        task.set_memory_request(p.memory_request)
    if _given(p.memory_limit):
        task.set_memory_limit(p.memory_limit)
    if _given(p.accelerator_type):
        task.set_accelerator_type(p.accelerator_type)
        task.set_accelerator_limit(p.accelerator_limit if _given(p.accelerator_limit) else 1)
    elif _given(p.accelerator_limit):
        raise ValueError("accelerator_limit given without accelerator_type (e.g. 'nvidia.com/gpu')")
    if _given(p.node_selector):
        if isinstance(p.node_selector, dict):
            for key, value in p.node_selector.items():
                kubernetes.add_node_selector(task, label_key=str(key), label_value=str(value))
        else:
            kubernetes.add_node_selector_json(task, p.node_selector)
    if _given(p.tolerations):
        if isinstance(p.tolerations, PipelineChannel):
            kubernetes.add_toleration_json(task, p.tolerations)
        else:
            for tol in [p.tolerations] if isinstance(p.tolerations, dict) else p.tolerations:
                _check_toleration(tol)
                seconds = tol.get("toleration_seconds", tol.get("tolerationSeconds"))
                kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                          value=tol.get("value"), effect=tol.get("effect"),
                                          toleration_seconds=seconds)
    for mount in p.pvc_mounts:
        if not mount.mount_path:
            raise ValueError(f"PVC mount of {mount.pvc_name!r} needs a mount_path")
        kubernetes.mount_pvc(task, pvc_name=mount.pvc_name, mount_path=mount.mount_path, sub_path=mount.sub_path)
    for name, value in p.env.items():
        task.set_env_variable(name, str(value))
    if p.caching is not None:
        task.set_caching_options(p.caching)
    if p.retries:
        task.set_retry(p.retries)
    return task


def gpu_placement(gpus: Value = 1, accelerator_type: Value = "nvidia.com/gpu", **kwargs: Any) -> TaskPlacement:
    """A placement asking for `gpus` accelerators of `accelerator_type`, plus any other TaskPlacement fields."""
    return TaskPlacement(accelerator_type=accelerator_type, accelerator_limit=gpus, **kwargs)
