"""Launch / watch / collect / cleanup through the real kubernetes client against the fake API server (both backends)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest

from kube_fake import (FakeApiServer, FakeClock, artifacts, make_clients, make_configs, run_launch,  # noqa: F401
                       staged_inputs)
from launcher import Cancelled, JobFailed, JobTimeout, LaunchConfigError
from launcher.staging import RUNS_SUBDIR
from launcher.watch import PYTORCHJOB, TRAINJOB, JobState, Watcher, job_state, rank0_logs

NS = "kubeflow-user-example-com"
# The tests replay PyTorchJob responses unless they name backend="trainjob" (the default backend:
# test_the_default_backend_is_kubeflow_trainer_v2).
DEFAULTS = dict(backend="pytorchjob", num_train_epochs=2, learning_rate=3e-5, apply_deepspeed=True, deepspeed_preset="zero3",
                precision="16", num_nodes=2, gpus_per_node=1, image="registry.local/trainer-cuda:test", namespace=NS,
                shared_pvc_name="tokcls-shared", timeout_seconds=3600, poll_interval_seconds=30,
                cleanup_policy="on_success", run_id="run-1")


def launch(server: FakeApiServer, artifacts: dict, clock: FakeClock | None = None, **overrides):
    clock = clock or FakeClock()
    custom, core = make_clients(server)
    values = {**DEFAULTS, "shared_mount_path": artifacts["shared"], "clock": clock, "sleep": clock.sleep,
              "out": io.StringIO(), **overrides}
    return run_launch(custom, core, artifacts, **values)


def master_command(job: dict) -> str:
    return FakeApiServer.container_command(job)


def test_the_default_backend_is_kubeflow_trainer_v2(artifacts):
    """A TrainJob (trainer.kubeflow.org/v1alpha1): the current API, the only one of new Kubeflow installs."""
    server = FakeApiServer(["running", "succeeded"])
    clock = FakeClock()
    custom, core = make_clients(server)
    values = {k: v for k, v in DEFAULTS.items() if k != "backend"}
    result = run_launch(custom, core, artifacts, **values, shared_mount_path=artifacts["shared"], clock=clock,
                        sleep=clock.sleep, out=io.StringIO())
    (job,) = server.created
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert result.backend == "trainjob" and result.state == "Succeeded"


def test_success_stages_creates_watches_collects_and_deletes(artifacts):
    server = FakeApiServer(["created", "running", "running", "succeeded"])
    clock = FakeClock()
    out = io.StringIO()
    result = launch(server, artifacts, clock, out=out)
    assert result.state == "Succeeded" and result.deleted and result.run_id == "run-1"
    assert result.backend == "pytorchjob"
    # the job the server accepted (CRD-valid) points every io path at the shared run folder
    (job,) = server.created
    command = master_command(job)
    run_dir = Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1"
    assert f"--preprocess_output {run_dir}/inputs/preprocess_output" in command
    assert f"--pytorch_model_folder {run_dir}/outputs/pytorch_model_folder" in command
    assert "--deepspeed_preset zero3" in command and "--apply_deepspeed true" in command
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    # outputs copied from rank 0's folders into the output artifacts
    out_dir = Path(artifacts["pytorch_model_folder"])
    assert (out_dir / "model.safetensors").read_bytes() == b"weights"
    assert (out_dir / "checkpoint-10" / "trainer_state.json").exists()
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    # polled with the interval, deleted with foreground propagation, staged run folder removed
    assert clock.sleeps == [30, 30, 30]
    ((ns, name, options),) = server.deleted
    assert (ns, name) == (NS, result.job_name) and options.get("propagationPolicy") == "Foreground"
    assert not run_dir.exists()
    # the master's log was streamed, without its timestamps
    assert "{'eval_loss': 0.7712, 'eval_f1': 0.6104, 'epoch': 1.0}\n" in out.getvalue()
    assert "2026-11-24T18:00" not in out.getvalue()
    # the pods were found with the operator's labels
    selectors = [q.get("labelSelector") for m, p, q in server.requests if p.endswith("/pods")]
    assert f"training.kubeflow.org/job-name={name}" in selectors


def test_the_log_is_followed_once_not_reread_every_poll(artifacts, monkeypatch):
    """One follow=true stream prints every line once, however many polls (and looks at the pod) the job takes."""
    import time

    from launcher.watch import LogFollower

    monkeypatch.setattr(LogFollower, "RETRY_S", 0.02)  # the follower looks at the pod ~50 times a second

    class Clock(FakeClock):
        def sleep(self, seconds):  # 40 polls of 30 s, in 1.2 s of real time
            super().sleep(seconds)
            time.sleep(0.03)

    server = FakeApiServer(["created"] + ["running"] * 40 + ["succeeded"])
    out = io.StringIO()
    launch(server, artifacts, Clock(), out=out)
    logs = server.log_requests()
    assert 1 <= len(logs) <= 2, logs  # the stream, and at most one reopen when draining at the end
    assert all(str(q.get("follow")).lower() == "true" == str(q.get("timestamps")).lower() for q in logs)
    expected = (Path(__file__).parent / "responses" / "master_log_success.txt").read_text()
    assert out.getvalue() == expected  # every line exactly once, in order


def test_a_reopened_stream_skips_lines_already_printed(artifacts):
    from launcher.watch import LogFollower

    server = FakeApiServer(["succeeded"])  # the container has ended: each stream ends after the whole log
    custom, core = make_clients(server)
    server.jobs[(NS, "j")] = {"metadata": {"name": "j", "uid": "u"}, "kind": "PyTorchJob"}
    server.plurals[(NS, "j")] = "pytorchjobs"
    server.gets[(NS, "j")] = 1
    out = io.StringIO()
    follower = LogFollower(core, PYTORCHJOB, "j", NS, out, wall_clock=lambda: 1795543300.0)
    follower._stream("j-master-0")
    follower._stream("j-master-0")  # the same log again (a reopened stream from a little before the last line)
    expected = (Path(__file__).parent / "responses" / "master_log_success.txt").read_text()
    assert out.getvalue() == expected
    assert "sinceSeconds" in server.log_requests()[1]


def test_inputs_are_staged_before_the_job_is_created(artifacts):
    seen = {}

    def on_request(method, path):
        if method == "POST":
            run_dir = Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1"
            seen["staged"] = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())

    launch(FakeApiServer(["running", "succeeded"], on_request=on_request), artifacts)
    assert "inputs/preprocess_output/train.jsonl" in seen["staged"]
    assert seen["staged"] == staged_inputs(artifacts)


def test_failed_job_raises_with_reason_and_log_tail(artifacts):
    server = FakeApiServer(["created", "running", "failed"], log_name="master_log_failed.txt")
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts, cleanup_policy="on_success")
    err = info.value
    assert not isinstance(err, JobTimeout)
    assert err.reason == "PyTorchJobFailed"
    assert "is failed because 1 Master replica(s) failed" in err.message
    assert "torch.OutOfMemoryError: CUDA out of memory" in err.log_tail
    assert "ChildFailedError" in str(err)
    # on_success keeps a failed job (pods and logs stay for debugging) and the run folder (for resume)
    assert server.deleted == [] and len(server.jobs) == 1
    assert (Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "inputs").is_dir()
    # nothing reported as output
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_the_first_pod_to_fail_gives_the_tail_even_a_worker(artifacts):
    """The worker was OOM-killed at 18:05:02, the master failed after it at 18:05:29: the worker's log is shown."""
    server = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt",
                           pod_list="pod_list_failed_worker.json")
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts)
    err = info.value
    assert err.pod.startswith(f"pod {err.job_name}-worker-0, exit code 137 (the first of 2 to fail)")
    assert "DataLoader worker (pid 211) is killed by signal: Killed." in err.log_tail
    assert "CUDA out of memory" not in err.log_tail
    assert f"--- last lines of pod {err.job_name}-worker-0" in str(err)


