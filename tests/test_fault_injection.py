"""Fault injection: the fine-tune CLI killed with SIGKILL at seeded random instants — while training, while writing a
checkpoint, while publishing, while re-publishing into a finished folder — always resumes to the uninterrupted run's
weights, bit for bit, loses no complete checkpoint, and at no instant does a folder look complete when it is not.

How: every run is the real `trainer.cli.main` in its own process (forked by tests/fault_zygote.py, which imported
the stack once), writing into real folders, with save_total_limit=1 (each save deletes the checkpoint before it). The
test polls the folders every few milliseconds. An uninterrupted reference run first gives the phases' durations on
this machine (checkpoint writes, training between checkpoints, publishing); then each planned kill waits for its
phase to begin in a run (a new checkpoint folder, a new manifest, the best model's staging folder, the model or the
MLflow model renamed into place), sleeps a seeded random part of that phase's duration and sends SIGKILL. A run that
finishes first is checked and the next one re-publishes into its finished folder, as a retried pipeline step would.
After every run:

- a checkpoint that passes `is_complete` matches every hash of its manifest, and its weights and optimizer load;
- the newest complete checkpoint is never older than the one the run started from (nothing lost);
- a model file in pytorch_model_folder never stands without its config.json (weights are moved in last), and loads;
- `metrics.json` present means finished: it is newer than every published file (no stale result beside a new model),
  the weights beside it are those of the best checkpoint it names, and the MLflow model is in place;
- the MLflow folder is absent or complete (MLmodel and loadable weights);
- a finished run leaves no torn checkpoint (one that a killed rotation began deleting is gone).

Each run (resume_from_checkpoint=true) must resume from the newest complete checkpoint — its log names it — and a
finished run's weights must hash equal to the reference's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import figures, weights_digest

from trainer.checkpoints import MANIFEST, is_complete, list_checkpoints, problem

pytestmark = pytest.mark.slow

SEED = 20261125
KILLS = 24
TRAINING_PHASES = ["training"] * 7 + ["checkpoint"] * 7
PUBLISHING_PHASES = ["publishing"] * 6 + ["model-moved-in"] * 2 + ["mlflow-renamed"] * 2
STEPS = 20  # 160 rows / batch 16 = 10 steps per epoch, 2 epochs; a checkpoint every 3 steps and at the end
FLAGS = ["--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--evaluation_strategy", "steps",
         "--eval_steps", "3", "--save_total_limit", "1", "--learning_rate", "5e-3", "--metric_for_best_model", "loss",
         "--progress_seconds", "0", "--seed", "7", "--group_by_length", "true"]


class Zygote:
    """tests/fault_zygote.py in a subprocess: forks one CLI run per request."""

    def __init__(self, tmp: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "DS_ACCELERATOR": "cpu"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "fault_zygote.py")], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def status(self) -> int:
        return json.loads(self.proc.stdout.readline())["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Run:
    """One output location (pytorch_model_folder + mlflow_model_folder) and what the poller saw in it."""

    def __init__(self, root: Path, pre: Path, model: Path):
        self.pt, self.mlflow = root / "pytorch", root / "mlflow"
        self.argv = ["--preprocess_output", str(pre), "--model_selector_output", str(model),
                     "--pytorch_model_folder", str(self.pt), "--mlflow_model_folder", str(self.mlflow), *FLAGS,
                     "--resume_from_checkpoint", "true"]

    def look(self) -> dict:
        """What is in the folders now (tolerant of entries vanishing while looked at)."""
        seen = {"dirs": set(), "manifests": set(), "stage": False, "weights": None, "mlmodel": None,
                "metrics": False}
        try:
            for checkpoint in list_checkpoints(self.pt):
                seen["dirs"].add(checkpoint.name)
                if (checkpoint / MANIFEST).exists():
                    seen["manifests"].add(checkpoint.name)
        except FileNotFoundError:
            pass
        seen["stage"] = (self.pt / ".best_model.incomplete").exists()
        seen["weights"] = _inode(self.pt / "model.safetensors")
        seen["mlmodel"] = _inode(self.mlflow / "MLmodel")
        seen["metrics"] = (self.pt / "metrics.json").exists()
        return seen


def _inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _trigger(phase: str, start: dict, now: dict) -> bool:
    """Has `phase` begun in this run (compared with what was there when the run started)?"""
    return {
        "training": bool(now["manifests"] - start["manifests"]),  # a checkpoint was completed: training goes on
        "checkpoint": bool(now["dirs"] - start["dirs"]),  # a new checkpoint folder is being written
        "publishing": now["stage"],  # the best model is being staged
        "model-moved-in": now["weights"] is not None and now["weights"] != start["weights"],
        "mlflow-renamed": now["mlmodel"] is not None and now["mlmodel"] != start["mlmodel"],
    }[phase]


def _landed(now: dict, final: str) -> str:
    """Where a kill landed, from what the folders showed at that instant."""
    if now["dirs"] - now["manifests"]:
        return "checkpoint write"
    if now["stage"] or (final in now["manifests"] and not now["metrics"]):
        return "publishing"
    return "training"


def calibrate(zygote: Zygote, run: Run, log: Path) -> dict[str, float]:
    """Run uninterrupted, polling; the duration of each phase on this machine now."""
    events: dict[str, float] = {}
    pid = zygote.start(run.argv, log)
    began = time.monotonic()

    def record(now: dict, t: float) -> None:  # when each thing was first seen
        for name in now["dirs"]:
            events.setdefault(f"dir {name}", t)
        for name in now["manifests"]:
            events.setdefault(f"manifest {name}", t)
        for key in ("stage", "weights", "mlmodel", "metrics"):
            if now[key]:
                events.setdefault(key, t)

    ended = _poll(run, pid, record)
    assert zygote.status() == 0, log.read_text()[-3000:]
    steps = sorted(int(k.split("-")[-1]) for k in events if k.startswith("manifest "))
    writes = [events[f"manifest checkpoint-{s}"] - events[f"dir checkpoint-{s}"] for s in steps]
    gaps = [events[f"dir checkpoint-{b}"] - events[f"manifest checkpoint-{a}"] for a, b in zip(steps, steps[1:])]
    return {"checkpoint": max(statistics.median(writes), 0.01), "training": statistics.median(gaps),
            "publishing": events["metrics"] - events["stage"],
            "model-moved-in": max(events["mlmodel"] - events["weights"], 0.01),
            "mlflow-renamed": 0.0, "total": ended - began}  # a window of milliseconds: kill as soon as seen


def _poll(run: Run, pid: int, each, until=None) -> float:
    """Poll the folders until the process `pid` is gone (or `until(now)` is true); returns the time it stopped."""
    while True:
        now = run.look()
        t = time.monotonic()
        each(now, t)
        if (until is not None and until(now, t)) or not _alive(pid):
            return t
        time.sleep(0.002)


def _alive(pid: int) -> bool:
    """The zygote's child `pid` runs (not gone, not a zombie awaiting its parent)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False


