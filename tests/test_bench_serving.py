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
