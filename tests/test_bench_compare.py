"""bench/compare_arms.py: arms of different benchmark reports compared seed by seed (ablations)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import compare_arms  # noqa: E402

WHOLE = REPO / "bench" / "figures" / "cpu_amx_3epochs_2seeds.json"  # seeds 42 and 1: stock, stock_best, ours_fast


@pytest.fixture()
def base():
    return json.loads(WHOLE.read_text())


@pytest.fixture()
def ablation(base):
    """Another run's report: ours_fast alone, with an override, other F1 on each seed, and one more seed."""
    other = copy.deepcopy(base)
    other["fast_overrides"] = {"cpu_speedups": False}
    for shift, seed in zip((0.013, -0.021), other["seeds"]):
        run = other["runs"][str(seed)] = {"ours_fast": other["runs"][str(seed)]["ours_fast"]}
        run["ours_fast"]["test_f1"] += shift
        run["ours_fast"]["eval_f1"] -= shift
    other["runs"]["7"] = copy.deepcopy(other["runs"]["42"])
    other["seeds"] = [*other["seeds"], 7]
    return other


def _values(report, arm, key, seeds):
    return [100 * report["runs"][str(s)][arm][key] for s in seeds]


def test_differences_are_paired_by_seed_over_the_shared_seeds(base, ablation):
    result = compare_arms.compare(("a.json", base, "stock"), [("b.json", ablation, "ours_fast"),
                                                               ("a.json", base, "ours_fast")])
    assert result["seeds"] == [42, 1]  # seed 7 is only in b.json
    stock, _, ours = result["rows"]
    for row, report in ((result["rows"][1], ablation), (ours, base)):
        for key in ("test_f1", "eval_f1"):
            own = _values(report, "ours_fast", key, [42, 1])
            want = [a - b for a, b in zip(own, _values(base, "stock", key, [42, 1]))]
            assert row[f"{key}_minus_base"]["values"] == pytest.approx(want)
            assert row[f"{key}_below_base"] == sum(d < 0 for d in want)
            assert row[key]["values"] == pytest.approx(own)
    assert "test_f1_minus_base" not in stock
    assert result["rows"][1]["label"].startswith("ours_fast (cpu_speedups=False)")
    assert ours["label"].startswith("ours_fast [")
    ablation["ours_overrides"] = {"weight_decay": 0.01}  # --ours-override reaches every arm of our trainer
    label = compare_arms._label("b.json", ablation, "ours_fast")
    assert label.startswith("ours_fast (cpu_speedups=False, weight_decay=0.01)")
    assert compare_arms._label("b.json", ablation, "stock") == "stock [b.json]"


def test_seeds_picks_the_seeds_compared(base, ablation):
    result = compare_arms.compare(("a.json", base, "stock"), [("b.json", ablation, "ours_fast")], seeds=[1])
    assert result["seeds"] == [1]
    with pytest.raises(compare_arms.CompareError, match=r"seed\(s\) \[7\]"):
        compare_arms.compare(("a.json", base, "stock"), [("b.json", ablation, "ours_fast")], seeds=[7])


@pytest.mark.parametrize("change, message", [
    (lambda r: r["hyper_parameters"].update(epochs=1), "hyper_parameters"),
    (lambda r: r["machine"].update(cpu_model="another CPU"), "machine"),
    (lambda r: r["data"].update(train_rows=1), "data"),
])
def test_reports_that_differ_in_more_than_arms_and_overrides_are_refused(base, ablation, change, message):
    change(ablation)
    with pytest.raises(compare_arms.CompareError, match=message):
        compare_arms.compare(("a.json", base, "stock"), [("b.json", ablation, "ours_fast")])


def test_a_missing_arm_is_refused(base, ablation):
    with pytest.raises(compare_arms.CompareError, match="no arm 'stock'"):
        compare_arms.compare(("a.json", base, "ours_fast"), [("b.json", ablation, "stock")])


def test_cli_writes_the_comparison_and_exits_2_on_bad_input(tmp_path, base, ablation):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base))
    b.write_text(json.dumps(ablation))
    script = str(REPO / "bench" / "compare_arms.py")
    out = tmp_path / "cmp.json"
    done = subprocess.run([sys.executable, script, "--base", f"{a}:stock", "--against", f"{b}:ours_fast",
                           "--output", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert written["seeds"] == [42, 1] and "--against" in written["command"]
    assert "ours_fast (cpu_speedups=False)" in done.stdout

    ablation["hyper_parameters"]["learning_rate"] = 1.0
    b.write_text(json.dumps(ablation))
    for argv in (["--base", f"{a}:stock", "--against", f"{b}:ours_fast", "--output", str(tmp_path / "x.json")],
                 ["--base", f"{a}:stock", "--against", f"{a}:nope", "--output", str(tmp_path / "x.json")],
                 ["--base", f"{a}:stock", "--against", f"{a}:ours_fast", "--output", str(a)]):
        done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("compare_arms: ")
    assert not (tmp_path / "x.json").exists()


def test_a_seed_one_report_lacks_is_left_out(base, ablation):
    del ablation["runs"]["1"]
    ablation["seeds"].remove(1)
    result = compare_arms.compare(("a.json", base, "stock"), [("b.json", ablation, "ours_fast")])
    assert result["seeds"] == [42]
