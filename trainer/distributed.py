"""Process topology of a run: rank, world size, and the env a single process needs for DeepSpeed."""

from __future__ import annotations

import os
import socket


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pin_deepspeed_accelerator() -> None:
    """Name DeepSpeed's accelerator on a machine without CUDA, as the CPU image does: accelerate 1.15 imports
    DeepSpeed whenever it is installed (even for a run without it), and DeepSpeed's auto-detection then warns that
    it "was unable to detect" a GPU."""
    if "DS_ACCELERATOR" not in os.environ and not has_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"


def defer_deepspeed_import() -> None:
    """Keep a run without DeepSpeed from importing it (~3-4 s of every fine-tune on 2 CPU cores, measured): accelerate
    1.15's `extract_model_from_parallel`, which every `Trainer.__init__` calls, imports DeepSpeed whenever it is
    installed, only to test whether the model is a DeepSpeedEngine. A model can be one only once DeepSpeed is
    imported, so that module's availability check is narrowed to "installed and imported" (idempotent)."""
    import sys

    from accelerate.utils import other

    installed = other.is_deepspeed_available
    if getattr(installed, "imported_only", False):
        return

    def installed_and_imported() -> bool:
        return "deepspeed" in sys.modules and installed()

    installed_and_imported.imported_only = True
    other.is_deepspeed_available = installed_and_imported


def ensure_process_group_env() -> None:
    """DeepSpeed without a launcher (one process, e.g. a single-pod KFP step) needs the env a launcher sets."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})


NPROC_ENV = "TOKCLS_NPROC_PER_NODE"  # overrides the number of processes of a single-pod run (default: one per GPU)


def local_processes() -> int:
    """Processes one pod runs: TOKCLS_NPROC_PER_NODE if set, else one per visible CUDA device (at least one)."""
    if os.environ.get(NPROC_ENV):
        return max(1, int(os.environ[NPROC_ENV]))
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def run_under_torchrun(config, nproc: int) -> None:
    """Run this fine-tune as `torchrun --standalone --nproc_per_node nproc -m trainer.cli --config <its JSON>` (one
    process per GPU of this pod, DDP or DeepSpeed); the processes' output goes to ours. RuntimeError if it fails.

    Every input is checked here first, once, as the ranks will check it (`trainer.finetune.prepare` with their world
    size): bad input is one ConfigError / InputError before any process starts, not an error per rank."""
    import subprocess
    import sys
    import tempfile

    from trainer.finetune import prepare

    if "WORLD_SIZE" in os.environ:
        raise RuntimeError("already inside a distributed launch: not starting another torchrun")
    pin_deepspeed_accelerator()
    os.environ["WORLD_SIZE"] = str(nproc)
    try:
        prepare(config)
    finally:
        del os.environ["WORLD_SIZE"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="finetune-", delete=False) as handle:
        handle.write(config.to_json())
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "trainer.cli", "--config", handle.name]
        code = subprocess.call(command)
    finally:
        os.unlink(handle.name)
    if code != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed with exit code {code} (the ranks' errors are "
                           "in the log above)")
