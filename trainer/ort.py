"""ONNX Runtime training (apply_ort): the model trains inside ORTModule, where the environment has it.

ONNX Runtime training is deprecated upstream: 1.19.2 (September 2024) was the last onnxruntime-training(-cpu)
release. Its ORTModule works with torch 2.6.0 + onnx 1.17.0 once its C++ extensions are built
(`python -m onnxruntime.training.ortmodule.torch_cpp_extensions.install`), with eager attention (SDPA fails in its
gradient builder); with torch >= 2.9 it fails at import (torch.onnx._internal.jit_utils is gone). That stack is
`images/Dockerfile.ort` (the `trainer-ort` image) and `scripts/install_ort_env.sh` (the environment its test runs
in). Everywhere else apply_ort=true stops at once with a one-line error naming that image. On CPU it trains about
2.7x slower than plain PyTorch: a compatibility option, not a speed-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from trainer.errors import ConfigError

logger = logging.getLogger(__name__)

ORT_IMAGE = "trainer-ort (images/Dockerfile.ort)"


def check_ort_available() -> None:
    """apply_ort needs ORTModule with its extensions built; say exactly what is missing instead of training without
    it."""
    try:
        from onnxruntime.training.ortmodule import ORTMODULE_TORCH_CPP_DIR
        from onnxruntime.training.ortmodule.torch_cpp_extensions import is_installed
    except Exception as err:  # ImportError (no onnxruntime-training), or ORT training against a newer torch
        raise ConfigError(
            "apply_ort=true needs ONNX Runtime training (ORTModule, onnxruntime-training-cpu 1.19.2 with torch "
            f"2.6), which this environment lacks ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            f": run the {ORT_IMAGE} image or set apply_ort=false") from None
    if not is_installed(ORTMODULE_TORCH_CPP_DIR):
        raise ConfigError("apply_ort=true: ORTModule's C++ extensions are not built; run `python -m "
                          "onnxruntime.training.ortmodule.torch_cpp_extensions.install` (the "
                          f"{ORT_IMAGE} image has them)")


def wrap(model):
    """The model inside ORTModule, with eager attention (ORT's gradient builder cannot differentiate SDPA) and no
    silent fallback to PyTorch: apply_ort=true trains in ONNX Runtime or fails (ORTMODULE_FALLBACK_POLICY overrides)."""
    from onnxruntime.training.ortmodule import ORTModule

    os.environ.setdefault("ORTMODULE_FALLBACK_POLICY", "FALLBACK_DISABLE")
    model.set_attn_implementation("eager")
    logger.info("apply_ort: training inside ONNX Runtime's ORTModule (onnxruntime-training, eager attention)")
    return ORTModule(model)


def original_module(model):
    """The model an ORTModule wraps (any other model as it is): what save_pretrained is called on, since the HF
    Trainer saves a bare state dict (no config.json) for a model it does not recognise."""
    return model.module if type(model).__name__ == "ORTModule" else model


@contextlib.contextmanager
def standard_onnx_symbolics(opset: int):
    """Within this block torch.onnx.export writes standard ONNX: ORTModule registers its own symbolics (ATen ops in
    the org.pytorch.aten domain that only ONNX Runtime training runs) globally, for every later export too."""
    registry = sys.modules.get("onnxruntime.training.ortmodule._custom_op_symbolic_registry")
    names = list(registry.CustomOpSymbolicRegistry._SYMBOLICS) if registry else []
    if not names:
        yield
        return
    from torch.onnx import unregister_custom_op_symbolic

    for name in names:
        unregister_custom_op_symbolic(name, opset)
    try:
        yield
    finally:
        registry.CustomOpSymbolicRegistry.register_all(opset)
