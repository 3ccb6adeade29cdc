"""One big walker through the whole loop: trigger -> carved cells -> label -> retrain -> hot-swap.

Issue 22, item 5. The real steering process (``autopipe-steer``), Parsl HighThroughputExecutors on
this machine, LAMMPS's own ML-PACE under ``mpirun -np 2`` for the MD, real pacemaker for the
retrain. Stand-in: the Lennard-Jones oracle labels (sigma 2 Å, epsilon 0.1 eV), as in the healing
test; what is measured is what travels and what the steering host holds, not physics.

The walker: an fcc LJ crystal (a = 3.2 Å) of ``--side``³ conventional cells (30: 108,000 atoms)
with one octahedral self-interstitial near the centre (1.6 Å from six neighbours). Version 1 is
fitted to rattled 32-atom cells with no pair closer than 2 Å, so the interstitial triggers at the
first gamma check. The run stops when the walker has done ``--steps`` MD steps (after its
rewinds) or after ``--trainings`` retrains (default 5).

Routes, each a fresh run from the same files:

* ``whole``: the code before issue 22's item 1 (``embedding.keep_frames_up_to`` above the walker's
  size): the trigger frame travels whole to the steering host, is stored whole and carved there;
* ``worker``: the default: the MD worker carves the frame it holds; only the cells and a compact
  record travel and are stored. Walker state by value on both.
* ``scratch``: ``worker`` with a shared scratch declared (item 2): walker states stay on the
  scratch, their references travel.

Per route: bytes sent to and back from the MD worker per quiet segment and for the trigger
segment (``payload.ran`` of each task: ``sent_bytes``/``result_bytes``, the pickled arguments and
answer), database bytes, checkpoint bytes on the steering host, what the MD workers left on their
own scratch (and how much of it is trajectory dumps) and on the shared scratch, the steering process's peak
resident memory (``VmHWM``, HTEX workers and LAMMPS are other processes), and the time from the
trigger segment's end to the first segment on version 2 (its start and its end), with the
steps between: carving (whole route), label, fit.

Run (alone on the machine: every timing is wall time):
    .venv/bin/python benchmarks/big_walker.py [--side 30] [--routes whole,worker,scratch]
Results: ``benchmarks/results/big_walker.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ROUTES = ("whole", "worker", "scratch")


def big_crystal(side: int, a: float = 3.2):
    """fcc LJ crystal of side³ conventional cells with one octahedral interstitial near the centre."""
    from ase import Atoms
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((side, side, side))
    centre = (side // 2) * a + a / 2  # an octahedral site: the centre of a conventional cell
    atoms += Atoms("Ar", positions=[[centre, centre, centre]])
    return atoms


def run_yaml(structure: Path, route: str, steps: int, trainings: int, probe_share: float = 0.0) -> str:
    keep = 10**9 if route == "whole" else 2000
    return f"""# benchmarks/big_walker.py, route {route}: written by the benchmark
name: big_{route}
system:
  elements: [Ar]
  structure: {{kind: file, path: {structure}}}
initial_potential:
  kind: generate
  name: lj_no_contacts
  n_structures: 32
  rattle: 0.12
  strain: 0.04
  min_distance: 2.0
  seed: 7
  structure: {{kind: bulk, crystal: fcc, a: 3.2, repeat: [2, 2, 2]}}
md:
  ensemble: nvt-langevin
  temperature: 100.0
  timestep: 1.0
  segment_steps: 20
  dump_every: 20
  thermo_every: 10
  seed: 11
otf:
  uncertainty_threshold: 5.0
  check_frequency: 5
  max_extractions: 1
  probe_share: {probe_share}
embedding: {{core_radius: 3.0, buffer: 5.5, min_distance: 1.0, keep_frames_up_to: {keep}}}
dft: {{code: lj, epsilon: 0.1, sigma: 2.0, cutoff: 5.0}}
train:
  min_new_labels: 1
  cutoff: 5.0
  number_of_functions_per_element: 40
  max_iterations: 60
  retrain_iterations: 30
  backend: tensorpot