def test_failed_job_is_deleted_with_cleanup_always(artifacts):
    server = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt")
    with pytest.raises(JobFailed):
        launch(server, artifacts, cleanup_policy="always")
    assert len(server.deleted) == 1 and server.jobs == {}


def test_cleanup_never_keeps_a_succeeded_job_and_its_folder(artifacts):
    server = FakeApiServer(["running", "succeeded"])
    result = launch(server, artifacts, cleanup_policy="never")
    assert result.state == "Succeeded" and not result.deleted
    assert server.deleted == [] and len(server.jobs) == 1
    assert (Path(result.run_dir) / "outputs" / "mlflow_model_folder" / "MLmodel").exists()
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()


@pytest.mark.parametrize("policy,deleted", [("always", 1), ("on_success", 1), ("never", 0)])
def test_timeout_raises_and_deletes_the_unfinished_job_unless_never(artifacts, policy, deleted):
    """on_success keeps a failed job to debug, never a running one nobody will collect."""
    server = FakeApiServer(["created", "running"])  # stays Running for ever
    clock = FakeClock()
    with pytest.raises(JobTimeout) as info:
        launch(server, artifacts, clock, timeout_seconds=100, poll_interval_seconds=30, cleanup_policy=policy)
    assert info.value.reason == "Timeout"
    assert "not finished after 100 s (last state: Running, PyTorchJobRunning" in info.value.message
    assert "best checkpoint" in info.value.log_tail  # the master's last lines come with it
    assert clock.now == pytest.approx(100)  # the last sleep is cut to the deadline
    assert len(server.deleted) == deleted
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_a_pod_that_cannot_start_fails_the_job_after_start_timeout_and_deletes_it(artifacts):
    """An image that cannot be pulled leaves a PyTorchJob at Created (no condition says more): the launcher read
    only the job and waited timeout_seconds (a day by default) while the other nodes held their GPUs."""
    server = FakeApiServer(["created"], pod_list="pod_list_stuck_image_pull.json", pods_while_created=True)
    clock = FakeClock()
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts, clock, timeout_seconds=86400, start_timeout_seconds=300, poll_interval_seconds=30)
    assert info.value.reason == "PodsNotStarting" and not isinstance(info.value, JobTimeout)
    assert info.value.message.startswith("pod tokcls-") and "container pytorch: ImagePullBackOff: Back-off pulling " \
        "image \"ghcr.io/kfp-token-classification/trainer-cuda:0.1.0\"; not started for 300 s" in info.value.message
    assert 300 <= clock.now <= 330  # first seen at the first poll, failed at the first poll 300 s later
    assert len(server.deleted) == 1  # an unfinished job is not kept (on_success keeps failed jobs only)


