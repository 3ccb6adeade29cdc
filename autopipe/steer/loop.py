"""The steering loop: walkers, DFT, training and stopping rules over Parsl.

The database is the state. Every unit of work is a :class:`Task` row that moves
``pending -> running -> done | failed``; its outputs (label, segment, potential) are
committed in the same transaction that marks it done. A process killed at any moment
therefore restarts with: labels already done never recomputed, tasks left ``running``
resubmitted, walkers resumed from their last good checkpoint.

One pass of the loop (a few times a second): start what can start (bootstrap labels,
walker segments, training), let the dispatcher submit by priority, handle what
finished, check the stopping rules.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from autopipe.db import (
    Database,
    Label,
    LabelStatus,
    Origin,
    Segment,
    SegmentStatus,
    Structure,
    Task,
    TaskKind,
    TaskState,
    Walker,
    WalkerStatus,
    atoms_from_structure,
    structure_from_atoms,
)
from autopipe.db.models import utcnow
from autopipe.db.session import RUN_MARKER
from autopipe.errors import AutopipeError
from autopipe.steer.queue import PRIORITY, Dispatcher

log = logging.getLogger(__name__)

MAX_TASK_ATTEMPTS = 3  # an app that raises (not a failed label: a crash) is retried this often
MAX_TRAIN_FAILURES = 3  # consecutive failed fits before the run gives up
MAX_WALKER_FAILURES = 3  # consecutive failed segments before a walker is retired


@dataclass
class LoopOutcome:
    stopped_because: str
    walltime: float


class Steering:
    """One run of the loop over a site; create, then :meth:`run`."""

    def __init__(self, site, run, *, live: bool = False, parsl_kwargs: dict[str, Any] | None = None):
        from autopipe.potentials import PotentialStore

        self.site, self.run_cfg = site, run
        self.workdir = Path(run.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db = Database(run.database_url())
        self.store = PotentialStore(self.db, self.workdir / "potentials")
        self.parsl_kwargs = parsl_kwargs or {}
        self.t0 = time.monotonic()
        self.train_failures = 0
        self.busy = 0.0  # s the steering process spent working (not sleeping between polls)
        from autopipe.steer.live import Progress

        self.progress = Progress(live=live)

    # ------------------------------------------------------------------ entry
    def run(self) -> LoopOutcome:
        import parsl

        self._setup_logging()
        self._write_marker()
        self._import_initial_file()
        config = self.site.to_parsl_config(self.workdir / "parsl", **self.parsl_kwargs)
        dfk = parsl.load(config)
        try:
            from autopipe.steer.apps import build_apps

            self.apps = build_apps(self.site)
            caps = {e.label: e.capacity or e.workers() for e in self.site.executors}
            aware = {e.label for e in self.site.executors if e.kind in ("htex-local", "slurm")}
            self.dispatcher = Dispatcher(caps, aware)
            self._reconcile()
            reason = self._main_loop()
        finally:
            self.progress.stop()
            dfk.cleanup()
            parsl.clear()
        self.db.record_event("stop", reason, walltime=time.monotonic() - self.t0, busy=self.busy)
        self.progress.log(f"stopped: {reason}")
        return LoopOutcome(stopped_because=reason, walltime=time.monotonic() - self.t0)

    def _setup_logging(self) -> None:
        """Log to <workdir>/autopipe.log; keep library chatter off the terminal.

        pyace calls logging.basicConfig at import, which would print every INFO line of
        every library (Parsl's included) on stderr: a root handler installed first stops that.
        """
        root = logging.getLogger()
        if not any(getattr(h, "_autopipe", False) for h in root.handlers):
            handler = logging.FileHandler(self.workdir / "autopipe.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            handler._autopipe = True  # type: ignore[attr-defined]
            root.addHandler(handler)
            root.setLevel(logging.INFO)
        logging.getLogger("parsl").propagate = False  # Parsl keeps its own parsl.log in the run dir

    def _write_marker(self) -> None:
        marker = {"database": self.run_cfg.database_url(), "run": self.run_cfg.name, "site": self.site.name}
        (self.workdir / RUN_MARKER).write_text(json.dumps(marker, indent=2))
        (self.workdir / "run.resolved.json").write_text(self.run_cfg.model_dump_json(indent=2))
        self.db.record_event("start", f"run {self.run_cfg.name!r} on site {self.site.name!r}")

    def _import_initial_file(self) -> None:
        if self.run_cfg.initial_potential.kind == "file" and self.store.latest() is None:
            from autopipe.potentials import build_initial_potential

            pot = build_initial_potential(self.db, self.store, self.run_cfg)
            self.db.record_event("publish", f"imported {pot.name} as v{pot.version}", version=pot.version)

    # ------------------------------------------------------------------ tasks
    def _task_row(self, kind: TaskKind, **fields) -> Task:
        """A pending task row; add it in the same transaction as the rows it refers to, so a
        process killed in between never leaves work that nothing will pick up."""
        return Task(kind=kind, executor=self.apps.executors[kind.value], priority=PRIORITY[kind.value],
                    state=TaskState.pending, **fields)

    def _new_task(self, kind: TaskKind, **fields) -> int:
        with self.db.session() as s:
            t = self._task_row(kind, **fields)
            s.add(t)
            s.flush()
            return t.id

    def _push(self, task_id: int) -> None:
        """Queue a pending task row with the dispatcher, rebuilding its arguments from the database."""
        with self.db.session() as s:
            t = s.get(Task, task_id)
            kind, payload, sid, seg_id = t.kind, dict(t.payload or {}), t.structure_id, t.segment_id
        app, args = self._app_args(kind, payload, sid, seg_id)
        label = self.apps.executors[kind.value]
        self.dispatcher.push(label, PRIORITY[kind.value], task_id, app, *args)

    def _app_args(self, kind: TaskKind, payload: dict, sid: int | None, seg_id: int | None):
        r = self.run_cfg
        if kind is TaskKind.dft:
            with self.db.session() as s:
                atoms = atoms_from_structure(s.get(Structure, sid))
            launcher = self.site.executor_for("dft").dft_launcher
            return self.apps.dft, (atoms, r.dft, str(self.workdir / "dft" / f"s{sid:06d}"), list(launcher))
        if kind is TaskKind.md:
            with self.db.session() as s:
                seg = s.get(Segment, seg_id)
                walker = s.get(Walker, seg.walker_id)
                ck, version, n = seg.start_checkpoint, seg.potential_version, payload["n_steps"]
                wd = self.workdir / "walkers" / f"w{walker.index:02d}" / f"seg{seg.number:04d}"
            pot = self.store.get(version)
            return self.apps.md, (ck, pot, r.md, r.otf, str(wd), n)
        if kind is TaskKind.embed:
            with self.db.session() as s:
                frame = atoms_from_structure(s.get(Structure, sid))
            newest = self.store.latest()
            regrade = newest if newest is not None and newest.version != payload["version"] else None
            return self.apps.embed, (frame, payload["centers"], r.embedding, regrade)
        if kind is TaskKind.train:
            return self.apps.train, (payload["dataset"], r.train, list(r.system.elements), payload["workdir"],
                                     payload.get("parent_yaml"), payload["iterations"])
        raise AssertionError(kind)

    def _set_state(self, task_id: int, state: TaskState, error: str | None = None) -> None:
        with self.db.session() as s:
            t = s.get(Task, task_id)
            t.state = state
            if state is TaskState.running:
                t.started_at, t.attempts = utcnow(), t.attempts + 1
            if state in (TaskState.done, TaskState.failed):
                t.finished_at = utcnow()
            t.error = error

    def _active(self, kind: TaskKind) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Task).where(
                Task.kind == kind, Task.state.in_([TaskState.pending, TaskState.running]))) or 0)

    # ------------------------------------------------------------------ restart
    def _reconcile(self) -> None:
        """Requeue what a killed process left pending or running; never redo a done label."""
        with self.db.session() as s:
            stale = list(s.scalars(select(Task).where(Task.state.in_([TaskState.pending, TaskState.running]))
                                   .order_by(Task.id)))
            done_labels = set(s.scalars(select(Label.structure_id)))
            requeue = []
            for t in stale:
                if t.kind is TaskKind.dft and t.structure_id in done_labels:
                    t.state, t.finished_at = TaskState.done, utcnow()  # its label was committed
                elif t.kind is TaskKind.train:
                    # A fit cut off mid-way is started afresh by the trigger, with a new snapshot.
                    t.state, t.error, t.finished_at = TaskState.failed, "interrupted by a restart", utcnow()
                else:
                    if t.state is TaskState.running:
                        log.info("resubmitting task %d (%s) left running", t.id, t.kind.value)
                    t.state = TaskState.pending
                    requeue.append(t.id)
            for seg in s.scalars(select(Segment).where(Segment.status == SegmentStatus.running)):
                seg.status = SegmentStatus.pending
        if stale:
            self.db.record_event("resume", f"requeued {len(requeue)} task(s) left by an earlier process")
        for tid in requeue:
            self._push(tid)

    # ------------------------------------------------------------------ main loop
    def _main_loop(self) -> str:
        """Start what can start, submit by priority, handle what finished, check the stop rules.

        The database is consulted only after something changed (a task finished): between
        events the loop sleeps until the next future completes, so orchestration costs
        little next to the work itself (see benchmarks/loop.py).
        """
        stopping: str | None = None
        changed = True
        while True:
            tick = time.perf_counter()
            if stopping is None and changed:
                self._bootstrap()
                self._schedule_walkers()
                self._maybe_train()
                for tid, _ in self.dispatcher.pump():
                    self._set_state(tid, TaskState.running)
                    self._mark_segment_running(tid)
                if self.dispatcher.idle():  # nothing runs and nothing could start: nothing will change
                    stopping = self._stop_reason() or "nothing left to run (see `autopipe status`)"
                    self.progress.log(f"stopping: {stopping}")
            finished = self.dispatcher.done()
            for tid, fut in finished:
                self._finish(tid, fut)
            changed = bool(finished)
            if self.progress.due():
                self.progress.update(self._snapshot())
            if stopping is None and (changed or self._out_of_time()):
                stopping = self._stop_reason()
                if stopping:
                    self.progress.log(f"stopping: {stopping}; waiting for {len(self.dispatcher.in_flight())} "
                                      "running task(s)")
                    for tid in self.dispatcher.clear_queued():
                        log.debug("task %d stays pending for the next start", tid)
            self.busy += time.perf_counter() - tick
            if stopping and not self.dispatcher.in_flight():
                return stopping
            if not changed:
                self.dispatcher.wait(timeout=1.0)

    def _out_of_time(self) -> bool:
        cap = self.run_cfg.stop.max_walltime
        return cap is not None and time.monotonic() - self.t0 >= cap

    def _mark_segment_running(self, task_id: int) -> None:
        with self.db.session() as s:
            t = s.get(Task, task_id)
            if t.kind is TaskKind.md:
                s.get(Segment, t.segment_id).status = SegmentStatus.running

    # ------------------------------------------------------------------ bootstrap (version 1)
    def _bootstrap(self) -> None:
        if self.store.latest() is not None or self.run_cfg.initial_potential.kind != "generate":
            return
        with self.db.session() as s:
            n_gen = s.scalar(select(func.count()).select_from(Structure).where(Structure.origin == Origin.generated))
        if n_gen == 0:
            from autopipe.generate import dataset_template, generate_structures

            try:
                structures = generate_structures(self.run_cfg.system.elements, dataset_template(self.run_cfg),
                                                 self.run_cfg.initial_potential)
            except ValueError as exc:  # e.g. min_distance larger than the template allows
                raise AutopipeError(f"cannot generate the initial dataset: {exc}") from None
            with self.db.session() as s:
                rows = [structure_from_atoms(a, Origin.generated, selected=True,
                                             info={"generator": a.info.get("generator")}) for a in structures]
                s.add_all(rows)
                s.flush()
                tasks = [self._task_row(TaskKind.dft, structure_id=r.id) for r in rows]
                s.add_all(tasks)
                s.flush()
                ids = [t.id for t in tasks]
            for tid in ids:
                self._push(tid)
            self.progress.log(f"bootstrap: {len(ids)} generated structures sent to {self.run_cfg.dft.code}")

    # ------------------------------------------------------------------ walkers
    def _schedule_walkers(self) -> None:
        latest = self.store.latest()
        if latest is None:
            return
        self._ensure_walkers()
        stop = self.run_cfg.stop
        with self.db.session() as s:
            walkers = list(s.scalars(select(Walker).order_by(Walker.index)))
            busy = set(s.scalars(select(Segment.walker_id).where(
                Segment.status.in_([SegmentStatus.pending, SegmentStatus.running]))))
            new_segments = []
            for w in walkers:
                if w.status is WalkerStatus.waiting and latest.version > (w.waiting_for_version or 0):
                    w.status, w.waiting_for_version = WalkerStatus.running, None
                    self.progress.log(f"walker {w.index}: hot-swap to v{latest.version}, resuming at step {w.step}")
                if w.status is not WalkerStatus.running or w.id in busy:
                    continue
                if w.step >= stop.max_md_steps:
                    w.status = WalkerStatus.finished
                    continue
                number = s.scalar(select(func.coalesce(func.max(Segment.number), -1))
                                  .where(Segment.walker_id == w.id)) + 1
                n_steps = min(self.run_cfg.md.segment_steps, stop.max_md_steps - w.step)
                seg = Segment(walker_id=w.id, number=number, potential_version=latest.version,
                              status=SegmentStatus.pending, start_step=w.step, start_checkpoint=w.checkpoint)
                s.add(seg)
                s.flush()
                task = self._task_row(TaskKind.md, segment_id=seg.id, payload={"n_steps": n_steps})
                s.add(task)
                s.flush()
                new_segments.append(task.id)
        for tid in new_segments:
            self._push(tid)

    def _ensure_walkers(self) -> None:
        with self.db.session() as s:
            have = s.scalar(select(func.count()).select_from(Walker))
        if have:
            return
        from autopipe.generate import template_atoms
        from autopipe.md import initial_state, save_state
        from autopipe.replay import initial_checkpoint

        atoms = template_atoms(self.run_cfg.system)
        for i in range(self.run_cfg.walkers.count):
            md = self.run_cfg.md.model_copy(update={"seed": self.run_cfg.md.seed + i})
            state = initial_state(atoms, md)
            ck = initial_checkpoint(self.workdir, i)
            ck.parent.mkdir(parents=True, exist_ok=True)
            save_state(ck, state)
            with self.db.session() as s:
                s.add(structure_from_atoms(atoms, Origin.initial, info={"walker": i}))
                s.add(Walker(index=i, status=WalkerStatus.running, step=0, checkpoint=str(ck)))
        self.progress.log(f"{self.run_cfg.walkers.count} walker(s) start with {len(atoms)} atoms")

    # ------------------------------------------------------------------ training
    def _maybe_train(self) -> None:
        if self._active(TaskKind.train):
            return
        from autopipe.potentials.trainer import max_label_id, new_label_count

        latest = self.store.latest()
        r = self.run_cfg
        if latest is None:
            if r.initial_potential.kind != "generate" or self._active(TaskKind.dft):
                return
            with self.db.session() as s:
                if not s.scalar(select(func.count()).select_from(Label).where(Label.status == LabelStatus.done)):
                    return  # bootstrap labels not stored yet
            name, parent, iterations = r.initial_potential.name, None, r.train.max_iterations
        else:
            if self._training_budget_used():
                return
            if new_label_count(self.db) < r.train.min_new_labels and not self._stalled_with_new_labels():
                return
            cont = r.train.continue_from_parent
            parent = latest if cont else None
            iterations = (r.train.retrain_iterations or r.train.max_iterations) if cont else r.train.max_iterations
            name = f"{r.name}_v{self.store.next_version()}"
        from autopipe.potentials.dataset import build_dataset, write_dataset

        snapshot = max_label_id(self.db)
        version = self.store.next_version()
        work = self.workdir / "train" / f"v{version:04d}-{int(time.time())}"
        work.mkdir(parents=True, exist_ok=True)
        df, info = build_dataset(self.db, r.train, max_label_id=snapshot)
        dataset = write_dataset(df, work / "dataset.pckl.gzip")
        payload = {"version": version, "name": name, "snapshot": snapshot, "dataset": str(dataset),
                   "workdir": str(work), "parent_yaml": str(parent.yaml) if parent else None,
                   "parent_version": latest.version if latest else None, "iterations": iterations,
                   "n_train": info.n_structures}
        self._push(self._new_task(TaskKind.train, payload=payload))
        self.progress.log(f"training v{version} ({name}) on {info.n_structures} structures"
                          + (f", continuing from v{latest.version}" if parent else ""))
        self.db.record_event("train", f"training v{version} started", version=version, n_train=info.n_structures)

    def _training_budget_used(self) -> bool:
        cap = self.run_cfg.stop.max_trainings
        return cap is not None and len(self.store.versions()) - 1 >= cap

    def _stalled_with_new_labels(self) -> bool:
        """Every walker waits, nothing else is coming, and some new labels exist: train on them."""
        from autopipe.potentials.trainer import new_label_count

        return self._all_walkers_waiting() and not self._work_pending() and new_label_count(self.db) > 0

    def _all_walkers_waiting(self) -> bool:
        """Every walker still going waits for a potential newer than the latest one."""
        latest = self.store.latest()
        newest = latest.version if latest else 0
        with self.db.session() as s:
            walkers = [w for w in s.scalars(select(Walker)) if w.status is not WalkerStatus.finished]
        return bool(walkers) and all(
            w.status is WalkerStatus.waiting and newest <= (w.waiting_for_version or 0) for w in walkers)

    def _work_pending(self) -> bool:
        return any(self._active(k) for k in (TaskKind.dft, TaskKind.embed, TaskKind.train))

    # ------------------------------------------------------------------ results
    def _finish(self, task_id: int, fut) -> None:
        with self.db.session() as s:
            kind = s.get(Task, task_id).kind
        try:
            result = fut.result()
        except Exception as exc:  # the app itself crashed (not a failed label or segment)
            self._app_crashed(task_id, kind, exc)
            return
        handler = {TaskKind.dft: self._dft_done, TaskKind.md: self._md_done,
                   TaskKind.embed: self._embed_done, TaskKind.train: self._train_done}[kind]
        handler(task_id, result)

    def _app_crashed(self, task_id: int, kind: TaskKind, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}".strip()
        with self.db.session() as s:
            attempts = s.get(Task, task_id).attempts
        if attempts < MAX_TASK_ATTEMPTS and kind is not TaskKind.train:
            self.progress.log(f"task {task_id} ({kind.value}) crashed, retrying: {msg}")
            self._set_state(task_id, TaskState.pending, error=msg)
            self._push(task_id)
            return
        self._set_state(task_id, TaskState.failed, error=msg)
        self.progress.log(f"task {task_id} ({kind.value}) failed: {msg}")
        if kind is TaskKind.md:
            self._md_done(task_id, None, error=msg)
        elif kind is TaskKind.train:
            self.train_failures += 1
        elif kind is TaskKind.dft:
            from autopipe.dft import LabelResult, store_label

            with self.db.session() as s:
                sid = s.get(Task, task_id).structure_id
            store_label(self.db, sid, LabelResult(status="failed", code=self.run_cfg.dft.code, error=msg))

    def _dft_done(self, task_id: int, result) -> None:
        from autopipe.dft import store_label

        with self.db.session() as s:
            sid = s.get(Task, task_id).structure_id
        # Label and task state in one transaction would be ideal; store_label commits the
        # label first, and a restart treats a task whose structure has a label as done.
        store_label(self.db, sid, result)
        self._set_state(task_id, TaskState.done, error=result.error)
        if result.status != "done":
            self.progress.log(f"DFT {result.status} for structure {sid}: {result.error}")

    def _md_done(self, task_id: int, result, error: str | None = None) -> None:
        with self.db.session() as s:
            t = s.get(Task, task_id)
            seg = s.get(Segment, t.segment_id)
            w = s.get(Walker, seg.walker_id)
            if result is None:
                status, seg.error = SegmentStatus.failed, error
            else:
                status = SegmentStatus(result.status)
                seg.end_step, seg.max_gamma = result.end_step, result.max_gamma
                seg.gamma_trace, seg.thermo = result.gamma_trace, result.thermo
                seg.trajectory = str(result.trajectory) if result.trajectory else None
                seg.walltime, seg.error = result.walltime, result.error
            seg.status = status
            frame_id = embed_task = None
            if status is SegmentStatus.completed:
                # run_segment wrote its end state next to its files; a worker on another
                # filesystem may not have, so write it here then. Committed only once it exists.
                ck = Path(result.checkpoint) if result.checkpoint else None
                if ck is None or not ck.is_file():
                    from autopipe.md import save_state

                    ck = Path(w.checkpoint).parent / f"checkpoint-{result.end_step:08d}.npz"
                    save_state(ck, result.final_state)
                seg.end_checkpoint = w.checkpoint = str(ck)
                w.step, w.failures = result.end_step, 0
                w.segments_since_trigger += 1
            elif status is SegmentStatus.triggered:
                frame = result.trigger_frame
                row = structure_from_atoms(frame, Origin.md_frame, segment_id=seg.id,
                                           potential_version=seg.potential_version,
                                           info={"walker": w.index, "step": result.end_step})
                s.add(row)
                s.flush()
                frame_id = row.id
                embed_task = self._task_row(TaskKind.embed, structure_id=frame_id, payload={
                    "centers": self._centers(result), "version": seg.potential_version})
                s.add(embed_task)
                s.flush()
                embed_task = embed_task.id
                # Rewind: the walker keeps its last good checkpoint (this segment's start) and
                # waits for a potential newer than the one that triggered.
                w.status, w.waiting_for_version = WalkerStatus.waiting, seg.potential_version
                w.segments_since_trigger, w.failures = 0, 0
            else:
                w.failures += 1
                w.error = seg.error
                if w.failures >= MAX_WALKER_FAILURES:
                    w.status = WalkerStatus.finished
                else:
                    w.status, w.waiting_for_version = WalkerStatus.waiting, seg.potential_version
            t.state, t.finished_at = (TaskState.done if result is not None else TaskState.failed), utcnow()
            seg_info = (w.index, seg.number, seg.potential_version, seg.max_gamma, seg.error)
        idx, number, version, gmax, err = seg_info
        if status is SegmentStatus.triggered:
            self.progress.log(f"walker {idx} segment {number}: gamma {gmax:.1f} > "
                              f"{self.run_cfg.otf.uncertainty_threshold:g} at step {result.end_step} (v{version})")
            self.db.record_event("trigger", f"walker {idx} step {result.end_step}", walker=idx, step=result.end_step,
                                 max_gamma=gmax, version=version, structure_id=frame_id)
            self._push(embed_task)
        elif status is SegmentStatus.failed:
            self.progress.log(f"walker {idx} segment {number} failed: {err}")

    def _centers(self, result) -> list[int]:
        """Most uncertain atom first, then others above the threshold at least one box apart."""
        from autopipe.embedding import select_centers

        e = self.run_cfg.embedding
        box = 2 * (e.cutoff + e.buffer)
        gamma = result.trigger_frame.arrays["gamma"]
        centers = select_centers(result.trigger_frame, gamma, self.run_cfg.otf.uncertainty_threshold,
                                 self.run_cfg.otf.max_extractions, box)
        return [int(c) for c in centers] or [int(result.trigger_atom)]

    def _embed_done(self, task_id: int, candidates) -> None:
        from autopipe.steer.selection import select_candidates

        with self.db.session() as s:
            t = s.get(Task, task_id)
            frame = s.get(Structure, t.structure_id)
            existing = [atoms_from_structure(r) for r in s.scalars(
                select(Structure).where(Structure.origin == Origin.embedded, Structure.selected.is_(True)))]
            frame_id, version = frame.id, frame.potential_version
        thr = self.run_cfg.otf.uncertainty_threshold
        core_now = {id(c.atoms): c.core_gamma_now for c in candidates}
        decisions = select_candidates(
            [c.atoms for c in candidates], [c.gamma for c in candidates], threshold=thr, existing=existing,
            regamma=(lambda a: core_now[id(a)]) if any(c.core_gamma_now is not None for c in candidates) else None,
        )
        new_tasks = []
        with self.db.session() as s:
            for c, d in zip(candidates, decisions):
                row = structure_from_atoms(
                    c.atoms, Origin.embedded, parent_id=frame_id, center_index=c.center, force_mask=c.masked,
                    potential_version=version, selected=d.keep, selection_note=d.reason,
                    info={k: v for k, v in c.atoms.info.items() if k.startswith("embedding_")},
                )
                s.add(row)
                s.flush()
                if d.keep:
                    task = self._task_row(TaskKind.dft, structure_id=row.id)
                    s.add(task)
                    s.flush()
                    new_tasks.append(task.id)
            s.get(Task, task_id).state = TaskState.done
            s.get(Task, task_id).finished_at = utcnow()
        for tid in new_tasks:
            self._push(tid)
        dropped = [d.reason for d in decisions if not d.keep]
        self.progress.log(f"embedded {len(candidates)} sub-cell(s) of {len(candidates[0].atoms) if candidates else 0}"
                          f" atoms: {len(new_tasks)} to DFT" + (f", dropped: {'; '.join(dropped)}" if dropped else ""))

    def _train_done(self, task_id: int, out) -> None:
        with self.db.session() as s:
            p = dict(s.get(Task, task_id).payload)
        if out.status != "done":
            self.train_failures += 1
            self._set_state(task_id, TaskState.failed, error=out.error)
            self.progress.log(f"training v{p['version']} failed: {out.error}")
            self.db.record_event("train_failed", out.error or "failed", version=p["version"], log_tail=out.log_tail)
            return
        self.train_failures = 0
        pot = self.store.publish(
            {k: Path(v) for k, v in out.files.items()}, name=p["name"], parent_version=p["parent_version"],
            version=p["version"], n_train=p["n_train"], last_label_id=p["snapshot"],
            metrics={**out.metrics, "continued_from": p["parent_version"] if p.get("parent_yaml") else None},
            walltime=out.walltime,
        )
        self._set_state(task_id, TaskState.done)
        rmse = pot.metrics.get("train_forces_rmse")
        self.progress.log(f"published v{pot.version} {pot.name}" + (f" (force RMSE {rmse * 1000:.1f} meV/Å)"
                                                                    if isinstance(rmse, float) else ""))
        self.db.record_event("publish", f"v{pot.version} {pot.name}", version=pot.version,
                             parent_version=p["parent_version"], walltime=out.walltime)

    # ------------------------------------------------------------------ stopping rules
    def _stop_reason(self) -> str | None:
        st = self.run_cfg.stop
        if self._out_of_time():
            return f"wall-time budget of {st.max_walltime:g} s used"
        if self.train_failures >= MAX_TRAIN_FAILURES:
            return f"training failed {self.train_failures} times in a row (see events and train/*/pacemaker.log)"
        with self.db.session() as s:
            walkers = list(s.scalars(select(Walker)))
            n_labels = int(s.scalar(select(func.count()).select_from(Label).join(Structure).where(
                Structure.origin != Origin.generated)) or 0)
        if st.max_dft_calls is not None and n_labels >= st.max_dft_calls and not self._active(TaskKind.train):
            return f"DFT budget of {st.max_dft_calls} calls used"
        if not walkers:
            if self.store.latest() is None and not self._work_pending() and self.dispatcher.idle():
                with self.db.session() as s:
                    n_done = s.scalar(select(func.count()).select_from(Label).where(Label.status == LabelStatus.done))
                if not n_done:
                    return "no initial potential: none of the generated structures could be labelled"
            return None
        if all(w.status is WalkerStatus.finished for w in walkers):
            if any(w.step < st.max_md_steps for w in walkers):
                return "every walker was retired after repeated failed segments"
            return f"every walker reached {st.max_md_steps} MD steps"
        if st.converged_segments and all(w.segments_since_trigger >= st.converged_segments for w in walkers):
            return f"converged: {st.converged_segments} consecutive segments without a trigger on every walker"
        if self._all_walkers_waiting() and not self._work_pending():
            if self._training_budget_used():
                return f"training budget of {st.max_trainings} retrains used; walkers wait for a better potential"
            from autopipe.potentials.trainer import new_label_count

            if new_label_count(self.db) == 0 and self.dispatcher.idle():
                return "stalled: walkers wait for a new potential but no new labels could be made"
        return None

    # ------------------------------------------------------------------ progress
    def _snapshot(self) -> dict[str, Any]:
        with self.db.session() as s:
            walkers = [(w.index, w.status.value, w.step, w.waiting_for_version)
                       for w in s.scalars(select(Walker).order_by(Walker.index))]
            last_gamma = dict(s.execute(select(Segment.walker_id, Segment.max_gamma)
                                        .where(Segment.max_gamma.is_not(None)).order_by(Segment.id)).all())
            wid = dict(s.execute(select(Walker.index, Walker.id)).all())
            labels = dict(s.execute(select(Label.status, func.count()).group_by(Label.status)).all())
            tasks = s.execute(select(Task.kind, Task.state, func.count()).group_by(Task.kind, Task.state)).all()
        latest = self.store.latest()
        return {
            "walkers": [(i, st, step, last_gamma.get(wid[i]), wv) for i, st, step, wv in walkers],
            "labels": {k.value: v for k, v in labels.items()},
            "tasks": {(k.value, st.value): n for k, st, n in tasks},
            "version": latest.version if latest else None,
            "elapsed": time.monotonic() - self.t0,
            "max_md_steps": self.run_cfg.stop.max_md_steps,
            "threshold": self.run_cfg.otf.uncertainty_threshold,
        }


def run_loop(site, run, *, site_path: Path | None = None, run_path: Path | None = None, live: bool = True,
             **kwargs) -> LoopOutcome:
    """Run (or resume) the loop until a stopping rule fires."""
    return Steering(site, run, live=live, **kwargs).run()
