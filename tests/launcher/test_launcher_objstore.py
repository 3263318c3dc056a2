"""Object-store staging (s3://) against a real S3 protocol server (moto's, on loopback).

The launcher and the pods' `python -m launcher.objstore` commands talk S3 over HTTP to
`moto.server.ThreadedMotoServer`, exactly as they would to MinIO (path-style, custom endpoint). The fake
API server (kube_fake.py) plays the operator; its "master pod" runs the job's own container script in
/bin/sh, with a fake `torchrun` on PATH that writes what rank 0 writes.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainer.checkpoints import write_manifest

from trainer.errors import ConfigError
from s3_server import SECRET, s3, s3_endpoint  # noqa: F401 (fixtures)
from kube_fake import (FakeApiServer, FakeClock, artifacts, crd_errors, make_clients, run_launch,  # noqa: F401
                       staged_inputs)
from launcher import LaunchConfigError, PyTorchJobFailed
from launcher import objstore
from launcher.objstore import CheckpointSync, ObjectStoreError, S3Uri, parse_uri

REPO = Path(__file__).resolve().parents[2]
NS = "kubeflow-user-example-com"

FAKE_TORCHRUN = r"""#!/bin/sh
# Fake torchrun: writes what the trainer's rank 0 writes; FAKE_TRAIN=fail writes a checkpoint and fails.
while [ $# -gt 0 ]; do
  case "$1" in
    --preprocess_output) I="$2"; shift;;
    --pytorch_model_folder) P="$2"; shift;;
    --mlflow_model_folder) M="$2"; shift;;
  esac
  shift
done
ls "$P" > "$FAKE_LOG.before"
cp "$I/class_names.json" "$FAKE_LOG.inputs" || exit 9
mkdir -p "$P/checkpoint-${FAKE_STEP:-10}"
echo weights > "$P/checkpoint-${FAKE_STEP:-10}/model.safetensors"
echo '{"global_step": 10}' > "$P/checkpoint-${FAKE_STEP:-10}/trainer_state.json"
python -c 'import sys, pathlib; from trainer.checkpoints import write_manifest; write_manifest(pathlib.Path(sys.argv[1]))' \
  "$P/checkpoint-${FAKE_STEP:-10}"
