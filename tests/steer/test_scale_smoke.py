"""The scale benchmark's smallest case (benchmarks/scale.py): 16 walkers of stand-in MD on the
real loop, threads and SQLite, in about a minute. Its numbers must exist and be sane."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_sixteen_walkers_every_segment_handled_and_measured(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.scale import measure

    r = measure(16, "threads", segments=2, md_seconds=2.0, dft_seconds=0.2, train_seconds=0.5, trigger_rate=0.25,
                workdir=tmp_path)
    assert "reached 200 MD steps" in r["stopped"], r["stopped"]
    assert r["unhandled_tasks"] == 0
    # Every walker ran both segments (a triggered one is run again after the hot-swap): all handled.
    assert r["segments_done"] == r["segments"] >= 32
    assert r["triggered"] >= 1 and r["dft_tasks"] >= 1  # triggers went through carving and DFT
    # Every task that finished was handed to its handler, and nothing else was counted.
    assert r["events"] == r["tasks_finished"] >= r["segments"] + r["dft_tasks"]
    # Measured, and no finished task left waiting long for its handler: 10 s (the goal is 1 s; a quiet
    # machine measures under 0.5), or a quarter of the run where others starve this process of CPU.
    assert 0 < r["max_wait_s"] < max(10.0, 0.25 * r["wall_s"])
    assert 0 < r["share"] < 1 and 0 < r["cpu_share"] <= r["share"] + 0.05
    assert 0 < r["per_event_ms"] < 2000
    assert math.isfinite(r["dft_queue_median_s"]) and r["dft_queue_median_s"] >= 0
    assert r["db_bytes"] > 0 and r["queries_per_event"] > 1 and 0 < r["ms_per_query"] < 100
