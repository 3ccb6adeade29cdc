"""Database bytes per event against walker size: per segment, per trigger, per label.

The loop's real handlers and worker functions on synthetic frames: a simple-cubic argon-like
crystal at 0.1 atoms/Å³ (rattled 0.1 Å) of about 10³, 10⁴ and 10⁵ atoms, two atoms far apart
given gamma 9 (the rest 1) as trigger centres, the test suite's trained 3D LJ ACE potential
(``tests/.cache``) for selection, the LJ oracle for labels. No MD runs: the segment results
are built as LAMMPS would return them (gamma trace and thermo at the run's check and thermo
intervals), so what is measured is what the handlers store, not physics.

Per size and route, on a fresh SQLite database (``PRAGMA wal_checkpoint(TRUNCATE)`` before each
reading; the file grows by 4 kB pages, so a few events are averaged):

* ``segment``: a completed segment (:func:`autopipe.steer.handlers.md.done`);
* ``trigger``: a triggered segment, everything up to the DFT tasks: md.done and, on the
  ``whole`` route, the embed task (``embed.args`` -> ``embed_work`` -> ``embed.done``); on
  the ``worker`` route the carve runs first where md_work runs it (``carve_on_worker`` with
  the handler's own ``worker_plan``) and only cells and the frame record reach md.done;
* ``label``: one LJ label of a selected cell (``dft_work`` -> ``dft.done``).

``result kB``: the pickled SegmentResult of a trigger, the bytes the MD worker sends back
(the walker's own state, which item 2 of issue 22 moves by reference, excluded: it is the
same on both routes). The ``whole`` route is the code before issue 22 (every frame travels
and is stored whole); ``worker`` is the default now (``embedding.keep_frames_up_to`` 2000:
frames of at most 2000 atoms still travel whole).

Run:  .venv/bin/python benchmarks/db_growth.py [--sizes 10 22 46] [--events 3]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_ctx(workdir: Path, keep: int):
    """A steering context like the tests' (real database, store, handlers; nothing is executed)."""
    from autopipe.config import load_site
    from autopipe.db import Database
    from autopipe.layout import RunLayout
    from autopipe.potentials import PotentialStore
    from autopipe.steer.apps import Apps
    from autopipe.steer.context import Context
    from autopipe.steer.handlers import HANDLERS
    from autopipe.steer.live import Progress
    from autopipe.steer.queue import Dispatcher
    from tests.conftest import CACHE_DIR
    from tests.lj import build_lj_recipe, cached_potential, lj_recipe, lj_run_config

    recipe = lj_recipe(3)
    pot = cached_potential(CACHE_DIR, recipe["name"], recipe, lambda d: build_lj_recipe(d, recipe))
    run = lj_run_config("growth", workdir, dimension=3).model_copy(deep=True)
    run.embedding = run.embedding.model_copy(update={"core_radius": 3.0, "buffer": 5.0, "keep_frames_up_to": keep})
    run.otf = run.otf.model_copy(update={"probe_share": 0.0})  # the probe is its own measurement
    db = Database(f"sqlite:///{workdir / 'autopipe.db'}")
    store = PotentialStore(db, RunLayout(workdir).potentials)
    store.publish({r: Path(getattr(pot, r)) for r in ("yaml", "yace", "asi")}, name="v1", version=1, last_label_id=0)
    ctx = Context(site=load_site(ROOT / "configs/local.yaml"), run=run, db=db, store=store, layout=RunLayout(workdir),
                  progress=Progress(live=False), args={k: h.args for k, h in HANDLERS.items()})
    never = lambda *a, **k: None  # noqa: E731
    ctx.progress.log = never  # the handlers' progress lines: not what is measured
    ctx.apps = Apps(md=never, dft=never, train=never, embed=never,
                    executors={"md": "local", "dft": "local", "train": "local", "embed": "steering"})
    ctx.dispatcher = Dispatcher({"local": 2, "steering": 1})
    return ctx


SQ = 1.4  # Å: gamma about 9 with the test potential


