"""Correctness of the speed features (trainer/sampling.py, trainer/speed.py). Speed itself is measured by
bench/run_benchmark.py, never here: these tests pin that each feature computes what the plain path computes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Crash, WeightCasts
from transformers import TrainerCallback

from trainer.checkpoints import list_checkpoints
from trainer.finetune import finetune
from trainer.sampling import SeededLengthGroupedSampler, epoch_seed, length_grouped_batches

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------------------------
def _lengths(n=203, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(3, 60, (n,), generator=g)).tolist()


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    lengths = _lengths()
    torch.manual_seed(123)
    a = SeededLengthGroupedSampler(lengths, 8, seed=7)
    a.set_epoch(1)
    first = list(a)
    torch.manual_seed(999)  # the global RNG must not matter
    torch.rand(10)
    b = SeededLengthGroupedSampler(lengths, 8, seed=7)
    b.set_epoch(1)
    assert list(b) == first
    b.set_epoch(2)
    assert list(b) != first  # a fresh order every epoch
    assert list(SeededLengthGroupedSampler(lengths, 8, seed=8)) != list(SeededLengthGroupedSampler(lengths, 8, seed=7))


def test_sampler_covers_every_row_once_with_less_padding_and_random_batch_order():
    lengths = _lengths(n=1003)
    batches = length_grouped_batches(lengths, 16, seed=3, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [len(b) for b in batches[:-1]] == [16] * (len(batches) - 1) and len(batches[-1]) == 1003 % 16

    def pad_fraction(bs):
        real = sum(lengths[i] for b in bs for i in b)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in bs)

    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    random_batches = [perm[i:i + 16] for i in range(0, len(perm), 16)]
    assert pad_fraction(batches) < 0.2 < 0.4 < pad_fraction(random_batches)  # default groups: 17 % against 45 %

    # Batch order is random: not the stock sampler's longest-first saw-tooth. Count how often a full batch is
    # longer than the next one: ~half for a random order, almost all (or none) for a sorted one.
    maxes = [max(lengths[i] for i in b) for b in batches[:-1]]
    downs = sum(x > y for x, y in zip(maxes, maxes[1:])) / (len(maxes) - 1)
    assert 0.3 < downs < 0.7


def test_group_size_trades_padding_for_batches_closer_to_random_ones():
    """``mega_batch_mult`` (FinetuneConfig.length_group_batches) batches per length-sorted group: 1 gives the
    random sampler's batches (each a run of one seeded permutation), and padding falls as the groups grow."""
    lengths = _lengths(n=1003)
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(epoch_seed(3, 0))).tolist()
    random_sets = {frozenset(perm[i:i + 16]) for i in range(0, len(perm), 16)}
    assert {frozenset(b) for b in length_grouped_batches(lengths, 16, 3, 0, mega_batch_mult=1)} == random_sets
    assert {frozenset(b) for b in length_grouped_batches(lengths, 16, 3, 0, mega_batch_mult=4)} != random_sets

    def pad_fraction(mult):
        bs = length_grouped_batches(lengths, 16, seed=3, epoch=0, mega_batch_mult=mult)
        assert sorted(i for b in bs for i in b) == list(range(len(lengths)))
        return 1 - sum(lengths) / sum(max(lengths[i] for i in b) * len(b) for b in bs)

    pads = [pad_fraction(m) for m in (1, 2, 4, 8, 32)]
    assert pads == sorted(pads, reverse=True) and pads[0] > 0.3 > 0.1 > pads[-1], pads


def test_finetune_groups_as_many_batches_as_length_group_batches(make_config, monkeypatch):
    from trainer import speed

    built = []

    class Recording(SeededLengthGroupedSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.mega_batch_mult)

    monkeypatch.setattr(speed, "SeededLengthGroupedSampler", Recording)
    finetune(make_config(group_by_length=True, length_group_batches=3, num_train_epochs=1, export_onnx=False))
    assert built == [3]
    assert make_config().length_group_batches == SeededLengthGroupedSampler([1], 1, 0).mega_batch_mult  # one default


