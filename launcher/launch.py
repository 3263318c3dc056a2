"""Run one fine-tune as a distributed job: plan, stage, create, watch, collect, clean up.

    from launcher import launch
    result = launch(LaunchConfig(shared_pvc_name="tokcls-shared", num_nodes=2, gpus_per_node=4, image=...),
                    FinetuneConfig(preprocess_output=..., model_selector_output=..., pytorch_model_folder=...,
                                   mlflow_model_folder=..., apply_deepspeed=True, deepspeed_preset="zero3"))

`launch` is what the `finetune_pytorchjob` KFP component calls; any Python process with Kubernetes credentials
and the staging storage (the shared volume mounted, or object-store credentials) can call it too. The two typed
configs are the whole input: `LaunchConfig` (backend, pods, staging, scheduling, watch) and the trainer's own
`FinetuneConfig` (its io paths are this process's input/output folders; its values become the trainer's flags).

1. `plan`: everything is validated and the job manifest is built before the first side effect (no file copied,
   no API call made): the input folders as the trainer checks them (`trainer.validation.validate_inputs`; what
   depends on the pods' GPUs and world size, such as the DeepSpeed JSON against them, is checked in the pods), and
   the staging storage (mounted and writable / bucket reachable).
2. The input artifacts are staged in the run's folder (`launcher.layout.RunLayout`) on the PVC or in the store.
3. The job is created (`backend`: a PyTorchJob, or a Trainer v2 TrainJob) with an ownerReference to this step's
   pod and an `activeDeadlineSeconds` of `timeout_seconds` + JOB_DEADLINE_GRACE_SECONDS (the cluster's own limit,
   should this process be gone), and followed (`launcher.watch`) until it ends or `timeout_seconds` pass; rank 0's
   log is streamed.
4. On success rank 0's outputs are checked (in the object store: the master's completion marker too) and copied
   into the output folders.
5. The job is deleted per `cleanup_policy`; after a success the staged run is removed too (except with 'never').
   A job still unfinished when this process stops following it (timeout, API errors) is deleted unless 'never'.

A Failed job, a timeout, or a Succeeded job whose outputs are missing raises `JobFailed` (`JobTimeout`) with the
reason and the failing pod's last log lines. SIGTERM / SIGINT (a run terminated in the KFP UI) deletes the job
whatever the policy and raises `Cancelled` (`launcher.cancel`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TextIO

from launcher.cancel import Cancelled, cancel_on_signals, own_namespace, owner_references, signal_handlers
from launcher.config import LaunchConfig
from launcher.manifest import JobSpec, ManifestError, build_pytorchjob
from launcher.staging import (DEFAULT_WORK_DIR, ObjectStoreRun, RunStorage, SharedVolumeRun, StagingError,
                              check_run_id, new_run_id)
from launcher.trainjob import build_trainjob
from launcher.watch import BACKENDS, Backend, JobFailed, Watcher, create_job, delete_job, failure_report
from trainer.booleans import bool_text
from trainer.config import FinetuneConfig
from trainer.errors import ConfigError
from trainer.validation import check_io, validate_inputs

log = logging.getLogger(__name__)

# The job's activeDeadlineSeconds is timeout_seconds plus this: the launcher times out first, reads the failing pod's
# last lines and deletes the job; the deadline is the backstop should the launcher be gone (Trainer v2 terminates the
# pods, as recent Training Operator releases do).
JOB_DEADLINE_GRACE_SECONDS = 120
IO_FIELDS = ("preprocess_output", "model_selector_output", "pytorch_model_folder", "mlflow_model_folder")
SECRET_LIKE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY$|^AWS_ACCESS_KEY_ID$)", re.I)


class LaunchConfigError(ConfigError):
    """A launch that can never work; raised before any file is staged or any API call is made."""


@dataclass
class LaunchOptions:
    """Knobs of a launch that are not run parameters (embedders and tests)."""

    job_name_prefix: str = "tokcls-finetune"
    pod_work_dir: str = DEFAULT_WORK_DIR  # the pods' emptyDir with object-store staging
    image_pull_policy: str = "IfNotPresent"
    restart_policy: str = "Never"  # PyTorchJob only (a TrainJob's comes from its runtime)
    backoff_limit: int = 0  # PyTorchJob only
    stream_logs: bool = True
    out: Optional[TextIO] = None  # where rank 0's log goes (default: stdout)
    clock: Optional[Callable[[], float]] = None
    sleep: Optional[Callable[[float], None]] = None


@dataclass
class LaunchResult:
    job_name: str
    namespace: str
    run_id: str
    run_dir: str
    state: str
    deleted: bool
    backend: str = "pytorchjob"
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class Plan:
    """A validated launch: where the run is staged, the job spec and manifest, what is staged."""

    config: LaunchConfig
    finetune: FinetuneConfig
    backend: Backend
    run: RunStorage
    spec: JobSpec
    manifest: dict[str, Any]
    deepspeed_json: Optional[str]

    def build(self) -> dict[str, Any]:
        """The manifest of `spec` for the backend (rebuilt after the owner reference is known)."""
        try:
            if self.backend.name == "trainjob":
                return build_trainjob(self.spec, self.config.trainjob_runtime, self.config.trainjob_runtime_kind)
            return build_pytorchjob(self.spec)
        except ManifestError as err:
            raise LaunchConfigError(str(err)) from None


def trainer_args(finetune: FinetuneConfig, run: RunStorage, deepspeed_staged: bool) -> list[str]:
    """`--field value` pairs for `python -m trainer.cli`: every value of `finetune`, io paths as the pods see them."""
    args: dict[str, Any] = {f.name: getattr(finetune, f.name) for f in FinetuneConfig.parameter_fields()}
    args.update({name: str(getattr(run, name)) for name in IO_FIELDS})
    args["onnx_model_folder"] = None  # the ONNX export runs in the launching step, from the collected best model
    if deepspeed_staged:
        args["deepspeed"] = str(run.deepspeed_config)
    out: list[str] = []
    for key in sorted(args):
        if args[key] is not None:
            out += [f"--{key}", bool_text(args[key]) if isinstance(args[key], bool) else str(args[key])]
    return out


def make_run_storage(config: LaunchConfig, run_id: str, pod_work_dir: str = DEFAULT_WORK_DIR) -> RunStorage:
    """The run's staging: exactly one of a shared PVC and an object-store URI (no I/O here)."""
    if config.shared_pvc_name and config.staging_uri:
        raise StagingError(f"give either shared_pvc_name ({config.shared_pvc_name!r}, shared-volume staging) or "
                           f"staging_uri ({config.staging_uri!r}, object-store staging), not both")
    if not config.shared_pvc_name and not config.staging_uri:
        raise StagingError("no staging storage: shared_pvc_name is required (a ReadWriteMany PVC that the trainer pods "
                           "mount and that is mounted in this step at shared_mount_path), or give "
                           "staging_uri=s3://bucket/prefix for object-store staging")
    if config.shared_pvc_name:
        extra = [k for k in ("staging_secret_name", "staging_endpoint_url") if getattr(config, k)]
        if extra:
            raise StagingError(f"{extra} only apply to object-store staging (staging_uri), not to a shared PVC")
        return SharedVolumeRun(config.shared_mount_path, run_id, config.shared_pvc_name)
    return ObjectStoreRun(config.staging_uri, run_id, endpoint_url=config.staging_endpoint_url,
                          secret_name=config.staging_secret_name, access_key_key=config.staging_access_key_key,
                          secret_key_key=config.staging_secret_key_key, work_dir=pod_work_dir,
                          sync_interval_s=config.checkpoint_sync_interval_seconds)


