"""Create a PyTorchJob, follow its conditions to the end, fetch the master's logs, delete it.

Talks to the API server only through `kubernetes.client.CustomObjectsApi` (the job) and `CoreV1Api`
(the master pod and its log), so tests can swap in objects with the same methods.

The Training Operator reports state in `status.conditions` (type, status "True"/"False", reason,
message): `Created` -> `Running` (-> `Restarting`) -> `Succeeded` | `Failed` (and `Suspended`). A job is
finished when its `Succeeded` or `Failed` condition has status "True". Pods carry the labels
`training.kubeflow.org/job-name=<job>` and `training.kubeflow.org/replica-type=master` (lower-case
replica type; older operators also set `training.kubeflow.org/job-role=master`).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

from launcher.manifest import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
JOB_ROLE_LABEL = "training.kubeflow.org/job-role"
CLEANUP_POLICIES = ("always", "on_success", "never")
TERMINAL = ("Succeeded", "Failed")


class PyTorchJobFailed(RuntimeError):
    """The job ended in Failed (or could not be run); carries the operator's reason and the master's last lines."""

    def __init__(self, job_name: str, reason: str, message: str, log_tail: str = ""):
        self.job_name, self.reason, self.message, self.log_tail = job_name, reason, message, log_tail
        text = f"PyTorchJob {job_name} failed: {reason}: {message}"
        if log_tail:
            text += f"\n--- last lines of the master's log ---\n{log_tail}"
        super().__init__(text)


class PyTorchJobTimeout(PyTorchJobFailed):
    """The job did not finish within the timeout."""


@dataclass
class JobState:
    phase: str  # Pending (no condition yet) | Created | Running | Restarting | Suspended | Succeeded | Failed
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL


def job_state(job: dict[str, Any]) -> JobState:
    """The job's current state from its conditions: a true terminal condition wins, else the latest true one."""
    conditions = (job.get("status") or {}).get("conditions") or []
    true_conditions = [c for c in conditions if str(c.get("status")) == "True"]
    for terminal in ("Failed", "Succeeded"):
        for cond in true_conditions:
            if cond.get("type") == terminal:
                return JobState(terminal, cond.get("reason", ""), cond.get("message", ""))
    if true_conditions:
        last = max(true_conditions, key=lambda c: c.get("lastTransitionTime") or "")
        return JobState(last.get("type", "Unknown"), last.get("reason", ""), last.get("message", ""))
    return JobState("Pending")


def create_job(custom_api, manifest: dict[str, Any]) -> dict[str, Any]:
    namespace = manifest["metadata"]["namespace"]
    try:
        return custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except Exception as err:  # kubernetes.client.ApiException and connection errors
        status = getattr(err, "status", None)
        hint = {
            403: "the pipeline's service account may not create pytorchjobs: apply manifests/rbac.yaml",
            404: "is the Kubeflow Training Operator (PyTorchJob CRD, kubeflow.org/v1) installed?",
            409: "a job of that name already exists",
        }.get(status, "")
        raise PyTorchJobFailed(manifest["metadata"]["name"], "CreateFailed",
                               f"{type(err).__name__} {status or ''} {getattr(err, 'reason', '') or err}"
                               + (f" ({hint})" if hint else "")) from err


def get_job(custom_api, name: str, namespace: str) -> dict[str, Any]:
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def delete_job(custom_api, name: str, namespace: str) -> bool:
    """Delete the job and (foreground propagation) its pods and services; False when already gone."""
    try:
        custom_api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   propagation_policy="Foreground")
        return True
    except Exception as err:
        if getattr(err, "status", None) == 404:
            return False
        raise


def master_pod_name(core_api, job_name: str, namespace: str) -> Optional[str]:
    for selector in (f"{JOB_NAME_LABEL}={job_name},{REPLICA_TYPE_LABEL}=master",
                     f"{JOB_NAME_LABEL}={job_name},{JOB_ROLE_LABEL}=master"):
        pods = core_api.list_namespaced_pod(namespace, label_selector=selector)
        items = list(getattr(pods, "items", None) or [])
        if items:
            items.sort(key=lambda p: str(getattr(p.metadata, "creation_timestamp", "") or ""))
            return items[-1].metadata.name
    return None