def test_dataloader_batches_are_the_sampler_batches():
    """The DataLoader cuts the index stream every batch_size rows: that must be exactly our batches."""
    lengths = _lengths(n=99)
    sampler = SeededLengthGroupedSampler(lengths, 8, seed=1)
    loader = torch.utils.data.DataLoader(list(range(99)), batch_size=8, sampler=sampler)
    assert [b.tolist() for b in loader] == sampler.batches()


# ------------------------------------------------------------------------------------------------------------
# Bit-identical resume from the middle of epoch 2 with the default (length-grouped) sampler
# ------------------------------------------------------------------------------------------------------------

class _Start(TrainerCallback):
    def __init__(self):
        self.begin_step = self.begin_epoch = self.first_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin_step, self.begin_epoch = state.global_step, state.epoch

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = state.global_step


def weights_digest(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_resume_mid_epoch_two_is_bit_identical_with_the_default_sampler(make_config):
    # 160 rows / batch 16 = 10 steps per epoch; a checkpoint every 15 steps: checkpoint-15 is half-way through
    # epoch 2, so the resumed run must skip 5 batches of epoch 2 and replay the other 5 exactly.
    settings = dict(num_train_epochs=3, learning_rate=2e-3, evaluation_strategy="steps", eval_steps=15,
                    metric_for_best_model="loss")
    assert not make_config().group_by_length and make_config().padding_free  # the default: random, flat batches
    straight = make_config("straight", **settings)
    finetune(straight)

    crashed = make_config("crashed", **settings)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        finetune(crashed, callbacks=[Crash(at_step=18)])
    assert [c.name for c in list_checkpoints(crashed.pytorch_model_folder)] == ["checkpoint-15"]

    start = _Start()
    finetune(make_config("crashed", resume_from_checkpoint="true", **settings), callbacks=[start])
    assert (start.begin_step, start.begin_epoch, start.first_step) == (15, 1.5, 16)  # really resumed mid-epoch 2

    for name in ("checkpoint-15", "checkpoint-30"):
        assert weights_digest(Path(crashed.pytorch_model_folder) / name) == \
            weights_digest(Path(straight.pytorch_model_folder) / name), name
    assert weights_digest(Path(crashed.pytorch_model_folder)) == weights_digest(Path(straight.pytorch_model_folder))


# ------------------------------------------------------------------------------------------------------------
# DDP: two CPU processes (gloo) get disjoint shards of the same seeded order
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_ranks_get_disjoint_shards(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", "--master_port", str(29600 + os.getpid() % 1000),
         str(REPO / "tests" / "ddp_sampler_probe.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    n_rows, batch = seen[0]["n_rows"], seen[0]["batch_size"]
    for epoch in ("0", "1"):
        r0, r1 = seen[0]["epochs"][epoch], seen[1]["epochs"][epoch]
        rows0, rows1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
        assert not rows0 & rows1, f"epoch {epoch}: ranks share rows"
        assert rows0 | rows1 == set(range(n_rows))
        # Each rank's batches are the seeded sampler's batches, dealt round-robin.
        expected = length_grouped_batches(seen[0]["lengths"], batch, seed=seen[0]["seed"], epoch=int(epoch))
        assert r0 == expected[0::2] and r1 == expected[1::2]
    assert seen[0]["epochs"]["0"] != seen[0]["epochs"]["1"]


# ------------------------------------------------------------------------------------------------------------
# Trained-rows embedding (cpu_speedups): exactly the dense table's training
# ------------------------------------------------------------------------------------------------------------
def test_trained_rows_embedding_computes_what_the_dense_table_computes():
    from trainer.speed import TrainedRowsEmbedding

    torch.manual_seed(0)
    dense = torch.nn.Embedding(50, 8, padding_idx=0)
    reference = torch.nn.Embedding(50, 8, padding_idx=0)
    reference.load_state_dict(dense.state_dict())
    compact = TrainedRowsEmbedding(dense, torch.tensor([3, 7, 9, 11]))
    assert sorted(compact.ids.tolist()) == [0, 3, 7, 9, 11]  # + padding
    assert set(compact.state_dict()) == {"weight"} and torch.equal(compact.state_dict()["weight"], reference.weight)

    train = torch.tensor([[3, 7, 9, 0], [11, 3, 0, 0]])
    out = compact(train)
    ref = reference(train)
    assert torch.equal(out, ref)
    upstream = torch.randn_like(ref)
    out.backward(upstream)
    ref.backward(upstream)
    assert torch.equal(compact.trainable.grad, reference.weight.grad[compact.ids])
    others = torch.ones(50, dtype=torch.bool)
    others[compact.ids] = False
    assert not reference.weight.grad[others].any()  # rows outside the training ids get no gradient: never move

    with torch.no_grad():
        compact.trainable.add_(1.0)
        reference.weight[compact.ids[1:]] += 1.0  # the padding row: same update in both (kept by padding_idx below)
        reference.weight[0] += 1.0
    unseen = torch.tensor([[3, 42, 0, 17]])  # validation rows may hold ids the training split never had
    assert torch.equal(compact(unseen), reference(unseen))
    restored = compact.restore()
    assert restored is dense and torch.equal(restored.weight, reference.weight)


def _without_dropout(model_selector: Path, folder: Path) -> Path:
    """A copy of a model-import folder whose model has no dropout."""
    import shutil

    shutil.copytree(model_selector, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cpu_speedups_train_exactly_like_the_stock_path(make_config, tiny_model_selector, tmp_path):
    """Tiny BERT without dropout (the speed-ups draw other dropout masks), same data order: the per-epoch loss
    curves and the trained weights with the CPU speed-ups (allocator, trained-rows embedding, dropout and
    attention modules swapped, clipping inside the fused AdamW step) equal the stock modules' up to float
    rounding."""
    from safetensors.torch import load_file

    selector = _without_dropout(tiny_model_selector, tmp_path / "no_dropout")
    curves, weights = {}, {}
    for flag in ("false", "true"):
        losses = _Losses()
        config = make_config(f"speedups-{flag}", cpu_speedups=flag, num_train_epochs=4,
                             model_selector_output=str(selector))
        result = finetune(config, callbacks=[losses])
        assert result.test_metrics["test_f1"] > 0.9
        curves[flag] = losses.losses
        weights[flag] = load_file(str(Path(config.pytorch_model_folder) / "model.safetensors"))
        assert losses.folded_clipping and set(losses.folded_clipping) == {flag == "true"}  # clipping in AdamW
    assert len(curves["true"]) == 4
    assert curves["true"] == pytest.approx(curves["false"], rel=1e-5, abs=1e-6)
    assert set(weights["true"]) == set(weights["false"])
    for name, tensor in weights["false"].items():
        if name.endswith("attention.self.key.bias"):  # softmax ignores it: its gradient is 0 up to rounding noise,
            assert max(float(weights["true"][name].abs().max()), float(tensor.abs().max())) < 1e-4  # Adam scales
            continue  # that noise up, so each run's value is noise of its own; both must stay at noise level
        assert torch.allclose(weights["true"][name], tensor, rtol=1e-4, atol=1e-6), name
    emb = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(weights["true"][emb], load_file(str(Path(make_config().model_selector_output)
                                                               / "model.safetensors"))[emb])  # it did train


# ------------------------------------------------------------------------------------------------------------
# Dropout masks from 32-bit random words
# ------------------------------------------------------------------------------------------------------------
def test_keep_mask_keeps_each_element_with_probability_one_minus_p_under_torch_seeding():
    from trainer.speed import keep_mask

    for p in (0.1, 0.5, 0.9):
        mask = keep_mask((1000, 1000), p)
        assert mask.dtype == torch.bool and mask.shape == (1000, 1000)
        n, kept = mask.numel(), int(mask.sum())
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(kept - n * (1 - p)) < 6 * sd, (p, kept)  # a binomial(n, 1 - p) count
        rows, cols = mask.float().mean(1), mask.float().mean(0)  # no structure along either axis
        assert abs(float(rows.std()) - (p * (1 - p) / 1000) ** 0.5) < 0.005
        assert abs(float(cols.std()) - (p * (1 - p) / 1000) ** 0.5) < 0.005
    odd = keep_mask((3, 5, 7), 0.3)  # an odd element count (half of a 64-bit word unused)
    assert odd.shape == (3, 5, 7)
    torch.manual_seed(7)
    first, second = keep_mask((64, 64), 0.5), keep_mask((64, 64), 0.5)
    assert not torch.equal(first, second)  # each call draws afresh
    torch.manual_seed(7)
    assert torch.equal(keep_mask((64, 64), 0.5), first)  # torch's generator governs the masks (resume, seeds)
    state = torch.get_rng_state()
    again = keep_mask((64, 64), 0.5)
    torch.set_rng_state(state)
    assert torch.equal(keep_mask((64, 64), 0.5), again)


def test_fast_dropout_zeroes_and_scales_like_dropout_and_backprops_through_the_same_mask():
    from trainer.speed import fast_dropout

    x = torch.randn(40, 50, requires_grad=True)
    y = fast_dropout(x, 0.25)
    kept = y != 0
    assert 0.6 < float(kept.float().mean()) < 0.9
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.75)
    assert fast_dropout(x, 0.25, training=False) is x and fast_dropout(x, 0.0) is x
    xb = torch.randn(8, 16, dtype=torch.bfloat16)
    assert fast_dropout(xb, 0.1).dtype == torch.bfloat16


def test_attention_with_fast_dropout_computes_the_sdpa_math_kernel_with_that_mask(monkeypatch):
    """Training with attention dropout: softmax(q k^T s + mask) * keep / (1 - p) @ v in fp32, as torch's math
    kernel; without dropout (or in eval) the stock "sdpa" function itself."""
    import trainer.speed as speed
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attention(torch.nn.Module):
        is_causal = False

    module = Attention().train()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # the second row's last two tokens are padding
    keep = torch.rand(2, 3, 5, 5) > 0.3
    monkeypatch.setattr(speed, "keep_mask", lambda shape, p: keep.view(shape))
    out, weights = speed.sdpa_with_fast_dropout(module, q, k, v, mask, dropout=0.3, scaling=0.5)
    scores = (q @ k.transpose(-1, -2)) * 0.5 + torch.where(mask, 0.0, float("-inf"))
    expected = ((torch.softmax(scores, -1) * keep / 0.7) @ v).transpose(1, 2)
    assert weights is None and out.shape == (2, 5, 3, 4)
    assert torch.allclose(out, expected, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 inputs: fp32 inside, bf16 out (as the math kernel)
        out16, _ = speed.sdpa_with_fast_dropout(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask,
                                                dropout=0.3, scaling=0.5)
    assert out16.dtype == torch.bfloat16
    assert torch.allclose(out16.float(), ((torch.softmax((q.bfloat16().float() @ k.bfloat16().float()
                                          .transpose(-1, -2)) * 0.5 + torch.where(mask, 0.0, float("-inf")), -1)
                                          * keep / 0.7) @ v.bfloat16().float()).transpose(1, 2), atol=1e-2)
    for dropout, training in ((0.0, True), (0.3, False)):
        module.train(training)
        ours, _ = speed.sdpa_with_fast_dropout(module, q, k, v, mask, dropout=dropout if training else 0.0,
                                               scaling=0.5)
        stock, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.5)
        assert torch.equal(ours, stock)


def test_prepare_swaps_every_dropout_and_the_attention_and_restore_puts_the_stock_modules_back(
        make_config, tiny_model_selector, tiny_preprocess_output):
    from transformers import BertForTokenClassification

    from trainer.data import load_preprocess_output
    from trainer.speed import FAST_DROPOUT_ATTENTION, FastDropout, prepare

    model = BertForTokenClassification.from_pretrained(tiny_model_selector)
    stock = {name for name, m in model.named_modules() if type(m) is torch.nn.Dropout}
    assert len(stock) == 3 * 2 + 2  # three per layer (the attention one only holds the p SDPA gets), embeddings, head
    assert model.config._attn_implementation == "sdpa"
    prepared = prepare(model, make_config(), load_preprocess_output(tiny_preprocess_output).train)
    assert {name for name, m in model.named_modules() if isinstance(m, FastDropout)} == stock
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert model.config._attn_implementation == FAST_DROPOUT_ATTENTION
    assert all(m.config._attn_implementation == FAST_DROPOUT_ATTENTION for m in model.modules()
               if hasattr(m, "config") and hasattr(m.config, "_attn_implementation"))
    model.train()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    assert model(**batch).logits.shape == (1, 5, 2)
    prepared.restore()
    assert {name for name, m in model.named_modules() if type(m) is torch.nn.Dropout} == stock
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    no_speedups = BertForTokenClassification.from_pretrained(tiny_model_selector)
    prepare(no_speedups, make_config(cpu_speedups="false"), [])
    assert {name for name, m in no_speedups.named_modules() if type(m) is torch.nn.Dropout} == stock


_ALLOCATOR_PROBE = """
import json, os, sys
import numpy as np
from transformers import BertForTokenClassification
from trainer.config import FinetuneConfig
from trainer.data import load_preprocess_output
from trainer.speed import prepare

selector, preprocessed, out = sys.argv[1:4]


def freed_block_stays():
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, every page touched
    held = rss()
    del block
    return held - rss() < (32 << 20)  # freeing it gave (almost) nothing back


config = FinetuneConfig(preprocess_output=preprocessed, model_selector_output=selector,
                        pytorch_model_folder=out + "/pt", mlflow_model_folder=out + "/ml")
model = BertForTokenClassification.from_pretrained(selector)
seen = {"before": freed_block_stays()}
prepared = prepare(model, config, load_preprocess_output(preprocessed).train)
seen["training"] = freed_block_stays()
prepared.restore()
seen["after"] = freed_block_stays()
print(json.dumps(seen))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not Path("/proc/self/statm").exists(),
                    reason="glibc's allocator settings, the resident set read from /proc")
def test_restore_hands_freed_memory_back_to_the_os_again(tiny_model_selector, tiny_preprocess_output, tmp_path):
    """During training (prepare) a freed 64 MiB block stays in the process for the next step to reuse; after
    restore() it goes back to the OS as in a process without the speed features, so publishing does not build on
    training's memory high-water mark. In a fresh process: glibc's thresholds are process-wide."""
    done = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, str(tiny_model_selector),
                           str(tiny_preprocess_output), str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"before": False, "training": True, "after": False}


class _Losses(TrainerCallback):
    def __init__(self):
        self.losses = []
        self.folded_clipping = []  # per optimizer step: did the fused AdamW step get the clipping coefficient?

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.folded_clipping.append(getattr(inner, "grad_scale", None) is not None)


# ------------------------------------------------------------------------------------------------------------
# Token-normalised loss for length-grouped batches
# ------------------------------------------------------------------------------------------------------------
def test_token_normalised_loss_weighs_every_labelled_token_the_same(tiny_model_selector, tmp_path):
    from transformers import BertForTokenClassification, Trainer, TrainingArguments

    from trainer.speed import enable_token_normalized_loss, trainer_class

    rows = [{"input_ids": [2] + [5] * n + [3], "attention_mask": [1] * (n + 2),
             "labels": [-100] + [1] * n + [-100]} for n in (2, 4, 6, 8)]  # 5 labelled tokens per row on average
    model = BertForTokenClassification.from_pretrained(tiny_model_selector)  # 2 labels
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=3,
                             use_cpu=True, report_to="none")
    trainer = trainer_class(Trainer)(model=model, args=args, train_dataset=rows)
    assert enable_token_normalized_loss(trainer, rows) == pytest.approx(5 * 2 * 3)
    assert trainer.loss_is_scaled_for_ga is True  # the constant covers the accumulation steps: no second division

    batch = {"input_ids": torch.tensor([[2, 5, 5, 3, 0], [2, 5, 5, 5, 3]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
             "labels": torch.tensor([[-100, 1, 0, -100, -100], [-100, 0, 1, 1, -100]])}
    model.train()
    torch.manual_seed(0)
    ours = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    stock = model(**batch).loss  # the mean over this batch's 5 labelled tokens
    assert ours.item() == pytest.approx(stock.item() * 5 / 30, rel=1e-6)
    model.eval()  # evaluation keeps the model's own (mean) loss
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)


def test_length_grouped_training_follows_the_random_sampler_loss_curve(make_config):
    """Same tiny task, same seed: a length-grouped (token-normalised) run's per-epoch training loss
    stays within tolerance of the stock random sampler's, and both learn the task."""
    curves = {}
    for flag in ("false", "true"):
        losses = _Losses()
        result = finetune(make_config(f"grouped-{flag}", group_by_length=flag, num_train_epochs=4), callbacks=[losses])
        assert result.test_metrics["test_f1"] > 0.9
        curves[flag] = losses.losses
    print(curves)
    for stock, ours in zip(curves["false"], curves["true"]):
        assert abs(stock - ours) <= 0.05 + 0.2 * stock, curves


# ------------------------------------------------------------------------------------------------------------
# Gradient clipping folded into the fused AdamW step
# ------------------------------------------------------------------------------------------------------------
def _clipping_trainer(tiny_model_selector, tmp_path, optim="adamw_torch_fused", max_grad_norm=0.05):
    from transformers import BertForTokenClassification, Trainer, TrainingArguments

    from trainer.speed import enable_folded_clipping, trainer_class

    model = BertForTokenClassification.from_pretrained(tiny_model_selector)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", optim=optim,
                             learning_rate=1e-2, max_grad_norm=max_grad_norm)
    trainer = trainer_class(Trainer)(model=model, args=args)
    assert enable_folded_clipping(trainer)
    trainer.create_optimizer()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
             "labels": torch.tensor([[-100, 1, 0, -100], [-100, 1, -100, -100]])}
    model.eval()  # no dropout: both copies see the same gradients
    model(**batch).loss.backward()
    return trainer, model


def test_folded_clipping_makes_the_stock_clipped_adamw_update(tiny_model_selector, tmp_path):
    """The stock path multiplies the gradients by min(1, max_norm / norm) and then steps fused AdamW; ours leaves
    the gradients as they are and hands the coefficient to the fused kernel: same norm, same new weights (up to
    rounding), with clipping active (the norm is far above max_grad_norm) and at the second step too."""
    import copy

    trainer, model = _clipping_trainer(tiny_model_selector, tmp_path)
    stock_model = copy.deepcopy(model)
    for theirs, ours in zip(stock_model.parameters(), model.parameters()):
        theirs.grad = None if ours.grad is None else ours.grad.clone()
    stock_params = [p for p in stock_model.parameters() if p.requires_grad]
    assert {group["weight_decay"] for group in trainer.optimizer.param_groups} == {0.0}
    stock_opt = torch.optim.AdamW(stock_params, lr=trainer.args.learning_rate, weight_decay=0.0, fused=True)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    for step in range(2):
        if step:  # new gradients, the same on both copies (a key bias's gradient is rounding noise that Adam
            model.zero_grad(set_to_none=True)  # would blow up to +-lr if each copy computed its own)
            (model(input_ids=torch.tensor([[2, 6, 5, 3]]), labels=torch.tensor([[-100, 0, 1, -100]])).loss
             * 3).backward()
            for theirs, ours in zip(stock_model.parameters(), model.parameters()):
                theirs.grad = None if ours.grad is None else ours.grad.clone()
            grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        norm = trainer._clip_grad_norm(model)
        stock_norm = torch.nn.utils.clip_grad_norm_(stock_params, trainer.args.max_grad_norm)
        assert float(norm) == pytest.approx(float(stock_norm), rel=1e-6)
        assert float(norm) > 10 * trainer.args.max_grad_norm  # clipping is active
        for name, p in model.named_parameters():  # no pass over the gradients
            if name in grads:
                assert torch.equal(p.grad, grads[name]), name
        inner = trainer.optimizer  # (accelerate wraps it in train(); _clip_grad_norm unwraps it)
        assert float(inner.grad_scale) == pytest.approx(float(norm) / trainer.args.max_grad_norm, rel=1e-5)
        trainer.optimizer.step()
        stock_opt.step()
        assert not hasattr(inner, "grad_scale")  # used once: the next step without clipping would not see it
        for (name, ours), theirs in zip(model.named_parameters(), stock_model.parameters()):
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), (step, name)
            if ours.grad is not None:  # after the step the gradients are the clipped ones, as after the stock pass
                assert torch.allclose(ours.grad, theirs.grad, rtol=1e-5, atol=1e-12), (step, name)


