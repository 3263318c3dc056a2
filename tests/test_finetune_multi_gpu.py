"""The single-pod finetune component with several GPUs runs torchrun with one process per GPU.

There is no GPU here: TOKCLS_NPROC_PER_NODE stands in for the pod's GPU count (trainer.distributed.local_processes),
and the processes train on CPU (gloo), as the trainer does under any CPU torchrun. Slow (two training processes).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow


class _Artifact(SimpleNamespace):
    def log_metric(self, name, value):
        self.metadata[name] = value


def _run_component(tmp_path, preprocess_output, model_selector, **values):
    from components.finetune.component import finetune

    outputs = {name: _Artifact(path=str(tmp_path / name), metadata={})
               for name in ("pytorch_model_folder", "mlflow_model_folder", "onnx_model_folder", "metrics", "report")}
    kwargs = {name: p.default for name, p in inspect.signature(finetune.python_func).parameters.items()
              if p.default is not inspect.Parameter.empty}
    kwargs.update(preprocess_output=_Artifact(path=str(preprocess_output), metadata={}),
                  model_selector_output=_Artifact(path=str(model_selector), metadata={}), **outputs, **values)
    finetune.python_func(**kwargs)
    return outputs


def test_two_gpus_run_two_processes_and_fill_the_outputs(tmp_path, tiny_preprocess_output, tiny_model_selector,
                                                         monkeypatch):
    monkeypatch.setenv("TOKCLS_NPROC_PER_NODE", "2")
    outputs = _run_component(tmp_path, tiny_preprocess_output, tiny_model_selector, num_train_epochs=1,
                             per_device_train_batch_size=8, per_device_eval_batch_size=16, learning_rate=5e-3,
                             progress_seconds=0.0)
    model = Path(outputs["pytorch_model_folder"].path)
    # 160 training rows, 8 per process: 10 optimizer steps with 2 processes (20 in one process)
    assert [p.name for p in model.glob("checkpoint-*")] == ["checkpoint-10"]
    assert (Path(outputs["mlflow_model_folder"].path) / "MLmodel").exists()
    assert (Path(outputs["onnx_model_folder"].path) / "model.onnx").exists()  # rank 0 exports it
    # Metrics and the report come from rank 0's metrics.json, as in the in-process run
    assert isinstance(outputs["metrics"].metadata["test_f1"], float)
    assert "Per entity" in Path(outputs["report"].path).read_text()
    assert outputs["pytorch_model_folder"].metadata["processes"] == 2


def test_a_failing_rank_fails_the_step(tmp_path, tiny_preprocess_output, tiny_model_selector, monkeypatch):
    monkeypatch.setenv("TOKCLS_NPROC_PER_NODE", "2")
    bad = tmp_path / "bad_selector"
    bad.mkdir()
    (bad / "README").write_text("not a model")
    with pytest.raises(RuntimeError, match="torchrun with 2 processes failed with exit code"):
        _run_component(tmp_path, tiny_preprocess_output, bad, num_train_epochs=1)
