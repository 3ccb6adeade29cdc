"""Carving and selection: trigger frame -> candidate cells -> the ones worth DFT.

Every centre tried becomes a :class:`~autopipe.db.Candidate` row: ``selected`` (a DFT task
was made), ``covered`` (D-optimal selection found it adds nothing beyond the newest
potential's active set and the cells already on their way, see
:mod:`autopipe.steer.selection`) or ``refused`` (no cell could be carved; the reason is
kept). A frame from which nothing could be carved counts as a failed segment for its
walker, which resumes with the same potential (and is retired after
``faults.segment_failures`` in a row) instead of waiting for a label that never comes.

Where the carving runs: a frame of at most ``embedding.keep_frames_up_to`` atoms (and any frame
that must be labelled whole) travels to the steering host, is stored whole and carved here by the
embed task. A larger frame is carved on the MD worker that made it (:func:`worker_plan`,
:func:`autopipe.steer.work.carve_on_worker`): the md handler stores its cells and a compact
record of the frame (:func:`store_trigger`), and the frame never leaves the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from autopipe.db import (
    Candidate,
    CandidateStatus,
    Label,
    LabelStatus,
    Origin,
    Structure,
    Task,
    TaskKind,
    TaskState,
    Walker,
    atoms_from_structure,
    structure_from_atoms,
)
from autopipe.db.models import utcnow
from autopipe.steer import tasks, walkers

if TYPE_CHECKING:
    from autopipe.steer.context import Context
    from autopipe.steer.work import CarvedCell


def args(ctx: Context, task: Task) -> tuple:
    with ctx.db.session() as s:
        frame = atoms_from_structure(s.get(Structure, task.structure_id))
    e, lattice, kpoints, p, charge = carving_settings(ctx)
    return (frame, e, ctx.run.otf.uncertainty_threshold, ctx.run.otf.max_extractions, lattice, kpoints, p.strategy,
            p.calibrate, charge)


def carving_settings(ctx: Context) -> tuple:
    """(embedding config, reference lattice, pw.x k-point settings, the budget's plan, charge rule)."""
    from autopipe.carving.charge import ChargeRule
    from autopipe.carving.reference import reference_lattice
    from autopipe.config.run import EspressoConfig

    from autopipe.steer import budget

    e, dft = ctx.run.embedding, ctx.run.dft
    lattice = reference_lattice(ctx.run) if e.strategy in ("commensurate", "budget") else None
    kpoints = (dft.kspacing, dft.gamma_only_length) if isinstance(dft, EspressoConfig) else None
    # pw.x runs with a charge policy: every carved cell is checked before it is sent (valences read here,
    # on the steering side, from the same UPF files the labeller gets).
    return e, lattice, kpoints, budget.plan(ctx), ChargeRule.from_run(ctx.run)


def worker_plan(ctx: Context):
    """How the MD worker carves a trigger frame of the next segment (a
    :class:`~autopipe.steer.work.WorkerCarve`), or None when every frame must travel whole: the
    carving budget labels whole frames or is calibrating (its measurement needs the frame here),
    or ``embedding.whole_frame`` is ``always``. The budget's plan is read when the segment is
    submitted; a trigger carved under a plan that changed meanwhile is carved as planned."""
    from autopipe.steer import budget
    from autopipe.steer.work import WorkerCarve

    e, lattice, kpoints, p, charge = carving_settings(ctx)
    if e.whole_frame == "always" or p.strategy == budget.WHOLE or p.calibrate:
        return None
    otf = ctx.run.otf
    return WorkerCarve(e, otf.uncertainty_threshold, otf.max_extractions, e.keep_frames_up_to, lattice, kpoints,
                       p.strategy, charge)


def coming_cells(ctx: Context, newest_snapshot: int) -> list[tuple]:
    """``[(atoms, masked)]`` of the cells that will be trained on soon: a DFT task pending or
    running, or labelled successfully after the newest potential's training snapshot.
    Failed labels are left out, so their environments may be chosen again."""
    active = [TaskState.pending, TaskState.running]
    with ctx.db.session() as s:
        queued = select(Task.structure_id).where(Task.kind == TaskKind.dft, Task.state.in_(active))
        fresh = select(Label.structure_id).where(Label.status == LabelStatus.done, Label.id > newest_snapshot)
        rows = s.scalars(select(Structure).where(Structure.origin.not_in([Origin.generated, Origin.imported]),
                                                 Structure.heldout.is_(None),  # never trained on
                                                 Structure.id.in_(queued.union(fresh))))
        # Calibration cells of the carving budget are measurements, never trained on.
        return [(atoms_from_structure(r), list(r.force_mask or [])) for r in rows
                if not (r.info or {}).get("calibration_for")]


def decide(ctx: Context, carved: list[CarvedCell], label_anyway: bool = False, trigger_version: int | None = None):
    """The selection decisions for ``carved`` (see :mod:`autopipe.steer.selection`). With
    ``label_anyway`` (a frame that blew up with low gamma) the first, most uncertain cell is
    kept whatever its grade: a low grade is exactly what was wrong there.

    A walker that triggered with the newest version (``trigger_version``) on an environment whose
    carved cells that version's own active set already covers, with no cell on its way to a
    retrain, would wait for a retrain that never comes: the carve does not show what the walker saw (its core
    atoms' cutoff spheres reach past the buffer into the cell's images; seen on MgO with a 1.8 Å
    buffer under a 5 Å cutoff, where the run stalled after two labels). The most uncertain cell is
    then labelled anyway, and the decision says why."""
    from autopipe.steer.selection import Decision, grade, select_d_optimal, trusted_projections

    newest = ctx.store.latest()
    coming = coming_cells(ctx, newest.last_label_id)
    inverses, rows = trusted_projections(coming + [(c.atoms, c.masked) for c in carved], newest)
    coming_rows, rows = rows[:len(coming)], rows[len(coming):]
    forced = []
    if label_anyway:
        forced = [Decision(True, grade(rows[0], inverses), "selected: the potential blew up here with low gamma")]
        coming_rows, rows = [*coming_rows, rows[0]], rows[1:]
    threshold = ctx.run.otf.uncertainty_threshold
    decisions = forced + select_d_optimal(inverses, coming_rows, rows, threshold)
    if (not forced and rows and not coming and trigger_version == newest.version
            and not any(d.keep for d in decisions)):
        # Nothing coming and nothing kept: every score was taken against the newest version's own active set.
        known = [d.score for d in decisions]
        k = int(np.argmax(known))
        if known[k] <= threshold:
            decisions[k] = Decision(True, known[k], (
                f"selected anyway: v{newest.version} triggered here but already knows this cell's core (gamma "
                f"{known[k]:.2f} <= {threshold:g}): the carve does not show what the walker saw, and waiting "
                "would stall the walker"))
    return decisions


def done(ctx: Context, task_id: int, cells: list[CarvedCell]) -> None:
    with ctx.db.session() as s:
        frame = s.get(Structure, s.get(Task, task_id).structure_id)
        info = frame.info or {}
        frame_id, version, walker_index = frame.id, frame.potential_version, info.get("walker")
    from autopipe.steer import budget

    calibration = [c for c in cells if c.calibration]
    cells = [c for c in cells if not c.calibration]
    if calibration and budget.plan(ctx).calibrate == ():
        calibration = []  # another frame's calibration began meanwhile: this one is labelled whole only
    carved = [c for c in cells if c.atoms is not None]
    decisions = decide(ctx, carved, bool(info.get("label_anyway")), version) if carved else []
    if calibration and carved and carved[0].whole_frame:
        from autopipe.steer.selection import Decision

        # The reference of the measurement must be labelled, whatever selection thinks of it.
        decisions[0] = Decision(True, decisions[0].score, "selected: whole-frame reference of the carving budget")
    with ctx.db.session() as s:
        new_tasks, notes = write_cells(ctx, s, frame_id, version, cells, decisions)
        measured_ids = []
        for c in calibration:
            if c.refused:
                notes.append(f"calibration {c.refused.splitlines()[0]}")
                continue
            row = structure_from_atoms(
                c.atoms, Origin.embedded, parent_id=frame_id, center_index=c.center, force_mask=c.masked,
                potential_version=version, selected=True, selection_note="calibration of the carving budget",
                info={**{k: v for k, v in c.atoms.info.items() if k.startswith("embedding_")},
                      "calibration_for": frame_id},
                **budget.weights_for_measurement(len(c.atoms)),
            )
            s.add(row)
            s.flush()
            task = ctx.new_task(TaskKind.dft, structure_id=row.id)
            s.add(task)
            s.flush()
            new_tasks.append(task.id)
            measured_ids.append(row.id)
        t = s.get(Task, task_id)
        t.state, t.finished_at = TaskState.done, utcnow()
        refusal, retired = refuse_if_empty(ctx, s, walker_index, cells) if not carved else (None, False)
    if refusal is not None:
        ctx.db.record_event("carve_refused", refusal, walker=walker_index, frame=frame_id, retired=retired)
    if measured_ids:
        strategies = [str(c.atoms.info.get("embedding_strategy")) for c in calibration if c.atoms is not None]
        budget.record_calibration(ctx, frame_id, measured_ids, strategies, budget.plan(ctx).reason)
    elif calibration:
        budget.nothing_to_measure(ctx, [c.refused.splitlines()[0] for c in calibration if c.refused])
    ctx.push(*new_tasks)
    whole = carved[0] if carved and carved[0].whole_frame else None
    if (whole is not None and whole.note and ctx.run.embedding.strategy != "budget"
            and ctx.db.last_event("whole_frames") is None):
        # Said once per run: every later frame goes the same way for the same reason.
        ctx.db.record_event("whole_frames", f"trigger frames are labelled whole: {whole.note}", frame=frame_id)
    what = "the whole frame" if whole is not None else f"{len(carved)} sub-cell(s)"
    ctx.progress.log(f"trigger frame {frame_id}: {what}, {len(new_tasks)} to DFT"
                     + (f"; {'; '.join(notes)}" if notes else ""))


def write_cells(ctx: Context, s, frame_id: int, version: int | None, cells: list[CarvedCell],
                decisions) -> tuple[list[int], list[str]]:
    """In session ``s``: a :class:`Candidate` row per centre of ``cells`` (not calibration cells),
    a structure row per carved cell (child of the frame ``frame_id``), a DFT task per selected one.
    ``decisions``: :func:`decide`'s, one per carved cell. Returns (new DFT task ids, notes)."""
    new_tasks, notes = [], []
    carved = [c for c in cells if c.atoms is not None]
    for c in cells:
        if c.refused:
            s.add(Candidate(frame_id=frame_id, center=c.center, gamma=c.gamma, status=CandidateStatus.refused,
                            reason=c.refused))
            notes.append(f"centre {c.center} refused: {c.refused.splitlines()[0]}")
    for c, d in zip(carved, decisions):
        if c.whole_frame:
            sid = frame_id  # the frame itself is labelled
        else:
            row = structure_from_atoms(
                c.atoms, Origin.embedded, parent_id=frame_id, center_index=c.center, force_mask=c.masked,
                potential_version=version, selected=d.keep, selection_note=d.reason,
                info={k: v for k, v in c.atoms.info.items() if k.startswith("embedding_")},
            )
            s.add(row)
            s.flush()
            sid = row.id
        s.add(Candidate(frame_id=frame_id, center=c.center, gamma=c.gamma, score=d.score, reason=d.reason,
                        status=CandidateStatus.selected if d.keep else CandidateStatus.covered, structure_id=sid))
        if d.keep:
            task = ctx.new_task(TaskKind.dft, structure_id=sid)
            s.add(task)
            s.flush()
            new_tasks.append(task.id)
        else:
            notes.append(f"centre {c.center} {d.reason}")
    return new_tasks, notes


def refuse_if_empty(ctx: Context, s, walker_index: int | None, cells: list[CarvedCell]) -> tuple[str | None, bool]:
    """Nothing to label from a frame: in session ``s``, a failed segment for its walker, which goes
    on with the same potential. Returns (the refusal, whether the walker was retired)."""
    if walker_index is None:
        return None, False
    refusal = cells[0].refused.splitlines()[0] if cells else "no centre to carve around"
    w = s.scalars(select(Walker).where(Walker.index == walker_index)).one()
    return refusal, walkers.after_refused(w, f"no sub-cell could be carved: {refusal}", ctx.run.faults.segment_failures)


@dataclass
class Stored:
    """What :func:`store_trigger` wrote: the frame's row (whole, or its compact record), the pending
    embed task of a whole frame, or the outcome of the cells carved on the MD worker."""

    frame_id: int
    route: str  # how the frame travelled (SegmentResult.frame_route)
    embed_task: int | None = None
    new_tasks: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_cells: int = 0
    refusal: str | None = None
    retired: bool = False


def precarved_decisions(ctx: Context, result) -> list | None:
    """Selection's decisions on the cells the MD worker carved (``result.carved``), or None when the
    frame came whole. Call outside a write transaction: it reads the cells on their way to DFT."""
    cells = getattr(result, "carved", None)
    if cells is None:
        return None
    carved = [c for c in cells if c.atoms is not None]
    return decide(ctx, carved, result.label_anyway, result.potential_version) if carved else []


def store_trigger(ctx: Context, s, seg, walker, result, decisions: list | None) -> Stored:
    """In session ``s`` (after the walker ``walker`` moved on the trigger): the trigger frame of
    segment ``seg``. A whole frame is stored with a pending embed task, as before. A frame carved
    on the MD worker is stored as its compact record (:data:`Origin.frame_record`, the atoms near
    the centres with ``parent_index`` into the frame), with an embed task already done (where the
    carving ran), the cells, candidates and DFT tasks of ``decisions`` (:func:`precarved_decisions`);
    nothing carved is a refusal for the walker, as in :func:`done`."""
    route = getattr(result, "frame_route", None) or "whole"
    info = {"walker": walker.index, "step": result.end_step, "note": result.note,
            "label_anyway": result.label_anyway, "frame_route": route}
    if getattr(result, "carved", None) is None:
        row = structure_from_atoms(result.trigger_frame, Origin.md_frame, segment_id=seg.id,
                                   potential_version=seg.potential_version, info=info)
        s.add(row)
        s.flush()
        task = ctx.new_task(TaskKind.embed, structure_id=row.id, payload={"version": seg.potential_version})
        s.add(task)
        s.flush()
        return Stored(row.id, route, embed_task=task.id)
    rec = result.frame_record
    row = structure_from_atoms(rec, Origin.frame_record, segment_id=seg.id, potential_version=seg.potential_version,
                               info={**info, **{k: v for k, v in rec.info.items() if k != "step"}})
    s.add(row)
    s.flush()
    # The carving ran inside the MD task: its embed row is done already, and says where it ran.
    t = tasks.new_row(TaskKind.embed, ctx.apps.executors["md"], structure_id=row.id,
                      payload={"version": seg.potential_version, "carved_on": "md worker"})
    t.state, t.attempts, t.started_at, t.finished_at = TaskState.done, 1, utcnow(), utcnow()
    s.add(t)
    cells = result.carved
    new_tasks, notes = write_cells(ctx, s, row.id, seg.potential_version, cells, decisions or [])
    n_cells = sum(c.atoms is not None for c in cells)
    refusal, retired = refuse_if_empty(ctx, s, walker.index, cells) if n_cells == 0 else (None, False)
    return Stored(row.id, route, None, new_tasks, notes, n_cells, refusal, retired)


def after_stored(ctx: Context, stored: Stored, walker_index: int) -> None:
    """After the commit of :func:`store_trigger`: queue the embed task, or the DFT tasks of cells
    carved on the worker (and record a refusal)."""
    if stored.embed_task is not None:
        ctx.push(stored.embed_task)
        return
    if stored.refusal is not None:
        ctx.db.record_event("carve_refused", stored.refusal, walker=walker_index, frame=stored.frame_id,
                            retired=stored.retired)
    ctx.push(*stored.new_tasks)
    ctx.progress.log(f"trigger frame {stored.frame_id} (compact record; {stored.route}): {stored.n_cells} sub-cell(s), "
                     f"{len(stored.new_tasks)} to DFT" + (f"; {'; '.join(stored.notes)}" if stored.notes else ""))


def crashed(ctx: Context, task_id: int, error: str) -> None:
    ctx.progress.log(f"carving failed for task {task_id}: {error}")
