"""DFT labels: run the run's code on a structure; store the label, whatever its status."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopipe.db import Structure, Task, TaskState, atoms_from_structure
from autopipe.steer import tasks

if TYPE_CHECKING:
    from autopipe.dft import LabelResult
    from autopipe.steer.context import Context


def args(ctx: Context, task: Task) -> tuple:
    """By value: the structure, the UPF files (pw.x); pw.x writes under the structure's own
    directory on the worker, so a resubmitted label finds the attempts that finished there."""
    with ctx.db.session() as s:
        atoms = atoms_from_structure(s.get(Structure, task.structure_id))
    launcher = list(ctx.site.executor_for("dft").dft_launcher)
    return (atoms, ctx.run.dft, ctx.pseudopotentials(), ctx.scratch("dft", ctx.layout.dft_dir(task.structure_id)),
            launcher)


def _structure_id(ctx: Context, task_id: int) -> int:
    with ctx.db.session() as s:
        return s.get(Task, task_id).structure_id


def done(ctx: Context, task_id: int, result: LabelResult) -> None:
    from autopipe.dft import store_label

    sid = _structure_id(ctx, task_id)
    # The label is committed first; on restart a task whose structure has a label counts as done.
    store_label(ctx.db, sid, result)
    if result.status == "done":
        from autopipe.steer.gate import mark_heldout

        if mark_heldout(ctx.db, sid, ctx.run.train.heldout_every):
            ctx.progress.log(f"structure {sid}: held out (every {ctx.run.train.heldout_every}th label; never trained on)")
            from autopipe.steer.threshold import update_threshold

            update_threshold(ctx)  # a held-out label is evidence for a force-error target's threshold
        from autopipe.steer import probe

        if probe.is_probe(ctx.db, sid):
            probe.rescore(ctx)  # every version's error on the probe's labels, for status and the report
    tasks.mark(ctx.db, task_id, TaskState.done, error=result.error)
    if ctx.run.embedding.strategy == "budget":
        from autopipe.steer import budget

        budget.maybe_decide(ctx)  # a calibration whose last label this was is judged now
    if result.status != "done":
        ctx.progress.log(f"DFT {result.status} for structure {sid}: {result.error}")
    else:
        check_blowup_limit(ctx, sid, result)


def check_blowup_limit(ctx: Context, structure_id: int, result: LabelResult) -> None:
    """A cell labelled because the MD "blew up" with low gamma, whose DFT forces exceed the
    blow-up limit too: the limit, not the potential, is wrong. Retraining cannot help (a
    better potential only gets closer to those forces), so the run is told to stop."""
    import numpy as np

    with ctx.db.session() as s:
        row = s.get(Structure, structure_id)
        frame = s.get(Structure, row.parent_id) if row.parent_id is not None else row
        if not (frame.info or {}).get("label_anyway"):
            return
        trusted = np.ones(row.n_atoms, bool)
        trusted[list(row.force_mask or [])] = False
    fmax = float(np.linalg.norm(np.asarray(result.forces)[trusted], axis=1).max())
    limit = ctx.run.md.max_force
    if fmax > limit:
        ctx.limit_problem = (f"md.max_force ({limit:g} eV/Å) is below the forces the labeller gives where the MD "
                             f"\"blew up\" ({fmax:.3g} eV/Å on structure {structure_id}): raise it; retraining cannot "
                             "remove forces that are physical")
        ctx.db.record_event("blowup_limit", ctx.limit_problem, structure_id=structure_id, max_force=fmax)


def crashed(ctx: Context, task_id: int, error: str) -> None:
    from autopipe.dft import LabelResult, store_label

    store_label(ctx.db, _structure_id(ctx, task_id), LabelResult(status="failed", code=str(ctx.run.dft.code),
                                                                 error=error))
    if ctx.run.embedding.strategy == "budget":
        from autopipe.steer import budget

        budget.maybe_decide(ctx)
