"""bench/run_benchmark.py end to end on the tiny task: a second run into the same --workdir measures afresh, and a
finished arm leaves only its records unless --keep-outputs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench(conll_dir: Path, model: Path, work: Path, output: Path, seed: int, *extra: str
           ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_benchmark.py"), "--arms", "ours", "--data-dir", str(conll_dir),
         "--model-path", str(model), "--train-samples", "32", "--eval-samples", "16", "--max-steps", "2",
         "--seeds", str(seed), "--torch-threads", "1", "--no-peaks", "--workdir", str(work), "--output", str(output),
         *extra],
        capture_output=True, text=True, timeout=600, cwd=str(REPO))


def test_a_rerun_into_the_same_workdir_starts_each_arm_afresh(conll_dir, tiny_model_selector, tmp_path):
    """The first run leaves the arm's checkpoints and result.json in the workdir; the second run (another seed)
    trains the arm again instead of failing on the folder our trainer refuses, and reports its own figures."""
    work = tmp_path / "work"
    first = _bench(conll_dir, tiny_model_selector, work, tmp_path / "first.json", 1, "--keep-outputs")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    arm_dir = work / "ours"  # one seed: no seed sub-folder
    assert list((arm_dir / "pytorch_model").glob("checkpoint-*")) and (arm_dir / "result.json").exists()
    # What an interrupted earlier run with this seed could leave behind: a result.json that is not this run's.
    (arm_dir / "result.json").write_text(json.dumps({"train_tokens_per_s": 1e9, "test_f1": 2.0}))
    second = _bench(conll_dir, tiny_model_selector, work, tmp_path / "second.json", seed=1)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "FAILED" not in second.stdout
    report = json.loads((tmp_path / "second.json").read_text())
    results = list(report["runs"]["1"].values())
    assert len(results) == 1 and "error" not in results[0]
    assert results[0]["test_f1"] <= 1.0 and results[0]["train_tokens_per_s"] < 1e9  # measured, not the stale file


def test_a_finished_arm_keeps_its_records_but_not_its_models(conll_dir, tiny_model_selector, tmp_path):
    """Without --keep-outputs, an arm's checkpoints, model and MLflow folders go once its figures are read (a
    40-seed run kept ~13 GB of them and filled the disk); the spec, the log and the result stay."""
    work = tmp_path / "work"
    run = _bench(conll_dir, tiny_model_selector, work, tmp_path / "report.json", seed=1)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in (work / "ours").iterdir()) == ["log.txt", "result.json", "spec.json"]
    result = json.loads((tmp_path / "report.json").read_text())["runs"]["1"]["ours"]
    assert "error" not in result and 0.0 <= result["test_f1"] <= 1.0


def _bench_module():
    spec = importlib.util.spec_from_file_location("run_benchmark_module", REPO / "bench" / "run_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_data_is_the_copy_a_clone_ships(tmp_path, monkeypatch):
    """`run_benchmark.py --quick` works on a plain clone: --data-dir defaults to pipelines/data/wnut17 (as the
    tests' wnut17_dir), and ../shared/data/wnut17 is only the fallback."""
    bench = _bench_module()
    shipped = REPO / "pipelines" / "data" / "wnut17"
    assert (shipped / "train.conll").exists()
    assert Path(bench.parse_args(["--quick"]).data_dir) == shipped
    clone = tmp_path / "clone"  # a clone beside a shared folder: the shipped copy still wins
    for folder in (clone / "pipelines" / "data" / "wnut17", tmp_path / "shared" / "data" / "wnut17"):
        folder.mkdir(parents=True)
        (folder / "train.conll").write_text("a\tO\n")
    monkeypatch.setattr(bench, "REPO", clone)
    assert bench.default_data_dir() == clone / "pipelines" / "data" / "wnut17"
    (clone / "pipelines" / "data" / "wnut17" / "train.conll").unlink()
    assert bench.default_data_dir() == tmp_path / "shared" / "data" / "wnut17"


def test_the_readme_lora_row_cites_the_current_3_epoch_figures():
    """README's apply_lora row quotes the LoRA and full fine-tuning test F1 of bench/README.md's current 3-epoch
    run (the section the README benchmark text cites), not figures of older code."""
    bench_readme = (REPO / "bench" / "README.md").read_text()
    section = bench_readme.split("### AMD EPYC, 3 epochs: `ours` (fp32) and LoRA (current code)", 1)[1]
    section = section.split("\n### ", 1)[0]
    table = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in section.splitlines() if line.startswith("|")]
    column = table[0].index("test F1")
    f1 = {arm: next(row[column] for row in table if row[0].startswith(f"`{arm}` ")) for arm in ("ours", "ours_lora")}
    assert all(re.fullmatch(r"\d+\.\d+ ± \d+\.\d+", value) for value in f1.values()), f1
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `apply_lora` |"))
    assert f"{f1['ours_lora']} against {f1['ours']} for full fine-tuning" in row, (f1, row)
    assert f1["ours_lora"] in readme.split("## Benchmark", 1)[1]  # the same figures as the benchmark summary