def _job_name(prefix: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:30] or "tokcls"
    if not base[0].isalpha():  # TrainJob names are RFC 1035 labels
        base = f"t{base}"[:30]
    return f"{base}-{uuid.uuid4().hex[:8]}"


def plan(config: LaunchConfig, finetune: FinetuneConfig, options: Optional[LaunchOptions] = None) -> Plan:
    """Validate everything and build the manifest; no side effect (the staging storage is only read)."""
    options = options or LaunchOptions()
    if not config.image:
        raise LaunchConfigError("image is required: the trainer image of the pods (the finetune_pytorchjob "
                                "component defaults it to components/images.py's CUDA or CPU image)")
    for name in ("preprocess_output", "model_selector_output"):
        path = getattr(finetune, name)
        if not path or not Path(path).is_dir():
            raise LaunchConfigError(f"{name} {path!r} is not a folder")
    check_io(finetune)  # the folders as the trainer checks them (links out of an input, where the outputs go)
    validate_inputs(finetune)  # and their content: bad data fails here, not in the pods
    deepspeed_json = None
    if finetune.deepspeed:  # the pods read it from the staged run
        from trainer.deepspeed_config import load_deepspeed_config

        deepspeed_json = json.dumps(load_deepspeed_config(finetune.deepspeed))
    plain_secrets = sorted(k for k in config.env if SECRET_LIKE.search(k))
    if plain_secrets:
        log.warning("env_json sets %s as plain values, visible in the job object: pass secrets with "
                    "secret_env_json (secretKeyRef) instead", plain_secrets)
    try:
        run_id = config.run_id or new_run_id()
        check_run_id(run_id)
        run = make_run_storage(config, run_id, options.pod_work_dir)
    except StagingError as err:
        raise LaunchConfigError(str(err)) from None
    env = dict(config.env)
    if config.gpus_per_node == 0 and not finetune.apply_deepspeed:
        # CPU DDP: without this, Accelerate (hence the HF Trainer) does not see a CPU torchrun job as
        # distributed, and every rank trains alone and believes it is rank 0 (found by the local-pods test).
        env.setdefault("ACCELERATE_USE_CPU", "true")
    spec = JobSpec(
        name=_job_name(options.job_name_prefix), namespace=config.namespace or own_namespace(), image=config.image,
        trainer_args=trainer_args(finetune, run, deepspeed_json is not None), num_nodes=config.num_nodes,
        gpus_per_node=config.gpus_per_node, procs_per_node=config.procs_per_node or None,
        gpu_resource=config.gpu_resource, **run.manifest_fields(),
        resources=config.resources, node_selector=config.node_selector, tolerations=config.tolerations, env=env,
        secret_env=config.secret_env, shm_size=config.shm_size, service_account=config.service_account,
        image_pull_secrets=[name.strip() for name in config.image_pull_secrets.split(",") if name.strip()],
        image_pull_policy=options.image_pull_policy, restart_policy=options.restart_policy,
        backoff_limit=options.backoff_limit,
        active_deadline_seconds=config.timeout_seconds + JOB_DEADLINE_GRACE_SECONDS,
        labels={"tokcls.run-id": re.sub(r"[^A-Za-z0-9._-]", "-", run_id)[:63].strip("-_.") or "run"})
    the_plan = Plan(config, finetune, BACKENDS[config.backend], run, spec, {}, deepspeed_json)
    the_plan.manifest = the_plan.build()
    try:
        run.check_access()  # the shared volume is mounted and writable / the bucket is reachable
    except StagingError as err:
        raise LaunchConfigError(str(err)) from None
    return the_plan