if [ "${FAKE_TRAIN:-ok}" = fail ]; then echo "CUDA out of memory" >&2; exit 3; fi
if [ "${FAKE_TRAIN:-ok}" = hang ]; then trap 'exit 143' TERM; while :; do sleep 0.1; done; fi
echo '{"model_type": "bert"}' > "$P/config.json"
printf weights > "$P/model.safetensors"
mkdir -p "$M" && printf 'flavors:\n  transformers: {}\n' > "$M/MLmodel"
"""


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    return sorted(rel for rel, _ in objstore.list_keys(client, S3Uri(bucket, prefix.strip("/"))))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- URIs -----------------------------------------------------------------------------------------------------

def test_uri_parsing():
    assert parse_uri("s3://my-bucket/runs/team-a/") == S3Uri("my-bucket", "runs/team-a")
    assert str(parse_uri("s3://my-bucket")) == "s3://my-bucket"
    assert parse_uri("s3://b.k.t/x").join("tokcls-runs", "r1").key_prefix == "x/tokcls-runs/r1/"


@pytest.mark.parametrize("uri,message", [
    ("gs://bucket/prefix", "use s3://bucket/prefix"),
    ("abfs://c@acct.dfs.core.windows.net/p", "not supported"),
    ("/mnt/shared/runs", "must look like s3://"),
    ("s3://Bucket/x", "not a valid bucket name"),
    ("s3://ab/x", "not a valid bucket name"),
    ("s3://bucket/a/../b", "'..'"),
    ("s3://bucket/a//b", "empty"),
])
def test_bad_uris_are_rejected(uri, message):
    with pytest.raises(ObjectStoreError, match=message):
        parse_uri(uri)


# ---- folder transfers -----------------------------------------------------------------------------------------

def test_upload_download_round_trip_of_a_nested_folder(s3, tmp_path):
    client, bucket, _ = s3
    src = tmp_path / "src"
    (src / "train" / "shard-0").mkdir(parents=True)
    (src / "train" / "shard-0" / "data.arrow").write_bytes(bytes(range(256)) * 4000)  # ~1 MB binary
    (src / "class_names.json").write_text('["O", "B-person"]')
    (src / "empty.txt").write_bytes(b"")
    (src / "name with spaces é.json").write_text("{}")
    uri = S3Uri(bucket, "runs/r1/inputs")
    assert objstore.upload_tree(client, src, uri) == 4
    objstore.put_text(client, S3Uri(bucket, "runs/r1/inputs-2/x"), "sibling prefix")  # "inputs" must not match it
    assert keys(client, bucket, "runs/r1/inputs") == sorted(_tree(src))

    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale.txt").write_text("from before")
    assert objstore.download_tree(client, uri, dst) == 4
    assert _tree(dst) == _tree(src)  # same files, same bytes, nothing stale
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary sibling left
    assert objstore.exists(client, uri.join("class_names.json"))
    assert not objstore.exists(client, uri.join("nope.json"))
    assert objstore.any_object(client, uri) and not objstore.any_object(client, uri.join("nope"))

    assert objstore.delete_prefix(client, uri) == 4
    assert keys(client, bucket, "runs/r1") == ["inputs-2/x"]
    empty = tmp_path / "empty"
    assert objstore.download_tree(client, uri, empty) == 0 and empty.is_dir() and not any(empty.iterdir())


def test_push_mirror_deletes_stale_objects_and_writes_the_marker_last(s3, tmp_path, monkeypatch):
    client, bucket, endpoint = s3
    out = tmp_path / "outputs"
    (out / "pytorch_model_folder" / "checkpoint-2").mkdir(parents=True)
    (out / "pytorch_model_folder" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "mlflow_model_folder").mkdir()
    (out / "mlflow_model_folder" / "MLmodel").write_text("flavors: {}")
    uri = S3Uri(bucket, "r/outputs")
    objstore.put_text(client, uri.join("pytorch_model_folder/checkpoint-1/trainer_state.json"), "{}")  # rotated
    objstore.put_text(client, uri.join("_SUCCESS"), "")  # an earlier marker must not survive the push
    order: list[str] = []
    real_put = client.put_object
    monkeypatch.setattr(objstore, "make_client", lambda endpoint=None, max_attempts=5: client)
    monkeypatch.setattr(client, "put_object", lambda **kw: (order.append(kw["Key"]), real_put(**kw))[1])
    real_upload = client.upload_file
    monkeypatch.setattr(client, "upload_file", lambda f, b, k: (order.append(k), real_upload(f, b, k))[1])
    deleted: list[str] = []
    real_delete = client.delete_objects
    monkeypatch.setattr(client, "delete_objects", lambda **kw: (
        deleted.extend(o["Key"] for o in kw["Delete"]["Objects"]), order.append("<delete>"), real_delete(**kw))[2])
    assert objstore.main(["push", "--mirror", "--marker", "_SUCCESS", str(out), f"s3://{bucket}/r/outputs"]) == 0
    assert keys(client, bucket, "r/outputs") == ["_SUCCESS", "mlflow_model_folder/MLmodel",
                                                 "pytorch_model_folder/checkpoint-2/trainer_state.json"]
    assert sorted(deleted) == ["r/outputs/_SUCCESS", "r/outputs/pytorch_model_folder/checkpoint-1/trainer_state.json"]
    assert order[-1] == "r/outputs/_SUCCESS" and order[-2] == "<delete>"  # marker after every upload and delete


def test_a_key_that_escapes_the_folder_is_refused(s3, tmp_path):
    client, bucket, _ = s3
    client.put_object(Bucket=bucket, Key="p/a/../../../evil.txt", Body=b"x")
    with pytest.raises(ObjectStoreError, match="outside"):
        objstore.download_tree(client, S3Uri(bucket, "p"), tmp_path / "d" / "dst")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "d" / "dst").exists()


def _checkpoint(folder: Path, step: int, complete: bool) -> None:
    ckpt = folder / f"checkpoint-{step}"
    (ckpt / "global_step").mkdir(parents=True, exist_ok=True)
    (ckpt / "global_step" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optim")
    (ckpt / "model.safetensors").write_bytes(b"weights")
    if complete:
        (ckpt / "trainer_state.json").write_text("{}")
        write_manifest(ckpt)


def test_sync_uploads_only_complete_checkpoints_once(s3, tmp_path):
    client, bucket, _ = s3
    folder = tmp_path / "pytorch_model_folder"
    _checkpoint(folder, 5, complete=True)
    _checkpoint(folder, 10, complete=False)  # being written
    (folder / "best.txt").write_text("not a checkpoint")
    uri = S3Uri(bucket, "run/outputs/pytorch_model_folder")
    sync = CheckpointSync(client, folder, uri)
    assert sync.run_once() == ["checkpoint-5"]
    assert keys(client, bucket, uri.prefix) == ["checkpoint-5/checkpoint_manifest.json",
                                                "checkpoint-5/global_step/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                "checkpoint-5/model.safetensors", "checkpoint-5/trainer_state.json"]
    assert sync.run_once() == []
    (folder / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert sync.run_once() == []  # still no manifest: not complete
    write_manifest(folder / "checkpoint-10")
    assert sync.run_once() == ["checkpoint-10"]
    # a new process (a restarted pod) does not upload again what is complete in the store
    assert CheckpointSync(client, folder, uri).run_once() == []


def _cli_env(endpoint: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": SECRET["accesskey"], "AWS_SECRET_ACCESS_KEY": SECRET["secretkey"]}


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def test_sync_cli_runs_until_killed_then_makes_a_last_pass(s3, tmp_path):
    client, bucket, endpoint = s3
    folder = tmp_path / "ckpts"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "launcher.objstore", "sync-checkpoints", str(folder),
                             f"s3://{bucket}/o", "--interval", "0.2"], env=_cli_env(endpoint))
    try:
        _checkpoint(folder, 1, complete=True)
        _wait_for(lambda: "checkpoint-1/checkpoint_manifest.json" in keys(client, bucket, "o"))
        _checkpoint(folder, 2, complete=True)
        proc.send_signal(signal.SIGTERM)  # may land before the next periodic pass: the last pass uploads it
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert "checkpoint-2/checkpoint_manifest.json" in keys(client, bucket, "o")


@pytest.mark.parametrize("parent_lives_s", [1, 0])
def test_sync_cli_exits_when_its_parent_exits(s3, tmp_path, parent_lives_s):
    """As the pod script starts it (`--parent-pid $$`): it stops when the shell is gone, also when the shell is gone
    before its imports finish (0 s: a slow start, as on a loaded node, once left it running for ever)."""
    _, bucket, endpoint = s3
    (tmp_path / "ckpts").mkdir()
    pid_file = tmp_path / "pid"
    script = (f"{sys.executable} -m launcher.objstore sync-checkpoints {tmp_path}/ckpts s3://{bucket}/o "
              f"--interval 0.2 --parent-pid $$ & echo $! > {pid_file}; sleep {parent_lives_s}")
    subprocess.run(["/bin/sh", "-c", script], env=_cli_env(endpoint), check=True, timeout=30)
    pid = int(pid_file.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    try:
        _wait_for(gone)
    finally:
        if not gone():
            os.kill(pid, signal.SIGKILL)  # a failing run leaves no process behind


# ---- the pods' script ---------------------------------------------------------------------------------------------

def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    torchrun = bin_dir / "torchrun"
    torchrun.write_text(FAKE_TORCHRUN)
    torchrun.chmod(0o755)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return bin_dir


def pod_env(container: dict, tmp_path: Path, rank: int, **extra: str) -> dict[str, str]:
    """The container's env as the kubelet would give it (secretKeyRef resolved) plus the operator's."""
    env = {"PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "HOME": str(tmp_path), "RANK": str(rank), "PET_NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500", "FAKE_LOG": str(tmp_path / f"rank{rank}")}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mlpipeline-minio-artifact"
            env[item["name"]] = SECRET[ref["key"]]
        else:
            env[item["name"]] = item["value"]
    env.update(extra)
    return env


def run_pod(job: dict, tmp_path: Path, role: str = "Master", rank: int = 0, **extra: str):
    container = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"][0]
    return subprocess.run(container["command"], env=pod_env(container, tmp_path, rank, **extra),
                          capture_output=True, text=True, timeout=120)


class PodRunningApiServer(FakeApiServer):
    """When the job succeeds, its master "pod" has run its real container script (pull, train, push, mark)."""

    def __init__(self, stages, pod_dir: Path, **kwargs):
        super().__init__(stages, **kwargs)
        self.pod_dir = pod_dir
        self.pod_results: list[subprocess.CompletedProcess] = []

    def write_rank0_outputs(self, job: dict) -> None:
        if not self.pod_results:
            self.pod_results.append(run_pod(job, self.pod_dir))


def launch(server, artifacts, s3, tmp_path, **overrides):
    client, bucket, endpoint = s3
    clock = FakeClock()
    custom, core = make_clients(server)
    values = dict(
        backend="pytorchjob", num_train_epochs=1, apply_deepspeed=True, deepspeed_preset="zero2",
        num_nodes=1, gpus_per_node=4, image="registry.local/trainer-cuda:test", namespace=NS,
        staging_uri=f"s3://{bucket}/pipelines/team-a", staging_endpoint_url=endpoint,
        staging_secret_name="mlpipeline-minio-artifact", staging_access_key_key="accesskey",
        staging_secret_key_key="secretkey", pod_work_dir=str(tmp_path / "pod" / "workspace" / "run"),
        checkpoint_sync_interval_seconds=1, timeout_seconds=3600, poll_interval_seconds=30,
        cleanup_policy="on_success", run_id="run-1", clock=clock, sleep=clock.sleep, stream_logs=False)
    values.update(overrides)
    return run_launch(custom, core, artifacts, **values)


def test_object_store_run_end_to_end(s3, artifacts, tmp_path):
    """Stage to the bucket, the master pod's script pulls/trains/pushes/marks, outputs collected, prefix removed."""
    from test_launcher_manifest import _model_errors

    client, bucket, endpoint = s3
    staged: list[list[str]] = []
    server = PodRunningApiServer(["created", "running", "succeeded"], tmp_path / "pod", on_request=lambda m, p: (
        staged.append(keys(client, bucket, "pipelines/team-a/tokcls-runs/run-1")) if m == "POST" else None))
    result = launch(server, artifacts, s3, tmp_path)
    assert result.state == "Succeeded" and result.deleted
    assert result.run_dir == f"s3://{bucket}/pipelines/team-a/tokcls-runs/run-1"
    # inputs were in the bucket before the job was created
    assert staged == [staged_inputs(artifacts)] and "inputs/model_selector_output/config.json" in staged[0]
    # the manifest: CRD-valid, pod model-valid, emptyDir instead of a PVC, credentials from the Secret
    (job,) = server.created
    assert crd_errors(job) == []
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        assert _model_errors(replica["template"], "V1PodTemplateSpec", role) == []
        pod = replica["template"]["spec"]
        assert {"name": "work", "emptyDir": {}} in pod["volumes"]
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
        env = pod["containers"][0]["env"]
        assert {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
            "name": "mlpipeline-minio-artifact", "key": "accesskey"}}} in env
        assert {"name": "AWS_ENDPOINT_URL", "value": endpoint} in env
    # the pod ran: it saw the pulled inputs and an empty output folder, and exited 0
    (pod_run,) = server.pod_results
    assert pod_run.returncode == 0, pod_run.stderr
    staged_labels = (Path(artifacts["preprocess_output"]) / "class_names.json").read_bytes()
    assert (tmp_path / "pod" / "rank0.inputs").read_bytes() == staged_labels
    # outputs collected from the store, run prefix removed after success
    out = Path(artifacts["pytorch_model_folder"])
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert (out / "checkpoint-10" / "trainer_state.json").exists()
    assert (Path(artifacts["mlflow_model_folder"]) / "MLmodel").exists()
    assert not (out / "_SUCCESS").exists()
    assert keys(client, bucket, "pipelines/team-a/tokcls-runs/run-1") == []