def check_consistent(run: Run) -> None:
    """No folder looks complete when it is not (see the module docstring)."""
    import torch
    from safetensors.torch import load_file

    for checkpoint in list_checkpoints(run.pt):
        if is_complete(checkpoint):
            assert problem(checkpoint, verify_hashes=True) == "", checkpoint
            load_file(checkpoint / "model.safetensors")
            torch.load(checkpoint / "optimizer.pt", weights_only=True)
    weights = run.pt / "model.safetensors"
    if weights.exists():
        assert (run.pt / "config.json").exists(), "model weights without their config.json"
        load_file(weights)
    if (run.pt / "metrics.json").exists():
        written = (run.pt / "metrics.json").stat().st_mtime_ns
        published = [p for p in run.pt.iterdir() if not p.name.startswith(".") and not p.name.startswith("checkpoint-")]
        newer = [p.name for p in published + [run.mlflow / "MLmodel"] if p.exists() and p.stat().st_mtime_ns > written]
        assert not newer, f"metrics.json ({written}) is older than {newer}: a stale result beside a new model " \
                          f"{ {p.name: p.stat().st_mtime_ns for p in published} }"
        metrics = json.loads((run.pt / "metrics.json").read_text())
        best = Path(metrics["best_checkpoint"])
        assert is_complete(best), f"metrics.json names {best}, which is not a complete checkpoint"
        assert weights_digest(run.pt) == weights_digest(best), "metrics.json beside weights it does not describe"
        assert (run.mlflow / "MLmodel").exists(), "metrics.json written before the MLflow model was in place"
    if run.mlflow.exists() and any(run.mlflow.iterdir()):
        assert (run.mlflow / "MLmodel").exists(), f"a partial MLflow folder: {sorted(os.listdir(run.mlflow))}"
        files = list(run.mlflow.rglob("*.safetensors"))
        assert files, "an MLflow folder without weights"
        for path in files:
            load_file(path)


