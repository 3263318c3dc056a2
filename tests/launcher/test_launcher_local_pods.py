"""End to end on one machine: the fake operator runs the job's real pod commands as local processes.

`launch` stages the tiny synthetic task and creates the job; the fake API server then plays the operator:
- PyTorchJob (Training Operator v1): for the Master and each Worker it runs the container's own command line
  (`/bin/sh -c "exec torchrun ... -m trainer.cli ..."`) with the container's env plus the variables the operator
  injects (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK);
- TrainJob (Kubeflow Trainer v2): for each node it runs `spec.trainer.command` with `spec.trainer.env` plus what the
  Trainer's torch plugin injects (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK = the Job completion index,
  PET_MASTER_ADDR, PET_MASTER_PORT);
and reports Running/Succeeded/Failed from the processes' exit codes and serves rank 0's output as its log. So a
real 2-node torchrun rendezvous trains the real trainer (CPU, gloo) and the launcher collects rank 0's outputs.
Slow (two training processes per job): marked `slow`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from kube_fake import STATUS_FILES, FakeApiServer, make_clients, response_json, run_launch
from launcher import JobFailed

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalOperator(FakeApiServer):
    """Runs each replica's container command locally on create; job status follows the processes."""

    def __init__(self, log_dir: Path):
        super().__init__(["running"], write_outputs=False)
        self.log_dir = log_dir
        self.procs: dict[str, list[subprocess.Popen]] = {}

    def jobs_api(self, plural, method, namespace, name, body, query):
        status, payload, ctype = super().jobs_api(plural, method, namespace, name, body, query)
        if method == "POST" and status == 201:
            self.start(payload)
        if method == "GET" and status == 200:
            payload["status"] = self.status(name, namespace)
        if method == "DELETE":
            for proc in self.procs.get(name, []):
                if proc.poll() is None:
                    proc.kill()
        return status, payload, ctype

    def start(self, job: dict) -> None:
        name = job["metadata"]["name"]
        port = _free_port()
        self.procs[name] = []
        if job["kind"] == "TrainJob":  # what Trainer v2's torch plugin gives the `node` container of each node
            trainer = job["spec"]["trainer"]
            nodes, nproc = trainer["numNodes"], trainer["numProcPerNode"]
            pods = [(f"node-0-{i}", trainer["command"], trainer["env"],
                     {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(nproc), "PET_NODE_RANK": str(i),
                      "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}) for i in range(nodes)]
        else:  # what the Training Operator gives the `pytorch` container of the Master and each Worker
            replicas = job["spec"]["pytorchReplicaSpecs"]
            total = sum(r["replicas"] for r in replicas.values())
            nproc = int(job["spec"]["nprocPerNode"])
            roles = [("Master", 0)] + [("Worker", i) for i in range(replicas.get("Worker", {}).get("replicas", 0))]
            pods = []
            for rtype, index in roles:
                container = replicas[rtype]["template"]["spec"]["containers"][0]
                rank = index + (1 if rtype == "Worker" else 0)
                pods.append((f"{rtype.lower()}-{index}", container["command"], container["env"],
                             {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(total * nproc),
                              "RANK": str(rank), "PET_NPROC_PER_NODE": str(nproc), "PET_NODE_RANK": str(rank),
                              "PET_NNODES": str(total)}))
        for pod, command, env_list, injected in pods:
            env = {**os.environ, **{e["name"]: e["value"] for e in env_list}, **injected, "PYTHONUNBUFFERED": "0",
                   "HF_HOME": str(self.log_dir / "hf-home"), "TORCH_EXTENSIONS_DIR": str(self.log_dir / "ext"),
                   "TRITON_CACHE_DIR": str(self.log_dir / "triton")}
            log = open(self.log_dir / f"{name}-{pod}.log", "w")
            self.procs[name].append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                     cwd=self.log_dir))

    def status(self, name: str, namespace: str) -> dict:
        codes = [p.poll() for p in self.procs[name]]
        if any(c not in (None, 0) for c in codes):
            stage = "failed"
        elif all(c == 0 for c in codes):
            stage = "succeeded"
        else:
            stage = "running"
        return response_json(STATUS_FILES[self.plurals[(namespace, name)]][stage], name=name, namespace=namespace)

    def pod_log(self, namespace, pod, query):
        name = pod.rsplit("-master-", 1)[0].rsplit("-node-0-", 1)[0]
        rank0 = self.log_dir / f"{name}-master-0.log"
        path = rank0 if rank0.exists() else self.log_dir / f"{name}-node-0-0.log"
        text = path.read_text() if path.exists() else ""
        if "tailLines" in query:
            text = "\n".join(text.splitlines()[-int(query["tailLines"]):]) + "\n"
        return 200, text, "text/plain"


def _launch(tmp_path, preprocess_output, model_selector_output, **values):
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    operator = LocalOperator(tmp_path)
    custom, core = make_clients(operator)
    artifacts = {"preprocess_output": str(preprocess_output), "model_selector_output": str(model_selector_output),
                 "pytorch_model_folder": str(tmp_path / "out" / "pytorch_model_folder"),
                 "mlflow_model_folder": str(tmp_path / "out" / "mlflow_model_folder")}
    values = {"num_nodes": 2, "gpus_per_node": 0, "procs_per_node": 1, "image": "local", "namespace": "local",
              "shared_pvc_name": "local-shared", "shared_mount_path": str(shared), "timeout_seconds": 600,
              "poll_interval_seconds": 1, "cleanup_policy": "always", "run_id": "e2e", **values}
    try:
        return run_launch(custom, core, artifacts, **values), operator
    finally:
        for procs in operator.procs.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()


@pytest.mark.parametrize("backend,rank0,rank1", [("pytorchjob", "master-0", "worker-0"),
                                                   ("trainjob", "node-0-0", "node-0-1")])
def test_two_node_job_trains_and_outputs_are_collected(tmp_path, tiny_preprocess_output, tiny_model_selector,
                                                       capsys, backend, rank0, rank1):
    args = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
            "learning_rate": 5e-3, "apply_deepspeed": False, "dataloader_num_workers": 0}
    result, operator = _launch(tmp_path, tiny_preprocess_output, tiny_model_selector, backend=backend, **args)
    assert result.state == "Succeeded" and result.deleted and result.backend == backend
    out = Path(tmp_path / "out" / "pytorch_model_folder")
    assert (out / "config.json").exists()
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
    assert (tmp_path / "out" / "mlflow_model_folder" / "MLmodel").exists()
    worker_log = (tmp_path / f"{result.job_name}-{rank1}.log").read_text()
    master_log = (tmp_path / f"{result.job_name}-{rank0}.log").read_text()
    assert "Traceback" not in worker_log and "Traceback" not in master_log
    # both "pods" joined one 2-process group, and the HF Trainer treated it as distributed (one writer)
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in master_log + worker_log
    assert "best model:" in master_log and "best model:" not in worker_log
    printed = capsys.readouterr().out
    assert master_log.strip().splitlines()[-1] in printed  # rank 0's log was followed


def test_a_failing_trainer_fails_the_launch_with_its_log(tmp_path, tiny_preprocess_output, tiny_model_selector):
    # What only the pods can reject: a DeepSpeed JSON that forces fp16 on pods without a GPU (the launcher checks the
    # input folders; checks against the pods' hardware run in the pods).
    (tmp_path / "ds.json").write_text('{"fp16": {"enabled": true}}')
    with pytest.raises(JobFailed) as info:
        _launch(tmp_path, tiny_preprocess_output, tiny_model_selector, backend="pytorchjob", num_train_epochs=1,
                apply_deepspeed=True, deepspeed=str(tmp_path / "ds.json"))
    assert info.value.reason == "PyTorchJobFailed"
    assert "forces fp16, which CPUs do not train in" in info.value.log_tail
