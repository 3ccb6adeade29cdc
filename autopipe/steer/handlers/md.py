"""MD segments: run one from the walker's state; a trigger becomes a frame and an embed task.

The state travels by value and comes back by value: the checkpoints the walkers resume
from are written here, in the run's work directory, whatever executor ran the segment
(``Segment.trajectory`` names the trajectory file where the segment ran); or, where the md
executor has a ``shared_scratch``, by reference (see :mod:`autopipe.steer.walkers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopipe.db import Segment, SegmentStatus, Task, TaskState, Walker
from autopipe.db.models import utcnow
from autopipe.steer import walkers
from autopipe.steer.handlers import embed

if TYPE_CHECKING:
    from autopipe.md import SegmentResult
    from autopipe.steer.context import Context


def args(ctx: Context, task: Task) -> tuple:
    """The walker's state (by value, or by reference on a shared scratch: :func:`walkers.start_state`),
    the potential's files, how the worker carves a trigger frame and whether it carves a probe cell."""
    from autopipe.steer.probe import worker_request

    with ctx.db.session() as s:
        seg = s.get(Segment, task.segment_id)
        walker = s.get(Walker, seg.walker_id)
        workdir = ctx.layout.segment_dir(walker.index, seg.number)
        checkpoint, version, index, number = seg.start_checkpoint, seg.potential_version, walker.index, seg.number
    executor = ctx.site.executor_for("md")
    return (walkers.start_state(ctx, checkpoint, workdir), ctx.potential(version), ctx.run.md, ctx.run.otf,
            ctx.scratch("md", workdir), task.payload["n_steps"], list(executor.md_launcher),
            list(getattr(executor, "md_lammps_args", [])), embed.worker_plan(ctx),
            worker_request(ctx, walker=index, segment=number, version=version))


def done(ctx: Context, task_id: int, result: SegmentResult | None, error: str | None = None) -> None:
    """Record the segment and move its walker (see :mod:`autopipe.steer.walkers`)."""
    stored = None
    decisions = embed.precarved_decisions(ctx, result) if result is not None else None
    with ctx.db.session() as s:
        task = s.get(Task, task_id)
        seg = s.get(Segment, task.segment_id)
        w = s.get(Walker, seg.walker_id)
        if result is None:
            seg.status, seg.error = SegmentStatus.failed, error
        else:
            seg.status = SegmentStatus(result.status)
            seg.end_step, seg.max_gamma = result.end_step, result.max_gamma
            seg.gamma_trace, seg.thermo = result.gamma_trace, result.thermo
            seg.trajectory = str(result.trajectory) if result.trajectory else None
            seg.walltime, seg.error = result.walltime, result.error
        if seg.status is SegmentStatus.completed:
            walkers.after_completed(w, result.end_step, str(_save(ctx, w.index, seg.number, result.final_state)))
            seg.end_checkpoint = w.checkpoint
        elif seg.status is SegmentStatus.triggered:
            rewind = result.rewind_state
            ck = _save(ctx, w.index, seg.number, rewind) if rewind is not None and rewind.step > w.step else None
            walkers.after_triggered(w, seg.potential_version, result.end_step,
                                    rewind.step if ck else None, str(ck) if ck else None)
            seg.rewind_step, seg.note = w.step, result.note
            # The whole frame and an embed task, or the cells carved on the MD worker and the frame's record.
            stored = embed.store_trigger(ctx, s, seg, w, result, decisions)
        elif result is not None and result.failure == "refused":  # its checkpoint on scratch did not match
            walkers.after_refused_state(w, seg.potential_version, seg.error, walkers.previous_state(s, w),
                                        ctx.run.faults.segment_failures)
        else:
            walkers.after_failed(w, seg.potential_version, seg.error, ctx.run.faults.segment_failures)
        task.state, task.finished_at = (TaskState.done if result is not None else TaskState.failed), utcnow()
        idx, number, version, gmax, err, retired = (w.index, seg.number, seg.potential_version, seg.max_gamma,
                                                    seg.error, w.status.value == "finished")
        rewind_step = w.step
        status, seg_id = seg.status, seg.id
    if status is SegmentStatus.triggered:
        thr = ctx.run.otf.uncertainty_threshold
        lost = result.end_step - rewind_step
        ctx.progress.log(f"walker {idx} segment {number}: gamma {gmax:.1f} > {thr:g} at step {result.end_step} "
                         f"(v{version}); resumes at step {rewind_step} ({lost} steps discarded)"
                         + (f"; {result.note}" if result.note else ""))
        ctx.db.record_event("trigger", f"walker {idx} step {result.end_step}" + (f": {result.note}" if result.note else ""),
                            walker=idx, step=result.end_step, max_gamma=gmax, version=version,
                            structure_id=stored.frame_id, frame_route=stored.route, rewind_step=rewind_step,
                            discarded_steps=lost)
        embed.after_stored(ctx, stored, idx)
    elif status is SegmentStatus.failed:
        ctx.progress.log(f"walker {idx} segment {number} failed: {err}" + (" (walker retired)" if retired else ""))
    elif status is SegmentStatus.completed:
        # The potential called the whole segment safe: the false-negative probe may label its end
        # (the cell its MD worker carved, when the segment was asked for one).
        from autopipe.steer.probe import maybe_probe

        maybe_probe(ctx, walker=idx, segment=number, segment_id=seg_id, version=version, found=result.probe)
    if status in (SegmentStatus.completed, SegmentStatus.triggered):
        walkers.prune_checkpoints(ctx, idx)  # after the commit that names the new checkpoint


def crashed(ctx: Context, task_id: int, error: str) -> None:
    done(ctx, task_id, None, error=error)


def _save(ctx: Context, walker_index: int, number: int, state) -> str:
    """The checkpoint a returned state is kept as (:func:`walkers.record_state`): a file written here,
    in its segment's directory, or its reference when it stayed on the shared scratch."""
    return walkers.record_state(ctx, walker_index, number, state)