def master_logs(core_api, job_name: str, namespace: str, tail_lines: Optional[int] = None) -> str:
    """The master pod's log (its last `tail_lines` lines), or '' when there is no pod or no log yet."""
    try:
        pod = master_pod_name(core_api, job_name, namespace)
        if pod is None:
            return ""
        kwargs: dict[str, Any] = {"container": "pytorch"}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        return core_api.read_namespaced_pod_log(pod, namespace, **kwargs) or ""
    except Exception as err:  # a log is diagnostics: never let it hide the job's own result
        if getattr(err, "status", None) not in (400, 404):  # 400: container still creating
            log.warning("could not read the master's log: %s", err)
        return ""


@dataclass
class Watcher:
    """Polls one job until it finishes or `timeout_s` passes, echoing new master log lines as they come."""

    custom_api: Any
    core_api: Any
    name: str
    namespace: str
    timeout_s: float
    poll_interval_s: float = 15.0
    stream_logs: bool = True
    out: TextIO = field(default_factory=lambda: sys.stdout)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    max_api_errors: int = 5  # consecutive failed polls (API server restart, network blip) before giving up
    _printed: str = ""

    def _echo_new_logs(self) -> None:
        text = master_logs(self.core_api, self.name, self.namespace)
        if not text:
            return
        if text.startswith(self._printed):
            new = text[len(self._printed):]
        else:  # the pod was restarted or the log rotated: print what we have not seen as a whole
            new = text
        if new:
            self.out.write(new if new.endswith("\n") else new + "\n")
            self.out.flush()
        self._printed = text

    def wait(self) -> tuple[JobState, dict[str, Any]]:
        """The terminal state and the last job object; raises PyTorchJobTimeout past the deadline."""
        deadline = self.clock() + self.timeout_s
        last_phase = None
        errors = 0
        while True:
            try:
                job = get_job(self.custom_api, self.name, self.namespace)
                errors = 0
            except Exception as err:  # ApiException, connection errors
                if getattr(err, "status", None) == 404:
                    raise PyTorchJobFailed(self.name, "JobDeleted",
                                           "the PyTorchJob disappeared before it finished (deleted by someone "
                                           "else, or by ttlSecondsAfterFinished)") from err
                errors += 1
                if errors > self.max_api_errors:
                    raise PyTorchJobFailed(self.name, "ApiError",
                                           f"{errors} API errors in a row while polling the job: {err}") from err
                log.warning("polling PyTorchJob %s/%s failed (%d/%d), retrying: %s", self.namespace, self.name,
                            errors, self.max_api_errors, err)
                if self.clock() >= deadline:
                    raise PyTorchJobTimeout(self.name, "Timeout",
                                            f"not finished after {self.timeout_s:g} s (API unreachable)") from err
                self.sleep(max(0.0, min(self.poll_interval_s, deadline - self.clock())))
                continue
            state = job_state(job)
            if state.phase != last_phase:
                log.info("PyTorchJob %s/%s: %s %s", self.namespace, self.name, state.phase, state.reason)
                last_phase = state.phase
            if self.stream_logs and state.phase not in ("Pending", "Created"):
                self._echo_new_logs()
            if state.finished:
                return state, job
            if self.clock() >= deadline:
                raise PyTorchJobTimeout(
                    self.name, "Timeout",
                    f"not finished after {self.timeout_s:g} s (last state: {state.phase}"
                    + (f", {state.reason}: {state.message}" if state.reason else "") + ")",
                    tail(master_logs(self.core_api, self.name, self.namespace, tail_lines=200)))
            self.sleep(max(0.0, min(self.poll_interval_s, deadline - self.clock())))


def tail(text: str, lines: int = 50) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