def test_stuck_pods_are_read_from_waiting_containers_and_the_scheduler():
    from types import SimpleNamespace as NS_

    from launcher.watch import stuck_pod

    def pod(name, containers=(), conditions=(), init=()):
        return NS_(metadata=NS_(name=name), status=NS_(container_statuses=list(containers),
                                                       init_container_statuses=list(init), conditions=list(conditions)))

    def waiting(reason, message=None):
        return NS_(name="pytorch", state=NS_(waiting=NS_(reason=reason, message=message)))

    running = NS_(name="pytorch", state=NS_(waiting=None, running=NS_()))
    assert stuck_pod([pod("a", [running]), pod("b", [waiting("ContainerCreating")])]) is None  # on its way
    assert stuck_pod([pod("a", [running]), pod("b", [waiting("CreateContainerConfigError",
                                                              'secret "s3-creds" not found')])]) == \
        'pod b, container pytorch: CreateContainerConfigError: secret "s3-creds" not found'
    unschedulable = NS_(type="PodScheduled", status="False", reason="Unschedulable",
                        message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    assert stuck_pod([pod("c", conditions=[unschedulable])]) == \
        "pod c cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    assert stuck_pod([pod("d", init=[waiting("ErrImagePull")])]) == "pod d, container pytorch: ErrImagePull"
    assert stuck_pod([NS_(metadata=NS_(name="e"), status=None)]) is None


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_image_pull_secrets_reach_the_pods(artifacts, backend):
    """A private trainer image: the pods pull it with the named Secrets (the spec had the field, no parameter set
    it: only a service account carrying the Secret could)."""
    server = FakeApiServer(["running", "succeeded"])
    launch(server, artifacts, backend=backend, image_pull_secrets="regcred, mirror-cred")
    (job,) = server.created
    assert json.dumps(job).count('"imagePullSecrets": [{"name": "regcred"}, {"name": "mirror-cred"}]') >= 1
    with pytest.raises(Exception, match="image pull Secret name 'Bad_Name' is not a valid Secret name"):
        launch(FakeApiServer(["succeeded"]), artifacts, backend=backend, image_pull_secrets="Bad_Name")


def test_succeeded_without_outputs_is_a_failure(artifacts):
    server = FakeApiServer(["running", "succeeded"], write_outputs=False)
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts)
    assert info.value.reason == "OutputsMissing"
    assert "MLmodel is missing" in info.value.message
    assert server.deleted == []  # on_success: not a success, so the job is kept


