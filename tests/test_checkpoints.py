"""Checkpoints count only when their manifest matches; resume skips the bad ones (saying why) and never unpickles
code from a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
from conftest import Crash, StartStep

from trainer.checkpoints import MANIFEST, choose_resume_checkpoint, is_complete, list_checkpoints, problem
from trainer.finetune import finetune



@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny_preprocess_output, tiny_model_selector):
    """A run killed at step 35: checkpoints 10, 20, 30 (4 epochs of 10 steps), no published model."""
    from trainer.config import FinetuneConfig

    root = tmp_path_factory.mktemp("crashed")
    config = FinetuneConfig(preprocess_output=str(tiny_preprocess_output), model_selector_output=str(tiny_model_selector),
                            pytorch_model_folder=str(root / "pytorch"), mlflow_model_folder=str(root / "mlflow"),
                            per_device_train_batch_size=16, learning_rate=2e-3, num_train_epochs=4,
                            metric_for_best_model="loss")
    with pytest.raises(RuntimeError, match="simulated node failure"):
        finetune(config, callbacks=[Crash(35)])
    return config


@pytest.fixture()
def copy_of(crashed, tmp_path):
    """A fresh copy of the crashed run's folder and its config."""
    import dataclasses
    import shutil

    target = tmp_path / "pytorch"
    shutil.copytree(crashed.pytorch_model_folder, target)
    return dataclasses.replace(crashed, pytorch_model_folder=str(target), mlflow_model_folder=str(tmp_path / "mlflow"),
                               resume_from_checkpoint=True)


def test_every_checkpoint_gets_a_manifest_of_its_files(crashed):
    checkpoints = list_checkpoints(crashed.pytorch_model_folder)
    assert [c.name for c in checkpoints] == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    for checkpoint in checkpoints:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        listed = set(manifest["files"])
        assert {"trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors"} <= listed
        assert listed == {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()} - {MANIFEST}
        assert is_complete(checkpoint) and problem(checkpoint, verify_hashes=True) == ""


@pytest.mark.parametrize("damage,reason", [
    (lambda c: (c / "trainer_state.json").write_bytes(b""), "trainer_state.json has 0 bytes"),  # disk full
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:1000]), "optimizer.pt has 1000"),
    (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda c: (c / MANIFEST).unlink(), "no checkpoint_manifest.json"),
    (lambda c: (c / MANIFEST).write_text("{"), "unreadable"),
], ids=["empty-state", "truncated-optimizer", "missing-weights", "no-manifest", "corrupt-manifest"])
def test_resume_skips_a_damaged_checkpoint_says_why_and_starts_from_the_one_before(copy_of, damage, reason, caplog):
    latest = Path(copy_of.pytorch_model_folder) / "checkpoint-30"
    damage(latest)
    assert not is_complete(latest)
    start = StartStep()
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoints"):
        result = finetune(copy_of, callbacks=[start])
    assert start.step == 20  # resumed from checkpoint-20, not from scratch and not from the damaged one
    assert any("checkpoint-30" in r.getMessage() and reason in r.getMessage() for r in caplog.records), caplog.text
    assert (Path(copy_of.pytorch_model_folder) / "metrics.json").exists() and result.best_checkpoint


def test_same_size_altered_bytes_fail_the_hash_check(copy_of):
    weights = Path(copy_of.pytorch_model_folder) / "checkpoint-30" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert is_complete(weights.parent)  # sizes alone look fine ...
    assert "does not match its SHA-256" in problem(weights.parent, verify_hashes=True)  # ... the hash does not
    assert choose_resume_checkpoint(copy_of.pytorch_model_folder).name == "checkpoint-20"