walkers: {{count: 1}}
stop:
  max_md_steps: {steps}
  max_trainings: {trainings}
  max_walltime: 2400
"""


def site_yaml(route: str, scratch: Path, worker_scratch: Path) -> str:
    # The MD workers write under a scratch of their own (as on a cluster's compute nodes), so what
    # the steering host keeps and what the workers leave behind are counted apart.
    shared = f"\n    shared_scratch: {scratch}" if route == "scratch" else ""
    return f"""# benchmarks/big_walker.py, route {route}
name: big-walker
executors:
  - label: md
    kind: htex-local
    roles: [md]
    max_workers_per_node: 1
    md_launcher: [{VENV_BIN / 'mpirun'}, -np, "2"]
    scratch: {worker_scratch}{shared}
  - label: cpu
    kind: htex-local
    roles: [dft, train]
    max_workers_per_node: 1
"""


class PeakMemory(threading.Thread):
    """Samples a process's ``VmHWM`` (its own peak resident set, kB) until it exits."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.2)


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def measure(workdir: Path) -> dict:
    """Read one finished run's database: bytes, timings and what was stored."""
    db = sqlite3.connect(workdir / "autopipe.db")
    q = lambda sql, *a: db.execute(sql, a).fetchall()  # noqa: E731
    segs = {sid: dict(version=v, status=st, start=s0, end=s1, gamma=g, rewind=rw)
            for sid, v, st, s0, s1, g, rw in q("SELECT id, potential_version, status, start_step, end_step, "
                                              "max_gamma, rewind_step FROM segments ORDER BY id")}
    md = []
    for tid, sid, payload in q("SELECT id, segment_id, payload FROM tasks WHERE kind='md' ORDER BY id"):
        ran = (json.loads(payload) if payload else {}).get("ran")
        if ran and sid in segs:
            md.append(dict(task=tid, seg=sid, **segs[sid], sent=ran.get("sent_bytes"), back=ran.get("result_bytes"),
                           t0=_t(ran["started"]), t1=_t(ran["finished"])))
    trig = next((m for m in md if m["status"] == "triggered"), None)
    quiet = [m for m in md if m["status"] == "completed"]
    out: dict = {"segments": len(md), "triggered": sum(m["status"] == "triggered" for m in md)}
    if quiet:
        out["quiet_sent"] = float(np.median([m["sent"] for m in quiet]))
        out["quiet_back"] = float(np.median([m["back"] for m in quiet]))
    if md:  # triggered segments stop early: the median is over every segment, as run
        out["md_s"] = float(np.median([m["t1"] - m["t0"] for m in md]))
    if trig:
        out["trig_sent"], out["trig_back"] = trig["sent"], trig["back"]
        after = [m for m in md if m["version"] > trig["version"] and m["t0"] > trig["t1"]]
        if after:
            out["to_swap_start"] = after[0]["t0"] - trig["t1"]
            out["to_swap_end"] = after[0]["t1"] - trig["t1"]
        steps = {}
        for kind in ("embed", "dft", "train"):
            # The first of its kind created after the trigger segment ended (the initial dataset's
            # labels and version 1's fit come before it). Row times are naive UTC.
            rows = [r for r in q("SELECT payload, created_at, finished_at FROM tasks WHERE kind=? ORDER BY id", kind)
                    if _t(r[1] + "+00:00") >= trig["t1"] - 1.0]
            if rows:
                payload, created, finished = rows[0]
                ran = (json.loads(payload) if payload else {}).get("ran")
                carved_on_worker = kind == "embed" and json.loads(payload or "{}").get("carved_on") == "md worker"
                # Carving on the steering host (whole route) is not a Parsl app: no ``ran``, so its
                # row's own times (naive UTC) stand in.
                steps[kind] = None if carved_on_worker else ((_t(ran["finished"]) - _t(ran["started"])) if ran else
                               (_t(finished + "+00:00") - _t(created + "+00:00")) if finished else None)
                if kind in ("dft", "train"):
                    steps[kind + "_bytes"] = (ran or {}).get("sent_bytes"), (ran or {}).get("result_bytes")
        out["steps"] = steps
    # What the database keeps of each trigger frame: the whole frame (md_frame) or its compact record.
    out["stored_frames"] = q("SELECT origin, n_atoms FROM structures WHERE origin IN ('md_frame', 'frame_record')")
    out["cells"] = [n for (n,) in q("SELECT n_atoms FROM structures WHERE origin = 'embedded'")]
    out["versions"] = [v for (v,) in q("SELECT version FROM potentials ORDER BY version")]
    # The false-negative probe (--probe-share): what it stored (origin, atoms) and its labels.
    out["probe_rows"] = q("SELECT origin, n_atoms FROM structures WHERE heldout = 'probe' ORDER BY id")
    out["probe_labels"] = q("SELECT COUNT(*) FROM labels JOIN structures ON labels.structure_id = structures.id "
                            "WHERE structures.heldout = 'probe' AND labels.status = 'done'")[0][0]
    routes = [json.loads(d or "{}").get("frame_route") for (d,) in q("SELECT data FROM events WHERE kind='trigger'")]
    out["frame_route"] = next((r for r in routes if r), None)
    db.close()
    db_bytes = sum(p.stat().st_size for p in workdir.glob("autopipe.db*"))
    out["db_bytes"] = db_bytes
    # Walker checkpoints left on the steering host's disk (on the scratch route they sit on the scratch).
    out["checkpoint_bytes"] = sum(p.stat().st_size for p in (workdir / "walkers").rglob("*.npz"))
    # What the MD workers left on their own scratch (LAMMPS inputs, logs, trajectory dumps every
    # md.dump_every steps, their copy of each checkpoint) and the walker states on the shared scratch.
    base, route = workdir.parent, workdir.name
    for key, where in (("worker_bytes", base / f"worker-{route}"), ("shared_bytes", base / f"shared-{route}")):
        files = [p for p in where.rglob("*") if p.is_file()] if where.is_dir() else []
        out[key] = sum(p.stat().st_size for p in files)
        out[key.replace("_bytes", "_dumps")] = sum(p.stat().st_size for p in files if p.suffix == ".lammpstrj")
    return out