def test_restarting_is_not_terminal(artifacts):
    server = FakeApiServer(["running", "restarting", "running", "succeeded"])
    assert launch(server, artifacts).state == "Succeeded"
    assert server.gets[(NS, server.deleted[0][1])] == 4


@pytest.mark.parametrize("backend,error,text", [
    ("pytorchjob", "status_403_forbidden.json", "manifests/rbac.yaml"),
    ("pytorchjob", "status_404_no_route.txt", "Training Operator"),
    ("trainjob", "status_404_no_route.txt", "Kubeflow Trainer v2"),
    ("pytorchjob", "status_409_exists.json", "already exists"),
    ("trainjob", "status_400_strict_unknown_field.json", 'strict decoding error: unknown field "spec.runtimePatches"'),
])
@pytest.mark.parametrize("policy", ["on_success", "always"])
def test_create_errors_fail_with_a_hint(artifacts, backend, error, text, policy):
    server = FakeApiServer(["running"], create_error=error)
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts, backend=backend, cleanup_policy=policy)
    assert info.value.reason == "CreateFailed" and text in str(info.value)
    # no watching of a job that does not exist, and no delete: a 409's name is another run's job
    assert [m for m, _, _ in server.requests] == ["POST"]
    # created with strict field validation: a field the served CRD lacks fails the create, it is not pruned away
    assert server.requests[0][2].get("fieldValidation") == "Strict"


def test_api_server_rejects_an_invalid_job(artifacts, monkeypatch):
    """The fake validates against the CRD like the API server; a broken manifest gets a 422."""
    import launcher.launch as launch_module

    real = launch_module.build_pytorchjob

    def broken(spec):
        manifest = real(spec)
        manifest["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "1"
        return manifest

    monkeypatch.setattr(launch_module, "build_pytorchjob", broken)
    with pytest.raises(JobFailed) as info:
        launch(FakeApiServer(["running"]), artifacts)
    assert "422" in str(info.value) and info.value.reason == "CreateFailed"


def test_a_deepspeed_json_input_is_staged_and_passed_as_a_path(artifacts, tmp_path):
    server = FakeApiServer(["running", "succeeded"])
    ds = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    seen = {}

    def on_request(method, path):
        if method == "POST":
            seen["ds"] = json.loads((Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "inputs" /
                                     "deepspeed.json").read_text())

    server.on_request = on_request
    launch(server, artifacts, deepspeed=str(tmp_path / "ds.json"))
    command = master_command(server.created[0])
    # as the trainer reads it: ZeRO-3 gathers the model whole when it is saved (trainer.deepspeed_config)
    assert seen["ds"] == {**ds, "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}
    assert f"--deepspeed {artifacts['shared']}/{RUNS_SUBDIR}/run-1/inputs/deepspeed.json" in command
    assert "--apply_deepspeed true" in command


@pytest.mark.parametrize("overrides,message", [
    ({"cleanup_policy": "sometimes"}, "cleanup_policy"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"staging_uri": "s3://bucket/runs"}, "object-store staging"),
    ({"shared_pvc_name": ""}, "shared_pvc_name is required"),
    ({"run_id": "../escape"}, "run_id"),
    ({"preprocess_output": "/nonexistent"}, "preprocess_output"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"apply_deepspeed": True, "deepspeed": "/launcher/only/ds.json"}, "not found"),
    ({"num_nodes": 0}, "num_nodes"),
    ({"namespace": "Not_A_Namespace"}, "namespace"),
    ({"resources_json": '{"limits": {"memory": "lots"}}'}, "quantity"),
    ({"tolerations_json": '[{"operator": "Maybe"}]'}, "operator"),
    ({"secret_env_json": '{"HF_TOKEN": {"name": "Bad_Secret", "key": "token"}}'}, "not a valid Secret name"),
    ({"secret_env_json": '{"HF_TOKEN": "hf-token/token"}'}, "secret_env_json"),
    ({"env_json": '{"A": "1"}', "secret_env_json": '{"A": {"name": "s", "key": "k"}}'}, "both"),
    ({"backend": "trainjob", "trainjob_runtime_kind": "Nope"}, "trainjob_runtime_kind"),
    ({"trainjob_runtime": "mine"}, "backend=trainjob only"),
    ({"shared_mount_path": "/nonexistent/mount"}, "shared volume not mounted"),
])
def test_invalid_inputs_fail_before_any_side_effect(artifacts, overrides, message):
    from trainer.errors import ConfigError, InputError

    server = FakeApiServer(["running", "succeeded"])
    if "preprocess_output" in overrides:
        artifacts = {**artifacts, "preprocess_output": overrides.pop("preprocess_output")}
    # a missing deepspeed file is an input not found (check_io), the rest are bad parameters; exit 2 either way
    expected = InputError if "deepspeed" in overrides else ConfigError
    with pytest.raises(expected, match=message):
        launch(server, artifacts, **overrides)
    assert server.requests == []  # no API call
    assert list(Path(artifacts["shared"]).iterdir()) == []  # nothing staged


