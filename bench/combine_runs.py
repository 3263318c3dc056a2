#!/usr/bin/env python
"""Pool the seeds of several `run_benchmark.py --seeds` reports into one report (a long run split across sessions).

The reports must agree on everything but the seeds: arms, hyper-parameters, overrides, data, CPU model and
library versions; a seed may appear once. Comparisons stay paired within a seed (each seed's arms ran
back to back in one report), and MFU is recomputed against the highest matmul peak measured in any of the reports,
as one long run would have done. Bad input exits 2 with one line, before anything is written.

Usage:
  python bench/combine_runs.py A.json B.json --output bench/figures/combined.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_benchmark as rb  # noqa: E402

# What must be equal across the reports (the seed itself is what differs).
MACHINE_KEYS = ("cpu_model", "cpu_count_usable", "torch_threads", "cuda", "versions", "cpu_bf16_flags")


class CombineError(ValueError):
    """The reports cannot be pooled (the message says why)."""


def _signature(report: dict) -> dict:
    hp = {k: v for k, v in report["hyper_parameters"].items() if k != "seed"}
    machine = {k: report["machine"].get(k) for k in MACHINE_KEYS}
    arms = {a for s in report["seeds"] for a in report["runs"][str(s)]}
    arms = [a for a in rb.ALL_ARMS if a in arms]  # seeds rotate the arm order; the table keeps the runner's
    return {"arms": arms, "hyper_parameters": hp, "ours_overrides": report.get("ours_overrides"),
            "fast_overrides": report.get("fast_overrides"), "data": {k: v for k, v in report["data"].items()
                                                                     if k != "preprocess_seconds"},
            "machine": machine, "mode": report.get("mode")}


def combine(reports: list[dict], names: list[str]) -> dict:
    """One report with every seed of `reports` (raises CombineError when they differ in more than seeds)."""
    if len(reports) < 2:
        raise CombineError("give at least two reports to combine")
    first = _signature(reports[0])
    for name, report in zip(names[1:], reports[1:]):
        other = _signature(report)
        diff = [k for k in first if first[k] != other[k]]
        if diff:
            raise CombineError(f"{name} differs from {names[0]} in {', '.join(diff)}: only seeds may differ")
    runs, seeds, sources = {}, [], {}
    for name, report in zip(names, reports):
        for seed in report["seeds"]:
            if seed in runs:
                raise CombineError(f"seed {seed} is in both {sources[seed]} and {name}")
            runs[seed] = copy.deepcopy(report["runs"][str(seed)])
            seeds.append(seed)
            sources[seed] = name
    peak_values = [r["cpu_peaks_before"] for s in runs for r in runs[s].values() if r.get("cpu_peaks_before")]
    peaks = {d: max(p[d] for p in peak_values) for d in ("bfloat16", "float32")} if peak_values else None
    for s in runs:
        for r in runs[s].values():
            rb.add_mfu(r, peaks)
    arms = first["arms"]
    agg = rb.aggregate(runs, arms)
    report = copy.deepcopy(reports[0])
    report.update({
        "command": " ".join(["python", "bench/combine_runs.py", *names]),
        "combined_from": [{"file": n, "command": r.get("command"), "utc": r.get("utc"), "seeds": r["seeds"],
                           "total_seconds": r.get("total_seconds")} for n, r in zip(names, reports)],
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_matmul_peak_flops": peaks,
        "seeds": seeds,
        "runs": {str(s): runs[s] for s in seeds},
        "arms": runs[seeds[0]],
        "aggregate": agg,
        "targets": rb.targets(agg, runs),
        "total_seconds": round(sum(r.get("total_seconds") or 0 for r in reports), 1),
    })
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="JSON reports of bench/run_benchmark.py")
    p.add_argument("--output", required=True, help="JSON path of the pooled report")
    args = p.parse_args(argv)
    try:
        loaded = []
        for name in args.reports:
            try:
                loaded.append(json.loads(Path(name).read_text()))
            except (OSError, ValueError) as exc:
                raise CombineError(f"cannot read {name}: {exc}") from exc
        if Path(args.output).resolve() in {Path(n).resolve() for n in args.reports}:
            raise CombineError(f"--output {args.output} is one of the inputs")
        report = combine(loaded, args.reports)
    except (CombineError, KeyError) as exc:
        print(f"combine_runs: {exc if isinstance(exc, CombineError) else f'not a benchmark report (no {exc})'}",
              file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out)
    print("over seeds " + ",".join(map(str, report["seeds"])) + " (mean ± sample sd; 95 % t CI of the mean)")
    print(rb.aggregate_table(report["aggregate"]))
    print("targets:", json.dumps(report["targets"]))
    print(f"[combine] JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