def newest_complete(run: Run):
    complete = [c for c in list_checkpoints(run.pt) if problem(c, verify_hashes=True) == ""]
    return complete[-1].name if complete else None


def _step(name) -> int:
    return int(name.rsplit("-", 1)[1]) if name else 0


def test_killed_at_random_instants_always_resumes_to_the_same_weights(tmp_path, tiny_preprocess_output,
                                                                       tiny_model_selector):
    rng = random.Random(SEED)
    zygote = Zygote(tmp_path)
    try:
        reference = Run(tmp_path / "reference", tiny_preprocess_output, tiny_model_selector)
        durations = calibrate(zygote, reference, tmp_path / "reference.log")
        expected = weights_digest(reference.pt)
        expected_metrics = json.loads((reference.pt / "metrics.json").read_text())
        final = f"checkpoint-{STEPS}"

        training, publishing = TRAINING_PHASES[:], PUBLISHING_PHASES[:]
        rng.shuffle(training)
        rng.shuffle(publishing)
        plan = training + publishing
        # One output location, killed over and over. A run that finishes before its kill's instant is checked, and
        # the next one re-publishes into that finished folder (a retried pipeline step): stale results must go first.
        run = Run(tmp_path / "run", tiny_preprocess_output, tiny_model_selector)
        kills, finished, attempt = [], 0, 0
        while plan or not finished or not (run.pt / "metrics.json").exists():
            assert attempt < 3 * KILLS, f"too many kills missed their instant: {kills}"
            start = run.look()
            phase = plan[0] if plan else None
            if phase in ("training", "checkpoint") and final in start["manifests"]:
                phase = plan[0] = rng.choice(PUBLISHING_PHASES)  # training is over: kill it while publishing
            resume_from = newest_complete(run)
            attempt += 1
            log = tmp_path / f"attempt{attempt}.log"
            pid = zygote.start(run.argv, log)
            delay = rng.uniform(0, durations[phase]) if phase else 0.0
            fired: list[float] = []  # when the phase began

            def watch(now, t):
                if phase and not fired and _trigger(phase, start, now):
                    fired.append(t)

            _poll(run, pid, watch, until=lambda now, t: bool(fired) and t >= fired[0] + delay)
            now = run.look()
            if fired and time.monotonic() >= fired[0] + delay and _alive(pid):
                os.kill(pid, signal.SIGKILL)
            status = zygote.status()
            text = log.read_text()
            said = f"resuming from {run.pt / resume_from}" if resume_from else "no usable checkpoint"
            assert said in text, f"attempt {attempt} did not resume from the newest complete checkpoint " \
                                 f"{resume_from}:\n{text[-2000:]}"
            check_consistent(run)
            assert _step(newest_complete(run)) >= _step(resume_from), "a complete checkpoint was lost"
            if status == -signal.SIGKILL:
                kills.append((phase, _landed(now, final)))
                plan.pop(0)
                continue
            assert status == 0, f"attempt {attempt} failed:\n{text[-3000:]}"
            finished += 1  # finished before the kill's instant: whole and right
            torn = [c.name for c in list_checkpoints(run.pt) if not is_complete(c)]
            assert not torn, f"attempt {attempt} finished beside torn checkpoints {torn}"
            assert weights_digest(run.pt) == expected
            metrics = json.loads((run.pt / "metrics.json").read_text())
            for key in ("validation_metrics", "test_metrics", "best_metric", "per_entity"):
                assert figures(metrics[key]) == figures(expected_metrics[key]), key
    finally:
        zygote.close()
    landed = {where: sum(1 for _, w in kills if w == where) for where in ("training", "checkpoint write", "publishing")}
    print(f"\n{len(kills)} kills in {attempt} runs ({finished} finished); landed: {landed}; phases (s): "
          f"{ {k: round(v, 3) for k, v in durations.items()} }")
    assert len(kills) >= 20
    assert landed["checkpoint write"] >= 1 and landed["publishing"] >= 1 and landed["training"] >= 1, landed
