"""Publishing leaves no stale result beside a new one, a resumed run replaces the MLflow model its own
pytorch_model_folder published (a killed run's) — never anybody else's — and a kill leaves nothing outside the
outputs' folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import weights_digest

from trainer.errors import InputError
from trainer.finetune import finetune


class Killed(Exception):
    """Stands for SIGKILL at a chosen instant of publishing."""


def _kill_when(monkeypatch, module, name: str, condition=lambda *args, **kwargs: True):
    """Make module.name raise Killed (instead of running) when condition(*args) holds."""
    real = getattr(module, name)

    def fake(*args, **kwargs):
        if condition(*args, **kwargs):
            raise Killed(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fake)


def test_republishing_removes_the_old_results_first(make_config, monkeypatch):
    """A finished run resumed for more epochs and killed while publishing: its old metrics.json must be gone before
    the new weights arrive (they no longer describe the folder)."""
    from trainer import mlflow_model

    settings = dict(learning_rate=2e-3, metric_for_best_model="loss", evaluation_strategy="steps", eval_steps=5)
    first = finetune(make_config("run", num_train_epochs=1, **settings))
    root = Path(first.pytorch_model_folder)
    assert (root / "metrics.json").exists() and first.best_checkpoint.endswith("checkpoint-10")

    _kill_when(monkeypatch, mlflow_model, "save_mlflow_model")  # after the new model moved in, before MLflow
    with pytest.raises(Killed):
        finetune(make_config("run", num_train_epochs=2, resume_from_checkpoint=True, **settings))
    assert not (root / "metrics.json").exists(), "the old metrics.json stayed beside the new weights"
    best = json.loads((root / "checkpoint-20" / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert best != first.best_checkpoint and weights_digest(root) == weights_digest(best)  # the new model is in

    monkeypatch.undo()
    second = finetune(make_config("run", num_train_epochs=2, resume_from_checkpoint=True, **settings))
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == second.best_checkpoint != first.best_checkpoint
    assert weights_digest(root) == weights_digest(second.best_checkpoint)


@pytest.fixture
def killed_before_metrics(make_config, monkeypatch):
    """A run killed after its MLflow model was renamed into place, before metrics.json."""
    from trainer import outputs

    config = make_config("run", num_train_epochs=2, learning_rate=2e-3)
    _kill_when(monkeypatch, outputs, "write_json_atomic", lambda path, data: Path(path).name == "metrics.json")
    with pytest.raises(Killed):
        finetune(config)
    monkeypatch.undo()
    assert (Path(config.mlflow_model_folder) / "MLmodel").exists()
    assert not (Path(config.pytorch_model_folder) / "metrics.json").exists()
    return config


def test_resume_replaces_the_mlflow_model_its_own_folder_published(killed_before_metrics, make_config):
    mlmodel = Path(killed_before_metrics.mlflow_model_folder) / "MLmodel"
    before = mlmodel.stat().st_ino
    finetune(make_config("run", num_train_epochs=2, learning_rate=2e-3, resume_from_checkpoint=True))
    assert (Path(killed_before_metrics.pytorch_model_folder) / "metrics.json").exists()
    assert mlmodel.stat().st_ino != before  # published again, as a whole


def test_an_mlflow_folder_changed_since_it_was_published_is_not_overwritten(killed_before_metrics, make_config):
    (Path(killed_before_metrics.mlflow_model_folder) / "notes.txt").write_text("someone's")
    with pytest.raises(InputError, match="mlflow_model_folder .* already exists and is not empty"):
        finetune(make_config("run", num_train_epochs=2, learning_rate=2e-3, resume_from_checkpoint=True))
    assert (Path(killed_before_metrics.mlflow_model_folder) / "notes.txt").read_text() == "someone's"


def test_a_kill_in_the_mlflow_save_leaves_its_scratch_where_the_next_run_removes_it(make_config, tmp_path):
    """SIGKILL while MLflow packs the model: the served copy it was packing sits in a staging folder of the MLflow
    output, not in the system's temporary folder (where every such kill left a model copy for good), and the next
    run's publication removes it."""
    config = make_config("run", num_train_epochs=1, learning_rate=2e-3)
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    script = ("import json, os, signal, sys\nimport mlflow.pyfunc\nfrom trainer.config import FinetuneConfig\n"
              "from trainer.finetune import finetune\n"
              "mlflow.pyfunc.save_model = lambda **kwargs: os.kill(os.getpid(), signal.SIGKILL)\n"
              "finetune(FinetuneConfig.from_dict(json.loads(sys.argv[1])))\n")
    killed = subprocess.run([sys.executable, "-c", script, json.dumps(config.to_dict())], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TMPDIR": str(system_tmp)},
                            cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not list(system_tmp.glob("mlflow-model-*")), "the kill left a model copy in the temporary folder"
    mlflow_folder = Path(config.mlflow_model_folder)
    stages = list(mlflow_folder.parent.glob(f".{mlflow_folder.name}.incomplete-*"))
    assert any(any(stage.rglob("model.safetensors")) for stage in stages), stages  # the copy being packed

    finetune(make_config("run", num_train_epochs=1, learning_rate=2e-3, resume_from_checkpoint=True))
    assert (mlflow_folder / "MLmodel").exists()
    assert not list(mlflow_folder.parent.glob(f".{mlflow_folder.name}.*")), "a staging folder outlived the run"


# --- the programs that write one new output folder (preprocess, model import, data import) --------------------------
def test_a_new_output_folder_first_removes_what_a_killed_run_left_beside_it(tmp_path):
    from trainer.publish import new_output_folder

    out = tmp_path / "pre"
    left = [tmp_path / f".pre.{kind}-x1" for kind in ("incomplete", "old", "download")]
    for stage in left:
        (stage / "sub").mkdir(parents=True)
        (stage / "sub" / "train.jsonl").write_text("{}\n")
    others = [tmp_path / ".pre2.incomplete-x1", tmp_path / ".pre.cache"]  # another output's, and not a stage
    for folder in others:
        folder.mkdir()
    with new_output_folder(out, "preprocess_output"):
        assert not any(stage.exists() for stage in left)
    assert all(folder.is_dir() for folder in others)


def test_a_failed_program_removes_the_folders_it_created_for_its_output(tmp_path):
    from trainer.publish import new_output_folder

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError):
        with new_output_folder(tmp_path / "a" / "b" / "c" / "out", "data_output"):
            (tmp_path / "a" / "b" / "c").mkdir(parents=True)  # what staging does first
            raise RuntimeError("the download failed")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["notes.txt"]  # b/c gone, a and its file stay
    with pytest.raises(RuntimeError):
        with new_output_folder(tmp_path / "x" / "out", "data_output"):
            (tmp_path / "x").mkdir()
            (tmp_path / "x" / "written-by-someone-else").write_text("")
            raise RuntimeError("failed")
    assert (tmp_path / "x" / "written-by-someone-else").exists()  # a folder that is not empty stays


def test_published_models_and_checkpoints_are_readable_by_all_whatever_the_umask(make_config):
    """Another user (the next step's pod, a serving pod) reads what a run publishes: safetensors writes its files
    owner-only (0600), and a umask of 077 made the output folders owner-only too."""
    config = make_config(num_train_epochs=1, export_onnx=False)
    previous = os.umask(0o077)
    try:
        finetune(config)
    finally:
        os.umask(previous)
    unreadable = []
    for root in (Path(config.pytorch_model_folder), Path(config.mlflow_model_folder)):
        for path in (root, *root.rglob("*")):
            if not path.is_symlink() and not path.stat().st_mode & (0o005 if path.is_dir() else 0o004):
                unreadable.append(str(path.relative_to(root.parent)))
    assert not unreadable, unreadable
    assert any(p.name.startswith("checkpoint-") for p in Path(config.pytorch_model_folder).iterdir())