def test_clipping_is_the_stock_pass_where_the_optimizer_is_not_fused(tiny_model_selector, tmp_path):
    trainer, model = _clipping_trainer(tiny_model_selector, tmp_path, optim="adamw_torch")
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    norm = trainer._clip_grad_norm(model)
    coef = trainer.args.max_grad_norm / (float(norm) + 1e-6)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.allclose(p.grad, before[name] * coef, rtol=1e-5, atol=1e-9), name
    assert not hasattr(trainer.optimizer, "grad_scale")


# ------------------------------------------------------------------------------------------------------------
# Length-sorted evaluation
# ------------------------------------------------------------------------------------------------------------
def test_length_sorted_evaluation_returns_the_dataset_order_figures(tiny_preprocess_output, tiny_model_selector,
                                                                    tmp_path):
    """Evaluation batches run longest row first (less padding), and the outputs, the figures and the per-row
    predictions equal evaluation in dataset order."""
    from torch.utils.data import SequentialSampler
    from transformers import (AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification,
                              TrainingArguments)

    from trainer.data import load_preprocess_output
    from trainer.hf_trainer import TokenClassificationTrainer
    from trainer.metrics import ids_and_losses, make_compute_metrics

    data = load_preprocess_output(tiny_preprocess_output)
    split = data.validation
    lengths = [len(split[i]["input_ids"]) for i in range(len(split))]
    assert len(set(lengths)) > 3 and lengths != sorted(lengths, reverse=True)  # an order to restore
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(tiny_model_selector, num_labels=len(data.class_names),
                                                       ignore_mismatched_sizes=True)
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)

    def run(sequential: bool):
        args = TrainingArguments(output_dir=str(tmp_path / str(sequential)), per_device_eval_batch_size=8,
                                 use_cpu=True, report_to="none")
        trainer = TokenClassificationTrainer(
            model=model, args=args, data_collator=DataCollatorForTokenClassification(tokenizer),
            compute_metrics=make_compute_metrics(data.class_names, data.tag_scheme),
            preprocess_logits_for_metrics=ids_and_losses)
        if sequential:
            trainer._get_eval_sampler = lambda dataset: SequentialSampler(dataset)
        else:
            order = list(trainer._get_eval_sampler(split))
            assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
        return trainer.predict(split, metric_key_prefix="eval")

    sorted_run, dataset_order = run(False), run(True)
    ids_sorted, ids_seq = sorted_run.predictions[0], dataset_order.predictions[0]
    for row in range(len(split)):  # each row's predictions, whatever the padding width of the concatenation
        n = lengths[row]
        assert (ids_sorted[row, :n] == ids_seq[row, :n]).all(), row
        assert (sorted_run.label_ids[row, :n] == dataset_order.label_ids[row, :n]).all(), row
    for key in ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy"):
        assert sorted_run.metrics[key] == dataset_order.metrics[key], key
    assert sorted_run.metrics["eval_loss"] == pytest.approx(dataset_order.metrics["eval_loss"], rel=1e-5)


