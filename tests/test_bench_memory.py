"""bench/memory_profile.py: it names every phase of a fine-tune and leaves the trainer as it found it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import memory_profile  # noqa: E402


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set from /proc (Linux)")
def test_profile_names_every_phase_of_a_finetune_and_undoes_its_wrappers(tiny_run_dir, tmp_path):
    import trainer.mlflow_model as mlflow_model
    import trainer.outputs as outputs

    def wrapped():
        return outputs.publish, outputs.score_published, outputs.export_onnx_output, mlflow_model.save_mlflow_model

    before = wrapped()
    result = memory_profile.profile(tiny_run_dir, tmp_path / "work", {"num_train_epochs": 2, "precision": "32"})
    peaks = result["peak_rss_mb_by_phase"]
    assert list(peaks) == list(memory_profile.PHASES)  # every phase was entered, in the fine-tune's order
    assert all(value > 0 for value in peaks.values())
    assert result["peak_rss_mb"] == max(peaks.values()) <= result["ru_maxrss_mb"] + 1  # the kernel's own peak
    assert result["config"]["num_train_epochs"] == 2 and result["config"]["per_device_train_batch_size"] == 16
    assert (tmp_path / "work" / "onnx_model_folder" / "model.onnx").exists()
    assert wrapped() == before
