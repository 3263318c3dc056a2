"""Follow a launched job to its end: its state, rank 0's log as it is written, the failing pod's last lines.

Talks to the API server only through `kubernetes.client.CustomObjectsApi` (the job) and `CoreV1Api` (the job's
pods and their logs), so tests can swap in objects with the same methods. Two backends (`BACKENDS`):

- `pytorchjob` (Kubeflow Training Operator v1, `kubeflow.org/v1`): state in `status.conditions`, `Created` ->
  `Running` (-> `Restarting`) -> `Succeeded` | `Failed`; pods labelled `training.kubeflow.org/job-name=<job>`, the
  master `training.kubeflow.org/replica-type=master` (older operators: `job-role=master`); container `pytorch`.
- `trainjob` (Kubeflow Trainer v2, `trainer.kubeflow.org/v1alpha1`): `Complete` | `Failed` conditions (copied from
  the JobSet), `Suspended`; while running there is no condition, only `status.jobsStatus[].active`; pods labelled
  `jobset.sigs.k8s.io/jobset-name=<job>`, node 0 is Job completion index 0 (annotation
  `batch.kubernetes.io/job-completion-index`, also a label from Kubernetes 1.28); container `node`.

Logs are followed, not re-read: one `follow=true&timestamps=true` stream of rank 0's container, reopened (from the
last timestamp seen) only when it ends while the pod lives on (a container restart). When the job fails, the pod
that failed first (earliest terminated container with a non-zero exit code, workers included) gives the tail.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional, TextIO

from launcher import manifest, trainjob
from trainer.validation import one_line

log = logging.getLogger(__name__)

CLEANUP_POLICIES = ("always", "on_success", "never")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Backend:
    """One kind of distributed job: its API, how its state reads, how its pods are found."""

    name: str
    group: str
    version: str
    plural: str
    kind: str
    container: str  # the trainer container of every pod
    job_label: str  # the pod label holding the job's name
    terminal: dict  # true condition type -> our terminal phase
    install_hint: str  # what a 404 on create means

    def is_rank0(self, pod: Any) -> bool:
        metadata = pod.metadata
        labels, annotations = metadata.labels or {}, metadata.annotations or {}
        if self.name == "pytorchjob":
            return "master" in (labels.get("training.kubeflow.org/replica-type"),
                                labels.get("training.kubeflow.org/job-role"))
        return (labels.get("jobset.sigs.k8s.io/replicatedjob-name", trainjob.NODE) == trainjob.NODE
                and str(annotations.get(COMPLETION_INDEX, labels.get(COMPLETION_INDEX))) == "0")


PYTORCHJOB = Backend(
    "pytorchjob", manifest.GROUP, manifest.VERSION, manifest.PLURAL, manifest.KIND, manifest.CONTAINER_NAME,
    "training.kubeflow.org/job-name", {"Succeeded": "Succeeded", "Failed": "Failed"},
    "is the Kubeflow Training Operator (PyTorchJob CRD, kubeflow.org/v1) installed? On a Kubeflow install with "
    "only Trainer v2, use backend=trainjob")
TRAINJOB = Backend(
    "trainjob", trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL, trainjob.KIND, trainjob.NODE,
    "jobset.sigs.k8s.io/jobset-name", {"Complete": "Succeeded", "Failed": "Failed"},
    "is Kubeflow Trainer v2 (TrainJob CRD, trainer.kubeflow.org/v1alpha1) installed? With only the Training "
    "Operator v1, use backend=pytorchjob")
BACKENDS = {b.name: b for b in (PYTORCHJOB, TRAINJOB)}


class JobFailed(RuntimeError):
    """The job ended in Failed (or could not be run); carries the reason and the failing pod's last lines."""

    def __init__(self, job_name: str, reason: str, message: str, log_tail: str = "", *, kind: str = "PyTorchJob",
                 pod: str = ""):
        self.job_name, self.reason, self.message, self.log_tail, self.kind, self.pod = (
            job_name, reason, message, log_tail, kind, pod)
        text = f"{kind} {job_name} failed: {reason}: {message}"
        if log_tail:
            text += f"\n--- last lines of {pod or 'the log'} ---\n{log_tail}"
        super().__init__(text)


