"""MD walkers: their state machine, the rewind rule, and starting their segments.

A walker is ``running`` (a segment may start), ``waiting`` (for a potential newer than
``waiting_for_version``) or ``finished`` (reached the step budget, or retired after
repeated failures; ``error`` says which). The transitions are plain functions over
anything with a walker's attributes, so they are tested without a database or Parsl:

* :func:`wake`: a waiting walker resumes when a newer potential is published (hot-swap), or
  when a rollback withdrew the version it waits on;
* :func:`segment_due`: how many steps its next segment runs, or ``None``;
* :func:`after_completed`, :func:`after_triggered`, :func:`after_failed`,
  :func:`after_refused`: what a finished segment (or an uncarvable trigger frame) does to
  it. The rewind rule lives in :func:`after_triggered`: the walker resumes from the state
  at the segment's last gamma check below the threshold and waits for a better potential.
  ``note`` says in words why it waits or why it stopped (``autopipe status`` shows it).

:func:`ensure_walkers` and :func:`start_segments` apply them to the database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Iterable, Protocol

from sqlalchemy import func, select

from autopipe.db import Origin, Segment, SegmentStatus, TaskKind, Walker, WalkerStatus, structure_from_atoms

if TYPE_CHECKING:
    from autopipe.steer.context import Context


class WalkerLike(Protocol):
    status: WalkerStatus
    step: int
    checkpoint: str | None
    waiting_for_version: int | None
    segments_since_trigger: int
    failures: int
    error: str | None
    note: str | None


# ----------------------------------------------------------------------------- transitions


def wake(w: WalkerLike, newest_version: int, unserved: Collection[int] = ()) -> bool:
    """Resume a waiting walker once a potential newer than the one it waits on exists, or once the
    version it waits on is no longer served (``unserved``: a rollback withdrew it): it then goes on
    with ``newest_version``, the version walkers use now."""
    if w.status is not WalkerStatus.waiting:
        return False
    if newest_version > (w.waiting_for_version or 0):
        w.status, w.waiting_for_version = WalkerStatus.running, None
        w.note = f"hot-swapped to v{newest_version} at step {w.step}"
        return True
    if w.waiting_for_version in unserved:
        w.note = f"v{w.waiting_for_version} was withdrawn: going on with v{newest_version} at step {w.step}"
        w.status, w.waiting_for_version = WalkerStatus.running, None
        return True
    return False


def segment_due(w: WalkerLike, busy: bool, max_md_steps: int, segment_steps: int) -> int | None:
    """Steps of the walker's next segment, or ``None`` (not running, busy, or done: then finished)."""
    if w.status is not WalkerStatus.running or busy:
        return None
    if w.step >= max_md_steps:
        w.status = WalkerStatus.finished
        w.note = f"finished: reached {max_md_steps} MD steps"
        return None
    return min(segment_steps, max_md_steps - w.step)


def after_completed(w: WalkerLike, end_step: int, checkpoint: str) -> None:
    """A quiet segment: the walker moves on to its end state."""
    w.step, w.checkpoint, w.failures = end_step, checkpoint, 0
    w.segments_since_trigger += 1


def after_triggered(w: WalkerLike, version: int, trigger_step: int, rewind_step: int | None = None,
                    rewind_checkpoint: str | None = None) -> None:
    """The rewind rule: resume from the state at the last gamma check below the threshold
    (``rewind_step``/``rewind_checkpoint``, when the segment found it; else the walker keeps
    its last good state, the segment's start) and wait for a potential newer than ``version``."""
    if rewind_checkpoint is not None and rewind_step is not None and rewind_step >= w.step:
        w.step, w.checkpoint = rewind_step, rewind_checkpoint
    w.status, w.waiting_for_version = WalkerStatus.waiting, version
    w.segments_since_trigger, w.failures = 0, 0
    w.note = f"waits for a potential newer than v{version} (trigger at step {trigger_step}, resumes at step {w.step})"