def test_cleanup_never_keeps_the_run_in_the_store(s3, artifacts, tmp_path):
    client, bucket, _ = s3
    server = PodRunningApiServer(["running", "succeeded"], tmp_path / "pod")
    launch(server, artifacts, s3, tmp_path, cleanup_policy="never")
    assert "outputs/_SUCCESS" in keys(client, bucket, "pipelines/team-a/tokcls-runs/run-1")


def test_succeeded_without_the_marker_is_a_failure(s3, artifacts, tmp_path):
    client, bucket, _ = s3

    class NoMarker(FakeApiServer):
        def write_rank0_outputs(self, job):  # outputs uploaded, but the master died before the marker
            run = S3Uri(bucket, "pipelines/team-a/tokcls-runs/run-1/outputs")
            objstore.put_text(client, run.join("pytorch_model_folder/model.safetensors"), "weights")
            objstore.put_text(client, run.join("mlflow_model_folder/MLmodel"), "flavors: {}")

    server = NoMarker(["running", "succeeded"])
    with pytest.raises(PyTorchJobFailed) as info:
        launch(server, artifacts, s3, tmp_path)
    assert info.value.reason == "OutputsMissing"
    assert "outputs/_SUCCESS is missing" in info.value.message and "did not finish" in info.value.message
    assert server.deleted == []  # on_success: kept, as is the run in the store
    assert "outputs/mlflow_model_folder/MLmodel" in keys(client, bucket, "pipelines/team-a/tokcls-runs/run-1")
    assert not Path(artifacts["pytorch_model_folder"]).exists()