class JobTimeout(JobFailed):
    """The job did not finish within the timeout."""


PyTorchJobFailed, PyTorchJobTimeout = JobFailed, JobTimeout  # the names of the first, PyTorchJob-only launcher


@dataclass
class JobState:
    phase: str  # Pending | Created | Running | Restarting | Suspended | Succeeded | Failed
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def job_state(job: dict[str, Any], backend: Backend = PYTORCHJOB) -> JobState:
    """The job's current state: a true terminal condition wins, else the latest true one, else (a running TrainJob
    has no condition) Running while a child job is active."""
    status = job.get("status") or {}
    true_conditions = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    for kind, phase in sorted(backend.terminal.items(), key=lambda item: item[1] != "Failed"):
        for cond in true_conditions:
            if cond.get("type") == kind:
                return JobState(phase, cond.get("reason", ""), cond.get("message", ""))
    if true_conditions:
        last = max(true_conditions, key=lambda c: c.get("lastTransitionTime") or "")
        phase = last.get("type", "Unknown")
        if phase in ("Succeeded", "Failed"):  # another API's terminal word is not this job's end
            phase = f"{phase} (not a {backend.kind} condition)"
        return JobState(phase, last.get("reason", ""), last.get("message", ""))
    if any((j.get("active") or 0) > 0 or (j.get("ready") or 0) > 0 for j in status.get("jobsStatus") or []):
        return JobState("Running")
    return JobState("Pending")


def create_job(custom_api, backend: Backend, manifest_: dict[str, Any]) -> dict[str, Any]:
    namespace = manifest_["metadata"]["namespace"]
    try:
        # Strict: a field the served CRD does not know fails the create, instead of being pruned away silently (a
        # Kubeflow Trainer before v2.2 has no runtimePatches: the pods lost their volumes, security contexts and
        # placement). API servers before Kubernetes 1.25 ignore the parameter.
        return custom_api.create_namespaced_custom_object(backend.group, backend.version, namespace, backend.plural,
                                                          manifest_, field_validation="Strict")
    except Exception as err:  # kubernetes.client.ApiException and connection errors
        status = getattr(err, "status", None)
        hint = {
            400: f"the cluster's {backend.kind} CRD lacks a field this job sets: docs/distributed.md names the "
                 "versions needed",
            403: f"the pipeline's service account may not create {backend.plural}: apply manifests/rbac.yaml",
            404: backend.install_hint,
            409: "a job of that name already exists",
        }.get(status, "")
        said = _status_message(err)
        raise JobFailed(manifest_["metadata"]["name"], "CreateFailed",
                        f"{type(err).__name__} {status or ''} {getattr(err, 'reason', '') or err}"
                        + (f": {said}" if said else "") + (f" ({hint})" if hint else ""), kind=backend.kind) from err


def _status_message(err: Exception) -> str:
    """The message of the API server's Status body of an ApiException, if it has one."""
    try:
        body = json.loads(getattr(err, "body", None) or "")
    except (TypeError, ValueError):
        return ""
    return one_line(body.get("message", ""))[:500] if isinstance(body, dict) else ""


def get_job(custom_api, backend: Backend, name: str, namespace: str) -> dict[str, Any]:
    return custom_api.get_namespaced_custom_object(backend.group, backend.version, namespace, backend.plural, name)


def delete_job(custom_api, backend: Backend, name: str, namespace: str) -> bool:
    """Delete the job and (foreground propagation) its pods and services; False when already gone."""
    try:
        custom_api.delete_namespaced_custom_object(backend.group, backend.version, namespace, backend.plural, name,
                                                   propagation_policy="Foreground")
        return True
    except Exception as err:
        if getattr(err, "status", None) == 404:
            return False
        raise


def job_pods(core_api, backend: Backend, job_name: str, namespace: str) -> list[Any]:
    """The job's pods, oldest first."""
    pods = core_api.list_namespaced_pod(namespace, label_selector=f"{backend.job_label}={job_name}")
    items = list(getattr(pods, "items", None) or [])
    items.sort(key=lambda p: str(getattr(p.metadata, "creation_timestamp", "") or ""))
    return items


