"""One run per output folder: a second run gets exit 2 naming the holder; a dead holder's lock is taken over (a
reused pid is a dead holder too)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.errors import InputError
from trainer.lock import LOCK_FILE, FolderLock, _start_time

REPO = Path(__file__).resolve().parents[1]


def test_a_held_folder_refuses_a_second_holder_and_names_the_first(tmp_path):
    with FolderLock(tmp_path / "out"):
        with pytest.raises(InputError, match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()}"):
            FolderLock(tmp_path / "out").acquire()
    with FolderLock(tmp_path / "out"):  # released: free again
        pass
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def _write_lock(folder: Path, host: str, pid: int, age_s: float = 0.0, token: str = "old", **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "token": token, "since": "then", **extra}))
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, socket.gethostname(), int(dead.stdout))
    with FolderLock(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.token


@pytest.fixture
def live_process():
    """Another live process on this host (its pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_live_pid_holds_the_lock_only_while_it_is_the_process_that_took_it(tmp_path, live_process):
    start = _start_time(live_process)
    assert isinstance(start, int) and start != _start_time(os.getpid())  # /proc/<pid>/stat field 22
    _write_lock(tmp_path, socket.gethostname(), live_process, start=start)
    with pytest.raises(InputError, match=f"pid {live_process}"):
        FolderLock(tmp_path).acquire()
    # the same pid, now another process (started at another time): the holder is gone, its lock stale
    _write_lock(tmp_path, socket.gethostname(), live_process, start=start - 1)
    with FolderLock(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.token


def test_a_lock_with_this_process_pid_that_it_does_not_hold_is_stale(tmp_path):
    """A restarted container runs with the pid of the one that died (pid 1, say): its lock is not this process's."""
    _write_lock(tmp_path, socket.gethostname(), os.getpid(), start=_start_time(os.getpid()))
    with FolderLock(tmp_path) as lock:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["token"] == lock.token and record["start"] == _start_time(os.getpid())


def test_a_stale_lock_taken_over_meanwhile_by_another_run_is_left_to_it(tmp_path, live_process, monkeypatch):
    """Between judging a lock stale and renaming it aside, another contender took it over: its lock is kept."""
    _write_lock(tmp_path, "other-node", 1, age_s=3600)
    judge = FolderLock._stale

    def judged_then_taken_over(self, holder):
        stale = judge(self, holder)
        if holder.get("token") == "old":
            _write_lock(tmp_path, socket.gethostname(), live_process, token="winner", start=_start_time(live_process))
        return stale

    monkeypatch.setattr(FolderLock, "_stale", judged_then_taken_over)
    with pytest.raises(InputError, match=f"pid {live_process}"):
        FolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "winner"


def test_another_hosts_lock_is_honoured_until_its_heartbeat_is_stale(tmp_path):
    _write_lock(tmp_path, "other-node", 1, age_s=60)
    with pytest.raises(InputError, match="host other-node"):
        FolderLock(tmp_path, stale_after_s=600).acquire()
    _write_lock(tmp_path, "other-node", 1, age_s=601)
    with FolderLock(tmp_path, stale_after_s=600):
        pass


def test_the_heartbeat_keeps_a_long_run_fresh(tmp_path):
    lock = FolderLock(tmp_path, heartbeat_s=0.05).acquire()
    try:
        path = tmp_path / LOCK_FILE
        old = time.time() - 3600
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 60
    finally:
        lock.release()


def _finetune_cmd(pre, ms, out, mlflow, *extra):
    return [sys.executable, "-m", "trainer.cli", "--preprocess_output", str(pre), "--model_selector_output", str(ms),
            "--pytorch_model_folder", str(out), "--mlflow_model_folder", str(mlflow),
            "--per_device_train_batch_size", "16", "--learning_rate", "5e-3", *extra]


def test_a_finetune_into_a_folder_in_use_exits_2_before_writing(tmp_path, tiny_preprocess_output,
                                                                tiny_model_selector):
    out = tmp_path / "out"
    with FolderLock(out):
        before = sorted(p.name for p in out.iterdir())
        proc = subprocess.run(_finetune_cmd(tiny_preprocess_output, tiny_model_selector, out, tmp_path / "mlflow"),
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {os.getpid()}" in errors[0]
        assert sorted(p.name for p in out.iterdir()) == before and not (tmp_path / "mlflow").exists()


def test_two_concurrent_finetunes_into_one_folder_one_wins_whole(tmp_path, tiny_preprocess_output,
                                                                 tiny_model_selector):
    out = tmp_path / "out"
    runs = [subprocess.Popen(_finetune_cmd(tiny_preprocess_output, tiny_model_selector, out, tmp_path / f"mlflow{i}",
                                           "--num_train_epochs", "2", "--seed", str(i)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for i in (1, 2)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, err in results]
    winner = 1 + [code for code, _ in results].index(0)
    args = json.loads((out / "finetune_args.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert args["seed"] == winner and args["mlflow_model_folder"] == metrics["mlflow_model_folder"]
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-10", "checkpoint-20"]
