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


def ensure_process_group_env() -> None:
    """DeepSpeed without a launcher (one process, e.g. a single-pod KFP step) needs the env a launcher sets."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
