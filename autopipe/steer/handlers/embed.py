"""Carving and selection: trigger frame -> candidate cells -> the ones worth DFT.

Every centre tried becomes a :class:`~autopipe.db.Candidate` row: ``selected`` (a DFT task
was made), ``covered`` (D-optimal selection found it adds nothing beyond the newest
potential's active set and the cells already on their way, see
:mod:`autopipe.steer.selection`) or ``refused`` (no cell could be carved; the reason is
kept). A frame from which nothing could be carved counts as a failed segment for its
walker, which resumes with the same potential (and is retired after
``faults.segment_failures`` in a row) instead of waiting for a label that never comes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from autopipe.steer import walkers

if TYPE_CHECKING:
    from autopipe.steer.context import Context
    from autopipe.steer.work import CarvedCell


def args(ctx: Context, task: Task) -> tuple:
    with ctx.db.session() as s:
        frame = atoms_from_structure(s.get(Structure, task.structure_id))
    from autopipe.carving.charge import ChargeRule
    from autopipe.carving.reference import reference_lattice
    from autopipe.config.run import EspressoConfig

    from autopipe.steer import budget

    e, dft = ctx.run.embedding, ctx.run.dft
    lattice = reference_lattice(ctx.run) if e.strategy in ("commensurate", "budget") else None
    kpoints = (dft.kspacing, dft.gamma_only_length) if isinstance(dft, EspressoConfig) else None
    p = budget.plan(ctx)
    # pw.x runs with a charge policy: every carved cell is checked before it is sent (valences read here,
    # on the steering side, from the same UPF files the labeller gets).
    return (frame, e, ctx.run.otf.uncertainty_threshold, ctx.run.otf.max_extractions, lattice, kpoints, p.strategy,
            p.calibrate, ChargeRule.from_run(ctx.run))


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


def decide(ctx: Context, carved: list[CarvedCell], label_anyway: bool = False):
    """The selection decisions for ``carved`` (see :mod:`autopipe.steer.selection`). With
    ``label_anyway`` (a frame that blew up with low gamma) the first, most uncertain cell is
    kept whatever its grade: a low grade is exactly what was wrong there."""
    from autopipe.steer.selection import Decision, grade, select_d_optimal, trusted_projections

    newest = ctx.store.latest()
    coming = coming_cells(ctx, newest.last_label_id)
    inverses, rows = trusted_projections(coming + [(c.atoms, c.masked) for c in carved], newest)
    coming_rows, rows = rows[:len(coming)], rows[len(coming):]
    forced = []
    if label_anyway:
        forced = [Decision(True, grade(rows[0], inverses), "selected: the potential blew up here with low gamma")]
        coming_rows, rows = [*coming_rows, rows[0]], rows[1:]
    return forced + select_d_optimal(inverses, coming_rows, rows, ctx.run.otf.uncertainty_threshold)


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
    decisions = decide(ctx, carved, bool(info.get("label_anyway"))) if carved else []
    if calibration and carved and carved[0].whole_frame:
        from autopipe.steer.selection import Decision

        # The reference of the measurement must be labelled, whatever selection thinks of it.
        decisions[0] = Decision(True, decisions[0].score, "selected: whole-frame reference of the carving budget")
    new_tasks, notes = [], []
    with ctx.db.session() as s:
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
        refusal = None
        if not carved and walker_index is not None:
            # Nothing to label: a failed segment for the walker, which goes on with the same potential.
            refusal = cells[0].refused.splitlines()[0] if cells else "no centre to carve around"
            w = s.scalars(select(Walker).where(Walker.index == walker_index)).one()
            retired = walkers.after_refused(w, f"no sub-cell could be carved: {refusal}",
                                            ctx.run.faults.segment_failures)
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


def crashed(ctx: Context, task_id: int, error: str) -> None:
    ctx.progress.log(f"carving failed for task {task_id}: {error}")
