"""Where the wall time of a short LJ-oracle loop goes, and Parsl's app round-trip latency.

Runs a small 2D Lennard-Jones loop with 2 walkers (bootstrap, MD segments, triggers,
oracle labels, retrains) on the threads site and reports, as fractions of the elapsed wall
time: MD, DFT, training, and everything else the steering process did itself
(orchestration, database, file I/O: its busy time between polls). Goal: everything
else under 5 %. Then the share of wall time in which no MD segment runs (from the MD
tasks' start and end times in the database), over the whole run and from the first
segment on (before it, version 1 is being labelled and trained: no walker can move), and
how much of the training time had no MD beside it: training that holds up the walkers
shows up there. Then measures the round trip of a trivial Parsl app on threads and on a
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

WALKERS = 2


def short_loop(workdir: Path) -> dict[str, float]:
    from sqlalchemy import func, select

    from autopipe.config import load_run, load_site
    from autopipe.db import Database, Event, Label, Potential, Segment
    from autopipe.steer.loop import run_loop
    from tests.steer.test_loop import short_run

    # One label starts a fit (as in the demo), so fits run while the other walker is still going.
    run_file = short_run(workdir, otf={"uncertainty_threshold": 2.0}, walkers={"count": WALKERS},
                         train={"min_new_labels": 1},
                         stop={"max_md_steps": 600, "max_trainings": 3, "max_walltime": 900})
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
            "steering (orchestration, database, I/O)": float(stop.data.get("busy", float("nan")))}, md_idle(db)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge overlapping ``(start, end)`` intervals; returns them sorted and disjoint."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds of ``[lo, hi]`` inside the (disjoint) ``intervals``."""
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


def md_idle(db) -> dict[str, float]:
    """When no MD ran, from the task rows (a task counts from its submission to Parsl,
    ``started_at``: the dispatcher submits only when a worker is free, to the end of its
    handling), as shares of the wall time (first to last event):

    * no MD task in flight, over the whole run and from the first segment's start;
    * the share of training time with no MD beside it;

    and, in seconds: the longest time an MD segment waited in the queue for a slot (a fit or
    other segments holding the workers), and the longest time from a version's publication to
    the start of the first segment that uses it (a walker resuming on it)."""
    from sqlalchemy import func, select

    from autopipe.db import Event, Potential, Segment, Task, TaskKind

    def spans(s, kind):
        rows = s.execute(select(Task.started_at, Task.finished_at).where(
            Task.kind == kind, Task.started_at.is_not(None), Task.finished_at.is_not(None))).all()
        return _union([(a.timestamp(), b.timestamp()) for a, b in rows])

    with db.session() as s:
        t0, t1 = (x.timestamp() for x in s.execute(select(func.min(Event.created_at), func.max(Event.created_at))).one())
        md, fits = spans(s, TaskKind.md), spans(s, TaskKind.train)
        queued = [(b - a).total_seconds() for a, b in s.execute(select(Task.created_at, Task.started_at).where(
            Task.kind == TaskKind.md, Task.started_at.is_not(None))).all()]
        first_use = s.execute(select(Potential.created_at, func.min(Task.started_at)).join(
            Segment, Segment.potential_version == Potential.version).join(Task, Task.segment_id == Segment.id)
            .where(Potential.version > 1).group_by(Potential.version)).all()
    first = md[0][0] if md else t1
    fit_time = sum(b - a for a, b in fits)
    fit_with_md = sum(_covered(md, a, b) for a, b in fits)
    return {
        "no MD, whole run": 1 - _covered(md, t0, t1) / (t1 - t0),
        "no MD, from the first segment": 1 - _covered(md, first, t1) / (t1 - first) if t1 > first else float("nan"),
        "training with no MD beside it": 1 - fit_with_md / fit_time if fit_time else float("nan"),
        "longest wait of a segment for a slot (s)": max(queued, default=float("nan")),
        "longest publish -> first segment on it (s)": max(((b - a).total_seconds() for a, b in first_use),
                                                          default=float("nan")),
    }


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
        t, idle = short_loop(Path(tmp))
    total = t.pop("elapsed")
    print(f"\nelapsed {total:.1f} s (stages overlap: MD, DFT and training may run at once)")
    for k, v in t.items():
        print(f"  {k:42s} {v:8.1f} s   {100 * v / total:5.1f} %")
    busy = t["steering (orchestration, database, I/O)"]
    print(f"  goal: steering under 5 % of wall time -> {'met' if busy / total < 0.05 else 'NOT met'}")
    print(f"\nwith {WALKERS} walkers, share of wall time in which no MD runs:")
    for k, v in idle.items():
        print(f"  {k:42s} {v:8.2f} s" if k.endswith("(s)") else f"  {k:42s} {100 * v:5.1f} %")
    thr = round_trip("local.yaml")
    htex = round_trip("local-htex.yaml")
    print(f"\nParsl app round trip (median of 30): threads {1000 * thr:.2f} ms, local HTEX {1000 * htex:.2f} ms"
          f" (HTEX/threads {htex / thr:.0f}x)")


if __name__ == "__main__":
    main()
