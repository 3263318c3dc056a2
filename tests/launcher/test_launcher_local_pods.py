"""End to end on one machine: the fake operator runs the job's real pod commands as local processes.

`run_pytorchjob` stages the tiny synthetic task, creates the PyTorchJob; the fake API server then plays
the Training Operator: for the Master and each Worker it runs the container's own command line
(`/bin/sh -c "exec torchrun ... -m trainer.cli ..."`) with the container's env plus the variables the
operator injects (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK),
reports Running/Succeeded/Failed from the processes' exit codes and serves the master's output as its
log. So a real 2-node torchrun rendezvous trains the real trainer (CPU, gloo) and the launcher collects
rank 0's outputs. Slow (two training processes): marked `slow`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from kube_fake import FakeApiServer, make_clients, response_json
from launcher import PyTorchJobFailed, run_pytorchjob

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

    def pytorchjobs(self, method, namespace, name, body, query):
        status, payload, ctype = super().pytorchjobs(method, namespace, name, body, query)
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
        replicas = job["spec"]["pytorchReplicaSpecs"]
        total = sum(r["replicas"] for r in replicas.values())
        nproc = int(job["spec"]["nprocPerNode"])
        port = _free_port()
        self.procs[name] = []
        pods = [("Master", 0)] + [("Worker", i) for i in range(replicas.get("Worker", {}).get("replicas", 0))]
        for rtype, index in pods:
            container = replicas[rtype]["template"]["spec"]["containers"][0]
            rank = index + (1 if rtype == "Worker" else 0)
            env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]},
                   "PYTHONUNBUFFERED": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "WORLD_SIZE": str(total * nproc), "RANK": str(rank), "PET_NPROC_PER_NODE": str(nproc),
                   "PET_NODE_RANK": str(rank), "PET_NNODES": str(total),
                   "HF_HOME": str(self.log_dir / "hf-home"), "TORCH_EXTENSIONS_DIR": str(self.log_dir / "ext"),
                   "TRITON_CACHE_DIR": str(self.log_dir / "triton")}
            log = open(self.log_dir / f"{name}-{rtype.lower()}-{index}.log", "w")
            self.procs[name].append(subprocess.Popen(container["command"], env=env, stdout=log,
                                                     stderr=subprocess.STDOUT, cwd=self.log_dir))

    def status(self, name: str, namespace: str) -> dict:
        codes = [p.poll() for p in self.procs[name]]
        if any(c not in (None, 0) for c in codes):
            stage = "failed"
        elif all(c == 0 for c in codes):
            stage = "succeeded"
        else:
            stage = "running"
        return response_json(f"job_status_{stage}.json", name=name, namespace=namespace)

    def pod_log(self, namespace, pod, query):
        name = pod.rsplit("-master-", 1)[0]
        path = self.log_dir / f"{name}-master-0.log"
        text = path.read_text() if path.exists() else ""
        if "tailLines" in query:
            text = "\n".join(text.splitlines()[-int(query["tailLines"]):]) + "\n"
        return 200, text, "text/plain"


def _launch(tmp_path, preprocess_output, model_selector_output, finetune_args, **overrides):
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    operator = LocalOperator(tmp_path)
    custom, core = make_clients(operator)
    kwargs = dict(
        preprocess_output=str(preprocess_output), model_selector_output=str(model_selector_output),
        pytorch_model_folder=str(tmp_path / "out" / "pytorch_model_folder"),
        mlflow_model_folder=str(tmp_path / "out" / "mlflow_model_folder"),
        finetune_args=finetune_args, num_nodes=2, gpus_per_node=0, procs_per_node=1,
        image="local", namespace="local", shared_pvc_name="local-shared", shared_mount_path=str(shared),
        timeout_s=600, poll_interval_s=1, cleanup_policy="always", run_id="e2e",
        custom_api=custom, core_api=core)
    kwargs.update(overrides)
    try:
        return run_pytorchjob(**kwargs), operator
    finally:
        for procs in operator.procs.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()


def test_two_node_job_trains_and_outputs_are_collected(tmp_path, tiny_preprocess_output, tiny_model_selector,
                                                       capsys):
    args = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
            "learning_rate": 5e-3, "apply_deepspeed": "false", "dataloader_num_workers": 0}
    result, operator = _launch(tmp_path, tiny_preprocess_output, tiny_model_selector, args)
    assert result.state == "Succeeded" and result.deleted
    out = Path(tmp_path / "out" / "pytorch_model_folder")
    assert (out / "config.json").exists()
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
    assert (tmp_path / "out" / "mlflow_model_folder" / "MLmodel").exists()
    worker_log = (tmp_path / f"{result.job_name}-worker-0.log").read_text()
    master_log = (tmp_path / f"{result.job_name}-master-0.log").read_text()
    assert "Traceback" not in worker_log and "Traceback" not in master_log
    # both "pods" joined one 2-process group, and the HF Trainer treated it as distributed (one writer)
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in master_log + worker_log
    assert "best model:" in master_log and "best model:" not in worker_log
    printed = capsys.readouterr().out
    assert master_log.strip().splitlines()[-1] in printed  # the master's log was echoed


def test_a_failing_trainer_fails_the_launch_with_its_log(tmp_path, tiny_preprocess_output, tiny_model_selector):
    # An input the trainer rejects at run time (the launcher only checks that the folder exists).
    bad_selector = tmp_path / "bad_selector"
    bad_selector.mkdir()
    (bad_selector / "README").write_text("not a model")
    with pytest.raises(PyTorchJobFailed) as info:
        _launch(tmp_path, tiny_preprocess_output, bad_selector, {"num_train_epochs": 1, "apply_deepspeed": "false"})
    assert info.value.reason == "PyTorchJobFailed"
    assert "error" in info.value.log_tail.lower()
