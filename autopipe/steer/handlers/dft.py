"""DFT labels: run the run's code on a structure; store the label, whatever its status."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopipe.db import Structure, Task, TaskState, atoms_from_structure
from autopipe.steer import tasks

if TYPE_CHECKING:
    from autopipe.dft import LabelResult
    from autopipe.steer.context import Context


def args(ctx: Context, task: Task) -> tuple:
    with ctx.db.session() as s:
        atoms = atoms_from_structure(s.get(Structure, task.structure_id))
    launcher = list(ctx.site.executor_for("dft").dft_launcher)
    return (atoms, ctx.run.dft, str(ctx.layout.dft_dir(task.structure_id)), launcher)


def _structure_id(ctx: Context, task_id: int) -> int:
    with ctx.db.session() as s:
        return s.get(Task, task_id).structure_id


def done(ctx: Context, task_id: int, result: LabelResult) -> None:
    from autopipe.dft import store_label

    sid = _structure_id(ctx, task_id)
    # The label is committed first; on restart a task whose structure has a label counts as done.
    store_label(ctx.db, sid, result)
    tasks.mark(ctx.db, task_id, TaskState.done, error=result.error)
    if result.status != "done":
        ctx.progress.log(f"DFT {result.status} for structure {sid}: {result.error}")


def crashed(ctx: Context, task_id: int, error: str) -> None:
    from autopipe.dft import LabelResult, store_label

    store_label(ctx.db, _structure_id(ctx, task_id), LabelResult(status="failed", code=str(ctx.run.dft.code),
                                                                 error=error))
