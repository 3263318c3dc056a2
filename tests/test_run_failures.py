"""Failures while a fine-tune runs that are not bad input — the disk fills up, memory runs out — end the CLI with
exit code 1 and one line (what happened, the last complete checkpoint, how to go on), and that checkpoint resumes
the run to the uninterrupted run's weights."""

from __future__ import annotations

import errno
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import weights_digest

from trainer.checkpoints import MANIFEST, is_complete, list_checkpoints
from trainer.cli import finetune_main

FLAGS = ["--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--evaluation_strategy", "steps",
         "--eval_steps", "4", "--learning_rate", "5e-3", "--metric_for_best_model", "loss", "--group_by_length",
         "false"]


def argv(pre, model, out: Path, *extra: str) -> list[str]:
    return ["--preprocess_output", str(pre), "--model_selector_output", str(model), "--pytorch_model_folder",
            str(out / "pytorch"), "--mlflow_model_folder", str(out / "mlflow"), *FLAGS, *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_preprocess_output, tiny_model_selector) -> str:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert finetune_main(argv(tiny_preprocess_output, tiny_model_selector, out)) == 0
    return weights_digest(out / "pytorch")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def small_volume(tmp_path):
    """A 4 MiB tmpfs (root only): room for the run, until something else fills it."""
    folder = tmp_path / "volume"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or not permitted)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_volume_that_fills_up_while_training(small_volume, tiny_preprocess_output, tiny_model_selector,
                                               uninterrupted, capsys):
    """Another writer fills the volume once checkpoint-8 is complete: the next checkpoint cannot be written (a real
    ENOSPC, raised however torch or safetensors report it)."""
    filler = small_volume / "someone-elses-file"
    done = threading.Event()

    def fill():
        while not (small_volume / "pytorch" / "checkpoint-8" / MANIFEST).exists() and not done.is_set():
            time.sleep(0.005)
        import shutil

        with filler.open("wb") as handle:  # leave 16 KiB: less than a checkpoint
            handle.write(b"\0" * max(0, shutil.disk_usage(small_volume).free - 16 * 1024))

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        rc = finetune_main(argv(tiny_preprocess_output, tiny_model_selector, small_volume))
    finally:
        done.set()
        thread.join()
    line = one_error_line(capsys)
    assert rc == 1, line
    assert line.startswith("error: the disk is full") or line.startswith("error: a file could not be written"), line
    last = [c for c in list_checkpoints(small_volume / "pytorch") if is_complete(c)][-1]
    assert last.name in ("checkpoint-8", "checkpoint-12") and f"the last complete checkpoint is {last}" in line, line
    assert "then rerun with resume_from_checkpoint=true" in line
    assert not (small_volume / "pytorch" / "metrics.json").exists()

    filler.unlink()  # space freed: the run goes on from its last complete checkpoint
    assert finetune_main(argv(tiny_preprocess_output, tiny_model_selector, small_volume,
                              "--resume_from_checkpoint", "true")) == 0
    assert weights_digest(small_volume / "pytorch") == uninterrupted


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save, full disk
], ids=["enospc", "torch-zip-writer"])
def test_disk_full_while_saving_a_checkpoint(error, tmp_path, tiny_preprocess_output, tiny_model_selector,
                                             uninterrupted, capsys, monkeypatch):
    """Writing checkpoint-12's optimizer state fails as torch reports a full disk; checkpoint-8 stays resumable."""
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("checkpoint-12/optimizer.pt"):
            Path(f).write_bytes(b"PK\x03\x04 truncated")
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    rc = finetune_main(argv(tiny_preprocess_output, tiny_model_selector, tmp_path))
    line = one_error_line(capsys)
    assert rc == 1
    kind = "the disk is full" if isinstance(error, OSError) else "a file could not be written"
    assert line.startswith(f"error: {kind}"), line
    assert f"the last complete checkpoint is {tmp_path / 'pytorch' / 'checkpoint-8'};" in line
    assert "free" in line and "then rerun with resume_from_checkpoint=true" in line
    monkeypatch.undo()
    assert finetune_main(argv(tiny_preprocess_output, tiny_model_selector, tmp_path,
                              "--resume_from_checkpoint", "true")) == 0
    assert weights_digest(tmp_path / "pytorch") == uninterrupted


@pytest.mark.parametrize("error", [
    "CUDA out of memory. Tried to allocate 2.00 GiB",
    "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you tried to allocate 1024",
], ids=["cuda", "cpu"])
def test_out_of_memory_while_training(error, tmp_path, tiny_preprocess_output, tiny_model_selector, capsys,
                                      monkeypatch):
    import torch

    from trainer.hf_trainer import TokenClassificationTrainer

    real_step = TokenClassificationTrainer.training_step

    def step(self, model, inputs, num_items_in_batch=None):
        if self.state.global_step == 6:
            raise (torch.OutOfMemoryError if error.startswith("CUDA") else RuntimeError)(error)
        return real_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(TokenClassificationTrainer, "training_step", step)
    rc = finetune_main(argv(tiny_preprocess_output, tiny_model_selector, tmp_path))
    line = one_error_line(capsys)
    assert rc == 1
    assert line.startswith("error: out of memory") and error[:30] in line, line
    assert f"the last complete checkpoint is {tmp_path / 'pytorch' / 'checkpoint-4'};" in line
    assert "lower per_device_train_batch_size" in line


def test_a_bug_keeps_its_traceback(tmp_path, tiny_preprocess_output, tiny_model_selector, monkeypatch):
    """Only the failures named above become one line; anything else is a bug and propagates."""
    from trainer.hf_trainer import TokenClassificationTrainer

    monkeypatch.setattr(TokenClassificationTrainer, "training_step", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        finetune_main(argv(tiny_preprocess_output, tiny_model_selector, tmp_path))


def test_a_tracking_server_that_does_not_answer_is_one_line(tmp_path, tiny_preprocess_output, tiny_model_selector,
                                                           capsys, monkeypatch):
    """MLFLOW_TRACKING_URI naming a server that does not answer: MLflow's callback fails when training starts; a
    run failure (exit 1) in one line, not five chained tracebacks."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    rc = finetune_main(argv(tiny_preprocess_output, tiny_model_selector, tmp_path))
    line = one_error_line(capsys)
    assert rc == 1 and line.startswith("error: API request to http://127.0.0.1:9/api/2.0/mlflow/"), line
