"""Run one fine-tune as a PyTorchJob: validate, stage, create, watch, collect, clean up.

`run_pytorchjob(...)` is what the `finetune_pytorchjob` KFP component calls; it can also be called
from any Python process that has Kubernetes credentials and the staging storage: the shared volume
mounted (`shared_pvc_name`), or credentials for the object store (`staging_uri=s3://...`).

Every input is validated before the first side effect (no file copied, no API call made). Then:

1. the input artifacts are copied to `<shared_mount_path>/tokcls-runs/<run_id>/inputs/`
   (or uploaded to `<staging_uri>/tokcls-runs/<run_id>/inputs/`);
2. the PyTorchJob is created (Master + num_nodes-1 Workers, torchrun under the operator's env);
3. its conditions are polled until Succeeded/Failed or the timeout; the master's log is echoed;
4. on Succeeded, rank 0's outputs are checked (in the object store: the master's completion marker too)
   and copied into the output artifact folders;
5. the job is deleted per `cleanup_policy` ('always' | 'on_success' | 'never'); after a success the
   staged run is removed too (except with 'never').

A Failed job, a timeout, or a Succeeded job whose outputs are missing raises `PyTorchJobFailed`
(`PyTorchJobTimeout` for the timeout) with the operator's reason and the master's last log lines.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from launcher.manifest import JobSpec, ManifestError, build_pytorchjob
from launcher.staging import (DEFAULT_WORK_DIR, ObjectStoreRun, RunStorage, SharedVolumeRun, StagingError,
                              check_run_id, new_run_id)
from launcher.watch import (CLEANUP_POLICIES, PyTorchJobFailed, PyTorchJobTimeout, Watcher, create_job,
                            delete_job, master_logs, tail)

log = logging.getLogger(__name__)

IO_FIELDS = ("preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder")
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class LaunchConfigError(ValueError):
    """A launcher input that can never work; raised before any file is staged or any API call is made."""


@dataclass
class LaunchResult:
    job_name: str
    namespace: str
    run_id: str
    run_dir: str
    state: str
    deleted: bool
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


def default_namespace() -> str:
    """The namespace of the pod we run in (KFP steps run in the profile's namespace)."""
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip()
    except OSError:
        return "default"


def _bool_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def trainer_args(finetune_args: dict[str, Any], run: RunStorage) -> list[str]:
    """`--field value` pairs for `python -m trainer.cli`, io paths as the trainer pods see them."""
    args = {
        "preprocess_output": str(run.preprocess_output),
        "model_selector_output": str(run.model_selector_output),
        "pytorch_model_folder": str(run.pytorch_model_folder),
        "mlflow_model_folder": str(run.mlflow_model_folder),
        **{k: v for k, v in finetune_args.items() if v is not None},
    }
    out: list[str] = []
    for key in sorted(args):
        out += [f"--{key}", _bool_text(args[key])]
    return out


def validate_finetune_args(finetune_args: dict[str, Any], deepspeed_config_json: Optional[str]) -> dict[str, Any]:
    """Check the trainer parameters with the trainer's own config class (light import: no torch)."""
    from trainer.config import ConfigError, FinetuneConfig

    if not isinstance(finetune_args, dict):
        raise LaunchConfigError("finetune_args must be a JSON object of FinetuneConfig fields")
    io = sorted(set(finetune_args) & set(IO_FIELDS))
    if io:
        raise LaunchConfigError(f"finetune_args must not set {io}: the launcher points them at the staged run")
    args = dict(finetune_args)
    if deepspeed_config_json:
        try:
            parsed = json.loads(deepspeed_config_json)
        except json.JSONDecodeError as err:
            raise LaunchConfigError(f"deepspeed_config_json is not valid JSON: {err}") from None
        if not isinstance(parsed, dict):
            raise LaunchConfigError("deepspeed_config_json must be a JSON object")
        if args.get("deepspeed") not in (None, ""):
            raise LaunchConfigError("give either finetune_args['deepspeed'] (a preset) or deepspeed_config_json")
        if "apply_deepspeed" in args and str(args["apply_deepspeed"]).lower() in ("false", "0", "no"):
            raise LaunchConfigError("deepspeed_config_json was given but apply_deepspeed is false")
        args["apply_deepspeed"] = True
    elif args.get("deepspeed") not in (None, "", "zero2", "zero3"):
        raise LaunchConfigError(
            f"finetune_args['deepspeed']={args['deepspeed']!r}: a file path on the launcher is not visible in the "
            "trainer pods; use a preset ('zero2'/'zero3') or pass the JSON as deepspeed_config_json")
    try:
        FinetuneConfig.from_dict({**{k: "/placeholder" for k in IO_FIELDS}, **args})
    except ConfigError as err:
        raise LaunchConfigError(f"invalid finetune parameter: {err}") from None
    return args


def _job_name(prefix: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:30] or "tokcls"
    return f"{base}-{uuid.uuid4().hex[:8]}"


def make_run_storage(run_id: str, *, shared_pvc_name: str, shared_mount_path: str, staging_uri: str,
                     staging_secret_name: str = "", staging_access_key_key: str = "AWS_ACCESS_KEY_ID",
                     staging_secret_key_key: str = "AWS_SECRET_ACCESS_KEY", staging_endpoint_url: str = "",
                     checkpoint_sync_interval_s: int = 300, pod_work_dir: str = DEFAULT_WORK_DIR) -> RunStorage:
    """The run's staging: exactly one of a shared PVC and an object-store URI (no I/O here)."""
    if shared_pvc_name and staging_uri:
        raise StagingError(f"give either shared_pvc_name ({shared_pvc_name!r}, shared-volume staging) or staging_uri "
                           f"({staging_uri!r}, object-store staging), not both")
    if not shared_pvc_name and not staging_uri:
        raise StagingError("no staging storage: shared_pvc_name is required (a ReadWriteMany PVC that the trainer pods "
                           "mount and that is mounted in this step at shared_mount_path), or give "
                           "staging_uri=s3://bucket/prefix for object-store staging")
    if shared_pvc_name:
        extra = {k: v for k, v in (("staging_secret_name", staging_secret_name),
                                   ("staging_endpoint_url", staging_endpoint_url)) if v}
        if extra:
            raise StagingError(f"{sorted(extra)} only apply to object-store staging (staging_uri), not to a shared PVC")
        return SharedVolumeRun(shared_mount_path, run_id, shared_pvc_name)
    return ObjectStoreRun(staging_uri, run_id, endpoint_url=staging_endpoint_url, secret_name=staging_secret_name,
                          access_key_key=staging_access_key_key, secret_key_key=staging_secret_key_key,
                          work_dir=pod_work_dir, sync_interval_s=checkpoint_sync_interval_s)


def _load_clients():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def run_pytorchjob(
    *,
    preprocess_output: str,
    model_selector_output: str,
    pytorch_model_folder: str,
    mlflow_model_folder: str,
    finetune_args: Optional[dict[str, Any]] = None,
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    procs_per_node: Optional[int] = None,
    image: str = "",
    namespace: str = "",
    shared_pvc_name: str = "",
    shared_mount_path: str = "/mnt/shared",
    staging_uri: str = "",
    staging_secret_name: str = "",
    staging_access_key_key: str = "AWS_ACCESS_KEY_ID",
    staging_secret_key_key: str = "AWS_SECRET_ACCESS_KEY",
    staging_endpoint_url: str = "",
    checkpoint_sync_interval_s: int = 300,
    pod_work_dir: str = DEFAULT_WORK_DIR,
    resources: Optional[dict[str, Any]] = None,
    node_selector: Optional[dict[str, str]] = None,
    tolerations: Optional[list[dict[str, Any]]] = None,
    env: Optional[dict[str, str]] = None,
    deepspeed_config_json: Optional[str] = None,
    timeout_s: float = 24 * 3600,
    poll_interval_s: float = 15.0,
    cleanup_policy: str = "on_success",
    job_name_prefix: str = "tokcls-finetune",
    run_id: str = "",
    service_account: str = "",
    shm_size: str = "16Gi",
    image_pull_policy: str = "IfNotPresent",
    backoff_limit: int = 0,
    stream_logs: bool = True,
    custom_api: Any = None,
    core_api: Any = None,
    clock=None,
    sleep=None,
) -> LaunchResult:
    """Run the trainer as a PyTorchJob and copy rank 0's outputs into the two output folders.

    Staging: `shared_pvc_name` (+ `shared_mount_path`, mounted here too) or `staging_uri` (s3://bucket/prefix,
    with `staging_endpoint_url` for MinIO/GCS and `staging_secret_name` holding the pods' credentials under the
    keys `staging_access_key_key` / `staging_secret_key_key`; this process uses its own AWS_* environment).
    """
    # ---- 1. validate everything before any side effect ------------------------------------------
    if cleanup_policy not in CLEANUP_POLICIES:
        raise LaunchConfigError(f"cleanup_policy {cleanup_policy!r} is not one of {list(CLEANUP_POLICIES)}")
    if not timeout_s or timeout_s <= 0:
        raise LaunchConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
    if poll_interval_s <= 0:
        raise LaunchConfigError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
    if not image:
        raise LaunchConfigError("image is required: the trainer image of the pods (the finetune_pytorchjob "
                                "component defaults it to components/images.py's CUDA or CPU image)")
    try:
        run_id = run_id or new_run_id()
        check_run_id(run_id)
        run = make_run_storage(
            run_id, shared_pvc_name=shared_pvc_name, shared_mount_path=shared_mount_path, staging_uri=staging_uri,
            staging_secret_name=staging_secret_name, staging_access_key_key=staging_access_key_key,
            staging_secret_key_key=staging_secret_key_key, staging_endpoint_url=staging_endpoint_url,
            checkpoint_sync_interval_s=checkpoint_sync_interval_s, pod_work_dir=pod_work_dir)
    except StagingError as err:
        raise LaunchConfigError(str(err)) from None
    for name, path in (("preprocess_output", preprocess_output), ("model_selector_output", model_selector_output)):
        if not path or not Path(path).is_dir():
            raise LaunchConfigError(f"{name} {path!r} is not a folder")
    args = validate_finetune_args(dict(finetune_args or {}), deepspeed_config_json)
    namespace = namespace or default_namespace()
    if deepspeed_config_json:
        args["deepspeed"] = str(run.deepspeed_config)
    env = dict(env or {})
    if gpus_per_node == 0 and str(args.get("apply_deepspeed", "false")).lower() not in ("true", "1", "yes"):
        # CPU DDP: without this, Accelerate (hence the HF Trainer) does not see a CPU torchrun job as
        # distributed, and every rank trains alone and believes it is rank 0 (found by the local-pods test).
        env.setdefault("ACCELERATE_USE_CPU", "true")
    spec = JobSpec(
        name=_job_name(job_name_prefix), namespace=namespace, image=image,
        trainer_args=trainer_args(args, run), num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        procs_per_node=procs_per_node, **run.manifest_fields(),
        resources=dict(resources or {}), node_selector=dict(node_selector or {}),
        tolerations=list(tolerations or []), env=env, shm_size=shm_size,
        service_account=service_account, image_pull_policy=image_pull_policy, backoff_limit=backoff_limit,
        labels={"tokcls.run-id": re.sub(r"[^A-Za-z0-9._-]", "-", run_id)[:63].strip("-_.") or "run"},
    )
    try:
        manifest = build_pytorchjob(spec)
    except ManifestError as err:
        raise LaunchConfigError(str(err)) from None
    try:
        run.check_access()  # the shared volume is mounted and writable / the bucket is reachable
    except StagingError as err:
        raise LaunchConfigError(str(err)) from None
    if custom_api is None or core_api is None:
        loaded_custom, loaded_core = _load_clients()
        custom_api, core_api = custom_api or loaded_custom, core_api or loaded_core

    # ---- 2. stage ---------------------------------------------------------------------------------
    log.info("staging inputs to %s", run.location)
    run.stage_inputs(preprocess_output, model_selector_output, deepspeed_config_json or None)

    # ---- 3. create and watch ----------------------------------------------------------------------
    name = spec.name
    log.info("creating PyTorchJob %s/%s: %d node(s) x %d process(es)", namespace, name, num_nodes,
             spec.nproc_per_node)
    create_job(custom_api, manifest)
    succeeded = False
    deleted = False
    state_phase = "Unknown"
    try:
        watcher = Watcher(custom_api, core_api, name, namespace, timeout_s, poll_interval_s, stream_logs)
        if clock is not None:
            watcher.clock = clock
        if sleep is not None:
            watcher.sleep = sleep
        state, _ = watcher.wait()
        state_phase = state.phase
        if state.phase == "Failed":
            raise PyTorchJobFailed(name, state.reason or "Failed", state.message,
                                   tail(master_logs(core_api, name, namespace, tail_lines=200)))
        # ---- 4. collect -----------------------------------------------------------------------------
        try:
            run.check_outputs()
        except StagingError as err:
            raise PyTorchJobFailed(name, "OutputsMissing", str(err),
                                   tail(master_logs(core_api, name, namespace, tail_lines=200))) from None
        run.collect_outputs(pytorch_model_folder, mlflow_model_folder)
        succeeded = True
    finally:
        # ---- 5. clean up --------------------------------------------------------------------------------
        if cleanup_policy == "always" or (cleanup_policy == "on_success" and succeeded):
            try:
                deleted = delete_job(custom_api, name, namespace)
                log.info("deleted PyTorchJob %s/%s", namespace, name)
            except Exception as err:  # never mask the job's own outcome with a cleanup error
                log.warning("could not delete PyTorchJob %s/%s: %s", namespace, name, err)
        else:
            log.info("keeping PyTorchJob %s/%s (cleanup_policy=%s)", namespace, name, cleanup_policy)
        if succeeded and cleanup_policy != "never":
            run.remove()  # outputs are copied; a failed run's folder stays for resume_from_checkpoint
    return LaunchResult(name, namespace, run_id, run.location, state_phase, deleted, manifest)


__all__ = ["LaunchConfigError", "LaunchResult", "PyTorchJobFailed", "PyTorchJobTimeout", "run_pytorchjob",
           "make_run_storage", "trainer_args", "validate_finetune_args"]
