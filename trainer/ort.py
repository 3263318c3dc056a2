"""ONNX Runtime training (apply_ort): ORTModule from torch-ort, where the environment has it."""

from __future__ import annotations

from trainer.errors import ConfigError


def check_ort_available() -> None:
    """apply_ort needs ORTModule (torch-ort); say exactly what is missing instead of training without it."""
    try:
        from torch_ort import ORTModule  # noqa: F401
    except Exception as err:  # ImportError, or a torch-ort built for another torch
        raise ConfigError(
            "apply_ort=true needs ONNX Runtime training (the `torch-ort` package providing ORTModule), which is "
            f"not usable in this environment ({type(err).__name__}: {err}). torch-ort does not build against "
            "torch 2.13: use the ORT trainer image (images/Dockerfile.ort) or set apply_ort=false.") from None


def wrap(model):
    from torch_ort import ORTModule

    return ORTModule(model)
