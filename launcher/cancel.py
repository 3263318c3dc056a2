"""Cancellation: a stopped launcher step takes its job with it.

Two mechanisms, because a KFP run can end either way:

- **Terminate in the KFP UI**: Argo sends the step's container SIGTERM (then SIGKILL after the grace period, 30 s
  by default). `cancel_on_signals()` turns SIGTERM (and SIGINT, Ctrl-C in plain Python use) into `Cancelled` in
  the launcher's main thread; the launch then deletes its job whatever the cleanup policy, and exits 143.
- **The step pod is deleted** (run deleted, pod evicted, SIGKILL before the delete went through): the job carries
  an ownerReference to the step's pod, so Kubernetes' garbage collector deletes the job (and, through the
  operator's own references, its pods). The pod is found from KFP's env (`KFP_POD_NAME`, `KFP_POD_UID`, set on every
  KFP v2 executor pod by the downward API), else from `POD_NAME`/`POD_UID`, else by reading the pod named
  `HOSTNAME` when running in a cluster. Owner and job must share a namespace (Kubernetes' rule); otherwise the
  reference is left out, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Cancelled(BaseException):
    """The launcher was told to stop (SIGTERM / SIGINT). A BaseException, like KeyboardInterrupt: the launcher's
    `except Exception` retries (API blips) must not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def signal_handlers(handler, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[bool]:
    """Within the block, `handler` handles `signals`; the previous handlers come back after it. Python sets handlers
    in the main thread only: elsewhere nothing changes (the block gets False)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield True
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def cancel_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the signals raise Cancelled in the main thread (elsewhere: no change, with a warning)."""
    def handler(signum, _frame):
        raise Cancelled(signum)

    with signal_handlers(handler, signals) as installed:
        if not installed:
            log.warning("not in the main thread: SIGTERM will not cancel the job (the ownerReference still applies)")
        yield


def own_namespace() -> str:
    """The namespace of the pod we run in (KFP steps run in the profile's namespace), else 'default'."""
    if os.environ.get("KFP_NAMESPACE"):
        return os.environ["KFP_NAMESPACE"]
    try:
        return Path(SA_NAMESPACE_FILE).read_text().strip()
    except OSError:
        return "default"


def own_pod(core_api: Any) -> Optional[dict[str, str]]:
    """{name, uid, namespace} of the pod this process runs in, or None outside a cluster."""
    for name_var, uid_var in (("KFP_POD_NAME", "KFP_POD_UID"), ("POD_NAME", "POD_UID")):
        name, uid = os.environ.get(name_var), os.environ.get(uid_var)
        if name and uid:
            return {"name": name, "uid": uid, "namespace": own_namespace()}
    if not Path(SA_NAMESPACE_FILE).exists() or not os.environ.get("HOSTNAME"):
        return None
    namespace = own_namespace()
    try:
        pod = core_api.read_namespaced_pod(os.environ["HOSTNAME"], namespace)
    except Exception as err:  # no RBAC, not a pod after all: the launch goes on without the reference
        log.warning("could not read this step's pod %s/%s (%s): the job gets no ownerReference", namespace,
                    os.environ["HOSTNAME"], getattr(err, "reason", None) or err)
        return None
    return {"name": pod.metadata.name, "uid": pod.metadata.uid, "namespace": namespace}


def owner_references(core_api: Any, job_namespace: str) -> list[dict[str, Any]]:
    """The ownerReferences of a job launched from here: this step's pod, when it is in the job's namespace."""
    pod = own_pod(core_api)
    if pod is None:
        return []
    if pod["namespace"] != job_namespace:
        log.warning("the job runs in namespace %s, this step in %s: Kubernetes cannot garbage-collect it with this "
                    "step's pod (SIGTERM still deletes it)", job_namespace, pod["namespace"])
        return []
    # Not a controller reference (the job's controller is the operator), and no blockOwnerDeletion (that would need
    # permission to set finalizers on pods).
    return [{"apiVersion": "v1", "kind": "Pod", "name": pod["name"], "uid": pod["uid"]}]