def test_failed_training_writes_no_marker_keeps_checkpoints_and_resume_sees_them(s3, artifacts, tmp_path):
    """The master's script after a failing torchrun: its exit code, checkpoints uploaded, no marker, no outputs;
    a resumed run (same run_id) pulls those checkpoints into the new pod before training."""
    client, bucket, _ = s3
    server = FakeApiServer(["running", "failed"], log_name="master_log_failed.txt", write_outputs=False)
    with pytest.raises(PyTorchJobFailed):
        launch(server, artifacts, s3, tmp_path)
    (job,) = server.created
    failed = run_pod(job, tmp_path / "attempt1", FAKE_TRAIN="fail")
    assert failed.returncode == 3 and "torchrun failed with exit code 3" in failed.stderr
    run = "pipelines/team-a/tokcls-runs/run-1"
    assert keys(client, bucket, f"{run}/outputs") == ["pytorch_model_folder/checkpoint-10/checkpoint_manifest.json",
                                                      "pytorch_model_folder/checkpoint-10/model.safetensors",
                                                      "pytorch_model_folder/checkpoint-10/trainer_state.json"]
    assert not any("_SUCCESS" in k for k in keys(client, bucket, run))

    server = PodRunningApiServer(["running", "succeeded"], tmp_path / "attempt2")
    result = launch(server, artifacts, s3, tmp_path, resume_from_checkpoint=True)
    assert result.state == "Succeeded"
    assert (tmp_path / "attempt2" / "rank0.before").read_text().split() == ["checkpoint-10"]