def crystal(n_side: int, seed: int = 0):
    """Simple-cubic Ar at 0.1 atoms/Å³, rattled; gamma 1 but 9 on two atoms half a box apart."""
    from ase import Atoms

    a = 0.1 ** (-1 / 3)
    g = np.arange(n_side) * a
    pos = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pos += np.random.default_rng(seed).normal(0, 0.1, pos.shape)
    atoms = Atoms(f"Ar{len(pos)}", positions=pos, cell=[n_side * a] * 3, pbc=True)
    atoms.wrap()
    gamma = np.ones(len(atoms))
    far = int(np.argmin(np.linalg.norm(atoms.positions - 0.5 * n_side * a, axis=1)))
    for c in (0, far):  # a squeezed pair at each centre: an environment the potential never saw
        d = atoms.get_distances(c, np.arange(len(atoms)), mic=True)
        d[c] = np.inf
        j = int(np.argmin(d))
        atoms.positions[j] = atoms.positions[c] + SQ * atoms.get_distance(c, j, mic=True, vector=True) / d[j]
    gamma[[0, far]] = [9.0, 8.5]
    atoms.arrays["gamma"] = gamma
    atoms.wrap()
    return atoms


def db_bytes(ctx) -> int:
    from sqlalchemy import text

    with ctx.db.engine.connect() as c:
        c.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    return Path(ctx.db.url.split("///", 1)[1]).stat().st_size


def segment_rows(ctx, atoms, walker: int, number: int, start: int) -> int:
    """A walker row (first segment only), its checkpoint, a segment row and its md task; the task id."""
    from autopipe.db import Segment, SegmentStatus, TaskKind, Walker, WalkerStatus
    from autopipe.md import MDState, save_state

    from sqlalchemy import select

    with ctx.db.session() as s:
        w = s.scalars(select(Walker).where(Walker.index == walker)).first()
        if w is None:
            ck = save_state(ctx.layout.initial_checkpoint(walker), MDState(atoms=atoms, step=start))
            w = Walker(index=walker, status=WalkerStatus.running, step=start, checkpoint=str(ck))
            s.add(w)
            s.flush()
        seg = Segment(walker_id=w.id, number=number, potential_version=1, status=SegmentStatus.running,
                      start_step=start, start_checkpoint=w.checkpoint)
        s.add(seg)
        s.flush()
        t = ctx.new_task(TaskKind.md, segment_id=seg.id, payload={"n_steps": ctx.run.md.segment_steps})
        s.add(t)
        s.flush()
        return t.id