class _Planted:
    """Unpickling this runs code: it writes a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code ran",))


def test_a_planted_pickle_is_never_run_on_resume(copy_of, tmp_path):
    import torch

    from trainer.checkpoints import write_manifest

    marker = tmp_path / "pwned"
    checkpoint = Path(copy_of.pytorch_model_folder) / "checkpoint-30"
    torch.save({"state": {}, "param_groups": [], "x": _Planted(str(marker))}, checkpoint / "optimizer.pt")
    write_manifest(checkpoint)  # whoever can write the PVC can write a matching manifest too
    start = StartStep()
    finetune(copy_of, callbacks=[start])
    assert start.step == 20 and not marker.exists()


def test_deepspeed_checkpoint_engine_loads_weights_only(tmp_path):
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from trainer import safe_loading

    marker = tmp_path / "pwned"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _Planted(str(marker))}, path)
    safe_loading.install()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        TorchCheckpointEngine().load(str(path))
    assert not marker.exists()
    # ... while what DeepSpeed itself writes still loads
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    torch.save({"loss_scaler": LossScaler(1.0), "tensor": torch.ones(2)}, path)
    assert TorchCheckpointEngine().load(str(path))["tensor"].sum() == 2


def test_torn_checkpoints_are_removed_complete_ones_kept(copy_of):
    root = Path(copy_of.pytorch_model_folder)
    torn = root / "checkpoint-40"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    os.utime(torn)
    assert choose_resume_checkpoint(root, remove_torn=True).name == "checkpoint-30"
    assert not torn.exists() and (root / "checkpoint-30").exists()


def test_save_total_limit_deletes_a_checkpoint_only_once_the_next_is_complete(make_config, monkeypatch):
    """save_total_limit=1, killed while checkpoint-20's manifest is being written: checkpoint-10 is still there to
    resume from (the HF Trainer's own rotation deletes it before the manifest exists)."""
    import dataclasses

    from trainer import checkpoints, hf_trainer

    real = checkpoints.write_manifest

    def killed(checkpoint):
        if checkpoint.name == "checkpoint-20":
            raise RuntimeError("killed while writing the manifest")
        return real(checkpoint)

    monkeypatch.setattr(hf_trainer, "write_manifest", killed)  # what the manifest callback calls
    config = make_config("limited", num_train_epochs=3, save_total_limit=1, learning_rate=2e-3,
                         metric_for_best_model="loss")
    with pytest.raises(RuntimeError, match="killed while writing the manifest"):
        finetune(config)
    root = Path(config.pytorch_model_folder)
    assert choose_resume_checkpoint(root).name == "checkpoint-10"
    monkeypatch.undo()
    start = StartStep()
    result = finetune(dataclasses.replace(config, resume_from_checkpoint=True), callbacks=[start])
    assert start.step == 10
    kept = [str(c) for c in list_checkpoints(root)]
    assert result.best_checkpoint in kept and len(kept) <= 2 and kept[-1].endswith("checkpoint-30")


def test_a_rotation_cut_short_is_cleaned_up_by_the_next_resume(make_config, monkeypatch):
    """save_total_limit=1, killed while the rotation deletes checkpoint-10 (its manifest already gone, the rest not):
    the resumed run removes that torn, older folder, so the finished output holds only complete checkpoints. (Resume
    used to remove torn checkpoints newer than the one it chose only, and rotation looks at complete ones only: the
    half-deleted folder stayed for good.)"""
    import dataclasses
    import shutil

    from trainer import checkpoints

    real = shutil.rmtree

    def killed(path, *args, **kwargs):
        if Path(path).name == "checkpoint-10" and not (Path(path) / MANIFEST).exists():
            raise RuntimeError("killed while deleting checkpoint-10")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed)
    config = make_config("rotated", num_train_epochs=3, save_total_limit=1, learning_rate=2e-3,
                         metric_for_best_model="loss")
    with pytest.raises(RuntimeError, match="killed while deleting checkpoint-10"):
        finetune(config)
    monkeypatch.undo()
    root = Path(config.pytorch_model_folder)
    torn = root / "checkpoint-10"
    assert torn.is_dir() and not (torn / MANIFEST).exists() and (root / "checkpoint-20" / MANIFEST).exists()
    finetune(dataclasses.replace(config, resume_from_checkpoint=True))
    assert not torn.exists()
    assert all(is_complete(c) for c in list_checkpoints(root)), [(c.name, problem(c)) for c in list_checkpoints(root)]
