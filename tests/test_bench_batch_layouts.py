"""bench/batch_layouts.py: every layout trains, flat layouts carry no padding but their alignment row, and the
report holds the figures its README section quotes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import batch_layouts  # noqa: E402


def test_layouts_report_tokens_per_second_padding_and_memory(tiny_run_dir, tmp_path):
    out = tmp_path / "layouts.json"
    assert batch_layouts.main(["--run-dir", str(tiny_run_dir), "--layouts", "random:padded,random:flat,group4:flat",
                               "--steps", "3", "--warmup", "1", "--precision", "32", "--align", "0",
                               "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    layouts = report["layouts"]
    assert list(layouts) == ["random:padded", "random:flat", "group4:flat"] and report["steps"] == 3
    assert all(v["tokens_per_s"] > 0 for v in layouts.values()) and layouts["random:padded"]["x_random:padded"] == 1
    assert layouts["random:padded"]["padding_pct"] > 0 and layouts["random:flat"]["padding_pct"] == 0  # no alignment
    assert report["align"] is None and report["peak_rss_mb"]["after_steps"] >= report["peak_rss_mb"]["before_steps"]


def test_an_unknown_layout_exits_2(tiny_run_dir, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        batch_layouts.main(["--run-dir", str(tiny_run_dir), "--layouts", "random:stacked"])
    assert exit_info.value.code == 2 and "unknown layout random:stacked" in capsys.readouterr().err
