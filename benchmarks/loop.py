"""Where the wall time of a short LJ-oracle loop goes, and Parsl's app round-trip latency.

Runs a small 2D Lennard-Jones loop (bootstrap, MD segments, triggers, oracle labels,
retrains) on the threads site and reports, as fractions of the elapsed wall time:
MD, DFT, training, and everything else the steering process did itself
(orchestration, database, file I/O: its busy time between polls). Goal: everything
else under 5 %. Then measures the round trip of a trivial Parsl app on threads and on a
local HighThroughputExecutor. All numbers come from this one run.

    .venv/bin/python benchmarks/loop.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def short_loop(workdir: Path) -> dict[str, float]:
    from sqlalchemy import func, select

    from autopipe.config import load_run, load_site
    from autopipe.db import Database, Event, Label, Potential, Segment
    from autopipe.steer.loop import run_loop
    from tests.steer.test_loop import short_run

    run_file = short_run(workdir, otf={"uncertainty_threshold": 2.0}, stop={"max_md_steps": 600, "max_trainings": 2, "max_walltime": 900})
    run = load_run(run_file)
    site = load_site(ROOT / "configs" / "local.yaml")
    outcome = run_loop(site, run, live=False)
    db = Database(run.database_url())
    with db.session() as s:
        md = s.scalar(select(func.coalesce(func.sum(Segment.walltime), 0.0)))
        dft = s.scalar(select(func.coalesce(func.sum(Label.walltime), 0.0)))
        train = s.scalar(select(func.coalesce(func.sum(Potential.walltime), 0.0)))
        stop = s.scalars(select(Event).where(Event.kind == "stop")).one()
    print(f"loop stopped: {outcome.stopped_because}")
    return {"elapsed": outcome.walltime, "MD": md, "DFT": dft, "training": train,
            "steering (orchestration, database, I/O)": float(stop.data.get("busy", float("nan")))}


def round_trip(site_yaml: str, n: int = 30) -> float:
    import parsl
    from parsl import python_app

    from autopipe.config import load_site

    site = load_site(ROOT / "configs" / site_yaml)
    label = site.executor_for("dft").label
    with tempfile.TemporaryDirectory() as tmp:
        dfk = parsl.load(site.to_parsl_config(Path(tmp) / "parsl"))
        try:
            noop = python_app(_noop, executors=[label])
            noop().result(timeout=120)  # warm-up: workers connected
            times = []
            for _ in range(n):
                t = time.perf_counter()
                noop().result(timeout=60)
                times.append(time.perf_counter() - t)
        finally:
            dfk.cleanup()
            parsl.clear()
    return statistics.median(times)


def _noop(parsl_resource_specification=None):
    return None


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = short_loop(Path(tmp))
    total = t.pop("elapsed")
    print(f"\nelapsed {total:.1f} s (stages overlap: MD, DFT and training may run at once)")
    for k, v in t.items():
        print(f"  {k:42s} {v:8.1f} s   {100 * v / total:5.1f} %")
    busy = t["steering (orchestration, database, I/O)"]
    print(f"  goal: steering under 5 % of wall time -> {'met' if busy / total < 0.05 else 'NOT met'}")
    thr = round_trip("local.yaml")
    htex = round_trip("local-htex.yaml")
    print(f"\nParsl app round trip (median of 30): threads {1000 * thr:.2f} ms, local HTEX {1000 * htex:.2f} ms"
          f" (HTEX/threads {htex / thr:.0f}x)")


if __name__ == "__main__":
    main()
