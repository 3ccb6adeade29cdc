"""When to train, and how a training task is made.

The policy, :func:`training_due`, is a pure function of a
:class:`~autopipe.steer.view.RunView`: version 1 is trained once its generated dataset is
labelled; later versions (unless ``train.retrain`` is off) once ``train.min_new_labels`` new labels exist, or earlier when
every walker waits and nothing else could bring more labels (the stall rule), within the
``stop.max_trainings`` budget; never two fits at once.

:func:`start_training` plans the round with
:func:`autopipe.potentials.trainer.plan_round` (label snapshot, parent, iterations) and
queues it (growing the basis when :mod:`autopipe.potentials.basis` says the fit is
basis-limited); the train handler's ``args`` packs the labels up to that snapshot for the
worker (:func:`autopipe.potentials.trainer.training_set`), the training app fits
(:func:`autopipe.potentials.trainer.fit_round`), and the handler publishes what comes back.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from autopipe.db import TaskKind
from autopipe.steer.view import read_view

if TYPE_CHECKING:
    from autopipe.config.run import StopConfig, TrainConfig
    from autopipe.potentials.trainer import TrainRequest
    from autopipe.steer.context import Context
    from autopipe.steer.view import RunView

#: The request fields a training task keeps in its payload; the rest comes from the run config.
_PAYLOAD = ("version", "name", "parent_version", "parent_yaml", "snapshot", "iterations", "workdir", "basis_functions",
            "grow")


def training_due(v: RunView, train: TrainConfig, stop: StopConfig) -> str | None:
    """Why a fit should start now, or ``None``."""
    if v.busy("train"):
        return None
    if v.newest_version is None:
        return "the initial dataset is labelled" if v.first_potential == "ready" else None
    if not train.retrain:
        return None
    if stop.max_trainings is not None and v.retrains >= stop.max_trainings:
        return None
    if v.new_labels >= train.min_new_labels:
        return f"{v.new_labels} new label(s)"
    from autopipe.steer.stopping import dft_budget_spent

    if v.new_labels and dft_budget_spent(v, stop) and not v.busy("dft"):
        return f"the DFT budget is spent: training on the {v.new_labels} label(s) it bought"
    if v.new_labels and v.all_waiting and not v.busy("dft", "embed"):
        return f"every walker waits and no more labels are coming: training on {v.new_labels}"
    return None


def start_training(ctx: Context) -> None:
    """Queue a training round when the policy says so."""
    from autopipe.potentials.trainer import plan_round

    reason = training_due(read_view(ctx), ctx.run.train, ctx.run.stop)
    if reason is None:
        return
    if ctx.store.latest() is None:
        request = plan_round(ctx.db, ctx.store, ctx.run, ctx.layout, version=1,
                             name=ctx.run.initial_potential.name, fresh=True)
    else:
        request = plan_round(ctx.db, ctx.store, ctx.run, ctx.layout)
    with ctx.db.session() as s:
        task = ctx.new_task(TaskKind.train, payload={k: getattr(request, k) for k in _PAYLOAD})
        s.add(task)
        s.flush()
        task_id = task.id
    ctx.push(task_id)
    cont = f", continuing from v{request.parent_version}" if request.parent_yaml else ""
    if request.grow:
        cont += f" with its basis grown to {request.basis_functions} functions per element"
    ctx.progress.log(f"training v{request.version} ({request.name}){cont}: {reason}")
    ctx.db.record_event("train", f"training v{request.version} started: {reason}", version=request.version,
                        snapshot=request.snapshot)


def request_from_payload(ctx: Context, payload: dict) -> TrainRequest:
    """Rebuild a task's :class:`TrainRequest` (payload + the run's training settings)."""
    from autopipe.potentials.trainer import TrainRequest

    known = {f.name for f in fields(TrainRequest)}
    return TrainRequest(**{k: v for k, v in payload.items() if k in known}, train_config=ctx.run.train,
                        elements=tuple(ctx.run.system.elements))
