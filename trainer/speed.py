"""Speed features of the training loop, kept apart from the recipe so they can be ported onto any Trainer.

None of them changes what is computed (up to the random draws of dropout, the order of batches and float
rounding); each is measured in bench/README.md and pinned by tests/test_speed.py. Integration
(trainer/finetune.py), three small hooks:

1. ``trainer_class(Trainer)`` (or put ``SpeedTrainerMixin`` first in the bases of your own Trainer subclass):
   the seeded length-grouped training sampler (``trainer.sampling``) when
   ``train_sampling_strategy="group_by_length"``, (``enable_token_normalized_loss``) a training loss that weighs
   every labelled token the same in length-grouped batches, and (``enable_folded_clipping``) gradient clipping
   applied by the fused AdamW kernel instead of a separate pass over the gradients; ``train_data_collator``, when
   set, collates the training batches only (``trainer.packing``'s flat batches). Evaluation batches are
   length-sorted, their outputs put back in dataset order (``trainer.hf_trainer``: the windows of a sentence are
   joined by row order), and each weight is cast to the autocast dtype once per evaluation loop instead of once
   per batch (``autocast_casts_kept``).
2. ``prepare(model, config)`` after the model is built (and LoRA applied), before the Trainer: the CPU allocator
   setting, the trained-rows embedding, and dropout masks from a fast generator (every ``nn.Dropout`` and the
   "sdpa" attention's dropout). Returns a handle whose ``restore()`` puts the stock modules and allocator
   settings back; call it after ``trainer.train()`` (before saving/publishing), so published models are plain HF
   models and publishing does not start from training's memory high-water mark.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from trainer.constants import LENGTH_GROUP_BATCHES
from trainer.sampling import SeededLengthGroupedSampler

logger = logging.getLogger("trainer")


# ------------------------------------------------------------------------------------------------------------
# 1. Sampler and evaluation order
# ------------------------------------------------------------------------------------------------------------
def dataset_lengths(dataset) -> Optional[list[int]]:
    """Row lengths of a dataset: its ``lengths`` property (trainer.data.EncodedSplit) or len(input_ids)."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return list(lengths)
    try:
        return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    except (TypeError, KeyError, IndexError):
        return None


@contextlib.contextmanager
def autocast_casts_kept():
    """Inside it, a weight that autocast casts to bf16/fp16 is cast once, not once per batch.

    Autocast keeps the casts of leaf tensors that require grad (the weights) in a cache until the outermost autocast
    region ends (torch 2.13, ``torch.amp.autocast_mode``). The Trainer opens one region per forward (accelerate
    wraps ``model.forward``), so every evaluation batch cast every weight again (each linear weight of MiniLM, 10.7 M
    parameters, per batch). The weights do not change during an evaluation loop: counted as one region, the loop
    computes exactly the same outputs. The cache is cleared on the way out even when a caller's region is still
    open: a cast made under no_grad would otherwise reach a later forward that trains."""
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        torch.autocast_decrement_nesting()
        torch.clear_autocast_cache()