def test_bf16_evaluation_casts_each_weight_once_per_loop_and_predicts_the_same(tiny_preprocess_output,
                                                                              tiny_model_selector, tmp_path,
                                                                              monkeypatch):
    """Under bf16 autocast at evaluation batch 1 (the spec's default), each linear weight is cast to bf16 once per
    evaluation loop, not once per batch, and the predictions and figures are bit-identical to per-batch casts."""
    import contextlib

    from transformers import (AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification,
                              TrainingArguments)

    import trainer.hf_trainer as hf_trainer
    from trainer.data import load_preprocess_output
    from trainer.metrics import ids_and_losses, make_compute_metrics

    data = load_preprocess_output(tiny_preprocess_output)
    split = data.validation
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(tiny_model_selector, num_labels=len(data.class_names),
                                                       ignore_mismatched_sizes=True)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)

    def run(name: str):
        args = TrainingArguments(output_dir=str(tmp_path / name), per_device_eval_batch_size=1, bf16=True,
                                 use_cpu=True, report_to="none")
        trainer = hf_trainer.TokenClassificationTrainer(
            model=model, args=args, data_collator=DataCollatorForTokenClassification(tokenizer),
            compute_metrics=make_compute_metrics(data.class_names, data.tag_scheme),
            preprocess_logits_for_metrics=ids_and_losses)
        casts = WeightCasts(weights)
        with casts.mode:
            output = trainer.predict(split, metric_key_prefix="eval")
        return output, set(casts.counts.values())

    kept, kept_casts = run("kept")
    monkeypatch.setattr(hf_trainer, "autocast_casts_kept", contextlib.nullcontext)
    per_batch, per_batch_casts = run("per_batch")
    assert len(split) > 3 and per_batch_casts == {len(split)}  # the stock loop: every batch casts every weight
    assert kept_casts == {1}
    assert (kept.predictions[0] == per_batch.predictions[0]).all()
    assert (kept.predictions[1] == per_batch.predictions[1]).all()  # per-position losses, bit for bit
    for key in ("eval_loss", "eval_f1", "eval_precision", "eval_recall", "eval_accuracy"):
        assert kept.metrics[key] == per_batch.metrics[key], key


