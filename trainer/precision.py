"""What `precision` means on this machine: the training flags it maps to, and the dtype a model trained in it is
served in.

precision 16 trains under autocast (bf16 where the device has it, else fp16 on GPUs; CPU autocast is bf16-only); the
weights stay fp32 and the Trainer evaluates under the same autocast, so the best checkpoint is chosen on its autocast
figures. The served model computes as it was validated: under the same autocast where the device computes it
natively (a GPU; a CPU with AVX512-BF16 or AMX), else in fp32 (emulated CPU bf16 is slower than fp32), its linear
weights stored in the autocast dtype once (`store_linear_weights_in`). precision 32 serves in fp32.
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


def store_linear_weights_in(model, dtype) -> int:
    """Store the weights and biases of `model`'s plain linear layers in `dtype`, the autocast dtype it is served
    under; returns how many layers were stored so.

    Autocast casts every argument of a linear layer to its dtype, and keeps a weight's cast only until its region
    ends: a served model opens one region per batch, so every request cast every weight again (MiniLM's 10.6 M: a
    single tweet took 4.8 ms against 3.9 ms stored, on a 2-core AMD EPYC, torch 2.13; bench/README.md, "Serving").
    Stored in that dtype, the same values reach the same kernel: the outputs are bit-identical. Layers that are not
    plain `nn.Linear` (a PEFT wrapper, a subclass with its own forward), parameters that another module shares (tied
    weights) and the model's first parameter (its `dtype`, which some models read) stay as they are."""
    import torch

    linear = [m for m in model.modules() if type(m).forward is torch.nn.Linear.forward]
    linear_ids = {id(m) for m in linear}
    shared = {id(p) for m in model.modules() if id(m) not in linear_ids for p in m.parameters(recurse=False)}
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    stored = 0
    for module in linear:
        params = list(module.parameters(recurse=False))
        if any(p is first or id(p) in shared or p.dtype != torch.float32 for p in params):
            continue
        module.to(dtype)
        stored += 1
    return stored
