"""bench/serving_benchmark.py: what its evaluate-step timings measure."""

from __future__ import annotations

import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import serving_benchmark as sb  # noqa: E402


def test_the_before_evaluate_is_read_and_loaded_outside_its_timed_repeats(monkeypatch, tmp_path):
    """Reading the foundation's evaluate from git and loading it (100 s on the fake clock) is not timed: each of the
    three versions' figure is the evaluation's own time (1 s), and the module is loaded once for all repeats."""
    clock = types.SimpleNamespace(now=0.0)
    result = types.SimpleNamespace(figures={"f1": 0.5, "loss": 0.25})

    def evaluate(config):
        clock.now += 1.0
        return result

    loads = []

    def load(work):
        loads.append(work)
        clock.now += 100.0
        return types.SimpleNamespace(evaluate=evaluate)

    monkeypatch.setattr(sb.time, "perf_counter", lambda: clock.now)
    monkeypatch.setattr(sb, "evaluate_before_module", load)
    monkeypatch.setattr("trainer.evaluate.evaluate", evaluate)
    out = sb.time_evaluate(tmp_path, repeat=3)
    assert loads == [tmp_path]
    assert {name: figures["seconds"] for name, figures in out.items()} == {
        "before": 1.0, "now_rescore_false": 1.0, "now_rescore_true": 1.0}


def test_the_cast_per_batch_row_serves_fp32_weights_for_autocast_to_cast_and_the_served_row_bf16_ones(
        monkeypatch, tiny_finetuned, tmp_path):
    import torch

    from trainer import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    (tmp_path / "pytorch").symlink_to(tiny_finetuned["pytorch"])
    monkeypatch.setattr(sb, "SERVED", (("pytorch_bf16", "pytorch", "16"),
                                       ("pytorch_bf16_cast_per_batch", "pytorch", "16")))
    served = sb.load_served(tmp_path, threads=1)
    stored = {name: {m.weight.dtype for m in c.backend.model.modules() if isinstance(m, torch.nn.Linear)}
              for name, c in served.items()}
    assert stored == {"pytorch_bf16": {torch.bfloat16}, "pytorch_bf16_cast_per_batch": {torch.float32}}
    assert {c.compute_dtype for c in served.values()} == {"bfloat16"}


def test_the_backends_take_turns_on_blocks_of_tweets_and_on_every_batch_32_repeat(monkeypatch):
    """Timed in turns, never one backend's 300 tweets after another's: at batch 1 each block of tweets goes through
    every backend (the block's tweets one after the other on one backend: its weights stay warm), at batch 32 each
    repeat of the whole set; the paired ratios come from those turns."""
    calls, clock = [], types.SimpleNamespace(now=0.0)
    cost = {"pytorch": 2.0, "pytorch_bf16": 1.0, "onnx": 0.5}

    class Fake:
        compute_dtype = "float32"

        def __init__(self, name):
            self.name, self.batch_size = name, 1

        def predict(self, texts):
            calls.append((self.name, self.batch_size, tuple(texts)))
            clock.now += cost[self.name] * len(texts)

    monkeypatch.setattr(sb.time, "perf_counter", lambda: clock.now)
    monkeypatch.setattr(sb, "BATCH1_BLOCK", 5)
    texts = [f"tweet {i}" for i in range(40)]
    out = sb.time_inference({name: Fake(name) for name in cost}, texts, repeat=4)
    timed = [c for c in calls if len(c[2]) != 20]  # the warm-ups go first, 20 tweets each
    single, whole = timed[:120], timed[120:]
    assert all(c[1] == 1 and len(c[2]) == 1 for c in single) and all(c[1] == 32 for c in whole) and len(whole) == 12
    for block in range(8):  # 8 blocks of 5 tweets, each through every backend in turn
        turn = single[15 * block:15 * block + 15]
        assert {c[0] for c in turn} == set(cost)
        for k in range(3):
            assert {c[0] for c in turn[5 * k:5 * k + 5]} == {turn[5 * k][0]}
            assert [c[2][0] for c in turn[5 * k:5 * k + 5]] == texts[5 * block:5 * block + 5]
    for r in range(4):
        assert {c[0] for c in whole[3 * r:3 * r + 3]} == set(cost)
    assert out["pytorch_bf16"]["batch1_median_ratio_to_pytorch"] == 0.5
    assert out["onnx"]["batch1_median_ms"] == 500.0 and out["onnx"]["batch32_seconds"] == 20.0
