"""Padding-free training batches: a batch's rows concatenated into one row, each attending only to itself.

A batch of 16 random WNUT-17 rows padded to its longest row is 41 % padding, and every linear layer, layer norm,
dropout and the loss compute on those positions too. Flattened (transformers' `DataCollatorWithFlattening`: one row
of the batch's real tokens, position ids restarting at each row, the rows' boundaries as ``cu_seq_lens_q/k``), the
model computes on real tokens only. Only the attention needs the rows apart: `packed_attention` wraps the model's
SDPA attention and, when the boundaries come with the call, gathers q/k/v into padded [rows, heads, longest,
head_dim] blocks, one per group of rows of about one length (`row_chunks`: the attention is about a third of a bf16
CPU step, and one block padded to a random batch's longest row would hold 2.5x the score area of its rows on
WNUT-17, 2.6 groups of about one length 1.3x), runs the wrapped attention on each under its key-padding mask, and
takes back the real positions. Every row then computes what it computes alone in a padded batch: same batches, same
loss, same gradients up to float rounding; only padding work is gone (`bench/batch_layouts.py` measures it).

Not every encoder takes position ids and attention boundaries through its forward (DeBERTa runs its own attention,
not SDPA through transformers' AttentionInterface; a forward may not hand its kwargs down), so `enable` runs the
model once on a few training rows padded and flattened, and turns flattening on only where the two agree (`verify`);
otherwise the run keeps padded batches and logs why. Evaluation batches stay padded (length-sorted,
`trainer.hf_trainer`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from transformers import DataCollatorForTokenClassification, DataCollatorWithFlattening

from trainer.constants import IGNORE_INDEX
from trainer.data import MODEL_INPUTS

logger = logging.getLogger("trainer")

# Encoders whose embeddings number positions from padding_idx + 1, not 0 (transformers 5.24's
# DataCollatorWithFlattening docstring names the RoBERTa family); `verify` checks every model anyway.
POSITIONS_AFTER_PADDING_IDX = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet", "esm", "longformer",
                                         "data2vec-text", "xmod", "roberta-prelayernorm", "xlm-roberta-xl"})
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
PACKED_PREFIX = "packed_"
VERIFY_ROWS = 4
VERIFY_ATOL = 1e-4


PADDING_KEY = "flat_padding"  # a flat batch's alignment positions (not a model input: the trainer takes it out)
ALIGN_TOKENS = 32


class FlatTokenClassificationCollator(DataCollatorWithFlattening):
    """A batch as one row: ``input_ids``, ``token_type_ids``, ``labels`` and ``position_ids`` of shape [1, tokens],
    plus the rows' boundaries (``cu_seq_lens_q/k``, ``max_length_q/k``) for `packed_attention`.

    transformers 5.24's collator is built for causal LMs: it writes ``separator_id`` over each row's first label
    (where a shifted loss would cross rows) and drops ``token_type_ids``. A tagger's labels are per position, and
    token types can be 1 (pairs, context windows): both go through as they are.

    The row is filled up to a multiple of `pad_to_multiple_of` tokens by one more row of padding (its own attention
    row, labels -100, so it changes no loss and no gradient; ``PADDING_KEY`` says how long): on CPU every new
    length of the row costs memory that stays and time (oneDNN's kernels per shape, by the pattern), and rows as
    long as their tokens take 130 lengths in an epoch of WNUT-17, 11 filled to 32: 1.6x the steps' memory
    high-water mark, and 1.07x instead of 1.26x `stock_best` (bench/README.md, "padding-free batches")."""

    def __init__(self, position_ids_start: int = 0, pad_token_id: int = 0,
                 pad_to_multiple_of: Optional[int] = ALIGN_TOKENS):
        super().__init__(return_position_ids=True, return_flash_attn_kwargs=True,
                         position_ids_start=position_ids_start, return_tensors="pt")
        self.pad_token_id, self.pad_to_multiple_of = int(pad_token_id), pad_to_multiple_of

    def __call__(self, features, return_tensors=None, separator_id=None):
        tokens = sum(len(f["input_ids"]) for f in features)
        extra = -tokens % self.pad_to_multiple_of if self.pad_to_multiple_of else 0
        rows = list(features) + ([{"input_ids": [self.pad_token_id] * extra, "labels": [IGNORE_INDEX] * extra,
                                   "token_type_ids": [0] * extra}] if extra else [])
        batch = super().__call__(rows, return_tensors="pt")
        batch["labels"] = torch.tensor([[x for f in rows for x in _ints(f["labels"])]], dtype=torch.long)
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = torch.tensor([[x for f in rows for x in _ints(f["token_type_ids"])]],
                                                   dtype=torch.long)
        batch[PADDING_KEY] = extra
        return batch


def _ints(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def position_ids_start(model) -> int:
    """The position id of a row's first token when the model numbers an unpadded row itself."""
    config = model.config
    if config.model_type in POSITIONS_AFTER_PADDING_IDX:
        return int(config.pad_token_id) + 1
    return 0


CHUNK_COST = 4096  # one more attention call, in padded score elements per head (bench: chunk_cost)


def row_chunks(lengths: list[int], chunk_cost: float = CHUNK_COST) -> list[list[int]]:
    """The batch's rows (indices) in groups for the attention, each group padded to its own longest row: the
    partition of the rows sorted by length that minimises the padded score area (rows x longest**2) plus
    `chunk_cost` per group (dynamic programming over the sorted rows; in one group, a batch of 16 random WNUT-17 rows
    pads its attention to 2.5x the area of its rows alone; in 2.6 groups on average, 1.3x)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: the first j sorted rows grouped
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # rows i..j-1 in one group, padded to lengths[order[i]]
            cost = best[i] + (j - i) * lengths[order[i]] ** 2 + chunk_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def row_layout(cu_seq_lens: torch.Tensor, chunk_cost: Optional[float] = None) -> tuple[list, torch.Tensor]:
    """For each group of `row_chunks`: (the flat token at each of its padded positions, 0 past a row's end; its
    real positions as a [rows, 1, 1, longest] mask; rows; longest), and the position of each flat token among the
    groups' padded positions laid end to end. Built on the host once per forward and shared by the layers (on a GPU:
    one synchronisation per forward, to read the row lengths)."""
    bounds = cu_seq_lens.detach().cpu().long()
    starts, lengths = bounds[:-1], bounds.diff()
    groups = row_chunks(lengths.tolist(), CHUNK_COST if chunk_cost is None else chunk_cost)
    chunks, scatter, base = [], torch.empty(int(bounds[-1]), dtype=torch.long), 0
    for rows in groups:
        rows = torch.tensor(rows)
        longest = int(lengths[rows[0]])
        valid = torch.arange(longest)[None, :] < lengths[rows][:, None]  # [rows, longest]
        tokens = starts[rows][:, None] + torch.arange(longest)[None, :]
        scatter[tokens[valid]] = base + valid.flatten().nonzero().squeeze(1)
        gather = torch.where(valid, tokens, 0).flatten()
        chunks.append((gather.to(cu_seq_lens.device), valid.to(cu_seq_lens.device)[:, None, None, :], len(rows),
                       longest))
        base += len(rows) * longest
    return chunks, scatter.to(cu_seq_lens.device)


def packed_attention(inner: Callable) -> Callable:
    """`inner` (an SDPA-style transformers attention function: boolean masks, True = attend) made to take a flat
    row: with ``cu_seq_lens_q`` in its kwargs, q/k/v [1, heads, tokens, dim] are gathered into padded rows, one
    group of rows of about one length at a time (`row_layout`; `index_select` along tokens, whose backward is one
    `index_add`), `inner` runs on each group under its key-padding mask, and the real positions come back as [1,
    tokens, heads, dim]. Padding positions read token 0, their keys are masked and their query outputs dropped, so
    their gradients are exactly zero. Without boundaries it is `inner` itself (evaluation's padded batches)."""
    cache: list = [None, None]  # (cu_seq_lens, its layout): one layout per forward, shared by the layers

    def attention(module, query, key, value, attention_mask, **kwargs):
        cu_seq_lens = kwargs.get("cu_seq_lens_q")
        if cu_seq_lens is None or query.shape[0] != 1 or attention_mask is not None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in BOUNDARY_KEYS}
        _, heads, tokens, dim = query.shape
        if cache[0] is not cu_seq_lens:
            cache[:] = cu_seq_lens, row_layout(cu_seq_lens)
        chunks, scatter = cache[1]
        flat = [t.transpose(1, 2).reshape(tokens, heads * dim) for t in (query, key, value)]  # views
        outs = []
        for gather, mask, rows, longest in chunks:
            q, k, v = (t.index_select(0, gather).view(rows, longest, heads, dim).transpose(1, 2) for t in flat)
            out, _ = inner(module, q, k, v, mask, **kwargs)  # [rows, longest, heads, dim]
            outs.append(out.reshape(rows * longest, heads * dim))
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).index_select(0, scatter)
        return out.view(1, tokens, heads, dim), None

    return attention