def result(ctx, atoms, start: int, triggered: bool):
    """A SegmentResult as a segment of the run's length returns it (trace and thermo at its intervals)."""
    from autopipe.md import MDState
    from autopipe.md.result import finish

    md, otf = ctx.run.md, ctx.run.otf
    n = md.segment_steps
    end = start + (n // 2 if triggered else n)
    checks = list(range(start, end + 1, otf.check_frequency))
    trace = [(c, 1.0) for c in checks]
    thermo_steps = list(range(start, end + 1, md.thermo_every))
    thermo = {"step": thermo_steps, **{k: [1.0] * len(thermo_steps) for k in ("temp", "pe", "ke", "etotal",
                                                                                "press", "vol")}}
    state = MDState(atoms=atoms, step=end)
    if not triggered:
        return finish("completed", state, start, trace, thermo=thermo)
    frame = atoms.copy()
    frame.info["step"] = end
    trace[-1] = (end, float(frame.arrays["gamma"].max()))
    return finish("triggered", state, start, trace, thermo=thermo, trigger_frame=frame,
                  trigger_atom=int(np.argmax(frame.arrays["gamma"])), rewind_state=MDState(atoms=atoms, step=start))


def run_embed_tasks(ctx) -> None:
    """The pending embed tasks as the loop runs them (steering executor, in this process)."""
    from sqlalchemy import select

    from autopipe.db import Task, TaskKind, TaskState
    from autopipe.steer.handlers import embed
    from autopipe.steer.work import embed_work

    with ctx.db.session() as s:
        todo = list(s.scalars(select(Task).where(Task.kind == TaskKind.embed, Task.state == TaskState.pending)))
        for t in todo:
            s.expunge(t)
    for t in todo:
        embed.done(ctx, t.id, embed_work(*embed.args(ctx, t)))


def measure(n_side: int, keep: int, events: int) -> dict:
    from sqlalchemy import select

    from autopipe.db import Task, TaskKind, TaskState
    from autopipe.steer.handlers import dft, embed, md
    from autopipe.steer.work import carve_on_worker, dft_work

    atoms = crystal(n_side)
    bare = atoms.copy()
    del bare.arrays["gamma"]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = make_ctx(Path(tmp), keep)
        out = {"atoms": len(atoms)}
        segment_rows(ctx, bare, 0, 0, 0)  # the walker row and first checkpoint are not per-segment growth
        b0 = db_bytes(ctx)
        step = 0
        for i in range(10 * events):  # small rows: more of them, for whole pages
            tid = segment_rows(ctx, bare, 0, i + 1, step)
            res = result(ctx, bare, step, triggered=False)
            md.done(ctx, tid, res)
            step = res.end_step
        b1 = db_bytes(ctx)
        out["segment"] = (b1 - b0) / (10 * events)
        sent = []
        for i in range(events):
            frame = crystal(n_side, seed=i + 1)
            tid = segment_rows(ctx, bare, 100 + i, 0, 0)
            res = result(ctx, frame, 0, triggered=True)
            res.final_state = res.rewind_state = None  # the walker's state: item 2's business, equal on both routes
            plan = md.args(ctx, _task(ctx, tid))[-1]
            if plan is not None:
                carve_on_worker(res, plan)  # what md_work does on the worker
            sent.append(len(pickle.dumps(res)))
            res.rewind_state = None
            md.done(ctx, tid, res)
            run_embed_tasks(ctx)
        b2 = db_bytes(ctx)
        out["trigger"] = (b2 - b1) / events
        out["result"] = float(np.mean(sent))
        with ctx.db.session() as s:
            dft_tasks = list(s.scalars(select(Task).where(Task.kind == TaskKind.dft,
                                                          Task.state == TaskState.pending).limit(events)))
            for t in dft_tasks:
                s.expunge(t)
        for t in dft_tasks:
            ran = dft_work(*dft.args(ctx, t))
            dft.done(ctx, t.id, ran.value)
        b3 = db_bytes(ctx)
        out["label"] = (b3 - b2) / max(len(dft_tasks), 1)
        out["labels"] = len(dft_tasks)
        with ctx.db.session() as s:
            from autopipe.db import Structure

            cells = [r.n_atoms for r in s.scalars(select(Structure).where(Structure.parent_id.is_not(None)))]
        out["cell_atoms"] = float(np.mean(cells)) if cells else 0.0
        ctx.db.dispose()
        _ = embed  # the embed handler runs through run_embed_tasks
    return out


def _task(ctx, task_id: int):
    from autopipe.db import Task

    with ctx.db.session() as s:
        t = s.get(Task, task_id)
        s.expunge(t)
        return t


def main() -> None:
    import logging

    logging.getLogger("autopipe").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 22, 46], help="atoms per side (N = side³)")
    p.add_argument("--events", type=int, default=3, help="segments, triggers and labels per size and route")
    a = p.parse_args()
    print(f"{'atoms':>8} {'route':>7} {'segment kB':>11} {'trigger kB':>11} {'label kB':>9} {'result kB':>10} "
          f"{'cell atoms':>10}")
    for n in a.sizes:
        for route, keep in (("whole", 10**9), ("worker", 2000)):
            m = measure(n, keep, a.events)
            print(f"{m['atoms']:>8} {route:>7} {m['segment'] / 1e3:>11.1f} {m['trigger'] / 1e3:>11.1f} "
                  f"{m['label'] / 1e3:>9.1f} {m['result'] / 1e3:>10.1f} {m['cell_atoms']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