def load_clients():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


class _Deferred:
    """While cleaning up, a second SIGTERM must not abort the delete: remember it instead of raising."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    @contextlib.contextmanager
    def block(self) -> Iterator[None]:
        def remember(signum, _frame):
            self.signum = signum

        with signal_handlers(remember):
            yield


def launch(config: LaunchConfig, finetune: FinetuneConfig, *, custom_api: Any = None, core_api: Any = None,
           options: Optional[LaunchOptions] = None) -> LaunchResult:
    """Run `finetune` as a distributed job described by `config`; copy rank 0's outputs into finetune's output
    folders. See the module docstring."""
    options = options or LaunchOptions()
    the_plan = plan(config, finetune, options)
    if custom_api is None or core_api is None:
        loaded_custom, loaded_core = load_clients()
        custom_api, core_api = custom_api or loaded_custom, core_api or loaded_core
    the_plan.spec.owner_references = owner_references(core_api, the_plan.spec.namespace)
    the_plan.manifest = the_plan.build()
    return _Launch(the_plan, custom_api, core_api, options).run()


@dataclass
class _Launch:
    plan: Plan
    custom_api: Any
    core_api: Any
    options: LaunchOptions
    state: str = "Unknown"
    created: bool = False  # a create was sent (it may have reached the server even if we were stopped)
    succeeded: bool = False
    deleted: bool = False

    @property
    def name(self) -> str:
        return self.plan.spec.name

    @property
    def namespace(self) -> str:
        return self.plan.spec.namespace

    def run(self) -> LaunchResult:
        cancelled: Optional[Cancelled] = None
        deferred = _Deferred()
        with cancel_on_signals():
            try:
                self._stage()
                self._create()
                self._watch()
                self._collect()
            except Cancelled as err:
                cancelled = err
            finally:
                with deferred.block():
                    self._cleanup(cancelled)
        if cancelled is not None:
            raise cancelled
        plan = self.plan
        return LaunchResult(self.name, self.namespace, plan.run.run_id, plan.run.location, self.state, self.deleted,
                            plan.backend.name, plan.manifest)

    def _stage(self) -> None:
        run = self.plan.run
        log.info("staging inputs to %s", run.location)
        run.stage_inputs(self.plan.finetune.preprocess_output, self.plan.finetune.model_selector_output,
                         self.plan.deepspeed_json)

    def _create(self) -> None:
        spec, backend = self.plan.spec, self.plan.backend
        log.info("creating %s %s/%s: %d node(s) x %d process(es)%s", backend.kind, self.namespace, self.name,
                 spec.num_nodes, spec.nproc_per_node,
                 f", owned by pod {spec.owner_references[0]['name']}" if spec.owner_references else "")
        self.created = True
        try:
            create_job(self.custom_api, backend, self.plan.manifest)
        except JobFailed as err:
            if 400 <= (getattr(err.__cause__, "status", None) or 0) < 500:
                self.created = False  # refused: no job of ours exists (409: the name is someone else's job)
            raise

    def _watch(self) -> None:
        config, options, backend = self.plan.config, self.options, self.plan.backend
        watcher = Watcher(self.custom_api, self.core_api, backend, self.name, self.namespace,
                          config.timeout_seconds, config.poll_interval_seconds, options.stream_logs,
                          out=options.out or sys.stdout, start_timeout_s=config.start_timeout_seconds)
        if options.clock is not None:
            watcher.clock = options.clock
        if options.sleep is not None:
            watcher.sleep = options.sleep
        state, _ = watcher.wait()
        self.state = state.phase
        if state.phase == "Failed":
            pod, text = failure_report(self.core_api, backend, self.name, self.namespace)
            raise JobFailed(self.name, state.reason or "Failed", state.message, text, kind=backend.kind, pod=pod)

    def _collect(self) -> None:
        run, finetune, backend = self.plan.run, self.plan.finetune, self.plan.backend
        try:
            run.check_outputs()
        except StagingError as err:
            pod, text = failure_report(self.core_api, backend, self.name, self.namespace)
            raise JobFailed(self.name, "OutputsMissing", str(err), text, kind=backend.kind, pod=pod) from None
        run.collect_outputs(finetune.pytorch_model_folder, finetune.mlflow_model_folder)
        self.succeeded = True

    def _cleanup(self, cancelled: Optional[Cancelled]) -> None:
        policy, kind = self.plan.config.cleanup_policy, self.plan.backend.kind
        # A job left unfinished (timeout, API errors) would hold its nodes with nobody to collect its outputs:
        # on_success keeps a *failed* job to debug, not a running one. Only `never` keeps it (its own
        # activeDeadlineSeconds still ends it).
        abandoned = self.state not in ("Succeeded", "Failed") and policy != "never"
        if self.created and (cancelled is not None or abandoned or policy == "always"
                             or (policy == "on_success" and self.succeeded)):
            try:
                self.deleted = delete_job(self.custom_api, self.plan.backend, self.name, self.namespace)
                log.info("%s%s %s %s/%s", "cancelled: " if cancelled else "not finished: " if abandoned else "",
                         "deleted" if self.deleted else "already gone:", kind, self.namespace, self.name)
            except Exception as err:  # never mask the job's own outcome with a cleanup error
                log.warning("could not delete %s %s/%s: %s", kind, self.namespace, self.name, err)
        elif self.created:
            log.info("keeping %s %s/%s (cleanup_policy=%s)", kind, self.namespace, self.name, policy)
        if self.succeeded and policy != "never":
            self.plan.run.remove()  # outputs are copied; a failed run's folder stays for resume_from_checkpoint


__all__ = ["LaunchConfigError", "LaunchOptions", "LaunchResult", "Plan", "launch", "plan", "make_run_storage",
           "trainer_args"]
