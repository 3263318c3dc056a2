"""Padding-free training batches (trainer/packing.py): a flat batch computes exactly what the padded batch computes
(loss and every gradient), the collator keeps every label and token type, models that would compute something else
keep padded batches, and the fine-tune trains on flat batches by default."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from conftest import tiny_token_classifier
from trainer import packing
from trainer.data import load_preprocess_output
from trainer.finetune import finetune

ROWS = [  # [CLS] ... [SEP]; a labelled first position and token types of 1 too, which the stock collator drops
    {"input_ids": [2, 7, 8, 9, 10, 11, 3], "attention_mask": [1] * 7, "token_type_ids": [0, 0, 0, 0, 1, 1, 1],
     "labels": [-100, 1, 0, 0, 1, -100, -100]},
    {"input_ids": [2, 12, 3], "attention_mask": [1] * 3, "token_type_ids": [0] * 3, "labels": [1, 0, -100]},
    {"input_ids": [2, 13, 14, 15, 3], "attention_mask": [1] * 5, "token_type_ids": [0] * 5,
     "labels": [-100, 0, 1, 1, -100]},
    {"input_ids": [2, 16, 17, 18, 19, 20, 21, 22, 23, 3], "attention_mask": [1] * 10, "token_type_ids": [0] * 10,
     "labels": [-100, 1, 1, 0, 0, 1, 0, 1, 0, -100]},
]


class _Tokenizer:
    """What DataCollatorForTokenClassification needs to pad: `pad`, `pad_token_id`, `padding_side`."""

    pad_token_id = 0
    padding_side = "right"

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def pad(self, features, return_tensors="pt", **kwargs):
        longest = max(len(f["input_ids"]) for f in features)
        return {key: torch.tensor([list(f[key]) + [self.pad_token_id if key == "input_ids" else 0]
                                   * (longest - len(f[key])) for f in features]) for key in features[0]}


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_cost", [pytest.param(float("inf"), id="one-group"),
                                        pytest.param(1.0, id="a-group-per-length")])
def test_flat_batch_has_the_padded_batch_loss_and_gradients(chunk_cost, monkeypatch):
    from transformers import DataCollatorForTokenClassification

    monkeypatch.setattr(packing, "CHUNK_COST", chunk_cost)
    model = tiny_token_classifier()
    assert packing.install_packed_attention(model) is not None
    padded = DataCollatorForTokenClassification(_Tokenizer())([dict(r) for r in ROWS])
    flat = packing.FlatTokenClassificationCollator()([dict(r) for r in ROWS])
    # no padding inside: 25 tokens, then one alignment row of 7 to a multiple of 32 (its own row, labels -100)
    assert flat["input_ids"].shape == (1, 32) and flat.pop(packing.PADDING_KEY) == 7
    loss_padded, grads_padded = _loss_and_grads(model, padded)
    loss_flat, grads_flat = _loss_and_grads(model, flat)
    assert loss_flat.item() == pytest.approx(loss_padded.item(), rel=1e-5)
    assert grads_flat.keys() == grads_padded.keys()
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_flat[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_flat_collator_keeps_every_label_token_type_and_restarts_positions():
    flat = packing.FlatTokenClassificationCollator(position_ids_start=2, pad_to_multiple_of=None)(
        [dict(r) for r in ROWS])
    assert flat["labels"][0].tolist() == [x for r in ROWS for x in r["labels"]]  # the first label of row 2 too
    assert flat["token_type_ids"][0].tolist() == [x for r in ROWS for x in r["token_type_ids"]]
    assert flat["position_ids"][0].tolist() == [2 + i for r in ROWS for i in range(len(r["input_ids"]))]
    assert flat["cu_seq_lens_q"].tolist() == [0, 7, 10, 15, 25] and flat["max_length_q"] == 10
    assert flat[packing.PADDING_KEY] == 0


def test_flat_collator_aligns_the_row_with_a_padding_row():
    flat = packing.FlatTokenClassificationCollator(pad_token_id=5, pad_to_multiple_of=16)([dict(r) for r in ROWS])
    assert flat[packing.PADDING_KEY] == 7 and flat["input_ids"].shape == (1, 32)
    assert flat["input_ids"][0, 25:].tolist() == [5] * 7 and flat["labels"][0, 25:].tolist() == [-100] * 7
    assert flat["cu_seq_lens_q"].tolist() == [0, 7, 10, 15, 25, 32]  # a row of its own: nothing attends to it


def test_row_chunks_cover_every_row_once_in_groups_of_about_one_length():
    lengths = [30, 5, 29, 6, 31, 4, 60]
    assert packing.row_chunks(lengths, chunk_cost=float("inf")) == [[6, 4, 0, 2, 3, 1, 5]]  # longest first
    groups = packing.row_chunks(lengths, chunk_cost=200)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in g) for g in groups] == [[60], [29, 30, 31], [4, 5, 6]]


def test_roberta_positions_start_after_the_padding_index():
    model = tiny_token_classifier("roberta")
    assert packing.position_ids_start(model) == 2
    packed = packing.enable(model, ROWS, _Tokenizer(pad_token_id=1))
    assert packed.collator is not None and packed.reason is None
    # numbered from 0 as for BERT, the flat batch would shift every position: the start-up check sees it
    assert "differ" in packing.verify(model, ROWS, packing.FlatTokenClassificationCollator(0), _Tokenizer(1))


def test_a_model_that_drops_the_row_boundaries_keeps_padded_batches():
    from transformers import BertForTokenClassification

    class DropsKwargs(BertForTokenClassification):  # a forward that does not hand its kwargs down to the attention
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                    **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                   position_ids=position_ids, labels=labels)

    model = DropsKwargs(tiny_token_classifier().config)
    before = model.config._attn_implementation
    packed = packing.enable(model, ROWS, _Tokenizer())
    assert packed.collator is None and packed.reason.startswith("bert: ") and "differ" in packed.reason
    assert model.config._attn_implementation == before  # the swap undone


def test_a_model_without_sdpa_attention_keeps_padded_batches():
    # its own attention
    model = tiny_token_classifier("deberta-v2", relative_attention=True, position_biased_input=False)
    packed = packing.enable(model, ROWS, _Tokenizer())
    assert packed.collator is None and "is not SDPA" in packed.reason


def test_rows_that_carry_padding_keep_padded_batches():
    rows = [dict(ROWS[0], attention_mask=[1] * 6 + [0])] + ROWS[1:]
    packed = packing.enable(tiny_token_classifier(), rows, _Tokenizer())
    assert packed.collator is None and "padding" in packed.reason


def test_finetune_trains_on_flat_batches_by_default(make_config, monkeypatch, caplog):
    calls = {"flat": 0}
    original = packing.FlatTokenClassificationCollator.__call__

    def counting(self, features, *args, **kwargs):
        calls["flat"] += 1
        return original(self, features, *args, **kwargs)

    monkeypatch.setattr(packing.FlatTokenClassificationCollator, "__call__", counting)
    with caplog.at_level(logging.INFO, logger="trainer.progress"):
        flat = finetune(make_config("flat", num_train_epochs=1, export_onnx=False))
    verify_calls, calls["flat"] = calls["flat"], 0
    assert verify_calls == 1 + 10  # the start-up check, then 160 rows / 16 = 10 training batches
    # the progress line counts the epoch's real tokens, not the alignment rows
    counted = re.search(r"trained 10 steps in \S+: ([\d,]+) tokens", caplog.text).group(1)
    assert int(counted.replace(",", "")) == load_preprocess_output(make_config().preprocess_output).train.num_tokens
    assert flat.test_metrics is not None  # trained, evaluated (padded batches) and published
    finetune(make_config("padded", num_train_epochs=1, export_onnx=False, padding_free=False))
    assert calls["flat"] == 0
