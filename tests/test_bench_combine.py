"""bench/combine_runs.py: pooling the seeds of several benchmark reports gives what one run over all seeds gives."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import combine_runs  # noqa: E402

WHOLE = REPO / "bench" / "figures" / "cpu_amx_3epochs_2seeds.json"  # one run, seeds 42 and 1


def _half(report: dict, seed: int) -> dict:
    """The report a run with only `seed` would have written (its own peaks, its own aggregate)."""
    half = copy.deepcopy(report)
    half["seeds"] = [seed]
    half["runs"] = {str(seed): half["runs"][str(seed)]}
    half["aggregate"] = {"stale": True}
    return half


@pytest.fixture()
def whole():
    return json.loads(WHOLE.read_text())


def test_pooling_two_halves_reproduces_the_whole_runs_aggregate(whole):
    pooled = combine_runs.combine([_half(whole, 42), _half(whole, 1)], ["a.json", "b.json"])
    assert pooled["seeds"] == [42, 1]
    assert pooled["cpu_matmul_peak_flops"] == whole["cpu_matmul_peak_flops"]
    for arm in ("stock", "stock_best", "ours_fast"):
        got, want = pooled["aggregate"][arm], whole["aggregate"][arm]
        for key in ("train_tokens_per_s", "test_f1", "mfu", "peak_rss_mb"):
            assert got[key]["values"] == pytest.approx(want[key]["values"]), (arm, key)
            assert got[key]["std"] == pytest.approx(want[key]["std"]), (arm, key)
    fast, want = pooled["aggregate"]["ours_fast"], whole["aggregate"]["ours_fast"]
    assert fast["speedup_vs_stock_best"]["median"] == pytest.approx(want["speedup_vs_stock_best"]["median"])
    assert fast["test_f1_minus_stock_points"]["ci95"] == pytest.approx(want["test_f1_minus_stock_points"]["ci95"])
    assert pooled["targets"]["ours_fast_vs_stock_best_tokens_per_s_median"] == \
        whole["targets"]["ours_fast_vs_stock_best_tokens_per_s_median"]
    assert [c["seeds"] for c in pooled["combined_from"]] == [[42], [1]]


def test_mfu_is_recomputed_against_the_highest_peak_of_all_reports(whole):
    low, high = _half(whole, 42), _half(whole, 1)
    for arm in low["runs"]["42"].values():
        arm["cpu_peaks_before"] = {"bfloat16": 1e11, "float32": 1e10}
    for arm in high["runs"]["1"].values():
        arm["cpu_peaks_before"] = {"bfloat16": 4e12, "float32": 1e12}
    pooled = combine_runs.combine([low, high], ["low.json", "high.json"])
    assert pooled["cpu_matmul_peak_flops"] == {"bfloat16": 4e12, "float32": 1e12}
    r = pooled["runs"]["42"]["ours_fast"]
    assert r["mfu"] == pytest.approx(6 * r["params_non_embedding"] * r["train_tokens_per_s"] / 4e12)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["hyper_parameters"].update(learning_rate=1e-4), "hyper_parameters"),
    (lambda r: r["machine"].update(cpu_model="AMD EPYC"), "machine"),
    (lambda r: r["runs"]["1"].pop("stock_best"), "arms"),
    (lambda r: r.update(fast_overrides={"use_lora": "true"}), "fast_overrides"),
])
def test_reports_that_differ_in_more_than_seeds_are_refused(whole, change, message):
    other = _half(whole, 1)
    change(other)
    with pytest.raises(combine_runs.CombineError, match=message):
        combine_runs.combine([_half(whole, 42), other], ["a.json", "b.json"])


def test_a_seed_in_two_reports_is_refused(whole):
    with pytest.raises(combine_runs.CombineError, match="seed 42 is in both"):
        combine_runs.combine([_half(whole, 42), _half(whole, 42)], ["a.json", "b.json"])


def test_a_reproduced_seed_is_pooled_once_and_a_differing_one_refused(whole):
    """--reproduced-seeds: a seed run again with the same F1 in every pooled arm counts once (from the first report);
    one whose F1 differs in any arm is refused."""
    again = _half(whole, 42)
    again["runs"]["42"]["stock"]["total_seconds_marker"] = "second run"
    pooled = combine_runs.combine([_half(whole, 42), _half(whole, 1), again], ["a.json", "b.json", "c.json"],
                                  reproduced=True)
    assert pooled["seeds"] == [42, 1] and pooled["reproduced_seeds"] == {"42": ["a.json", "c.json"]}
    assert "total_seconds_marker" not in pooled["runs"]["42"]["stock"]  # the first report's run
    assert pooled["aggregate"]["ours_fast"]["test_f1"]["n"] == 2
    assert pooled["command"].endswith("c.json --reproduced-seeds")
    again["runs"]["42"]["ours_fast"]["test_f1"] += 1e-9
    with pytest.raises(combine_runs.CombineError, match="seed 42 of c.json does not reproduce a.json: ours_fast "
                                                        "test_f1 differ"):
        combine_runs.combine([_half(whole, 42), again], ["a.json", "c.json"], reproduced=True)


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, whole):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_half(whole, 42)))
    b.write_text(json.dumps(_half(whole, 42)))
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "combine_runs.py"), str(a), str(b),
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "seed 42 is in both" in proc.stderr
    assert not out.exists()
    b.write_text(json.dumps(_half(whole, 1)))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "combine_runs.py"), str(a), str(b),
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["seeds"] == [42, 1]


def test_arms_pools_a_subset_of_arms_that_every_report_has(whole):
    """A report of all the arms and a later one of two of them pool over those two; the pooled comparison of the
    two is the one a run of just those arms gives, and a report that lacks one of them is refused."""
    arms = ["stock", "ours_fast"]
    later = _half(whole, 1)
    later["runs"]["1"] = {a: r for a, r in later["runs"]["1"].items() if a in arms}
    with pytest.raises(combine_runs.CombineError, match="arms"):
        combine_runs.combine([_half(whole, 42), later], ["a.json", "b.json"])  # without --arms: refused
    pooled = combine_runs.combine([_half(whole, 42), later], ["a.json", "b.json"], arms)
    assert pooled["seeds"] == [42, 1] and all(sorted(pooled["runs"][s]) == sorted(arms) for s in ("42", "1"))
    assert set(pooled["aggregate"]) == set(arms) and pooled["command"].endswith("b.json --arms stock,ours_fast")
    assert "--arms" not in combine_runs.combine([_half(whole, 42), _half(whole, 1)], ["a.json", "b.json"])["command"]
    two_arm = {s: {a: r for a, r in runs.items() if a in arms} for s, runs in whole["runs"].items()}
    for s in ("42", "1"):
        assert pooled["runs"][s]["ours_fast"]["test_f1"] == two_arm[s]["ours_fast"]["test_f1"]
    alone = combine_runs.rb.aggregate({int(s): two_arm[s] for s in ("42", "1")}, arms)["ours_fast"]
    for key in ("test_f1", "test_f1_minus_stock_points", "speedup_vs_stock", "train_tokens_per_s"):
        assert pooled["aggregate"]["ours_fast"][key] == alone[key], key
    later["runs"]["1"].pop("ours_fast")
    with pytest.raises(combine_runs.CombineError, match="lacks arm"):
        combine_runs.combine([_half(whole, 42), later], ["a.json", "b.json"], arms)
    with pytest.raises(combine_runs.CombineError, match="unknown arm"):
        combine_runs.combine([_half(whole, 42), _half(whole, 1)], ["a.json", "b.json"], ["ours_turbo"])
