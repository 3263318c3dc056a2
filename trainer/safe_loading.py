"""Loading checkpoints without running code from them.

A checkpoint on a shared PVC or in an object store can be written by anyone who can write there; unpickling
it with `torch.load(weights_only=False)` runs whatever it names. The HF Trainer loads its own files with
`weights_only=True`; DeepSpeed 0.19.8 does not (`TorchCheckpointEngine.load` passes `weights_only=False`), so
`install()` makes it load with `weights_only=True` plus the few DeepSpeed types its ZeRO checkpoints hold.
`unsafe_pickles` lists what a checkpoint would need beyond that, without unpickling anything (resume skips such
a checkpoint before any model is loaded).
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# The non-tensor types in DeepSpeed ZeRO-1/2/3 checkpoints (optimizer states), deepspeed 0.19.8.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
# The numpy types of the Trainer's RNG states, which it loads with exactly these allowed
# (transformers 5.24, trainer_pt_utils.safe_globals).
NUMPY_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype", "numpy.dtypes.UInt32DType")
ALLOWED_GLOBALS = DEEPSPEED_GLOBALS + NUMPY_GLOBALS
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")


def unsafe_pickles(checkpoint: Path) -> list[str]:
    """'file: global' for every pickled global in the checkpoint's torch files outside torch's weights-only set
    and our allowlist (read from the pickle's opcodes: nothing is executed)."""
    import torch

    found = []
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES):
        if path.name == "training_args.bin":  # written for people; the Trainer never loads it on resume
            continue
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:  # noqa: BLE001 - not a torch zip file: not loadable either
            found.append(f"{path.relative_to(checkpoint)}: unreadable ({type(err).__name__})")
            continue
        found += [f"{path.relative_to(checkpoint)}: {name}" for name in names if name not in ALLOWED_GLOBALS]
    return found


def _allowed_types() -> list:
    types = []
    for name in DEEPSPEED_GLOBALS:
        module, attr = name.rsplit(".", 1)
        try:
            types.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed version: that type cannot be in our checkpoints
            continue
    return types


def install() -> None:
    """Make DeepSpeed's checkpoint engine load with weights_only=True (allowlisted DeepSpeed types only)."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if getattr(TorchCheckpointEngine.load, "_tokcls_safe", False):
        return
    allowed = _allowed_types()

    @functools.wraps(TorchCheckpointEngine.load)
    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    load._tokcls_safe = True
    TorchCheckpointEngine.load = load