def run_route(route: str, base: Path, structure: Path, steps: int, trainings: int, probe_share: float = 0.0) -> dict:
    workdir = base / route
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.yaml").write_text(run_yaml(structure, route, steps, trainings, probe_share))
    (workdir / "site.yaml").write_text(site_yaml(route, base / f"shared-{route}", base / f"worker-{route}"))
    t0 = time.time()
    with open(workdir / "steer.log", "w") as log:
        proc = subprocess.Popen([str(VENV_BIN / "autopipe-steer"), "--site", str(workdir / "site.yaml"), "--run",
                                 str(workdir / "run.yaml"), "--workdir", str(workdir)], stdout=log,
                                stderr=subprocess.STDOUT)
        mem = PeakMemory(proc.pid)
        mem.start()
        rc = proc.wait()
        mem.done.set()
        mem.join()
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"route {route}: autopipe-steer exited {rc}; see {workdir / 'steer.log'}")
    row = {"route": route, "wall_s": wall, "steer_peak_mb": mem.peak_kb / 1024}
    (workdir / "row.json").write_text(json.dumps(row))  # what the database cannot tell (--remeasure)
    return {**row, **measure(workdir)}


def steering_probe_cost(workdir: Path, structure: Path) -> dict:
    """What the probe cost the steering process before it moved to the MD worker, on this walker:
    reading version 1 into pyace and evaluating γ of the whole frame (s, the first call with the
    calculator's start), and the frame's row (B) it stored."""
    from ase.io import read

    from autopipe.potentials.uncertainty import evaluate

    frame = read(structure)
    pot = [workdir / "potentials" / "v0001" / "potential.yaml"]  # version 1, its .asi beside it
    t0 = time.perf_counter()
    g = evaluate(frame, pot[0])["gamma"]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate(frame, pot[0])
    again = time.perf_counter() - t0
    size = frame.positions.nbytes + frame.numbers.nbytes + np.asarray(g, dtype=float).nbytes  # its row's arrays
    return {"old_probe_first_s": first, "old_probe_eval_s": again, "old_probe_frame_bytes": size,
            "potential": str(pot[0])}