def _failure(w: WalkerLike, error: str | None, max_failures: int) -> bool:
    """Count one failure; retire the walker at ``max_failures`` in a row. True when retired."""
    w.failures += 1
    w.error = error
    if w.failures >= max_failures:
        w.status = WalkerStatus.finished
        w.note = f"retired after {w.failures} failures in a row; last: {error}"
        return True
    return False


def after_failed(w: WalkerLike, version: int, error: str | None, max_failures: int) -> bool:
    """A failed segment: wait for a newer potential, or retire after ``max_failures`` in a row.
    Returns True when the walker was retired."""
    if _failure(w, error, max_failures):
        return True
    w.status, w.waiting_for_version = WalkerStatus.waiting, version
    w.note = f"waits for a potential newer than v{version} after a failed segment ({w.failures} in a row)"
    return False


def after_refused(w: WalkerLike, reason: str, max_failures: int) -> bool:
    """A trigger frame nothing could be labelled from: counts as a failed segment, but the walker
    goes on at once with the same potential (no label is coming). Returns True when retired."""
    if _failure(w, reason, max_failures):
        return True
    w.status, w.waiting_for_version = WalkerStatus.running, None
    w.note = f"going on with the same potential: {reason} ({w.failures} in a row)"
    return False


def all_waiting(walkers: Iterable[WalkerLike], newest_version: int | None) -> bool:
    """Every walker still going waits for a potential newer than the newest one."""
    going = [w for w in walkers if w.status is not WalkerStatus.finished]
    newest = newest_version or 0
    return bool(going) and all(
        w.status is WalkerStatus.waiting and newest <= (w.waiting_for_version or 0) for w in going)


# ----------------------------------------------------------------------------- database


def ensure_walkers(ctx: Context) -> None:
    """Create the run's walkers with their first checkpoints (once)."""
    with ctx.db.session() as s:
        if s.scalar(select(func.count()).select_from(Walker)):
            return
    from autopipe.generate import template_atoms
    from autopipe.md import initial_state, save_state

    atoms = template_atoms(ctx.run.system)
    for i in range(ctx.run.walkers.count):
        md = ctx.run.md.model_copy(update={"seed": ctx.run.md.seed + i})
        ck = save_state(ctx.layout.initial_checkpoint(i), initial_state(atoms, md))
        with ctx.db.session() as s:
            s.add(structure_from_atoms(atoms, Origin.initial, info={"walker": i}))
            s.add(Walker(index=i, status=WalkerStatus.running, step=0, checkpoint=str(ck)))
    ctx.progress.log(f"{ctx.run.walkers.count} walker(s) start with {len(atoms)} atoms")


def start_segments(ctx: Context) -> None:
    """Wake walkers a newer potential can serve and give every idle running walker a segment."""
    latest = ctx.store.latest()
    if latest is None:
        return
    ensure_walkers(ctx)
    stop = ctx.run.stop
    unserved = ctx.store.unserved()
    with ctx.db.session() as s:
        busy = set(s.scalars(select(Segment.walker_id).where(
            Segment.status.in_([SegmentStatus.pending, SegmentStatus.running]))))
        new_tasks = []
        for w in s.scalars(select(Walker).order_by(Walker.index)):
            if wake(w, latest.version, unserved):
                ctx.progress.log(f"walker {w.index}: hot-swap to v{latest.version}, resuming at step {w.step}")
            n_steps = segment_due(w, w.id in busy, stop.max_md_steps, ctx.run.md.segment_steps)
            if n_steps is None:
                continue
            number = s.scalar(select(func.coalesce(func.max(Segment.number), -1)).where(Segment.walker_id == w.id)) + 1
            seg = Segment(walker_id=w.id, number=number, potential_version=latest.version,
                          status=SegmentStatus.pending, start_step=w.step, start_checkpoint=w.checkpoint)
            s.add(seg)
            s.flush()
            task = ctx.new_task(TaskKind.md, segment_id=seg.id, payload={"n_steps": n_steps})
            s.add(task)
            s.flush()
            new_tasks.append(task.id)
    ctx.push(*new_tasks)