def rank0_pod(core_api, backend: Backend, job_name: str, namespace: str) -> Optional[Any]:
    """The newest pod of node rank 0 (a restarted pod replaces the old one), or None."""
    pods = [p for p in job_pods(core_api, backend, job_name, namespace) if backend.is_rank0(p)]
    return pods[-1] if pods else None


def pod_log(core_api, backend: Backend, pod: str, namespace: str, tail_lines: Optional[int] = None,
            previous: bool = False) -> str:
    """A pod's trainer log (its last `tail_lines` lines), or '' when there is none yet."""
    try:
        kwargs: dict[str, Any] = {"container": backend.container}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        if previous:
            kwargs["previous"] = True
        return core_api.read_namespaced_pod_log(pod, namespace, **kwargs) or ""
    except Exception as err:  # a log is diagnostics: never let it hide the job's own result
        if getattr(err, "status", None) not in (400, 404):  # 400: container still creating
            log.warning("could not read the log of %s: %s", pod, err)
        return ""


def rank0_logs(core_api, backend: Backend, job_name: str, namespace: str, tail_lines: Optional[int] = None) -> str:
    try:
        pod = rank0_pod(core_api, backend, job_name, namespace)
    except Exception as err:
        log.warning("could not list the pods of %s: %s", job_name, err)
        return ""
    return "" if pod is None else pod_log(core_api, backend, pod.metadata.name, namespace, tail_lines)


def _failed_container(pod: Any, container: str) -> Optional[tuple[Any, bool]]:
    """(terminated state, from the previous run) of the trainer container if it failed, else None."""
    for status in (getattr(pod.status, "container_statuses", None) or []) if pod.status else []:
        if status.name != container:
            continue
        for state, previous in ((status.state, False), (status.last_state, True)):
            terminated = getattr(state, "terminated", None) if state else None
            if terminated is not None and terminated.exit_code not in (0, None):
                return terminated, previous
    return None


def failure_report(core_api, backend: Backend, job_name: str, namespace: str, lines: int = 50) -> tuple[str, str]:
    """(which pod, its last `lines` log lines): the pod whose trainer container failed first, else rank 0."""
    try:
        pods = job_pods(core_api, backend, job_name, namespace)
    except Exception as err:
        log.warning("could not list the pods of %s: %s", job_name, err)
        return "", ""
    failed = []
    for pod in pods:
        found = _failed_container(pod, backend.container)
        if found is not None:
            failed.append((str(found[0].finished_at or ""), pod, found))
        elif pod.status is not None and pod.status.phase == "Failed":
            failed.append(("~", pod, None))  # failed without a terminated container (evicted, ...)
    if failed:
        failed.sort(key=lambda item: item[0])
        _, pod, found = failed[0]
        detail = f", exit code {found[0].exit_code}" if found else f", {pod.status.reason or 'Failed'}"
        first = " (the first of %d to fail)" % len(failed) if len(failed) > 1 else ""
        text = pod_log(core_api, backend, pod.metadata.name, namespace, tail_lines=200,
                       previous=bool(found and found[1]))
        return f"pod {pod.metadata.name}{detail}{first}", tail(text, lines)
    pod = next((p for p in reversed(pods) if backend.is_rank0(p)), None)
    if pod is None:
        return "", ""
    return f"pod {pod.metadata.name} (node rank 0)", tail(pod_log(core_api, backend, pod.metadata.name, namespace,
                                                                    tail_lines=200), lines)


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z ")


def _log_time(line: str) -> Optional[tuple[float, int]]:
    """(epoch seconds, nanoseconds) of a `timestamps=true` log line, or None."""
    match = _TIMESTAMP.match(line)
    if not match:
        return None
    seconds = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=None)
    epoch = (seconds - datetime(1970, 1, 1)).total_seconds()
    return epoch, int((match.group(2) or "0").ljust(9, "0")[:9])


