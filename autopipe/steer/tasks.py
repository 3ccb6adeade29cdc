"""Task rows: creating them, moving them through their states, reconciling after a restart.

Every unit of work is a :class:`~autopipe.db.Task` row that moves ``pending -> running ->
done | failed``. A row is created in the same transaction as the rows it refers to (a
segment, a structure), so a process killed in between never leaves work nothing will pick
up; it is marked done in the transaction that stores its output, or right after (a DFT
task whose label was committed counts as done on restart).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select

from autopipe.db import Database, Label, Segment, SegmentStatus, Task, TaskKind, TaskState
from autopipe.db.models import utcnow
from autopipe.steer.queue import PRIORITY

log = logging.getLogger(__name__)

#: Kinds whose crashed app is not resubmitted as is: a fit is planned afresh instead.
NOT_RETRIED = frozenset({TaskKind.train})


def new_row(kind: TaskKind, executor: str, **fields) -> Task:
    """A pending task row for ``executor``; add it in the transaction that adds its inputs."""
    return Task(kind=kind, executor=executor, priority=PRIORITY[kind.value], state=TaskState.pending, **fields)


def mark(db: Database, task_id: int, state: TaskState, error: str | None = None) -> None:
    """Move a task to ``state``: ``running`` counts an attempt, ``done``/``failed`` stamp the end."""
    with db.session() as s:
        t = s.get(Task, task_id)
        t.state = state
        if state is TaskState.running:
            t.started_at, t.attempts = utcnow(), t.attempts + 1
            if t.segment_id is not None:
                s.get(Segment, t.segment_id).status = SegmentStatus.running
        if state in (TaskState.done, TaskState.failed):
            t.finished_at = utcnow()
        t.error = error


def mark_running(db: Database, task_ids: list[int]) -> None:
    """:func:`mark` ``running`` for many tasks in one transaction (a pass of the loop sends
    dozens at 100 walkers: one transaction each was 4 queries per task)."""
    if not task_ids:
        return
    now = utcnow()
    with db.session() as s:
        rows = list(s.scalars(select(Task).where(Task.id.in_(task_ids))))
        segments = {t.segment_id for t in rows if t.segment_id is not None}
        for t in rows:
            t.state, t.started_at, t.attempts, t.error = TaskState.running, now, t.attempts + 1, None
        if segments:
            for seg in s.scalars(select(Segment).where(Segment.id.in_(segments))):
                seg.status = SegmentStatus.running


def kind_of(db: Database, task_id: int) -> TaskKind:
    with db.session() as s:
        return s.get(Task, task_id).kind


def should_retry(db: Database, task_id: int, max_attempts: int) -> bool:
    """True when a crashed task may be resubmitted (fewer than ``max_attempts`` so far, kind retried)."""
    with db.session() as s:
        t = s.get(Task, task_id)
        return t.kind not in NOT_RETRIED and t.attempts < max_attempts


def reconcile(db: Database) -> list[int]:
    """Tidy what a killed process left ``pending``/``running``; returns the ids to resubmit.

    A DFT task whose label was committed is done (its work is never redone); a fit cut off
    mid-way is failed (the training policy plans a new round with a new snapshot); every
    other task goes back to pending, and so do segments left running.
    """
    with db.session() as s:
        stale = list(s.scalars(select(Task).where(Task.state.in_([TaskState.pending, TaskState.running]))
                               .order_by(Task.id)))
        labelled = set(s.scalars(select(Label.structure_id)))
        requeue = []
        for t in stale:
            if t.kind is TaskKind.dft and t.structure_id in labelled:
                t.state, t.finished_at = TaskState.done, utcnow()
            elif t.kind is TaskKind.train:
                t.state, t.error, t.finished_at = TaskState.failed, "interrupted by a restart", utcnow()
            else:
                if t.state is TaskState.running:
                    log.info("resubmitting task %d (%s) left running", t.id, t.kind.value)
                t.state = TaskState.pending
                requeue.append(t.id)
        for seg in s.scalars(select(Segment).where(Segment.status == SegmentStatus.running)):
            seg.status = SegmentStatus.pending
    if stale:
        db.record_event("resume", f"requeued {len(requeue)} task(s) left by an earlier process")
    return requeue


def received(db: Database, task_id: int, future, sent_bytes: int | None = None) -> Any:
    """The value a finished app returned; where and when it ran goes into the task's
    ``payload["ran"]`` (host, Slurm job and partition, worker start/end as UTC ISO times,
    Parsl's ``tries`` and why the earlier ones were lost: their worker or block went away),
    with what travelled: ``sent_bytes`` (its arguments pickled, when this process sent them)
    and ``result_bytes`` (its answer pickled).
    Raises what the app raised, or :class:`~autopipe.transfer.PayloadTooLarge` when its result
    exceeded the bound."""
    from autopipe.scheduler import LOST_TRIES
    from autopipe.steer.work import Ran
    from autopipe.transfer import PayloadTooLarge

    ran = future.result()
    if not isinstance(ran, Ran):  # carving, in this process
        return ran
    record = getattr(future, "task_record", None) or {}
    utc = dt.timezone.utc
    info = {"host": ran.host, "slurm_job": ran.slurm_job, "slurm_partition": ran.slurm_partition,
            "started": dt.datetime.fromtimestamp(ran.started, utc).isoformat(),
            "finished": dt.datetime.fromtimestamp(ran.finished, utc).isoformat(),
            "tries": int(record.get("fail_count", 0)) + 1,
            "lost": [str(e).splitlines()[0][:300] for e in record.get(LOST_TRIES, [])],
            "sent_bytes": sent_bytes, "result_bytes": ran.result_bytes}
    with db.session() as s:
        t = s.get(Task, task_id)
        t.payload = {**(t.payload or {}), "ran": info}
    if info["tries"] > 1:
        db.record_event("retried", f"task {task_id} ran {info['tries']} times: {'; '.join(info['lost'])}",
                        task=task_id, slurm_job=ran.slurm_job, lost=info["lost"])
    if ran.too_large:
        raise PayloadTooLarge(ran.too_large)
    return ran.value