class SpeedTrainerMixin:
    """Overrides of `transformers.Trainer` (put first in the bases): see the module docstring."""

    length_group_batches: int = LENGTH_GROUP_BATCHES  # batches per length-sorted group (FinetuneConfig)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
            lengths = dataset_lengths(dataset)
            if lengths is not None:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                # One sampler batch = one DataLoader batch (the loader cuts our index list every _train_batch_size).
                self._seeded_sampler = SeededLengthGroupedSampler(lengths, self._train_batch_size, seed,
                                                                 self.length_group_batches)
                return self._seeded_sampler
        return super()._get_train_sampler(train_dataset)

    train_data_collator = None  # the training batches' collator, when it differs from evaluation's (trainer.packing)

    def get_train_dataloader(self):
        if self.train_data_collator is None:
            return super().get_train_dataloader()
        evaluation_collator, self.data_collator = self.data_collator, self.train_data_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = evaluation_collator

    def _run_epoch(self, *args, **kwargs):
        # Resuming mid-epoch under DDP, transformers 5.24 wraps the loader in accelerate 1.15's SkipBatchSampler
        # before set_epoch, and neither forwards set_epoch through SkipBatchSampler -> BatchSamplerShard to the
        # sampler: it would replay epoch 0's order. The epoch is set here, before the epoch's loader is built.
        sampler = getattr(self, "_seeded_sampler", None)
        if sampler is not None and "epoch" in kwargs:
            sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    # --- loss normalisation for length-grouped batches ---------------------------------------------------
    label_tokens_per_step: Optional[float] = None  # set by enable_token_normalized_loss()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """With length-grouped batches, the stock per-batch *mean* loss gives every token of a batch of short rows
        more weight than a token of a batch of long rows (1 / tokens in its batch), an objective that random
        batches do not have. Here the summed token loss is divided by a constant, the expected number of labelled
        tokens per optimizer step under random batching: every token weighs the same, and the expected update
        equals the random sampler's. Training only; evaluation keeps the model's own loss."""
        norm = self.label_tokens_per_step
        if (norm is None or not model.training or "labels" not in inputs or self.compute_loss_func is not None
                or self.label_smoother is not None):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1).to(logits.device), ignore_index=-100,
                                           reduction="sum") / norm
        return (loss, outputs) if return_outputs else loss

    # --- gradient clipping folded into the fused AdamW step ------------------------------------------------
    fold_clipping: bool = False  # set by enable_folded_clipping()

    def _clip_grad_norm(self, model):
        """The stock clipping computes the total gradient norm, then multiplies every gradient by
        min(1, max_norm / (norm + 1e-6)) in one more pass over all of them (1.5 to 3 % of a bf16 MiniLM step on the
        EPYC), then AdamW reads them again. Here the same coefficient reaches torch's fused AdamW kernel as its
        ``grad_scale`` (the kernel divides each gradient it reads by it: the GradScaler unscale path), so that pass
        is gone; the update is the stock one up to float rounding, and after the step the gradients are the clipped
        ones, as with the stock pass (the kernel writes them back; only an ``on_pre_optimizer_step`` callback would
        see them unclipped). Returns the pre-clip norm, as the stock does."""
        optimizer = _fused_adam(self.optimizer) if self.fold_clipping else None
        if (optimizer is None or self.accelerator.scaler is not None or self.is_deepspeed_enabled
                or self.is_fsdp_enabled or self._has_mixed_mesh_grads(model)):
            return super()._clip_grad_norm(model)
        return clip_in_fused_adam(optimizer, [p.grad for p in model.parameters() if p.grad is not None],
                                  self.args.max_grad_norm)


def clip_in_fused_adam(optimizer: torch.optim.Optimizer, grads: list, max_norm: float) -> torch.Tensor:
    """What ``nn.utils.clip_grad_norm_(params, max_norm)`` does, except that the gradients are left as they are
    and the clipping coefficient is handed to `optimizer` (a fused torch Adam/AdamW) as ``grad_scale`` for its
    next step only. Returns the total norm."""
    if not getattr(optimizer, "_folded_clipping_hook", False):
        optimizer.register_step_post_hook(lambda opt, args, kwargs: opt.__dict__.pop("grad_scale", None))
        optimizer._folded_clipping_hook = True
    norm = nn.utils.get_total_norm(grads, norm_type=2.0)
    optimizer.grad_scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0).reciprocal()
    return norm


def _fused_adam(optimizer) -> Optional[torch.optim.Optimizer]:
    """The torch Adam/AdamW under accelerate's wrapper when every group runs the fused kernel, else None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, torch.optim.Adam) or not all(g.get("fused") for g in inner.param_groups):
        return None
    return inner


def enable_folded_clipping(trainer) -> bool:
    """Turn on `SpeedTrainerMixin._clip_grad_norm`'s folding (it falls back to the stock clipping by itself where
    the optimizer is not a fused torch Adam/AdamW, or under a GradScaler, DeepSpeed or FSDP)."""
    if trainer.args.max_grad_norm <= 0:
        return False
    trainer.fold_clipping = True
    return True


def enable_token_normalized_loss(trainer, train_dataset) -> Optional[float]:
    """Turn on `SpeedTrainerMixin.compute_loss`'s normalisation (for length-grouped batches): the constant is
    labelled tokens per row x rows per device batch x accumulation steps (per device: DDP averages ranks)."""
    rows = [row["labels"] for row in train_dataset]
    per_row = sum(sum(1 for x in labels if x != -100) for labels in rows) / max(1, len(rows))
    norm = per_row * trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    if norm <= 0:
        return None
    trainer.label_tokens_per_step = norm
    trainer.loss_is_scaled_for_ga = True  # the constant already covers the accumulation steps
    return norm


def trainer_class(base):
    """``base`` (a transformers.Trainer class) with the speed overrides."""
    return type(f"Speed{base.__name__}", (SpeedTrainerMixin, base), {})


