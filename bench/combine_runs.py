#!/usr/bin/env python
"""Pool the seeds of several `run_benchmark.py --seeds` reports into one report (a long run split across sessions).

The reports must agree on everything but the seeds: arms, hyper-parameters, overrides, data, CPU model and
library versions; a seed may appear once (``--reproduced-seeds``: a seed run again in a later report is pooled once,
from the first report, when every pooled arm scored the same validation and test F1 in both; any difference is an
error). With ``--arms``, only those arms are pooled (every report must have each
of them in every seed; its other arms are left out), so a run of all six arms and a later run of two of them can be
pooled over those two. Comparisons stay paired within a seed (each seed's arms ran
back to back in one report), and MFU is recomputed against the highest matmul peak measured in any of the reports,
as one long run would have done. Bad input exits 2 with one line, before anything is written.

Usage:
  python bench/combine_runs.py A.json B.json [--arms stock,ours_fast] [--reproduced-seeds]
                               --output bench/figures/combined.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_benchmark as rb  # noqa: E402

# What must be equal across the reports (the seed itself is what differs).
MACHINE_KEYS = ("cpu_model", "cpu_count_usable", "torch_threads", "cuda", "versions", "cpu_bf16_flags")


class CombineError(ValueError):
    """The reports cannot be pooled (the message says why)."""


def read_report(name: str) -> dict:
    """A `run_benchmark.py` report (CombineError when it cannot be read)."""
    try:
        return json.loads(Path(name).read_text())
    except (OSError, ValueError) as exc:
        raise CombineError(f"cannot read {name}: {exc}") from exc


def write_json(report: dict, output: str) -> Path:
    """`report` as indented JSON at `output`, written atomically (trainer.publish)."""
    from trainer.publish import write_file_atomic

    out = Path(output)
    write_file_atomic(out, lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=str)))
    return out


def _signature(report: dict, only: Optional[list] = None) -> dict:
    hp = {k: v for k, v in report["hyper_parameters"].items() if k != "seed"}
    machine = {k: report["machine"].get(k) for k in MACHINE_KEYS}
    arms = {a for s in report["seeds"] for a in report["runs"][str(s)]}
    if only is not None:
        arms = {a for a in only if all(a in report["runs"][str(s)] for s in report["seeds"])}
    arms = [a for a in rb.ALL_ARMS if a in arms]  # seeds rotate the arm order; the table keeps the runner's
    return {"arms": arms, "hyper_parameters": hp, "ours_overrides": report.get("ours_overrides"),
            "fast_overrides": report.get("fast_overrides"), "data": {k: v for k, v in report["data"].items()
                                                                     if k != "preprocess_seconds"},
            "machine": machine, "mode": report.get("mode")}


REPRODUCED_KEYS = ("eval_f1", "test_f1")  # what a seed run again must score alike to be pooled once


def combine(reports: list[dict], names: list[str], arms: Optional[list] = None, reproduced: bool = False) -> dict:
    """One report with every seed of `reports`, over `arms` if given (raises CombineError when they differ in more
    than seeds, or one lacks an arm of `arms`). `reproduced`: a seed in several reports is kept once, from the first,
    if each pooled arm has the same REPRODUCED_KEYS in all of them (else CombineError)."""
    if len(reports) < 2:
        raise CombineError("give at least two reports to combine")
    unknown = [a for a in arms or () if a not in rb.ALL_ARMS]
    if unknown:
        raise CombineError(f"unknown arm(s) {unknown}; choose from {list(rb.ALL_ARMS)}")
    signatures = [_signature(report, arms) for report in reports]
    for name, signature in zip(names, signatures):
        missing = [a for a in arms or () if a not in signature["arms"]]
        if missing:
            raise CombineError(f"{name} lacks arm(s) {missing} in some of its seeds")
    first = signatures[0]
    for name, other in zip(names[1:], signatures[1:]):
        diff = [k for k in first if first[k] != other[k]]
        if diff:
            raise CombineError(f"{name} differs from {names[0]} in {', '.join(diff)}: only seeds may differ")
    runs, seeds, sources, repeated = {}, [], {}, {}
    for name, report in zip(names, reports):
        for seed in report["seeds"]:
            again = {a: r for a, r in report["runs"][str(seed)].items() if arms is None or a in arms}
            if seed in runs:
                if not reproduced:
                    raise CombineError(f"seed {seed} is in both {sources[seed]} and {name}")
                differ = [f"{a} {k}" for a in runs[seed] for k in REPRODUCED_KEYS
                          if again.get(a, {}).get(k) != runs[seed][a].get(k)]
                if differ:
                    raise CombineError(f"seed {seed} of {name} does not reproduce {sources[seed]}: "
                                       f"{', '.join(differ)} differ")
                repeated.setdefault(seed, [sources[seed]]).append(name)
                continue
            runs[seed] = copy.deepcopy(again)
            seeds.append(seed)
            sources[seed] = name
    peak_values = [r["cpu_peaks_before"] for s in runs for r in runs[s].values() if r.get("cpu_peaks_before")]
    peaks = {d: max(p[d] for p in peak_values) for d in ("bfloat16", "float32")} if peak_values else None
    for s in runs:
        for r in runs[s].values():
            rb.add_mfu(r, peaks)
    agg = rb.aggregate(runs, first["arms"])
    report = copy.deepcopy(reports[0])
    report.update({
        "command": " ".join(["python", "bench/combine_runs.py", *names,
                             *(["--arms", ",".join(arms)] if arms else []),
                             *(["--reproduced-seeds"] if reproduced else [])]),
        "reproduced_seeds": {str(s): files for s, files in repeated.items()},
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
    p.add_argument("--arms", help="pool only these arms (comma-separated), which every report must have")
    p.add_argument("--reproduced-seeds", action="store_true",
                   help="a seed in several reports is pooled once if it scored the same F1 in each (else exit 2)")
    args = p.parse_args(argv)
    try:
        loaded = [read_report(name) for name in args.reports]
        if Path(args.output).resolve() in {Path(n).resolve() for n in args.reports}:
            raise CombineError(f"--output {args.output} is one of the inputs")
        arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
        report = combine(loaded, args.reports, arms, args.reproduced_seeds)
    except (CombineError, KeyError) as exc:
        print(f"combine_runs: {exc if isinstance(exc, CombineError) else f'not a benchmark report (no {exc})'}",
              file=sys.stderr)
        return 2
    out = write_json(report, args.output)
    print("over seeds " + ",".join(map(str, report["seeds"])) + " (mean ± sample sd; 95 % t CI of the mean)")
    print(rb.aggregate_table(report["aggregate"]))
    print("targets:", json.dumps(report["targets"]))
    print(f"[combine] JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
