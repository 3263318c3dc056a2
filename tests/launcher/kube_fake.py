"""A fake Kubernetes API server behind the real `kubernetes` client, for the launcher tests.

The launcher talks to `kubernetes.client.CustomObjectsApi` / `CoreV1Api`. Here those are the real
client classes on a real `ApiClient`; only the client's urllib3 pool manager (the HTTP socket layer)
is replaced by `FakeApiServer`, which answers each HTTP request with the JSON bodies in `responses/`
(shaped exactly like the API server's, the Training Operator's and Kubeflow Trainer's; see responses/README.md).
So URL building, query parameters, (de)serialisation and `ApiException` on 4xx all run the client's own code.

The fake also does what the real server and operator would do with a created PyTorchJob or TrainJob: it
validates the body against the CRD schema in tests/data/crds (422 if invalid), advances the job's `status`
through a scripted list of stages on each GET, serves the job's pods and their logs (streamed, with timestamps,
when the client follows), and (like a trainer that finished) writes rank-0 outputs into the run folder named in
the job's command.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import re
import shlex
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, unquote, urlparse

import pytest
import urllib3
import yaml

HERE = Path(__file__).parent
RESPONSES = HERE / "responses"
CRDS = HERE.parent / "data" / "crds"
CRD_PATH = CRDS / "kubeflow.org_pytorchjobs.yaml"
CRD_FILES = {"pytorchjobs": CRD_PATH, "trainjobs": CRDS / "trainer.kubeflow.org_trainjobs.yaml",
             "clustertrainingruntimes": CRDS / "trainer.kubeflow.org_clustertrainingruntimes.yaml"}
# status file of each scripted stage, per kind of job (None: no status yet)
STATUS_FILES = {
    "pytorchjobs": {stage: f"job_status_{stage}.json" for stage in
                    ("created", "running", "restarting", "succeeded", "failed")},
    "trainjobs": {"created": None, "running": "job_status_trainjob_running.json",
                  "succeeded": "job_status_trainjob_complete.json", "failed": "job_status_trainjob_failed.json"},
}
POD_LISTS = {"pytorchjobs": "pod_list_master.json", "trainjobs": "pod_list_trainjob_nodes.json"}
JOB_LABELS = {"pytorchjobs": "training.kubeflow.org/job-name", "trainjobs": "jobset.sigs.k8s.io/jobset-name"}


def load_crd_schema(plural: str = "pytorchjobs") -> dict:
    return copy.deepcopy(_crd_schema(plural))


@functools.lru_cache(maxsize=None)
def _crd_schema(plural: str) -> dict:  # the CRDs are large: parse each once
    crd = yaml.load(CRD_FILES[plural].read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(instance: Any, schema: dict, path: str = "") -> list[str]:
    """Fields the API server would prune (or reject with fieldValidation=Strict): not declared in the schema."""
    found: list[str] = []
    if isinstance(instance, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
            return found
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                found += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None:
                found.append(f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def crd_errors(manifest: dict) -> list[str]:
    """What the API server would say about `manifest`: schema violations plus unknown (pruned) fields."""
    import jsonschema

    schema = _crd_schema({"PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs",
                          "ClusterTrainingRuntime": "clustertrainingruntimes"}[manifest.get("kind", "PyTorchJob")])
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    errors += [f"{p}: unknown field" for p in unknown_fields(manifest, schema)]
    return errors


def _fill(text: str, **values: str) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def response_json(file_name: str, **values: str) -> Any:
    return json.loads(_fill((RESPONSES / file_name).read_text(), **values))


def error_response(file_name: str, **values: str) -> tuple[int, Any, str]:
    """(code, body, content type) of an error response file `status_<code>_*.json|txt`."""
    code = int(file_name.split("_")[1])
    if file_name.endswith(".txt"):  # the server's plain-text 404 for a path no API serves
        return code, _fill((RESPONSES / file_name).read_text(), **values), "text/plain; charset=utf-8"
    return code, response_json(file_name, **values), "application/json"


class FollowBody(io.RawIOBase):
    """The body of a `follow=true` log request: the log so far, then nothing until `ended()` (the container has
    finished), then end of stream; as a kubelet streams a running container's log."""

    def __init__(self, data: bytes, ended: Callable[[], bool], timeout: float = 30.0):
        self.data, self.ended, self.deadline = data, ended, time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.data:
            if self.ended() or time.monotonic() > self.deadline:
                return 0
            time.sleep(0.01)
        n = min(len(buffer), len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


class FakeApiServer:
    """Answers the client's HTTP requests; `stages` is the status sequence a created job goes through."""

    def __init__(self, stages: list[str], *, log_name: Optional[str] = "master_log_success.txt",
                 create_error: Optional[str] = None, write_outputs: bool = True,
                 on_request: Optional[Callable[[str, str], None]] = None, pod_list: Optional[str] = None,
                 worker_log_name: str = "worker_log_failed.txt", pods_while_created: bool = False):
        self.stages = list(stages)
        self.log_name = log_name
        self.worker_log_name = worker_log_name
        self.create_error = create_error
        self.write_outputs = write_outputs
        self.on_request = on_request
        self.pod_list = pod_list
        self.pods_while_created = pods_while_created  # pods exist (stuck) while the job says only Created
        self.jobs: dict[tuple[str, str], dict] = {}
        self.plurals: dict[tuple[str, str], str] = {}
        self.gets: dict[tuple[str, str], int] = {}
        self.deleted: list[tuple[str, str, dict]] = []
        self.requests: list[tuple[str, str, dict]] = []
        self.created: list[dict] = []
        self.own_pods: dict[tuple[str, str], dict] = {}  # (namespace, name) -> pod, for GET pods/<name>
        self.fail_gets = 0  # answer this many job GETs with 503 (an API server restarting)

    # -- urllib3.PoolManager interface used by kubernetes.client.rest.RESTClientObject -------------------
    def request(self, method, url, body=None, fields=None, preload_content=True, timeout=None, headers=None,
                **_):
        parsed = urlparse(url)
        query = dict(parse_qsl(parsed.query))
        query.update(dict(fields or []))
        path = unquote(parsed.path)
        self.requests.append((method, path, query))
        if self.on_request:
            self.on_request(method, path)
        status, payload, ctype = self.route(method, path, query, json.loads(body) if body else None)
        if isinstance(payload, FollowBody):
            return urllib3.HTTPResponse(body=payload, status=status, reason="OK", headers={"Content-Type": ctype},
                                        preload_content=preload_content)
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        # A file-like body, as from a socket: an empty log reads as b"" (a bytes body of b"" would read as None).
        return urllib3.HTTPResponse(body=io.BytesIO(data), status=status,
                                    reason={200: "OK", 201: "Created"}.get(status, "Error"),
                                    headers={"Content-Type": ctype}, preload_content=preload_content)

    # -- routing ---------------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body: Any):
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) >= 6 and parts[5] in STATUS_FILES:
            namespace = parts[4]
            name = parts[6] if len(parts) > 6 else None
            return self.jobs_api(parts[5], method, namespace, name, body, query)
        if parts[:2] == ["api", "v1"] and len(parts) >= 5 and parts[4] == "pods":
            namespace = parts[3]
            if len(parts) == 5 and method == "GET":
                return self.pods(namespace, query.get("labelSelector", ""))
            if len(parts) == 6 and method == "GET":
                pod = self.own_pods.get((namespace, parts[5]))
                if pod is None:
                    return 404, response_json("status_404_not_found.json", name=parts[5]), "application/json"
                return 200, pod, "application/json"
            if len(parts) == 7 and parts[6] == "log" and method == "GET":
                return self.pod_log(namespace, parts[5], query)
        return error_response("status_404_no_route.txt")

    def _stage(self, key) -> str:
        i = self.gets.get(key, 0)
        return self.stages[min(i, len(self.stages) - 1)]

    def _status(self, key) -> Optional[dict]:
        file = STATUS_FILES[self.plurals[key]][self._stage(key)]
        return None if file is None else response_json(file, name=key[1], namespace=key[0])

    def pytorchjobs(self, method, namespace, name, body, query):
        return self.jobs_api("pytorchjobs", method, namespace, name, body, query)

    def jobs_api(self, plural, method, namespace, name, body, query):
        if method == "POST":
            job_name = body["metadata"]["name"]
            if self.create_error:
                return error_response(self.create_error, name=job_name, namespace=namespace)
            if (namespace, job_name) in self.jobs:
                return 409, response_json("status_409_exists.json", name=job_name), "application/json"
            errors = crd_errors(body)
            if errors:
                return 422, response_json("status_422_invalid.json", name=job_name, field=errors[0].split(":")[0],
                                          detail="; ".join(errors).replace('"', "'")), "application/json"
            job = json.loads(json.dumps(body))
            job["metadata"].update({"uid": str(uuid.uuid4()), "resourceVersion": "918001", "generation": 1,
                                    "creationTimestamp": "2026-11-24T18:00:00Z"})
            self.jobs[(namespace, job_name)] = job
            self.plurals[(namespace, job_name)] = plural
            self.created.append(job)
            return 201, job, "application/json"
        key = (namespace, name)
        if key not in self.jobs:
            return 404, response_json("status_404_not_found.json", name=name or ""), "application/json"
        job = self.jobs[key]
        if method == "GET" and self.fail_gets > 0:
            self.fail_gets -= 1
            return 503, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": "the server is currently unable to handle the request",
                         "reason": "ServiceUnavailable", "code": 503}, "application/json"
        if method == "GET":
            stage = self._stage(key)
            status = self._status(key)
            self.gets[key] = self.gets.get(key, 0) + 1
            if status is None:
                job.pop("status", None)
            else:
                job["status"] = status
            if stage == "succeeded" and self.write_outputs:
                self.write_rank0_outputs(job)
            return 200, job, "application/json"
        if method == "DELETE":
            del self.jobs[key]
            self.deleted.append((namespace, name, {**query, **(body or {})}))
            job = {**job, "metadata": {**job["metadata"], "deletionTimestamp": "2026-11-24T18:21:00Z",
                                       "finalizers": ["foregroundDeletion"]}}
            return 200, job, "application/json"
        return 405, {"kind": "Status", "code": 405}, "application/json"

    def _job_for_selector(self, namespace: str, selector: str) -> Optional[str]:
        labels = dict(item.split("=", 1) for item in selector.split(",") if "=" in item)
        for plural, label in JOB_LABELS.items():
            name = labels.get(label)
            if (namespace, name) in self.jobs and self.plurals[(namespace, name)] == plural:
                return name
        return None

    def pods(self, namespace: str, selector: str):
        name = self._job_for_selector(namespace, selector)
        if name is None or self.gets.get((namespace, name), 0) == 0 or (
                self._stage((namespace, name)) == "created" and not self.pods_while_created):
            return 200, response_json("pod_list_empty.json"), "application/json"
        uid = self.jobs[(namespace, name)]["metadata"]["uid"]
        listing = response_json(self.pod_list or POD_LISTS[self.plurals[(namespace, name)]], name=name,
                                namespace=namespace, uid=uid)
        stage = self._stage((namespace, name))
        if self.pod_list is None and stage in ("succeeded", "failed"):  # rank 0's container has ended
            pod = listing["items"][0]
            pod["status"]["phase"] = "Succeeded" if stage == "succeeded" else "Failed"
            pod["status"]["containerStatuses"][0]["state"] = {"terminated": {
                "exitCode": 0 if stage == "succeeded" else 1, "reason": "Completed" if stage == "succeeded" else "Error",
                "startedAt": "2026-11-24T18:00:38Z", "finishedAt": "2026-11-24T18:20:11Z"}}
        return 200, listing, "application/json"

    def _finished(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        return key not in self.jobs or self._stage(key) in ("succeeded", "failed")

    def log_requests(self) -> list[dict]:
        return [q for m, p, q in self.requests if p.endswith("/log")]

    def pod_log(self, namespace: str, pod: str, query: dict):
        name = re.sub(r"-(master-0|worker-\d+|node-0-\d+-\w+)$", "", pod)
        if (namespace, name) not in self.jobs:
            return 404, response_json("status_404_not_found.json", name=pod), "application/json"
        if self.log_name is None:
            return 400, response_json("status_400_container_creating.json", name=name), "application/json"
        rank0 = pod.endswith("-master-0") or re.search(r"-node-0-0-\w+$", pod)
        text = (RESPONSES / (self.log_name if rank0 else self.worker_log_name)).read_text()
        if "tailLines" in query:
            text = "\n".join(text.splitlines()[-int(query["tailLines"]):]) + "\n"
        if query.get("timestamps") in ("true", "True", True):
            text = "".join(f"2026-11-24T18:00:{i:02d}.{i:09d}Z {line}\n" for i, line in enumerate(text.splitlines()))
        if query.get("follow") in ("true", "True", True) and not self._finished(namespace, name):
            # a followed log of a running container: what is there, then the stream stays open until it ends
            return 200, FollowBody(text.encode(), lambda: self._finished(namespace, name)), "text/plain"
        return 200, text, "text/plain"

    # -- what the trainer's rank 0 would leave behind ----------------------------------------------------------
    @staticmethod
    def container_command(job: dict) -> str:
        if job["kind"] == "TrainJob":
            return job["spec"]["trainer"]["command"][2]
        return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][2]

    @classmethod
    def write_rank0_outputs(cls, job: dict) -> None:
        line = next(line for line in cls.container_command(job).splitlines() if "torchrun" in line)
        words = shlex.split(line)
        args = {words[i][2:]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        pytorch_dir, mlflow_dir = Path(args["pytorch_model_folder"]), Path(args["mlflow_model_folder"])
        (pytorch_dir / "checkpoint-10").mkdir(parents=True, exist_ok=True)
        (pytorch_dir / "checkpoint-10" / "trainer_state.json").write_text("{}")
        (pytorch_dir / "config.json").write_text('{"model_type": "bert"}')
        (pytorch_dir / "model.safetensors").write_bytes(b"weights")
        (pytorch_dir / "metrics.json").write_text(json.dumps(
            {"best_checkpoint": str(pytorch_dir / "checkpoint-10"), "best_metric": 0.5,
             "validation_metrics": {"eval_f1": 0.5, "eval_loss": 0.25}, "test_metrics": {"test_f1": 0.4},
             "per_entity": {"person": {"precision": 0.5, "recall": 0.3, "f1": 0.375, "number": 8}},
             "train_runtime": 12.5}))
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        (mlflow_dir / "MLmodel").write_text("flavors:\n  transformers: {}\n")


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_clients(server: FakeApiServer):
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = "https://fake-apiserver.invalid:6443"
    api_client = client.ApiClient(configuration)
    api_client.rest_client.pool_manager = server
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


@pytest.fixture
def artifacts(tmp_path, tiny_preprocess_output, tiny_model_selector):
    """Input artifact folders (copies of the tiny preprocess output and model, which the launch checks as the trainer
    does), output artifact folders and a 'shared volume' folder."""
    import shutil

    pre = shutil.copytree(tiny_preprocess_output, tmp_path / "preprocess_output")
    sel = shutil.copytree(tiny_model_selector, tmp_path / "model_selector_output")
    shared = tmp_path / "shared"
    shared.mkdir()
    return {"preprocess_output": str(pre), "model_selector_output": str(sel),
            "pytorch_model_folder": str(tmp_path / "out" / "pytorch_model_folder"),
            "mlflow_model_folder": str(tmp_path / "out" / "mlflow_model_folder"),
            "shared": str(shared)}


def staged_inputs(artifacts: dict) -> list[str]:
    """The files a run stages from the input artifacts, as paths in the run folder (inputs/<artifact>/...)."""
    return sorted(f"inputs/{name}/{p.relative_to(artifacts[name]).as_posix()}"
                  for name in ("model_selector_output", "preprocess_output")
                  for p in Path(artifacts[name]).rglob("*") if p.is_file())


def make_configs(artifacts: dict, **values):
    """(LaunchConfig, FinetuneConfig, LaunchOptions) of a test launch: each keyword goes to the one that has it;
    the io folders come from `artifacts`."""
    import dataclasses

    from launcher.config import LaunchConfig
    from launcher.launch import LaunchOptions
    from trainer.config import FinetuneConfig

    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (LaunchConfig, FinetuneConfig, LaunchOptions)}
    io = {k: artifacts[k] for k in ("preprocess_output", "model_selector_output", "pytorch_model_folder",
                                    "mlflow_model_folder")}
    unknown = set(values) - set().union(*names.values())
    assert not unknown, f"no config has {unknown}"
    parts = {cls: {k: v for k, v in values.items() if k in names[cls]} for cls in names}
    return (LaunchConfig(**parts[LaunchConfig]), FinetuneConfig(**{**io, **parts[FinetuneConfig]}),
            LaunchOptions(**parts[LaunchOptions]))


def run_launch(custom, core, artifacts: dict, **values):
    """`launcher.launch.launch` of the configs `make_configs` builds."""
    from launcher.launch import launch

    config, finetune, options = make_configs(artifacts, **values)
    return launch(config, finetune, custom_api=custom, core_api=core, options=options)