def install_packed_attention(model) -> Optional[Callable]:
    """Set the model's attention to `packed_attention` around its current SDPA-style one; returns the undo, or
    None where the model does not dispatch an SDPA attention through transformers' AttentionInterface."""
    from transformers import AttentionInterface

    from trainer.speed import swappable_sdpa_attention, use_attention

    current = swappable_sdpa_attention(model)
    interface = AttentionInterface()
    if current == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward as inner
    elif current is not None and current in interface:
        inner = interface[current]
    else:
        return None
    return use_attention(model, PACKED_PREFIX + current, packed_attention(inner))


def verify(model, rows: list[dict], collator: FlatTokenClassificationCollator, tokenizer) -> Optional[str]:
    """None when the model's logits for `rows` flattened equal those of the same rows padded by the stock collator
    (fp32, eval mode, up to VERIFY_ATOL); else why not."""
    padded = DataCollatorForTokenClassification(tokenizer)([dict(r) for r in rows])
    flat = collator([dict(r) for r in rows])
    padding = flat.pop(PADDING_KEY, 0)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            expected = model(**{k: v.to(device) for k, v in padded.items() if k != "labels"}).logits
            got = model(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in flat.items()
                           if k != "labels"}).logits
    except (TypeError, ValueError, RuntimeError, IndexError) as err:
        return f"its forward does not take a flat batch ({type(err).__name__}: {str(err).splitlines()[0]})"
    finally:
        model.train(was_training)
    real = padded["attention_mask"].bool().to(expected.device)
    if got.shape[:2] != (1, int(real.sum()) + padding):
        return "its output does not keep one position per token"
    diff = float((expected[real].float() - got[0, :got.shape[1] - padding].float()).abs().max())
    if not diff <= VERIFY_ATOL:
        return f"its logits differ from the padded batch's by up to {diff:.2g} (it ignores the row boundaries)"
    return None


