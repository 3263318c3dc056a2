#!/usr/bin/env python
"""Paired comparison of arms from different `run_benchmark.py` reports, seed by seed (an ablation).

Each ``REPORT:ARM`` names an arm of a report; the reports may differ in their arms and in their ``--ours-override``
/ ``--fast-override`` settings (that is what is compared) but nothing else: hyper-parameters, data, CPU model,
library versions and mode must agree. Over the seeds every report has, each ``--against`` arm's test and validation
F1 are compared with the ``--base`` arm's on the same seed: mean ± sd of each arm, mean ± sd of the paired
difference with its 95 % t confidence interval, and on how many seeds it is below. F1 is what such a comparison can
pool across runs: a seed's F1 is reproducible, its speed moves with the host. Bad input exits 2 with one line,
before anything is written.

Usage:
  python bench/compare_arms.py --base A.json:stock --against A.json:ours_fast --against B.json:ours_fast \
      [--output bench/figures/ablation.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import combine_runs  # noqa: E402
import run_benchmark as rb  # noqa: E402

METRICS = (("test_f1", "test F1"), ("eval_f1", "validation F1"))
SAME = ("hyper_parameters", "data", "machine", "mode")  # of combine_runs' signature: all but arms and overrides


class CompareError(ValueError):
    """The arms cannot be compared (the message says why)."""


def _label(name: str, report: dict, arm: str) -> str:
    overrides = rb.arm_overrides(arm, report.get("ours_overrides"), report.get("fast_overrides"))
    shown = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return f"{arm}" + (f" ({shown})" if shown else "") + f" [{Path(name).name}]"


def compare(base: tuple, against: list[tuple], seeds: Optional[list] = None) -> dict:
    """`base` and each of `against`: (file name, report, arm). Raises CompareError when the reports differ in more
    than arms and overrides, an arm is missing, or they share no seed."""
    entries = [base, *against]
    for name, report, arm in entries:
        if not any(arm in report["runs"][str(s)] for s in report["seeds"]):
            raise CompareError(f"{name} has no arm {arm!r}; it has {sorted(report['runs'][str(report['seeds'][0])])}")
    first = combine_runs._signature(base[1])
    for name, report, _ in against:
        other = combine_runs._signature(report)
        diff = [k for k in SAME if first[k] != other[k]]
        if diff:
            raise CompareError(f"{name} differs from {base[0]} in {', '.join(diff)}: only arms and overrides may")
    shared = [s for s in base[1]["seeds"]
              if all(str(s) in r["runs"] and a in r["runs"][str(s)] for _, r, a in entries)]
    if seeds is not None:
        missing = [s for s in seeds if s not in shared]
        if missing:
            raise CompareError(f"seed(s) {missing} are not in every report with its arm")
        shared = list(seeds)
    if not shared:
        raise CompareError("the reports share no seed with all of these arms")

    def values(report, arm, key):
        return [100 * report["runs"][str(s)][arm][key] for s in shared]

    _, base_report, base_arm = base
    rows = []
    for name, report, arm in entries:
        row = {"arm": arm, "file": name, "label": _label(name, report, arm),
               "published_checkpoint": [Path(report["runs"][str(s)][arm].get("best_checkpoint") or "last").name
                                        for s in shared]}
        for key, _ in METRICS:
            own = values(report, arm, key)
            row[key] = rb.stats(own)
            if (name, arm) != (base[0], base_arm):
                diff = [a - b for a, b in zip(own, values(base_report, base_arm, key))]
                row[f"{key}_minus_base"] = rb.stats(diff)
                row[f"{key}_below_base"] = sum(d < 0 for d in diff)
        rows.append(row)
    return {"command": None, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seeds": shared,
            "base": rows[0]["label"], "rows": rows,
            "hyper_parameters": base_report["hyper_parameters"], "machine": base_report["machine"]}


def table(result: dict) -> str:
    n = len(result["seeds"])
    lines = ["arm | " + " | ".join(f"{title}, mean ± sd | − base (95 % CI) | below base" for _, title in METRICS),
             "--- | " + " | ".join("---: | --- | ---:" for _ in METRICS)]
    for row in result["rows"]:
        cells = []
        for key, _ in METRICS:
            s = row[key]
            cells.append(f"{s['mean']:.2f} ± {s['std']:.2f}")
            d = row.get(f"{key}_minus_base")
            if d is None:
                cells += ["—", "—"]
            else:
                lo, hi = d.get("ci95", (float("nan"), float("nan")))
                cells += [f"{d['mean']:+.2f} ± {d['std']:.2f} [{lo:+.2f}, {hi:+.2f}]", f"{row[f'{key}_below_base']}/{n}"]
        lines.append(f"{row['label']} | " + " | ".join(cells))
    return "\n".join(lines)


def _entry(text: str) -> tuple:
    name, sep, arm = text.rpartition(":")
    if not sep or not name or arm not in rb.ALL_ARMS:
        raise CompareError(f"{text!r}: give REPORT.json:ARM, ARM one of {list(rb.ALL_ARMS)}")
    return name, combine_runs.read_report(name), arm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="REPORT.json:ARM that the others are compared with")
    p.add_argument("--against", action="append", required=True, help="REPORT.json:ARM (repeat)")
    p.add_argument("--seeds", help="only these seeds (comma-separated; default: every seed all of them have)")
    p.add_argument("--output", help="JSON path of the comparison")
    args = p.parse_args(argv)
    try:
        base = _entry(args.base)
        against = [_entry(a) for a in args.against]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
        inputs = {Path(n).resolve() for n, _, _ in [base, *against]}
        if args.output and Path(args.output).resolve() in inputs:
            raise CompareError(f"--output {args.output} is one of the inputs")
        result = compare(base, against, seeds)
    except (ValueError, KeyError) as exc:  # CompareError and CombineError are ValueErrors; so is a bad --seeds
        why = exc if isinstance(exc, ValueError) else f"not a benchmark report (no {exc})"
        print(f"compare_arms: {why}", file=sys.stderr)
        return 2
    result["command"] = " ".join(["python", "bench/compare_arms.py", "--base", args.base,
                                  *[x for a in args.against for x in ("--against", a)],
                                  *(["--seeds", args.seeds] if args.seeds else [])])
    print(f"over seeds {','.join(map(str, result['seeds']))}, paired with {result['base']} (F1 in points)")
    print(table(result))
    if args.output:
        print(f"[compare] JSON: {combine_runs.write_json(result, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
