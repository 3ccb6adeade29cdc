"""Training rounds: fit on a worker (:func:`autopipe.potentials.trainer.fit_round`), publish here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from autopipe.db import PotentialStatus, Task, TaskState, Walker, WalkerStatus
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
    gated = ctx.run.train.gate and request.parent_version is not None
    try:
        # A gated version reaches no walker before the gate has judged it (not even after a crash here).
        pot = publish_round(ctx.store, request, fit, status=PotentialStatus.pending if gated else None)
    except Exception as exc:  # a taken version number, a full disk: the fit is lost, the run goes on
        _failed(ctx, task_id, request.version, f"publishing failed: {exc}", "")
        return
    ctx.train_failures = 0
    tasks.mark(ctx.db, task_id, TaskState.done)
    served = not gated or _gate(ctx, pot.version, pot.parent_version)
    from autopipe.steer.probe import rescore

    rescore(ctx)  # the new version's error on the probe's labels (rejected or not), for status and the report
    if not served:
        return
    rmse = pot.metrics.get("train_forces_rmse")
    ctx.progress.log(f"published v{pot.version} {pot.name} on {pot.n_train} structures"
                     + (f" (force RMSE {rmse * 1000:.1f} meV/Å)" if isinstance(rmse, float) else ""))
    ctx.db.record_event("publish", f"v{pot.version} {pot.name}", version=pot.version,
                        parent_version=pot.parent_version, walltime=fit.walltime)


def _gate(ctx: Context, version: int, parent: int | None) -> bool:
    """Judge a gated version (:func:`autopipe.steer.gate.judge`); True when walkers may have it.

    A rejected version stays in the store. Walkers that wait for a potential better than the
    parent go on with the parent, so the labels of the next round can come."""
    from autopipe.steer.gate import GATE_EVENT, GateDecision, judge, set_status

    try:
        decision, _ = judge(ctx.db, ctx.store, version, tolerance=ctx.run.train.gate_tolerance,
                            min_structures=ctx.run.train.gate_min_heldout)
    except Exception as exc:  # a potential that cannot be evaluated must not reach the walkers either
        decision = GateDecision(False, f"rejected: scoring it failed: {type(exc).__name__}: {exc}")
        set_status(ctx.db, version, PotentialStatus.rejected)
        ctx.db.record_event(GATE_EVENT, f"v{version} {decision.reason}", version=version, parent_version=parent,
                            accepted=False, tolerance=ctx.run.train.gate_tolerance)
    ctx.progress.log(f"gate: v{version} {decision.reason}")
    if decision.accepted:
        return True
    from autopipe.potentials.trainer import round_iterations

    tc = ctx.run.train
    iterations = round_iterations(tc, tc.continue_from_parent, after_rejection=True)
    start = f"from v{parent}" if tc.continue_from_parent else "from scratch"
    next_round = (f"walkers stay on v{parent}; the next round retrains {start} ({iterations} iterations) on every "
                  f"label so far but the held-out ones, once {tc.min_new_labels} label(s) newer than v{version}'s "
                  "arrive (or fewer when every walker waits or the DFT budget is spent)")
    with ctx.db.session() as s:
        released = []
        for w in s.scalars(select(Walker).where(Walker.status == WalkerStatus.waiting,
                                                Walker.waiting_for_version == parent)):
            released.append(w.index)
            w.status, w.waiting_for_version = WalkerStatus.running, None
            w.note = f"v{version} was rejected by the gate: going on with v{parent} at step {w.step}"
    ctx.db.record_event("gate_next", next_round, version=version, parent_version=parent, released_walkers=released,
                        iterations=iterations)
    ctx.progress.log(f"gate: {next_round}")
    return False


def crashed(ctx: Context, task_id: int, error: str) -> None:
    with ctx.db.session() as s:
        version = s.get(Task, task_id).payload.get("version")
    _failed(ctx, task_id, version, error, "")


def _failed(ctx: Context, task_id: int, version: int | None, error: str, log_tail: str) -> None:
    ctx.train_failures += 1
    tasks.mark(ctx.db, task_id, TaskState.failed, error=error)
    ctx.progress.log(f"training v{version} failed: {error}")
    ctx.db.record_event("train_failed", error, version=version, log_tail=log_tail)
