"""What `precision` means on this machine: the training flags it maps to, and the dtype a model trained in it is
served in.

precision 16 trains under autocast (bf16 where the device has it, else fp16 on GPUs; CPU autocast is bf16-only); the
weights stay fp32 and the Trainer evaluates under the same autocast, so the best checkpoint is chosen on its autocast
figures. The served model computes as it was validated: under the same autocast where the device computes it
natively (a GPU; a CPU with AVX512-BF16 or AMX), else in fp32 (emulated CPU bf16 is slower than fp32). precision 32
serves in fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

PRECISIONS = ("32", "16")
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


def cpu_has_native_bf16() -> bool:
    """Native bf16 matmul instructions (AVX512-BF16 or AMX-BF16): where precision 16 pays on a CPU (bf16 matmuls
    2-12x fp32's rate, bench/README.md); elsewhere CPU bf16 is emulated and slower than fp32."""
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def precision_flags(precision: str) -> dict:
    """TrainingArguments flags of a precision. 16: bf16 where the hardware has it, else fp16 (CPU autocast is
    bf16-only)."""
    if precision == "32":
        return {}
    import torch

    from trainer.distributed import has_cuda

    if not has_cuda():
        return {"bf16": True}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


def serving_dtype(precision: str, device) -> Optional["torch.dtype"]:  # noqa: F821 - torch imported lazily
    """The autocast dtype a model trained in `precision` is served in on `device` (a torch.device); None: fp32."""
    if precision != "16":
        return None
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