def test_sigterm_to_the_pod_reaches_torchrun_and_writes_no_marker(s3, artifacts, tmp_path):
    client, bucket, _ = s3
    server = FakeApiServer(["created"])
    with pytest.raises(PyTorchJobFailed):  # only to get the manifest: times out at once
        launch(server, artifacts, s3, tmp_path, timeout_seconds=1)
    (job,) = server.created
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    proc = subprocess.Popen(container["command"], env=pod_env(container, tmp_path, 0, FAKE_TRAIN="hang"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (tmp_path / "rank0.inputs").exists())
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert not any(k.endswith("_SUCCESS") for k in keys(client, bucket, "pipelines"))
    assert "pipelines/team-a/tokcls-runs/run-1/outputs/pytorch_model_folder/checkpoint-10/trainer_state.json" in [
        f"pipelines/{k}" for k in keys(client, bucket, "pipelines")]


def test_sigterm_while_pulling_the_inputs_ends_the_pod_at_once(s3, artifacts, tmp_path):
    """In a container the pod's shell is PID 1, which ignores TERM without a handler: a cancel during the pulls
    waited the whole grace period. The pulls run under a trap that ends them and the pod (exit 143)."""
    server = FakeApiServer(["created"])
    with pytest.raises(PyTorchJobFailed):  # only to get the manifest: times out at once
        launch(server, artifacts, s3, tmp_path, timeout_seconds=1)
    (job,) = server.created
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = pod_env(container, tmp_path, 0)
    pulling = tmp_path / "pulling"
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "python").write_text(f'#!/bin/sh\nif [ "$3" = pull ]; then echo $$ > {pulling}; exec sleep 60; fi\n'
                                 f'exec {sys.executable} "$@"\n')
    (slow / "python").chmod(0o755)
    env["PATH"] = f"{slow}:{env['PATH']}"
    proc = subprocess.Popen(container["command"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: pulling.exists() and pulling.read_text().strip())
        pull = int(pulling.read_text())
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 143 and time.monotonic() - started < 10
        _wait_for(lambda: not psutil.pid_exists(pull) or psutil.Process(pull).status() == psutil.STATUS_ZOMBIE,
                  timeout=10)  # the pull went with it
    finally:
        proc.kill()


# ---- validation before any side effect ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    ({"shared_pvc_name": "tokcls-shared"}, "not both"),
    ({"staging_uri": ""}, "shared_pvc_name is required"),
    ({"staging_uri": "gs://bucket/prefix"}, "use s3://bucket/prefix"),
    ({"staging_uri": "s3://Not_A_Bucket/x"}, "not a valid bucket name"),
    ({"staging_uri": "s3://no-such-bucket-4242/x"}, "does not exist"),
    ({"staging_access_key_key": "access key"}, "not a valid Secret key"),
    ({"staging_secret_name": "Bad_Secret"}, "not a valid Secret name"),
    ({"staging_endpoint_url": "minio:9000"}, "http"),
    ({"checkpoint_sync_interval_seconds": 0}, "checkpoint_sync_interval_seconds"),
])
def test_invalid_object_store_inputs_fail_before_any_side_effect(s3, artifacts, tmp_path, overrides, message):
    client, bucket, _ = s3
    server = FakeApiServer(["running", "succeeded"])
    with pytest.raises(ConfigError, match=message):
        launch(server, artifacts, s3, tmp_path, **overrides)
    assert server.requests == []
    assert keys(client, bucket) == []