class LogFollower(threading.Thread):
    """Streams rank 0's log to `out` while the job runs (a daemon thread; see the module docstring)."""

    RETRY_S = 2.0  # seconds between looks for rank 0's pod / a stream to reopen

    def __init__(self, core_api, backend: Backend, job_name: str, namespace: str, out: TextIO,
                 retry_s: Optional[float] = None, wall_clock: Callable[[], float] = time.time):
        super().__init__(daemon=True, name=f"logs-{job_name}")
        self.core_api, self.backend, self.job_name, self.namespace, self.out = (
            core_api, backend, job_name, namespace, out)
        self.retry_s, self.wall_clock = self.RETRY_S if retry_s is None else retry_s, wall_clock
        self._halt = threading.Event()
        self._drain = threading.Event()  # also wakes the thread up
        self._last: dict[str, tuple[float, int]] = {}  # pod -> last timestamp printed
        self._streamed: dict[str, int] = {}  # pod -> container restart count when its stream was opened
        self.requests = 0

    def finish(self, timeout: float = 15.0) -> None:
        """The job has ended: print what is left of the log, then stop (waiting at most `timeout`)."""
        self._drain.set()
        self.join(timeout)
        self._halt.set()

    def stop(self) -> None:
        self._halt.set()
        self._drain.set()

    def run(self) -> None:
        while not self._halt.is_set():
            draining = self._drain.is_set()
            try:
                pod = rank0_pod(self.core_api, self.backend, self.job_name, self.namespace)
                if pod is not None and (draining or self._should_stream(pod)):
                    self._stream(pod.metadata.name, self._restarts(pod))
            except Exception as err:  # never let diagnostics kill the launch
                if getattr(err, "status", None) not in (400, 404):
                    log.debug("log stream of %s: %s", self.job_name, err)
            if draining:
                return
            self._drain.wait(self.retry_s)

    def _container_status(self, pod: Any) -> Any:
        statuses = (getattr(pod.status, "container_statuses", None) or []) if pod.status else []
        return next((s for s in statuses if s.name == self.backend.container), None)

    def _restarts(self, pod: Any) -> int:
        status = self._container_status(pod)
        return int(getattr(status, "restart_count", 0) or 0)

    def _should_stream(self, pod: Any) -> bool:
        """Not yet followed, restarted since, or still running although its stream ended (the kubelet closed it)."""
        name = pod.metadata.name
        if name not in self._streamed or self._restarts(pod) != self._streamed[name]:
            return True
        status = self._container_status(pod)
        return not (status is not None and status.state is not None and status.state.terminated is not None)

    def _stream(self, pod: str, restarts: int = 0) -> None:
        self._streamed[pod] = restarts
        last = self._last.get(pod)
        kwargs: dict[str, Any] = {"container": self.backend.container, "follow": True, "timestamps": True,
                                  "_preload_content": False}
        if last is not None:  # reopened: from a little before the last line seen; older lines are skipped below
            kwargs["since_seconds"] = max(1, int(self.wall_clock() - last[0]) + 5)
        self.requests += 1
        response = self.core_api.read_namespaced_pod_log(pod, self.namespace, **kwargs)
        pending = b""
        try:
            for chunk in response.stream(4096):
                if self._halt.is_set():
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._print(pod, raw.decode("utf-8", errors="replace"))
            if pending:
                self._print(pod, pending.decode("utf-8", errors="replace"))
        finally:
            response.release_conn()

    def _print(self, pod: str, line: str) -> None:
        stamp = _log_time(line)
        if stamp is not None:
            if pod in self._last and stamp <= self._last[pod]:
                return  # already printed before the stream was reopened
            self._last[pod] = stamp
            line = line[line.index(" ") + 1:]
        self.out.write(line + "\n")
        self.out.flush()