def verify_rows(train_dataset, count: int = VERIFY_ROWS) -> list[dict]:
    """A few training rows of different lengths (padding shows only between rows of unequal length)."""
    chosen, lengths = [], set()
    for index in range(len(train_dataset)):
        row = train_dataset[index]
        if len(row["input_ids"]) not in lengths:
            chosen.append({k: row[k] for k in MODEL_INPUTS if k in row})
            lengths.add(len(row["input_ids"]))
        if len(chosen) == count:
            break
    return chosen


def unpadded(train_dataset) -> bool:
    """Every row's attention mask is all ones (rows written unpadded, as preprocess writes them)."""
    return all(all(row.get("attention_mask") or [1]) for row in train_dataset)


@dataclass
class Packing:
    """`enable`'s result: the training collator (None: padded batches), the undo of the attention swap, and why
    flattening is off."""

    collator: Optional[FlatTokenClassificationCollator] = None
    undo: Optional[Callable] = None
    reason: Optional[str] = None

    def restore(self) -> None:
        """The model's own attention back (before publishing: published models are plain HF models)."""
        if self.undo is not None:
            self.undo()
            self.undo = None


def _pad_token_id(model, tokenizer) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def applicable(config) -> Optional[str]:
    """Why flat batches are off for a run of `config` (a FinetuneConfig) before any model exists (None: try)."""
    if not config.padding_free:
        return "padding_free=false"
    if config.apply_ort:
        return "apply_ort (ORTModule exports the model's forward without the row boundaries)"
    if config.apply_deepspeed:
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            return "DeepSpeed ZeRO-3 (the start-up check would need the partitioned weights)"
    return None


def enable(model, train_dataset, tokenizer, config=None) -> Packing:
    """Flat training batches for `model`, if it computes them exactly as padded ones (see the module docstring).
    Logs which, and why not."""
    packing = _enable(model, train_dataset, tokenizer, config)
    if packing.collator is not None:
        logger.info("padding-free training batches: each batch's rows in one row, attention per row")
    elif config is None or config.padding_free:
        logger.info("padded training batches: %s", packing.reason)
    return packing


def _enable(model, train_dataset, tokenizer, config) -> Packing:
    why_not = applicable(config) if config is not None else None
    if why_not is not None:
        return Packing(reason=why_not)
    if not unpadded(train_dataset):
        return Packing(reason="the training rows carry padding (an attention mask with zeros)")
    undo = install_packed_attention(model)
    if undo is None:
        implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        return Packing(reason=f"the model's attention ({implementation}) is not SDPA through transformers' "
                              f"AttentionInterface")
    collator = FlatTokenClassificationCollator(position_ids_start(model), pad_token_id=_pad_token_id(model, tokenizer))
    why_not = verify(model, verify_rows(train_dataset), collator, tokenizer)
    if why_not is not None:
        undo()
        return Packing(reason=f"{model.config.model_type}: {why_not}")
    return Packing(collator=collator, undo=undo)
