"""Training rounds: fit on a worker (:func:`autopipe.potentials.trainer.fit_round`), publish here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autopipe.db import Task, TaskState
from autopipe.steer import tasks
from autopipe.steer.training import request_from_payload

if TYPE_CHECKING:
    from autopipe.potentials.fitoutput import FitOutput
    from autopipe.steer.context import Context


def args(ctx: Context, task: Task) -> tuple:
    """By value: the labels up to the round's snapshot packed as arrays, the parent's files."""
    from autopipe.potentials.trainer import training_set

    request = request_from_payload(ctx, task.payload)
    parent = ctx.potential(request.parent_version) if request.parent_yaml else None
    return (request, training_set(ctx.db, request), parent, ctx.scratch("train", Path(request.workdir)))


def done(ctx: Context, task_id: int, fit: FitOutput) -> None:
    from autopipe.potentials.trainer import publish_round

    with ctx.db.session() as s:
        request = request_from_payload(ctx, dict(s.get(Task, task_id).payload))
    if not fit.ok:
        _failed(ctx, task_id, request.version, fit.error or "failed", fit.log_tail)
        return
    try:
        pot = publish_round(ctx.store, request, fit)
    except Exception as exc:  # a taken version number, a full disk: the fit is lost, the run goes on
        _failed(ctx, task_id, request.version, f"publishing failed: {exc}", "")
        return
    ctx.train_failures = 0
    tasks.mark(ctx.db, task_id, TaskState.done)
    rmse = pot.metrics.get("train_forces_rmse")
    ctx.progress.log(f"published v{pot.version} {pot.name} on {pot.n_train} structures"
                     + (f" (force RMSE {rmse * 1000:.1f} meV/Å)" if isinstance(rmse, float) else ""))
    ctx.db.record_event("publish", f"v{pot.version} {pot.name}", version=pot.version,
                        parent_version=pot.parent_version, walltime=fit.walltime)


def crashed(ctx: Context, task_id: int, error: str) -> None:
    with ctx.db.session() as s:
        version = s.get(Task, task_id).payload.get("version")
    _failed(ctx, task_id, version, error, "")


def _failed(ctx: Context, task_id: int, version: int | None, error: str, log_tail: str) -> None:
    ctx.train_failures += 1
    tasks.mark(ctx.db, task_id, TaskState.failed, error=error)
    ctx.progress.log(f"training v{version} failed: {error}")
    ctx.db.record_event("train_failed", error, version=version, log_tail=log_tail)