@pytest.mark.parametrize("deepspeed,fsdp,kept", [(False, False, True), (True, False, False), (False, True, False)])
def test_sharded_weights_are_cast_per_batch(deepspeed, fsdp, kept):
    """Under ZeRO-3 or FSDP each module gathers its weights for its own forward: keeping their casts for the loop
    would hold the whole model unsharded, so those runs keep the per-batch casts."""
    import contextlib
    from types import SimpleNamespace

    from trainer.hf_trainer import TokenClassificationTrainer

    trainer = SimpleNamespace(is_deepspeed_enabled=deepspeed, is_fsdp_enabled=fsdp)
    context = TokenClassificationTrainer._eval_casts(trainer)
    assert isinstance(context, contextlib.nullcontext) is not kept


def test_kept_casts_never_outlive_the_loop_even_inside_a_callers_autocast_region():
    """Inside a caller's autocast region (where autocast itself would keep its cache), the casts made in the loop
    are dropped on the way out: a weight changed afterwards is cast again, and a later forward with grad reaches
    the weight (a cast made under no_grad would cut it off)."""
    from trainer.speed import autocast_casts_kept

    torch.manual_seed(0)
    layer, x = torch.nn.Linear(8, 4), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's open region
        with torch.no_grad(), autocast_casts_kept():
            layer(x)
        with torch.no_grad():
            layer.weight.add_(1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().sum().backward()
    fresh = torch.nn.functional.linear(x.bfloat16(), layer.weight.detach().bfloat16(), layer.bias.detach().bfloat16())
    assert torch.equal(y, fresh)  # the changed weight, not the cast made in the loop
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
