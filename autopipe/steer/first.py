"""Version 1 in the loop: act on :func:`autopipe.potentials.initial.next_step`.

An imported potential is published on the spot; a generated dataset gets one DFT task per
structure (priority as any DFT); once it is labelled the training policy trains version 1
with the same round as every later version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from autopipe.db import Task, TaskKind

if TYPE_CHECKING:
    from autopipe.steer.context import Context


def start_first_potential(ctx: Context) -> None:
    """Bring version 1 one step closer; sets ``ctx.first_potential`` for the policies."""
    from autopipe.potentials.initial import Impossible, NeedLabels, NeedTraining, Ready, next_step

    if ctx.store.latest() is not None:
        ctx.first_potential = None
        return
    step = next_step(ctx.db, ctx.store, ctx.run)
    if isinstance(step, Ready):
        ctx.first_potential = None
        pot = step.potential
        ctx.progress.log(f"imported {pot.name} as v{pot.version}")
        ctx.db.record_event("publish", f"imported {pot.name} as v{pot.version}", version=pot.version)
    elif isinstance(step, NeedTraining):
        ctx.first_potential = "ready"
    elif isinstance(step, Impossible):
        ctx.first_potential = step.reason
    elif isinstance(step, NeedLabels):
        ctx.first_potential = "labelling"
        with ctx.db.session() as s:
            have = set(s.scalars(select(Task.structure_id).where(Task.kind == TaskKind.dft,
                                                                  Task.structure_id.in_(step.structure_ids))))
            tasks = [ctx.new_task(TaskKind.dft, structure_id=sid) for sid in step.structure_ids if sid not in have]
            s.add_all(tasks)
            s.flush()
            ids = [t.id for t in tasks]
        if ids:
            ctx.push(*ids)
            ctx.progress.log(f"initial dataset: {len(ids)} generated structures sent to {ctx.run.dft.code}")