def _s(seconds) -> str:
    return "in the segment" if seconds is None else f"{seconds:.1f}"


def mb(n) -> str:
    from autopipe.transfer import human

    return "-" if n is None else human(int(n))


def table(rows: list[dict]) -> str:
    head = ("| route | frame route | quiet segment: sent / back | trigger segment: sent / back | database | "
            "checkpoints on the steering host | MD workers' scratch (trajectory dumps) | shared scratch | steering peak RSS | trigger -> v2 segment start / end (s) | "
            "carve / label / fit (s) | MD s per segment | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        st = r.get("steps", {})
        lines.append(
            f"| {r['route']} | {(r.get('frame_route') or '-').split(':')[0]} | {mb(r.get('quiet_sent'))} / "
            f"{mb(r.get('quiet_back'))} | {mb(r.get('trig_sent'))} / {mb(r.get('trig_back'))} | {mb(r['db_bytes'])} | "
            f"{mb(r['checkpoint_bytes'])} | {mb(r.get('worker_bytes'))} ({mb(r.get('worker_dumps'))}) | "
            f"{mb(r.get('shared_bytes')) if r['route'] == 'scratch' else '-'} | {r['steer_peak_mb']:.0f} MB | {r.get('to_swap_start', float('nan')):.0f} / "
            f"{r.get('to_swap_end', float('nan')):.0f} | {_s(st.get('embed'))} / {st.get('dft') or 0:.1f} / {st.get('train') or 0:.0f} | "
            f"{r.get('md_s', float('nan')):.1f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=30, help="conventional fcc cells per side (30: 108,001 atoms)")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--steps", type=int, default=60, help="MD steps the walker must reach (segments of 20)")
    ap.add_argument("--trainings", type=int, default=5, help="stop after this many retrains (1: trigger -> v2 -> stop)")
    ap.add_argument("--remeasure", action="store_true", help="only read the finished runs in --workdir again")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new directory under /tmp")
    ap.add_argument("--probe-share", type=float, default=0.0,
                    help="otf.probe_share of the runs (0: no probe, as the tables of 2026-12-04)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "big_walker.md")
    args = ap.parse_args()

    base = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / f"big-walker-{int(time.time())}"
    base.mkdir(parents=True, exist_ok=True)
    from ase.io import write

    atoms = big_crystal(args.side)
    structure = base / "walker.extxyz"
    if not args.remeasure:
        write(structure, atoms)
    print(f"big walker: {len(atoms)} atoms (fcc LJ, a = 3.2 Å, one octahedral interstitial); "
          f"stand-in labeller: the LJ oracle; work in {base}", flush=True)
    rows = []
    for route in args.routes.split(","):
        if args.remeasure:  # read the finished runs in --workdir again
            rows.append({**json.loads((base / route / "row.json").read_text()), **measure(base / route)})
            continue
        print(f"== route {route}", flush=True)
        row = run_route(route, base, structure, args.steps, args.trainings, args.probe_share)
        if args.probe_share > 0:
            row.update(steering_probe_cost(base / route, structure))
        print(json.dumps(row, indent=1, default=str), flush=True)
        rows.append(row)
    text = table(rows)
    print(text)
    out = args.out
    out.write_text(f"# benchmarks/big_walker.py, {dt.date.today()}: {len(atoms)} atoms, "
                   f"`--side {args.side} --steps {args.steps} --trainings {args.trainings} "
                   f"--probe-share {args.probe_share:g}`\n\n{text}\n\n```\n"
                   + json.dumps(rows, indent=1, default=str) + "\n```\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
