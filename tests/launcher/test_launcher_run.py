"""Launch / watch / collect / cleanup through the real kubernetes client against the fake API server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kube_fake import FakeApiServer, FakeClock, artifacts, make_clients  # noqa: F401 (fixture)
from launcher import LaunchConfigError, PyTorchJobFailed, PyTorchJobTimeout, run_pytorchjob
from launcher.staging import RUNS_SUBDIR
from launcher.watch import JobState, job_state, master_logs

NS = "kubeflow-user-example-com"


def launch(server: FakeApiServer, artifacts: dict, clock: FakeClock | None = None, **overrides):
    clock = clock or FakeClock()
    custom, core = make_clients(server)
    kwargs = dict(
        preprocess_output=artifacts["preprocess_output"], model_selector_output=artifacts["model_selector_output"],
        pytorch_model_folder=artifacts["pytorch_model_folder"], mlflow_model_folder=artifacts["mlflow_model_folder"],
        finetune_args={"num_train_epochs": 2, "learning_rate": 3e-5, "apply_deepspeed": "true",
                       "deepspeed": "zero3", "precision": "16"},
        num_nodes=2, gpus_per_node=1, image="registry.local/trainer-cuda:test", namespace=NS,
        shared_pvc_name="tokcls-shared", shared_mount_path=artifacts["shared"], timeout_s=3600,
        poll_interval_s=30, cleanup_policy="on_success", run_id="run-1",
        custom_api=custom, core_api=core, clock=clock, sleep=clock.sleep)
    kwargs.update(overrides)
    return run_pytorchjob(**kwargs)


def test_success_stages_creates_watches_collects_and_deletes(artifacts, capsys):
    server = FakeApiServer(["created", "running", "running", "succeeded"])
    clock = FakeClock()
    result = launch(server, artifacts, clock)
    assert result.state == "Succeeded" and result.deleted and result.run_id == "run-1"
    # the job the server accepted (CRD-valid) points every io path at the shared run folder
    (job,) = server.created
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][2]
    run_dir = Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1"
    assert f"--preprocess_output {run_dir}/inputs/preprocess_output" in command
    assert f"--pytorch_model_folder {run_dir}/outputs/pytorch_model_folder" in command
    assert "--deepspeed zero3" in command and "--apply_deepspeed true" in command
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    # outputs copied from rank 0's folders into the output artifacts
    out = Path(artifacts["pytorch_model_folder"])
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert (out / "checkpoint-10" / "trainer_state.json").exists()
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    # polled with the interval, deleted with foreground propagation, staged run folder removed
    assert clock.sleeps == [30, 30, 30]
    ((ns, name, options),) = server.deleted
    assert (ns, name) == (NS, result.job_name) and options.get("propagationPolicy") == "Foreground"
    assert not run_dir.exists()
    # the master's log was echoed
    assert "best checkpoint: eval_loss=0.7712" in capsys.readouterr().out
    # the pods were found with the operator's labels
    selectors = [q.get("labelSelector") for m, p, q in server.requests if p.endswith("/pods")]
    assert f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master" in selectors


def test_inputs_are_staged_before_the_job_is_created(artifacts):
    seen = {}

    def on_request(method, path):
        if method == "POST":
            run_dir = Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1"
            seen["staged"] = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())

    launch(FakeApiServer(["running", "succeeded"], on_request=on_request), artifacts)
    assert seen["staged"] == ["inputs/model_selector_output/config.json",
                              "inputs/model_selector_output/model_selector_args.json",
                              "inputs/preprocess_output/class_names.json",
                              "inputs/preprocess_output/train/data.arrow"]


def test_failed_job_raises_with_reason_and_log_tail(artifacts):
    server = FakeApiServer(["created", "running", "failed"], log_name="master_log_failed.txt")
    with pytest.raises(PyTorchJobFailed) as info:
        launch(server, artifacts, cleanup_policy="on_success")
    err = info.value
    assert not isinstance(err, PyTorchJobTimeout)
    assert err.reason == "PyTorchJobFailed"
    assert "is failed because 1 Master replica(s) failed" in err.message
    assert "torch.OutOfMemoryError: CUDA out of memory" in err.log_tail
    assert "ChildFailedError" in str(err)
    # on_success keeps a failed job (pods and logs stay for debugging) and the run folder (for resume)
    assert server.deleted == [] and len(server.jobs) == 1
    assert (Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "inputs").is_dir()
    # nothing reported as output
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_failed_job_is_deleted_with_cleanup_always(artifacts):
    server = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt")
    with pytest.raises(PyTorchJobFailed):
        launch(server, artifacts, cleanup_policy="always")
    assert len(server.deleted) == 1 and server.jobs == {}


def test_cleanup_never_keeps_a_succeeded_job_and_its_folder(artifacts):
    server = FakeApiServer(["running", "succeeded"])
    result = launch(server, artifacts, cleanup_policy="never")
    assert result.state == "Succeeded" and not result.deleted
    assert server.deleted == [] and len(server.jobs) == 1
    assert (Path(result.run_dir) / "outputs" / "mlflow_model_folder" / "MLmodel").exists()
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()


@pytest.mark.parametrize("policy,deleted", [("always", 1), ("on_success", 0), ("never", 0)])
def test_timeout_raises_and_deletes_per_policy(artifacts, policy, deleted):
    server = FakeApiServer(["created", "running"])  # stays Running for ever
    clock = FakeClock()
    with pytest.raises(PyTorchJobTimeout) as info:
        launch(server, artifacts, clock, timeout_s=100, poll_interval_s=30, cleanup_policy=policy)
    assert info.value.reason == "Timeout"
    assert "not finished after 100 s (last state: Running, PyTorchJobRunning" in info.value.message
    assert "best checkpoint" in info.value.log_tail  # the master's last lines come with it
    assert clock.now == pytest.approx(100)  # the last sleep is cut to the deadline
    assert len(server.deleted) == deleted
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_succeeded_without_outputs_is_a_failure(artifacts):
    server = FakeApiServer(["running", "succeeded"], write_outputs=False)
    with pytest.raises(PyTorchJobFailed) as info:
        launch(server, artifacts)
    assert info.value.reason == "OutputsMissing"
    assert "MLmodel is missing" in info.value.message
    assert server.deleted == []  # on_success: not a success, so the job is kept


def test_restarting_is_not_terminal(artifacts):
    server = FakeApiServer(["running", "restarting", "running", "succeeded"])
    assert launch(server, artifacts).state == "Succeeded"
    assert server.gets[(NS, server.deleted[0][1])] == 4


@pytest.mark.parametrize("error,text", [
    ("status_403_forbidden.json", "manifests/rbac.yaml"),
    ("status_404_no_route.txt", "Training Operator"),
    ("status_409_exists.json", "already exists"),
])
def test_create_errors_fail_with_a_hint(artifacts, error, text):
    server = FakeApiServer(["running"], create_error=error)
    with pytest.raises(PyTorchJobFailed) as info:
        launch(server, artifacts)
    assert info.value.reason == "CreateFailed" and text in str(info.value)
    assert [m for m, _, _ in server.requests] == ["POST"]  # no watching of a job that does not exist


def test_api_server_rejects_an_invalid_job(artifacts, monkeypatch):
    """The fake validates against the CRD like the API server; a broken manifest gets a 422."""
    import launcher.launch as launch_module

    real = launch_module.build_pytorchjob

    def broken(spec):
        manifest = real(spec)
        manifest["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "1"
        return manifest

    monkeypatch.setattr(launch_module, "build_pytorchjob", broken)
    with pytest.raises(PyTorchJobFailed) as info:
        launch(FakeApiServer(["running"]), artifacts)
    assert "422" in str(info.value) and info.value.reason == "CreateFailed"


def test_deepspeed_json_is_staged_and_passed_as_a_path(artifacts):
    server = FakeApiServer(["running", "succeeded"])
    ds = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    seen = {}

    def on_request(method, path):
        if method == "POST":
            seen["ds"] = json.loads((Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "inputs" /
                                     "deepspeed.json").read_text())

    server.on_request = on_request
    launch(server, artifacts, finetune_args={"num_train_epochs": 1}, deepspeed_config_json=json.dumps(ds))
    command = server.created[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "command"][2]
    assert seen["ds"] == ds
    assert "/inputs/deepspeed.json" in command and "--apply_deepspeed true" in command


@pytest.mark.parametrize("overrides,message", [
    ({"cleanup_policy": "sometimes"}, "cleanup_policy"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"staging_uri": "s3://bucket/runs"}, "object-store staging"),
    ({"shared_pvc_name": ""}, "shared_pvc_name is required"),
    ({"run_id": "../escape"}, "run_id"),
    ({"preprocess_output": "/nonexistent"}, "preprocess_output"),
    ({"finetune_args": {"learning_rate": -1}}, "learning_rate"),
    ({"finetune_args": {"no_such_knob": 1}}, "unknown parameter"),
    ({"finetune_args": {"pytorch_model_folder": "/x"}}, "must not set"),
    ({"finetune_args": {"apply_deepspeed": "true", "deepspeed": "/launcher/only/ds.json"}}, "not visible"),
    ({"deepspeed_config_json": "{not json"}, "not valid JSON"),
    ({"num_nodes": 0}, "num_nodes"),
    ({"namespace": "Not_A_Namespace"}, "namespace"),
    ({"resources": {"limits": {"memory": "lots"}}}, "quantity"),
    ({"tolerations": [{"operator": "Maybe"}]}, "operator"),
    ({"shared_mount_path": "/nonexistent/mount"}, "shared volume not mounted"),
])
def test_invalid_inputs_fail_before_any_side_effect(artifacts, overrides, message):
    server = FakeApiServer(["running", "succeeded"])
    with pytest.raises(LaunchConfigError, match=message):
        launch(server, artifacts, **overrides)
    assert server.requests == []  # no API call
    assert list(Path(artifacts["shared"]).iterdir()) == []  # nothing staged


def test_resume_reuses_the_run_folder(artifacts):
    """A failed run keeps its folder; the same run_id with resume_from_checkpoint finds the checkpoints there."""
    with pytest.raises(PyTorchJobFailed):
        launch(FakeApiServer(["failed"], log_name="master_log_failed.txt"), artifacts)
    ckpt = Path(artifacts["shared"]) / RUNS_SUBDIR / "run-1" / "outputs" / "pytorch_model_folder" / "checkpoint-5"
    ckpt.mkdir()
    server = FakeApiServer(["running", "succeeded"], on_request=lambda m, p: (
        seen.append(ckpt.exists()) if m == "POST" else None))
    seen: list[bool] = []
    launch(server, artifacts, finetune_args={"resume_from_checkpoint": True, "num_train_epochs": 1})
    assert seen == [True]
    assert "--resume_from_checkpoint true" in server.created[0]["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"]["spec"]["containers"][0]["command"][2]
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


def test_master_logs_is_empty_while_the_container_is_creating(artifacts):
    server = FakeApiServer(["running"], log_name=None)
    custom, core = make_clients(server)
    server.jobs[(NS, "j")] = {"metadata": {"name": "j", "uid": "u"}}
    server.gets[(NS, "j")] = 1
    assert master_logs(core, "j", NS) == ""  # 400 ContainerCreating is not an error


def test_log_echo_prints_only_new_lines(artifacts):
    from launcher.watch import Watcher

    server = FakeApiServer(["running", "running", "succeeded"])
    custom, core = make_clients(server)
    server.jobs[(NS, "j")] = {"metadata": {"name": "j", "uid": "u"}, "spec": {}}
    out = io.StringIO()
    clock = FakeClock()
    server.write_outputs = False
    watcher = Watcher(custom, core, "j", NS, timeout_s=600, poll_interval_s=10, out=out, clock=clock,
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


def test_rbac_role_covers_every_call_and_nothing_else(artifacts):
    rules = _rbac_rules()
    calls = set()
    ok = FakeApiServer(["created", "running", "succeeded"])
    launch(ok, artifacts)
    calls |= _needed(ok.requests)
    bad = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt")
    with pytest.raises(PyTorchJobFailed):
        launch(bad, artifacts, cleanup_policy="always", run_id="run-2")
    calls |= _needed(bad.requests)
    assert calls <= rules, calls - rules
    assert {r for g, r, v in rules} == {"pytorchjobs", "pods", "pods/log"}
    assert {v for g, r, v in rules if r == "pods/log"} == {"get"}
    assert not any(v in ("create", "delete", "update", "patch") for g, r, v in rules if g == "")


def test_transient_api_errors_are_retried(artifacts):
    server = FakeApiServer(["running", "succeeded"])
    server.fail_gets = 2
    assert launch(server, artifacts).state == "Succeeded"


def test_persistent_api_errors_fail(artifacts):
    server = FakeApiServer(["running"])
    server.fail_gets = 100
    with pytest.raises(PyTorchJobFailed) as info:
        launch(server, artifacts, cleanup_policy="always")
    assert info.value.reason == "ApiError" and "503" in info.value.message
    assert len(server.deleted) == 1


def test_a_job_deleted_under_us_fails(artifacts):
    server = FakeApiServer(["created", "running"])
    original = server.route

    def route(method, path, query, body):
        if method == "GET" and server.gets and "pytorchjobs/" in path:
            server.jobs.clear()  # someone deleted it after the first poll
        return original(method, path, query, body)

    server.route = route
    with pytest.raises(PyTorchJobFailed) as info:
        launch(server, artifacts)
    assert info.value.reason == "JobDeleted"


@pytest.mark.parametrize("gpus,deepspeed,expected", [(0, "false", "true"), (0, "true", None), (1, "false", None)])
def test_cpu_ddp_pods_tell_accelerate_to_use_the_cpu(artifacts, gpus, deepspeed, expected):
    server = FakeApiServer(["succeeded"])
    launch(server, artifacts, gpus_per_node=gpus, finetune_args={"apply_deepspeed": deepspeed})
    container = server.created[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.get("ACCELERATE_USE_CPU") == expected