def test_pvc_only_inputs_are_refused_with_object_store_options(artifacts, tmp_path):
    server = FakeApiServer(["running"])
    custom, core = make_clients(server)
    with pytest.raises(LaunchConfigError, match="only apply to object-store staging"):
        run_launch(custom, core, artifacts, image="x", namespace=NS, shared_pvc_name="tokcls-shared",
                   shared_mount_path=artifacts["shared"], staging_secret_name="mlpipeline-minio-artifact")
    assert server.requests == [] and list(Path(artifacts["shared"]).iterdir()) == []


def test_missing_credentials_fail_clearly(s3, artifacts, tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = FakeApiServer(["running"])
    with pytest.raises(LaunchConfigError, match="no S3 credentials"):
        launch(server, artifacts, s3, tmp_path)
    assert server.requests == []


def test_job_spec_takes_exactly_one_staging():
    from launcher.manifest import JobSpec, ManifestError, ObjectStoreSpec, build_pytorchjob

    store = ObjectStoreSpec("s3://bkt/p/tokcls-runs/r1")
    base = dict(name="tokcls-1", namespace="ns", image="img", trainer_args=[])
    with pytest.raises(ManifestError, match="exactly one"):
        build_pytorchjob(JobSpec(**base, pvc_name="pvc", object_store=store))
    with pytest.raises(ManifestError, match="exactly one"):
        build_pytorchjob(JobSpec(**base))
    with pytest.raises(ManifestError, match="without a staging secret name"):
        build_pytorchjob(JobSpec(**base, object_store=ObjectStoreSpec("s3://bkt/p", secret_env={"A": "b"})))
    manifest = build_pytorchjob(JobSpec(**base, num_nodes=1, object_store=store))  # ambient credentials
    assert crd_errors(manifest) == []
    container = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert not any(e["name"].startswith("AWS_") for e in container["env"])
    assert {"name": "work", "mountPath": "/workspace/run"} in container["volumeMounts"]


def test_kfp_minio_usage_from_the_docs_compiles(tmp_path):
    """The documented MinIO pipeline: the launcher step gets its credentials with use_secret_as_env."""
    import yaml
    from kfp import compiler, dsl, kubernetes
    from kfp.dsl import Dataset, Model

    from components.finetune_pytorchjob.component import finetune_pytorchjob

    @dsl.pipeline(name="finetune-distributed-minio")
    def pipeline(gpus: int = 8):
        pre = dsl.importer(artifact_uri="minio://mlpipeline/preprocess_output", artifact_class=Dataset)
        sel = dsl.importer(artifact_uri="minio://mlpipeline/model_selector_output", artifact_class=Model)
        task = finetune_pytorchjob(
            preprocess_output=pre.output, model_selector_output=sel.output,
            staging_uri="s3://mlpipeline/tokcls-staging", staging_endpoint_url="http://minio-service.kubeflow:9000",
            staging_secret_name="mlpipeline-minio-artifact", staging_access_key_key="accesskey",
            staging_secret_key_key="secretkey", num_nodes=1, gpus_per_node=gpus, deepspeed_preset="zero3")
        kubernetes.use_secret_as_env(task, secret_name="mlpipeline-minio-artifact",
                                     secret_key_to_env={"accesskey": "AWS_ACCESS_KEY_ID",
                                                        "secretkey": "AWS_SECRET_ACCESS_KEY"})

    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    (executor,) = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert {e["envVar"] for e in executor["secretAsEnv"][0]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID",
                                                                           "AWS_SECRET_ACCESS_KEY"}


def test_object_store_staging_refuses_multi_node_jobs_before_any_side_effect(s3, artifacts, tmp_path):
    client, bucket, _ = s3
    server = FakeApiServer(["succeeded"])
    with pytest.raises(LaunchConfigError, match="single-node.*ReadWriteMany PVC"):
        launch(server, artifacts, s3, tmp_path, num_nodes=2)
    assert server.requests == [] and keys(client, bucket, "pipelines") == []
