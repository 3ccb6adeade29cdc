"""Carving: periodic sub-cells around a trigger frame's uncertain atoms; selection sends the
worthwhile ones to DFT (see :mod:`autopipe.steer.selection`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from autopipe.db import Origin, Structure, Task, TaskKind, TaskState, atoms_from_structure, structure_from_atoms
from autopipe.db.models import utcnow

if TYPE_CHECKING:
    from autopipe.steer.context import Context
    from autopipe.steer.work import Candidate


def args(ctx: Context, task: Task) -> tuple:
    with ctx.db.session() as s:
        frame = atoms_from_structure(s.get(Structure, task.structure_id))
    newest = ctx.store.latest()
    regrade = newest if newest is not None and newest.version != task.payload["version"] else None
    return (frame, task.payload["centers"], ctx.run.embedding, regrade)


def done(ctx: Context, task_id: int, candidates: list[Candidate]) -> None:
    from autopipe.steer.selection import select_candidates

    with ctx.db.session() as s:
        frame = s.get(Structure, s.get(Task, task_id).structure_id)
        frame_id, version = frame.id, frame.potential_version
        existing = [atoms_from_structure(r) for r in s.scalars(
            select(Structure).where(Structure.origin == Origin.embedded, Structure.selected.is_(True)))]
    core_now = {id(c.atoms): c.core_gamma_now for c in candidates}
    regamma = (lambda a: core_now[id(a)]) if any(c.core_gamma_now is not None for c in candidates) else None
    decisions = select_candidates([c.atoms for c in candidates], [c.gamma for c in candidates],
                                  threshold=ctx.run.otf.uncertainty_threshold, existing=existing, regamma=regamma)
    new_tasks = []
    with ctx.db.session() as s:
        for c, d in zip(candidates, decisions):
            row = structure_from_atoms(
                c.atoms, Origin.embedded, parent_id=frame_id, center_index=c.center, force_mask=c.masked,
                potential_version=version, selected=d.keep, selection_note=d.reason,
                info={k: v for k, v in c.atoms.info.items() if k.startswith("embedding_")},
            )
            s.add(row)
            s.flush()
            if d.keep:
                task = ctx.new_task(TaskKind.dft, structure_id=row.id)
                s.add(task)
                s.flush()
                new_tasks.append(task.id)
        t = s.get(Task, task_id)
        t.state, t.finished_at = TaskState.done, utcnow()
    ctx.push(*new_tasks)
    dropped = [d.reason for d in decisions if not d.keep]
    size = len(candidates[0].atoms) if candidates else 0
    ctx.progress.log(f"embedded {len(candidates)} sub-cell(s) of {size} atoms: {len(new_tasks)} to DFT"
                     + (f", dropped: {'; '.join(dropped)}" if dropped else ""))


def crashed(ctx: Context, task_id: int, error: str) -> None:
    ctx.progress.log(f"carving failed for task {task_id}: {error}")
