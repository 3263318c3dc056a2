"""What a person sees in a pod log: progress lines at a steady pace, evaluations, one summary, and no warning on
the default path."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from trainer.progress import ProgressCallback, ProgressMeter

LINE = re.compile(r"step (\d+)/(\d+) \((\d+)%\) \| epoch [\d.]+ \| loss [\d.]+ \| [\d,]+ tok/s \| elapsed \S+ \| "
                  r"ETA (\S+)$")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run(callback, meter, clock, steps: int, seconds_per_step: float, tokens_per_step: int = 100, loss=None):
    import torch

    state = SimpleNamespace(global_step=0, max_steps=steps, epoch=0.0, is_world_process_zero=True)
    args = SimpleNamespace(per_device_train_batch_size=16, gradient_accumulation_steps=1)
    callback.on_train_begin(args, state, None)
    for step in range(1, steps + 1):
        clock.now += seconds_per_step
        meter.add(torch.tensor(0.5 if loss is None else loss(step)), torch.ones(tokens_per_step), None)
        state.global_step, state.epoch = step, step / steps
        callback.on_step_end(args, state, None)
    callback.on_evaluate(args, state, None, metrics={"eval_loss": 0.25, "eval_f1": 0.5, "eval_runtime": 1.0})
    callback.on_train_end(args, state, None)


def _logged(caplog, interval_s: float, steps: int) -> list[str]:
    """The lines a run of `steps` steps at a step a second (100 tokens each) logs at `interval_s`."""
    clock, meter = Clock(), ProgressMeter()
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        _run(ProgressCallback(meter, interval_s=interval_s, clock=clock, log=log), meter, clock, steps=steps,
             seconds_per_step=1.0)
    return [r.getMessage() for r in caplog.records]


def test_a_progress_line_every_interval_with_rate_and_eta(caplog):
    lines = _logged(caplog, interval_s=10.0, steps=100)
    progress = [LINE.search(line) for line in lines if line.startswith("step ")]
    assert all(progress)
    # the first step, then one line per 10 s (a step a second), and the last step
    assert [int(m.group(1)) for m in progress] == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    assert "100 tok/s" in lines[2]  # 100 tokens a step, a step a second
    assert progress[5].group(4) == "49s"  # 51 of 100 steps in 51 s: 49 left
    assert progress[-1].group(4) == "0s"
    assert any(line == "evaluation at step 100: loss 0.2500 | f1 0.5000" for line in lines), lines
    assert lines[-1] == "trained 100 steps in 1m40s: 10,000 tokens, 100 tok/s; mean loss 0.5000, last 9 steps 0.5000"


@pytest.mark.parametrize("interval_s", [0.0, 7.0, 1000.0])
def test_the_summary_loss_does_not_depend_on_the_pace_of_the_lines(caplog, interval_s):
    """The summary's mean loss is over every step (1..20 here: 10.5), whatever progress_seconds is; the last line's
    window is named by its span (it was once shown as "final loss" and moved with progress_seconds)."""
    clock, meter = Clock(), ProgressMeter()
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        _run(ProgressCallback(meter, interval_s=interval_s, clock=clock, log=log), meter, clock, steps=20,
             seconds_per_step=1.0, loss=float)
    summary = caplog.records[-1].getMessage()
    window = {0.0: "last 1 step 20.0000", 7.0: "last 5 steps 18.0000", 1000.0: "last 19 steps 11.0000"}[interval_s]
    assert summary.endswith(f"; mean loss 10.5000, {window}"), summary


def test_no_line_between_intervals(caplog):
    lines = _logged(caplog, interval_s=1000.0, steps=50)
    assert [int(m.group(1)) for m in map(LINE.search, lines) if m] == [1, 50]


def test_the_cli_log_shows_progress_and_no_warning(tmp_path, tiny_preprocess_output, tiny_model_selector):
    """The finetune program as a pod runs it (a real process, stderr as the pod log): progress lines with step,
    loss, tokens/s and ETA, the evaluations, one summary, and no warning at all on the default path (no
    model-load report for the new head, no DeepSpeed accelerator notice) and no progress bar."""
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="default")
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "--preprocess_output", str(tiny_preprocess_output),
         "--model_selector_output", str(tiny_model_selector),
         "--pytorch_model_folder", str(tmp_path / "pytorch"), "--mlflow_model_folder", str(tmp_path / "mlflow"),
         "--per_device_train_batch_size", "16", "--num_train_epochs", "2", "--learning_rate", "5e-3",
         "--progress_seconds", "0", "--export_onnx", "false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    progress = [m for m in map(LINE.search, log.splitlines()) if m]
    assert len(progress) >= 10 and progress[-1].group(1) == progress[-1].group(2), log[-3000:]
    assert len(re.findall(r"evaluation at step \d+: loss [\d.]+ \| precision", log)) == 2, log[-3000:]
    assert len(re.findall(r"trained \d+ steps in \S+: [\d,]+ tokens", log)) == 1
    noisy = [line for line in log.splitlines()
             if re.search(r"\bWARNING\b|Warning:|LOAD REPORT|unable to detect", line)]
    assert not noisy, noisy
    bars = [line for line in log.splitlines() if re.search(r"\d+/\d+ \[[\d:<]+|it/s\]|\r", line)]
    assert not bars, bars  # no progress bar (MLflow's artifact bar was one, written while saving the MLflow model)


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (65, "1m05s"), (3725, "1h02m05s")])
def test_durations_read_as_a_person_writes_them(seconds, text):
    from trainer.progress import duration

    assert duration(seconds) == text
