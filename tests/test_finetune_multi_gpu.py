"""The single-pod finetune component with several GPUs runs torchrun with one process per GPU.

There is no GPU here: TOKCLS_NPROC_PER_NODE stands in for the pod's GPU count (trainer.distributed.local_processes),
and the processes train on CPU (gloo), as the trainer does under any CPU torchrun. Slow (two training processes); the
checks before torchrun starts run without it.
"""

from __future__ import annotations

import inspect
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest


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


@pytest.mark.slow
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


@pytest.fixture
def torchrun_calls(monkeypatch):
    """torchrun replaced: the commands it would run, answered with the exit code in calls.code."""
    calls = SimpleNamespace(commands=[], code=0)

    def call(command, *args, **kwargs):
        calls.commands.append(command)
        return calls.code

    monkeypatch.setattr(subprocess, "call", call)
    monkeypatch.setenv("TOKCLS_NPROC_PER_NODE", "2")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    return calls


def test_bad_input_is_one_error_before_torchrun_starts(tmp_path, tiny_preprocess_output, tiny_model_selector,
                                                      torchrun_calls, capsys):
    bad = tmp_path / "bad_selector"
    bad.mkdir()
    (bad / "README").write_text("not a model")
    with pytest.raises(SystemExit) as info:
        _run_component(tmp_path, tiny_preprocess_output, bad, num_train_epochs=1)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "no model found in" in err, err
    assert len(err.splitlines()) == 1  # one line, from this process: no rank started
    assert torchrun_calls.commands == []
    assert not (tmp_path / "pytorch_model_folder").exists() and not (tmp_path / "mlflow_model_folder").exists()


@pytest.mark.parametrize("train_batch_size,valid", [(16, True), (8, False)], ids=["for-2-ranks", "for-1-rank"])
def test_inputs_are_checked_with_the_ranks_world_size(tmp_path, tiny_preprocess_output, tiny_model_selector,
                                                      torchrun_calls, train_batch_size, valid):
    """A DeepSpeed train_batch_size is the global batch: 8 per rank x 2 ranks = 16 is right under torchrun."""
    from trainer.config import FinetuneConfig
    from trainer.distributed import run_under_torchrun
    from trainer.errors import ConfigError

    (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": train_batch_size,
                                                 "train_micro_batch_size_per_gpu": 8}))
    config = FinetuneConfig(preprocess_output=str(tiny_preprocess_output), model_selector_output=str(tiny_model_selector),
                            pytorch_model_folder=str(tmp_path / "pt"), mlflow_model_folder=str(tmp_path / "mlflow"),
                            per_device_train_batch_size=8, apply_deepspeed=True, deepspeed=str(tmp_path / "ds.json"))
    if valid:
        run_under_torchrun(config, 2)
        assert len(torchrun_calls.commands) == 1 and "--nproc_per_node=2" in torchrun_calls.commands[0]
    else:
        with pytest.raises(ConfigError, match="train_batch_size"):
            run_under_torchrun(config, 2)
        assert torchrun_calls.commands == []


def test_a_failing_torchrun_fails_the_step(tmp_path, tiny_preprocess_output, tiny_model_selector, torchrun_calls):
    torchrun_calls.code = 1  # a rank failed while training: the inputs were fine
    with pytest.raises(RuntimeError, match="torchrun with 2 processes failed with exit code 1"):
        _run_component(tmp_path, tiny_preprocess_output, tiny_model_selector, num_train_epochs=1)
    assert len(torchrun_calls.commands) == 1
