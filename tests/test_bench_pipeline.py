"""bench/pipeline_benchmark.py: the pipeline's wall time split into steps and fine-tune phases, read from a log
written with kfp 2.17's own formatters (its orchestrator's and its executor's); what a run leaves on disk."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import pipeline_benchmark as pb  # noqa: E402

DAY = datetime.datetime(2026, 12, 6, 23, 59, 50)  # the run crosses midnight


def _records():
    """(seconds after DAY, source, message) of a pipeline run: tasks, the fine-tune's marks, the local summary."""
    from kfp.local import logging_utils as lu
    from kfp.local import status

    ok = lu.format_status(status.Status.SUCCESS)
    task = lu.format_task_name
    return [
        (0.0, "kfp", f"Executing task {task('model-import')}"),
        (0.2, "kfp", f"Task {task('model-import')} finished with status {ok}"),
        (0.3, "kfp", f"Executing task {task('preprocess')}"),
        (4.3, "kfp", f"Task {task('preprocess')} finished with status {ok}"),
        (4.4, "kfp", f"Executing task {task('finetune')}"),
        (5.0, "executor", "FinetuneConfig:"),
        (10.5, "executor", "training: 213 optimizer steps, 16 per device x 1 process(es) x 1 accumulation"),
        (11.0, "executor", "step 1/213 (0%) | epoch 0.00 | loss 3.1705 | 1,776 tok/s | elapsed 0s | ETA 1m05s"),
        (50.5, "executor", "trained 213 steps in 40s: 106,296 tokens, 2,500 tok/s; final loss 0.1859"),
        (56.5, "executor", "test split scored on the published model (inference core, 1287 sentences, 5.0 s)"),
        (60.5, "kfp", f"Task {task('finetune')} finished with status {ok}"),
        (60.6, "kfp", f"Executing task {task('evaluate')}"),
        (61.0, "kfp", f"Task {task('evaluate')} finished with status {ok}"),
    ]


def _log() -> str:
    """The log as the local run prints it: kfp's formatters, executor lines indented under their task."""
    from kfp.local import logging_utils as lu

    with lu.local_logger_context():
        orchestrator = logging.getLogger().handlers[0].formatter
    executor = logging.Formatter("[KFP Executor %(asctime)s %(levelname)s]: %(message)s")
    lines = []
    for offset, source, message in _records():
        record = logging.LogRecord("root", logging.INFO, __file__, 1, message, None, None)
        record.created = (DAY + datetime.timedelta(seconds=offset)).timestamp()
        record.msecs = (record.created % 1) * 1000
        lines.append(orchestrator.format(record) if source == "kfp" else "    " + executor.format(record))
    lines += ["", "=== token-classification pipeline (local) ===", "  pytorch_model_folder: /x/finetune/pytorch",
              "               test_f1: 0.2999", "         train_runtime: 40.2", "               seconds: 61.2"]
    return "\n".join(lines) + "\n"


def test_parse_log_reads_each_tasks_wall_time_and_the_training_marks_across_midnight():
    parsed = pb.parse_log(_log())
    steps = {name: round(t["end"] - t["start"], 3) for name, t in parsed["steps"].items()}
    assert steps == {"model-import": 0.2, "preprocess": 4.0, "finetune": 56.1, "evaluate": 0.4}
    assert round(parsed["marks"]["training"] - parsed["steps"]["finetune"]["start"], 3) == 6.1
    assert round(parsed["marks"]["trained"] - parsed["marks"]["training"], 3) == 40.0
    assert parsed["summary"]["seconds"] == "61.2" and parsed["summary"]["train_runtime"] == "40.2"


def test_breakdown_splits_the_time_outside_training_into_its_parts():
    metrics = {"predictions": {"seconds": 5.0}, "onnx_export": {"seconds": 1.5}}
    run = pb.breakdown(pb.parse_log(_log()), metrics)
    assert run["ratio"] == pytest.approx(61.2 / 40.2, abs=1e-3)
    assert run["outside_training"] == pytest.approx(21.0)
    ft = run["finetune"]
    assert ft["startup"] == pytest.approx(6.1) and ft["training"] == pytest.approx(40.0)
    assert ft["publishing_other"] == pytest.approx(10.0 - 5.0 - 1.5)  # 'trained' to the task's end, less the two
    parts = run["outside_training_parts"]
    assert parts["other_steps"] == pytest.approx(0.2 + 4.0 + 0.4)
    assert parts["finetune_after_training"] == pytest.approx(10.0)
    # the parts and the unaccounted rest add up to the time outside training
    assert (parts["other_steps"] + parts["finetune_startup"] + parts["finetune_after_training"] + parts["unaccounted"]
            + ft["training"] - run["train_runtime"]) == pytest.approx(run["outside_training"], abs=1e-6)


def test_median_of_takes_each_figures_median_over_the_runs():
    runs = [{"ratio": 1.5, "finetune": {"startup": 6.0}}, {"ratio": 1.4, "finetune": {"startup": 5.0}},
            {"ratio": 1.9, "finetune": {"startup": 9.0}, "extra": 1.0}]
    assert pb.median_of(runs) == {"ratio": 1.5, "finetune": {"startup": 6.0}, "extra": 1.0}


def _fake_pipeline(monkeypatch):
    """subprocess.call as a pipeline run that succeeds: it prints the log above and writes an output folder."""
    def call(command, cwd, stdout, stderr):
        out = Path(command[command.index("--output-dir") + 1])
        (out / "finetune").mkdir(parents=True)
        (out / "finetune" / "model.safetensors").write_bytes(b"0" * 1024)
        stdout.write(_log())
        return 0
    monkeypatch.setattr(pb.subprocess, "call", call)


@pytest.mark.parametrize("keep", [False, True])
def test_a_run_keeps_only_its_log_unless_keep_outputs(monkeypatch, tmp_path, keep):
    """Each run's pipeline outputs (~560 MB at 1 epoch) go once its figures are read; --keep-outputs keeps them."""
    _fake_pipeline(monkeypatch)
    work = tmp_path / "work"
    assert pb.main(["--runs", "2", "--workdir", str(work), "--output", str(tmp_path / "r.json")]
                   + (["--keep-outputs"] if keep else [])) == 0
    for run in ("run0", "run1"):
        assert (work / run / "pipeline.log").is_file()
        assert (work / run / "out" / "finetune" / "model.safetensors").exists() == keep
    assert json.loads((tmp_path / "r.json").read_text())["median"]["ratio"] == pytest.approx(61.2 / 40.2, abs=1e-3)


def test_the_default_temporary_workdir_is_removed_at_the_end(monkeypatch, tmp_path):
    _fake_pipeline(monkeypatch)
    made = []

    def mkdtemp(prefix):
        made.append(tmp_path / (prefix + "x"))
        made[-1].mkdir()
        return str(made[-1])
    monkeypatch.setattr(pb.tempfile, "mkdtemp", mkdtemp)
    assert pb.main(["--runs", "1", "--output", str(tmp_path / "r.json")]) == 0
    assert len(made) == 1 and not made[0].exists()