# ------------------------------------------------------------------------------------------------------------
# 2a. CPU allocator: keep freed blocks in the heap instead of unmapping them
# ------------------------------------------------------------------------------------------------------------
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # both thresholds' initial value (glibc's DEFAULT_MMAP_THRESHOLD_MIN)
_ALLOCATOR_TUNED = False


def _glibc():
    """glibc's mallopt and malloc_trim, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018 - glibc only
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return mallopt, trim


def tune_cpu_allocator(threshold: int = 1 << 30) -> bool:
    """glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on
    free, so each training step re-faults (and the kernel re-zeroes) every large buffer: the dense gradient of a
    30k x 384 word-embedding table alone costs ~11k page faults per step. Raising the mmap and trim thresholds
    makes glibc reuse those blocks (what jemalloc/tcmalloc do), for this process; values are not affected. No-op
    (False) where the C library is not glibc. `restore_cpu_allocator` undoes it."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    glibc = _glibc()
    if glibc is None:
        return False
    mallopt, _ = glibc
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    _ALLOCATOR_TUNED = ok
    logger.info("glibc malloc: mmap/trim thresholds %s to %d MiB", "raised" if ok else "NOT raised", threshold >> 20)
    return ok


def restore_cpu_allocator() -> None:
    """After training: glibc's thresholds back to their start values (128 KiB; glibc no longer raises them by
    itself once set) and the free memory the raised ones kept returned to the OS. Publishing then loads the model
    again, scores it and exports it on top of what is live, not on top of training's high-water mark (with the
    optimizer state dropped first, trainer/finetune.py; WNUT-17 + MiniLM in bf16: the highest RSS after training
    2,120 -> 1,669 MB, bench/README.md "Memory of the fine-tune step")."""
    global _ALLOCATOR_TUNED
    glibc = _glibc() if _ALLOCATOR_TUNED else None
    if glibc is None:
        return
    mallopt, _ = glibc
    mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
    _ALLOCATOR_TUNED = False
    return_free_memory()


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; False elsewhere), between phases of one
    process that each allocate a few model-sized blocks and free them."""
    glibc = _glibc()
    return bool(glibc and glibc[1](0))


# ------------------------------------------------------------------------------------------------------------
# 2b. Train only the embedding rows the training data can reach
# ------------------------------------------------------------------------------------------------------------
class TrainedRowsEmbedding(nn.Module):
    """Stands in for the word-embedding table during training: only the rows of token ids that occur in the
    training split are a Parameter (``trainable``); every other row is read from the frozen table.

    With AdamW and no weight decay this trains exactly what the dense table trains: a row whose id never occurs
    gets a zero gradient at every step, so its AdamW moments stay zero and its update is exactly zero. It saves the
    dense gradient of the whole table (zero-filled and scattered into every step), and the optimizer, gradient
    clipping and zeroing passes over rows that cannot move (on WNUT-17 + MiniLM: 8,954 of 30,522 rows, so 37 % of
    all trainable parameters drop out of every optimizer step). The state dict is the stock one
    (``<prefix>weight``, the full table), so checkpoints, resume and the best-model reload see a plain model.
    """

    def __init__(self, embedding: nn.Embedding, trained_ids: torch.Tensor):
        super().__init__()
        self.original = [embedding]  # a list: not a sub-module (no parameters, no state-dict entries)
        weight = embedding.weight
        num, self.embedding_dim = weight.shape
        self.padding_idx = embedding.padding_idx
        ids = torch.unique(torch.as_tensor(trained_ids, dtype=torch.long))
        if self.padding_idx is not None:  # padding keeps its row; its gradient stays zero (padding_idx semantics)
            ids = torch.unique(torch.cat([ids, torch.tensor([self.padding_idx])]))
        row_of = torch.full((num,), -1, dtype=torch.long)
        row_of[ids] = torch.arange(len(ids))
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("row_of", row_of, persistent=False)
        self.register_buffer("frozen", weight.detach(), persistent=False)  # the original storage, no copy (one process)
        self.trainable = nn.Parameter(weight.detach()[ids].clone(), requires_grad=weight.requires_grad)
        self.compact_padding_idx = int(row_of[self.padding_idx]) if self.padding_idx is not None else None
        self.register_state_dict_post_hook(TrainedRowsEmbedding._state_dict_hook)
        self.register_load_state_dict_pre_hook(TrainedRowsEmbedding._load_pre_hook)

    @property
    def weight(self) -> torch.Tensor:
        """The full table (a copy), as nn.Embedding.weight would hold it."""
        full = self.frozen.clone()
        full[self.ids] = self.trainable.detach()
        return full

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.row_of[input_ids]
        known = rows >= 0
        out = nn.functional.embedding(rows.clamp(min=0), self.trainable, padding_idx=self.compact_padding_idx)
        if not bool(known.all()):  # ids absent from the training split (validation / test rows)
            out = torch.where(known.unsqueeze(-1), out, nn.functional.embedding(input_ids, self.frozen))
        return out

    @staticmethod
    def _state_dict_hook(module, state_dict, prefix, local_metadata):
        state_dict.pop(prefix + "trainable", None)
        state_dict[prefix + "weight"] = module.weight

    @staticmethod
    def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                       error_msgs):
        if prefix + "weight" in state_dict:
            full = state_dict.pop(prefix + "weight")
            with torch.no_grad():
                module.frozen.copy_(full)
            state_dict[prefix + "trainable"] = full[module.ids]

    def restore(self) -> nn.Embedding:
        """The original nn.Embedding, holding the trained rows. The whole table is copied back: `frozen` starts as
        original.weight's storage, but DDP's start-up broadcast of module buffers (torch 2.13, gloo) gives it storage
        of its own, and writing the trained rows into `frozen` alone published a model with untrained embeddings."""
        original = self.original[0]
        with torch.no_grad():
            original.weight.copy_(self.weight)
        return original


def compact_embeddings_applicable(config) -> Optional[str]:
    """Why the trained-rows embedding would not be exact for this run (None: it is)."""
    if config.apply_lora:
        return "LoRA (the embeddings are frozen anyway)"
    if config.apply_deepspeed:
        return "DeepSpeed"
    if config.apply_ort:
        return "apply_ort (ORTModule exports the stock modules)"
    if config.weight_decay != 0.0:
        return "weight decay (AdamW would decay the rows no data reaches)"
    if not config.hf_optim.startswith("adamw"):
        return f"optimizer {config.hf_optim} (Adafactor's factored moments couple rows)"
    return None


def install_trained_rows_embedding(model: nn.Module, train_dataset) -> Optional[TrainedRowsEmbedding]:
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if type(embedding) is not nn.Embedding or not embedding.weight.requires_grad:
        return None
    ids = sorted({i for row in train_dataset for i in row["input_ids"]})
    if len(ids) > 0.9 * embedding.num_embeddings:
        return None  # nothing to save
    compact = TrainedRowsEmbedding(embedding, torch.tensor(ids))
    model.set_input_embeddings(compact)
    return compact


# ------------------------------------------------------------------------------------------------------------
# 2c. Dropout masks from 32-bit random words
# ------------------------------------------------------------------------------------------------------------
def keep_mask(shape, p: float) -> torch.Tensor:
    """A CPU boolean mask of `shape`, each element True with probability 1 - p (to 2**-32).

    torch 2.13's CPU `bernoulli_` draws one Mersenne-Twister number per element in a serial loop (~15 ns an
    element on our 2-core Xeon, ~6 ns on the EPYC: 1.3 to 3 ms for one 16 x 32 x 384 activation, and a MiniLM step
    has 20 dropouts). Here numpy's SFC64 generator (a small fast chaotic generator that passes BigCrush and
    PractRand) gives 64 random bits per 2 to 5 ns, two 32-bit uniforms each, compared with the threshold by numpy
    (torch 2.13's CPU integer comparison of the same array took 7x as long on the EPYC). Its seed is one draw from
    torch's default generator, so `torch.manual_seed`, the Trainer's seeding and its saved RNG states govern the
    masks, as they govern nn.Dropout's."""
    numel = math.prod(shape)
    seed = int(torch.randint(0, 1 << 62, (1,)))
    words = np.random.SFC64(seed).random_raw((numel + 1) // 2)
    threshold = -(1 << 31) + round(p * (1 << 32))  # P(uniform int32 < threshold) = round(p * 2**32) / 2**32
    return torch.from_numpy(words.view(np.int32)[:numel] >= threshold).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`nn.functional.dropout(x, p, training)` with the mask from `keep_mask`: the same Bernoulli(1 - p) keep
    distribution and 1 / (1 - p) scaling, other random draws. Backward multiplies by the same scaled mask. Off the
    CPU: nn.functional.dropout itself."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    # Through uint8: torch 2.13's CPU bool -> float/bf16 cast is ~7x slower than its uint8 -> float/bf16 one.
    scaled = keep_mask(x.shape, p).view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * scaled


class FastDropout(nn.Module):
    """Stands in for an `nn.Dropout` during CPU training (same p); `fast_dropout` in forward."""

    def __init__(self, original: nn.Dropout):
        super().__init__()
        self.p = original.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


FAST_DROPOUT_ATTENTION = "sdpa_fast_dropout"  # registered with transformers' AttentionInterface


def sdpa_with_fast_dropout(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                           **kwargs):
    """transformers' "sdpa" attention, except that in training with attention dropout it computes what torch's SDPA
    math kernel computes there (q, k, v upcast to fp32, scores + mask, softmax, dropout, @ v, cast back; the fused
    CPU kernel has no dropout) with the dropout mask from `keep_mask` instead of `bernoulli_`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (not dropout or not module.training or kwargs.get("is_causal") or getattr(module, "is_causal", False)
            or key.shape[1] != query.shape[1] or kwargs.get("position_bias") is not None or kwargs.get("softcap")):
        # no dropout, or causal / grouped-query / biased attention: the stock path
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    dtype = query.dtype
    with torch.autocast(query.device.type, enabled=False):  # the math kernel computes in fp32 under autocast too
        q, k, v = (t.float() for t in (query, key, value))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            else:
                scores = scores + attention_mask.float()
        probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
        out = torch.matmul(probs, v).to(dtype)
    return out.transpose(1, 2).contiguous(), None


def install_fast_dropout(model: nn.Module) -> Optional[callable]:
    """Swap every `nn.Dropout` of `model` for a `FastDropout`, and its "sdpa" attention (when it dispatches through
    transformers' AttentionInterface) for `sdpa_with_fast_dropout`. Returns the undo callable (None: no dropout)."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(parent, name, FastDropout(child))
                swapped.append((parent, name, child))
    undo_attention = None
    if swappable_sdpa_attention(model) == "sdpa":
        undo_attention = use_attention(model, FAST_DROPOUT_ATTENTION, sdpa_with_fast_dropout)
    if not swapped and undo_attention is None:
        return None

    def undo():
        for parent, name, child in swapped:
            setattr(parent, name, child)
        if undo_attention is not None:
            undo_attention()

    return undo


def swappable_sdpa_attention(model: nn.Module) -> Optional[str]:
    """The model's attention implementation when it is an SDPA one ("sdpa" or a wrapper named "sdpa...") that
    transformers lets us swap through its AttentionInterface, else None."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if not current or not current.startswith("sdpa") or not (can_set and can_set()):
        return None
    return current


def use_attention(model: nn.Module, name: str, function) -> callable:
    """Register `function` as transformers attention `name` (padded batches get the masks "sdpa" gets) and set it
    on `model`; returns the undo, which sets the implementation of before."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    before = model.config._attn_implementation
    AttentionInterface.register(name, function)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    model.set_attn_implementation(name)
    return lambda: model.set_attn_implementation(before)


# ------------------------------------------------------------------------------------------------------------
# 2. prepare / restore
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What `prepare` changed, so that `restore` can put the stock modules back."""

    model: nn.Module
    undo: list = field(default_factory=list)  # callables, run last-in first-out by restore()
    notes: list = field(default_factory=list)
    active: bool = False  # the CPU speed features apply to this run (cpu_speedups on, on a CPU)

    def restore(self) -> None:
        while self.undo:
            self.undo.pop()()


def prepare(model: nn.Module, config, train_dataset, use_cpu: bool = True) -> Prepared:
    """Apply the speed features to `model` (in place) for a run of `config` (a FinetuneConfig) on
    `train_dataset`; see the module docstring. They are CPU features: with ``config.cpu_speedups`` false or
    `use_cpu` false nothing changes."""
    prepared = Prepared(model)
    if not config.cpu_speedups or not use_cpu:
        return prepared
    prepared.active = True
    if tune_cpu_allocator():
        prepared.undo.append(restore_cpu_allocator)  # first in, so undone last: after the modules let go of memory
        prepared.notes.append("allocator")
    why_not = compact_embeddings_applicable(config)
    compact = None if why_not else install_trained_rows_embedding(model, train_dataset)
    if compact is not None:
        prepared.undo.append(lambda: model.set_input_embeddings(compact.restore()))
        prepared.notes.append(f"trained-rows embedding ({len(compact.ids)} of {compact.frozen.shape[0]} rows)")
    elif why_not:
        prepared.notes.append(f"dense embedding ({why_not})")
    undo_dropout = None if config.apply_ort else install_fast_dropout(model)  # ORTModule exports the stock modules
    if undo_dropout is not None:
        prepared.undo.append(undo_dropout)
        prepared.notes.append("dropout masks from 32-bit random words")
    logger.info("speed features: %s", ", ".join(prepared.notes) or "none")
    return prepared