def _corrupt_row(folder: Path) -> None:
    lines = (folder / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["input_ids"][1] = 10_000
    lines[2] = json.dumps(row)
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("corrupt,message", [
    (lambda pre, sel: _corrupt_row(pre), "train.jsonl line 3: input id(s) [10000] outside the model's vocabulary"),
    (lambda pre, sel: (pre / "class_names.json").unlink(), "no label map in"),
    (lambda pre, sel: (sel / "model.safetensors").write_bytes(b"\xff" * 64), "model.safetensors is damaged"),
    (lambda pre, sel: (sel / "config.json").write_text('{"model_type": "bert",'), "config.json is not valid JSON"),
    (lambda pre, sel: (pre / "tokenizer.json").write_text('{"version": "1.0"}'), "cannot load the tokenizer"),
    (lambda pre, sel: (pre / "extra.jsonl").symlink_to("/etc/hostname"), "outside the input folder"),
], ids=["row-outside-the-vocabulary", "no-label-map", "damaged-weights", "config-not-json", "not-a-tokenizer",
        "link-out-of-the-input"])
def test_bad_data_fails_before_anything_is_staged_or_created(artifacts, corrupt, message):
    """The input folders are checked as the trainer checks them (trainer.validation), in this step, before the job
    exists: bad data is one error here, not a failed job."""
    from trainer.errors import InputError

    corrupt(Path(artifacts["preprocess_output"]), Path(artifacts["model_selector_output"]))
    server = FakeApiServer(["running", "succeeded"])
    with pytest.raises(InputError, match=re.escape(message)):
        launch(server, artifacts, backend="pytorchjob")
    assert server.requests == [] and server.created == []  # no API call, no job
    assert list(Path(artifacts["shared"]).iterdir()) == []  # nothing staged


def test_resume_reuses_the_run_folder(artifacts):
    """A failed run keeps its folder; the same run_id with resume_from_checkpoint finds the checkpoints there."""
    with pytest.raises(JobFailed):
        launch(FakeApiServer(["failed"], log_name="master_log_failed.txt"), artifacts)
    ckpt = Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "outputs" / "pytorch_model_folder" / "checkpoint-5"
    ckpt.mkdir()
    seen: list[bool] = []
    server = FakeApiServer(["running", "succeeded"], on_request=lambda m, p: (
        seen.append(ckpt.exists()) if m == "POST" else None))
    launch(server, artifacts, resume_from_checkpoint=True, num_train_epochs=1)
    assert seen == [True]
    assert "--resume_from_checkpoint true" in master_command(server.created[0])
    assert (Path(artifacts["pytorch_model_folder"]) / "checkpoint-5").is_dir()


def test_job_state_reads_conditions():
    assert job_state({}).phase == "Pending"
    assert job_state({"status": {"conditions": [
        {"type": "Created", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Running", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}]}}).phase == "Running"
    state = job_state({"status": {"conditions": [
        {"type": "Running", "status": "False"},
        {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "boom"}]}})
    assert state == JobState("Failed", "PyTorchJobFailed", "boom") and state.finished


def test_trainjob_state_reads_complete_failed_and_running_jobs():
    from kube_fake import response_json

    assert job_state({}, TRAINJOB).phase == "Pending"
    assert job_state({"status": response_json("job_status_trainjob_running.json")}, TRAINJOB).phase == "Running"
    done = job_state({"status": response_json("job_status_trainjob_complete.json")}, TRAINJOB)
    assert done == JobState("Succeeded", "AllJobsCompleted", "jobset completed successfully") and done.finished
    assert job_state({"status": response_json("job_status_trainjob_failed.json")}, TRAINJOB).phase == "Failed"
    # a PyTorchJob's "Succeeded" condition means nothing to a TrainJob, and the other way round
    assert not job_state({"status": response_json("job_status_succeeded.json", name="x", namespace="y")},
                         TRAINJOB).finished
    assert not job_state({"status": response_json("job_status_trainjob_complete.json")}).finished


def test_rank0_logs_is_empty_while_the_container_is_creating(artifacts):
    server = FakeApiServer(["running"], log_name=None)
    custom, core = make_clients(server)
    server.jobs[(NS, "j")] = {"metadata": {"name": "j", "uid": "u"}}
    server.plurals[(NS, "j")] = "pytorchjobs"
    server.gets[(NS, "j")] = 1
    assert rank0_logs(core, PYTORCHJOB, "j", NS) == ""  # 400 ContainerCreating is not an error


def test_watcher_prints_each_line_once(artifacts):
    server = FakeApiServer(["running", "running", "succeeded"])
    custom, core = make_clients(server)
    server.jobs[(NS, "j")] = {"metadata": {"name": "j", "uid": "u"}, "spec": {}}
    server.plurals[(NS, "j")] = "pytorchjobs"
    out = io.StringIO()
    clock = FakeClock()
    server.write_outputs = False
    watcher = Watcher(custom, core, PYTORCHJOB, "j", NS, timeout_s=600, poll_interval_s=10, out=out, clock=clock,
                      sleep=clock.sleep)
    state, _ = watcher.wait()
    assert state.phase == "Succeeded"
    assert out.getvalue().count("best checkpoint") == 1


def _rbac_rules() -> set[tuple[str, str, str]]:
    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).resolve().parents[2] / "manifests" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"][0]["kind"] == "ServiceAccount"
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def _needed(requests) -> set[tuple[str, str, str]]:
    """The RBAC (group, resource, verb) of each HTTP request the launcher made."""
    needed = set()
    for method, path, query in requests:
        parts = path.strip("/").split("/")
        if parts[0] == "apis":
            group, resource, named = parts[1], parts[5], len(parts) > 6
        else:
            group, resource, named = "", parts[4] + ("/log" if parts[-1] == "log" else ""), len(parts) > 5
        verb = {"POST": "create", "DELETE": "delete"}.get(method) or (
            "watch" if query.get("watch") else ("get" if named else "list"))
        needed.add((group, resource, verb))
    return needed


def test_rbac_role_is_exactly_what_the_launcher_calls(artifacts, monkeypatch):
    """Every verb the Role grants is used by some launch path, and every call of every path is granted."""
    rules = _rbac_rules()
    calls = set()
    for backend in ("pytorchjob", "trainjob"):
        ok = FakeApiServer(["created", "running", "succeeded"])
        launch(ok, artifacts, backend=backend, run_id=f"ok-{backend}")
        calls |= _needed(ok.requests)
        bad = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt")
        with pytest.raises(JobFailed):
            launch(bad, artifacts, cleanup_policy="always", run_id=f"bad-{backend}", backend=backend)
        calls |= _needed(bad.requests)
    # in a cluster without KFP's pod env, the launcher reads its own pod (for the ownerReference)
    sa_dir = Path(artifacts["shared"]).parent / "sa"
    sa_dir.mkdir()
    (sa_dir / "namespace").write_text(NS)
    monkeypatch.setattr("launcher.cancel.SA_NAMESPACE_FILE", str(sa_dir / "namespace"))
    monkeypatch.setenv("HOSTNAME", "step-pod")
    own = FakeApiServer(["succeeded"])
    own.own_pods[(NS, "step-pod")] = {"metadata": {"name": "step-pod", "uid": "1234", "namespace": NS}}
    launch(own, artifacts, run_id="own")
    calls |= _needed(own.requests)
    assert calls == rules, (calls - rules, rules - calls)
    assert {r for g, r, v in rules} == {"pytorchjobs", "trainjobs", "pods", "pods/log"}
    assert not any(v in ("create", "delete", "update", "patch") for g, r, v in rules if g == "")


def test_transient_api_errors_are_retried(artifacts):
    server = FakeApiServer(["running", "succeeded"])
    server.fail_gets = 2
    assert launch(server, artifacts).state == "Succeeded"


@pytest.mark.parametrize("policy,deleted", [("always", 1), ("on_success", 1), ("never", 0)])
def test_persistent_api_errors_fail_and_stop_the_job_unless_never(artifacts, policy, deleted):
    server = FakeApiServer(["running"])
    server.fail_gets = 100
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts, cleanup_policy=policy)
    assert info.value.reason == "ApiError" and "503" in info.value.message
    assert len(server.deleted) == deleted


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_the_job_carries_the_timeout_as_its_own_deadline(artifacts, backend):
    """Should the launcher step die, the cluster still ends the job a little after the launcher would have."""
    from launcher.launch import JOB_DEADLINE_GRACE_SECONDS

    server = FakeApiServer(["succeeded"])
    launch(server, artifacts, backend=backend, timeout_seconds=5000)
    (job,) = server.created
    spec = job["spec"]["runPolicy"] if backend == "pytorchjob" else job["spec"]
    assert spec["activeDeadlineSeconds"] == 5000 + JOB_DEADLINE_GRACE_SECONDS
    assert 0 < JOB_DEADLINE_GRACE_SECONDS <= 600


def test_a_job_deleted_under_us_fails(artifacts):
    server = FakeApiServer(["created", "running"])
    original = server.route

    def route(method, path, query, body):
        if method == "GET" and server.gets and "pytorchjobs/" in path:
            server.jobs.clear()  # someone deleted it after the first poll
        return original(method, path, query, body)

    server.route = route
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts)
    assert info.value.reason == "JobDeleted"


@pytest.mark.parametrize("gpus,deepspeed,expected", [(0, False, "true"), (0, True, None), (1, False, None)])
def test_cpu_ddp_pods_tell_accelerate_to_use_the_cpu(artifacts, gpus, deepspeed, expected):
    server = FakeApiServer(["succeeded"])
    launch(server, artifacts, gpus_per_node=gpus, apply_deepspeed=deepspeed)
    container = server.created[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("ACCELERATE_USE_CPU") == expected


# ---- Kubeflow Trainer v2 -------------------------------------------------------------------------------------------

def test_trainjob_backend_runs_the_same_command_and_collects(artifacts):
    server = FakeApiServer(["created", "running", "succeeded"])
    out = io.StringIO()
    result = launch(server, artifacts, backend="trainjob", num_nodes=3, gpus_per_node=4, out=out)
    assert result.backend == "trainjob" and result.state == "Succeeded" and result.deleted
    (job,) = server.created
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert "--nnodes 3 --nproc_per_node 4" in trainer["command"][2]
    assert "--deepspeed_preset zero3" in trainer["command"][2]
    # the same torchrun line as the PyTorchJob backend
    pytorchjob = FakeApiServer(["succeeded"])
    launch(pytorchjob, artifacts, num_nodes=3, gpus_per_node=4, run_id="run-2")
    assert master_command(pytorchjob.created[0]).split("exec ", 1)[1].replace("run-2", "run-1") \
        == trainer["command"][2].split("exec ", 1)[1]
    # rank 0 (Job completion index 0) was followed, its outputs collected, the TrainJob deleted
    assert "best checkpoint" in out.getvalue()
    assert {q.get("labelSelector") for m, p, q in server.requests if p.endswith("/pods")} == {
        f"jobset.sigs.k8s.io/jobset-name={result.job_name}"}
    assert any(p.endswith(f"/pods/{result.job_name}-node-0-0-x7k2p/log") for m, p, q in server.requests)
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    ((_, name, options),) = server.deleted
    assert name == result.job_name and options.get("propagationPolicy") == "Foreground"
    assert any("/apis/trainer.kubeflow.org/v1alpha1/namespaces/" in p for m, p, q in server.requests if m == "DELETE")


def test_a_failed_trainjob_fails_the_launch_with_its_reason(artifacts):
    server = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt")
    with pytest.raises(JobFailed) as info:
        launch(server, artifacts, backend="trainjob")
    err = info.value
    assert err.kind == "TrainJob" and err.reason == "FailedJobs"
    assert str(err).startswith(f"TrainJob {err.job_name} failed: FailedJobs: jobset failed")
    assert "CUDA out of memory" in err.log_tail  # no container status in this listing: node 0's log


# ---- secrets, owner reference, cancellation ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_secrets_reach_the_pods_only_as_secret_key_refs(artifacts, backend):
    server = FakeApiServer(["succeeded"])
    launch(server, artifacts, backend=backend, env_json='{"NCCL_DEBUG": "INFO"}',
           secret_env_json='{"HF_TOKEN": {"name": "hf-token", "key": "token"}, '
                           '"MLFLOW_TRACKING_PASSWORD": {"name": "mlflow", "key": "password"}}')
    job = server.created[0]
    env = (job["spec"]["trainer"]["env"] if backend == "trainjob"
           else job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"])
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    assert {"name": "MLFLOW_TRACKING_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": "password"}}} in env
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in env
    assert "hf-token" not in json.dumps([e for e in env if "value" in e])


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_the_job_is_owned_by_the_kfp_step_pod(artifacts, backend, monkeypatch):
    monkeypatch.setenv("KFP_POD_NAME", "pipeline-abc-system-container-impl-12345")
    monkeypatch.setenv("KFP_POD_UID", "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b")
    monkeypatch.setenv("KFP_NAMESPACE", NS)
    server = FakeApiServer(["succeeded"])
    launch(server, artifacts, backend=backend)
    assert server.created[0]["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Pod", "name": "pipeline-abc-system-container-impl-12345",
        "uid": "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"}]
    # a job in another namespace cannot be owned by the step's pod
    other = FakeApiServer(["succeeded"])
    launch(other, artifacts, backend=backend, namespace="other-team", run_id="run-2")
    assert "ownerReferences" not in other.created[0]["metadata"]


@pytest.mark.parametrize("policy", ["on_success", "never"])
def test_sigterm_deletes_the_job_whatever_the_policy(artifacts, policy):
    """What a run terminated in the KFP UI does to this process: the job goes, the staged run stays (resume)."""
    server = FakeApiServer(["created"] + ["running"] * 1000)

    class Clock(FakeClock):
        def sleep(self, seconds):
            super().sleep(seconds)
            if len(self.sleeps) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    clock = Clock()
    with pytest.raises(Cancelled) as info:
        launch(server, artifacts, clock, cleanup_policy=policy)
    assert info.value.exit_code == 143
    assert len(server.deleted) == 1 and server.jobs == {}
    assert (Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "inputs").is_dir()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_sigterm_while_staging_creates_no_job(artifacts, monkeypatch):
    import launcher.staging as staging

    real = staging.copy_tree_atomic

    def slow_copy(src, dst):
        os.kill(os.getpid(), signal.SIGTERM)
        real(src, dst)

    monkeypatch.setattr(staging, "copy_tree_atomic", slow_copy)
    server = FakeApiServer(["running"])
    with pytest.raises(Cancelled):
        launch(server, artifacts)
    assert server.requests == []


def test_signals_outside_the_main_thread_are_left_alone(artifacts):
    errors = []

    def worker():
        try:
            launch(FakeApiServer(["succeeded"]), artifacts)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert errors == []


def test_make_configs_splits_the_values():
    config, finetune, options = make_configs(
        {"preprocess_output": "/p", "model_selector_output": "/m", "pytorch_model_folder": "/o",
         "mlflow_model_folder": "/f"}, num_nodes=3, lora_r=4, job_name_prefix="x")
    assert (config.num_nodes, finetune.lora_r, options.job_name_prefix) == (3, 4, "x")
    with pytest.raises(LaunchConfigError.__mro__[1]):  # ConfigError
        make_configs({"preprocess_output": "/p", "model_selector_output": "/m", "pytorch_model_folder": "/o",
                      "mlflow_model_folder": "/f"}, backend="mpijob")


def test_a_secret_passed_as_plain_env_gets_a_warning(artifacts, caplog):
    server = FakeApiServer(["succeeded"])
    with caplog.at_level("WARNING", logger="launcher.launch"):
        launch(server, artifacts, env_json='{"HF_TOKEN": "hf_abc", "NCCL_DEBUG": "INFO"}')
    (record,) = [r for r in caplog.records if "secret_env_json" in r.getMessage()]
    assert "['HF_TOKEN']" in record.getMessage() and "NCCL_DEBUG" not in record.getMessage()