@dataclass
class Watcher:
    """Polls one job until it finishes or `timeout_s` passes; rank 0's log is followed meanwhile."""

    custom_api: Any
    core_api: Any
    backend: Backend
    name: str
    namespace: str
    timeout_s: float
    poll_interval_s: float = 15.0
    stream_logs: bool = True
    out: TextIO = field(default_factory=lambda: sys.stdout)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    max_api_errors: int = 5  # consecutive failed polls (API server restart, network blip) before giving up
    follower: Optional[LogFollower] = None
    start_timeout_s: float = 900.0  # a pod that cannot start (stuck_pod) for this long fails the job

    def wait(self) -> tuple[JobState, dict[str, Any]]:
        """The terminal state and the last job object; raises JobTimeout past the deadline."""
        finished = False
        try:
            state, job = self._poll()
            finished = True
            return state, job
        finally:
            if self.follower is not None:  # a finished job's log is drained; a timeout or cancel stops at once
                self.follower.finish() if finished else self.follower.stop()

    def _failure(self, cls, reason: str, message: str) -> JobFailed:
        pod, text = failure_report(self.core_api, self.backend, self.name, self.namespace)
        return cls(self.name, reason, message, text, kind=self.backend.kind, pod=pod)

    def _stuck(self) -> Optional[str]:
        try:
            return stuck_pod(job_pods(self.core_api, self.backend, self.name, self.namespace))
        except Exception as err:  # a failed listing is no evidence either way
            log.debug("could not list the pods of %s: %s", self.name, err)
            return None

    def _poll(self) -> tuple[JobState, dict[str, Any]]:
        deadline = self.clock() + self.timeout_s
        last_phase = stuck_since = None
        errors = 0
        while True:
            try:
                job = get_job(self.custom_api, self.backend, self.name, self.namespace)
                errors = 0
            except Exception as err:  # ApiException, connection errors
                if getattr(err, "status", None) == 404:
                    raise JobFailed(self.name, "JobDeleted",
                                    f"the {self.backend.kind} disappeared before it finished (deleted by someone else, "
                                    "or by a TTL)", kind=self.backend.kind) from err
                errors += 1
                if errors > self.max_api_errors:
                    raise JobFailed(self.name, "ApiError", f"{errors} API errors in a row while polling the job: "
                                    f"{err}", kind=self.backend.kind) from err
                log.warning("polling %s %s/%s failed (%d/%d), retrying: %s", self.backend.kind, self.namespace,
                            self.name, errors, self.max_api_errors, err)
                if self.clock() >= deadline:
                    raise JobTimeout(self.name, "Timeout", f"not finished after {self.timeout_s:g} s (API "
                                     "unreachable)", kind=self.backend.kind) from err
                self.sleep(max(0.0, min(self.poll_interval_s, deadline - self.clock())))
                continue
            state = job_state(job, self.backend)
            if state.phase != last_phase:
                log.info("%s %s/%s: %s %s", self.backend.kind, self.namespace, self.name, state.phase, state.reason)
                last_phase = state.phase
            if self.stream_logs and self.follower is None and state.phase not in ("Pending", "Created"):
                self.follower = LogFollower(self.core_api, self.backend, self.name, self.namespace, self.out)
                self.follower.start()
            if state.finished:
                return state, job
            stuck = self._stuck()
            stuck_since = None if stuck is None else (stuck_since if stuck_since is not None else self.clock())
            if stuck is not None and self.clock() - stuck_since >= self.start_timeout_s:
                raise self._failure(JobFailed, "PodsNotStarting", f"{stuck}; not started for "
                                    f"{self.clock() - stuck_since:.0f} s (start_timeout_seconds)")
            if self.clock() >= deadline:
                raise self._failure(JobTimeout, "Timeout", f"not finished after {self.timeout_s:g} s (last state: "
                                    f"{state.phase}" + (f", {state.reason}: {state.message}" if state.reason else "")
                                    + ")")
            self.sleep(max(0.0, min(self.poll_interval_s, deadline - self.clock())))


# Container waiting reasons the kubelet does not get past by itself: the image cannot be pulled, a Secret or
# ConfigMap the container needs is missing. No job condition reports them (Training Operator v1.9: Created; Trainer
# v2.2: the TrainJob counts pending pods as active).
STUCK_WAITING = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError")


def _said(message: Optional[str]) -> str:
    """': <the kubelet's or scheduler's message, on one line>', or nothing when it gave none."""
    return f": {one_line(message)[:300]}" if message else ""


def stuck_pod(pods: list[Any]) -> Optional[str]:
    """Why a pod of the job cannot start (its name, the container and the kubelet's or scheduler's reason and
    message), or None when none is stuck."""
    for pod in pods:
        status = pod.status
        if status is None:
            continue
        for container in (status.init_container_statuses or []) + (status.container_statuses or []):
            waiting = getattr(container.state, "waiting", None) if container.state else None
            if waiting is not None and waiting.reason in STUCK_WAITING:
                return f"pod {pod.metadata.name}, container {container.name}: {waiting.reason}{_said(waiting.message)}"
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                return f"pod {pod.metadata.name} cannot be scheduled{_said(condition.message)}"
    return None


def tail(text: str, lines: int = 50) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
