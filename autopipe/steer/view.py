"""One read of the run's state, for the policies that decide what to do next.

The training policy (:mod:`autopipe.steer.training`) and the stopping rules
(:mod:`autopipe.steer.stopping`) are pure functions of a :class:`RunView`, so each rule is
tested by building a view by hand; :func:`read_view` fills one from the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select

from autopipe.db import (Label, LabelStatus, Origin, Potential, PotentialStatus, Segment, Structure, Task, TaskState,
                         Walker, WalkerStatus)

if TYPE_CHECKING:
    from autopipe.steer.context import Context


@dataclass(frozen=True)
class WalkerView:
    """One walker: ``step`` of its last good checkpoint; ``last_max_gamma``: max gamma of its
    latest segment that reported one (None before the first)."""

    status: WalkerStatus
    step: int
    segments_since_trigger: int = 0
    waiting_for_version: int | None = None
    index: int = 0
    last_max_gamma: float | None = None


@dataclass(frozen=True)
class ProbeError:
    """The probe's measured force error of one version (eV/Å): ``rms`` over ``n_structures`` probe
    structures and its one-sided upper bound ``upper`` at ``confidence`` (None when not computed)."""

    version: int
    rms: float | None
    upper: float | None
    confidence: float | None
    n_structures: int


@dataclass(frozen=True)
class RunView:
    """What the policies look at (counts are over the whole run, all restarts included).

    ``active``: pending or running tasks per kind (``"md"``, ``"embed"``, ``"dft"``,
    ``"train"``); ``tasks``: tasks per (kind, state), all states; ``labels``: labels per status. ``new_labels``: successful labels newer than the newest potential's
    training snapshot, held-out ones left out (never trained on). ``dft_calls``: labels of structures the loop chose (everything but
    the generated initial dataset and the user's imported data); ``dft_seconds``: their DFT wall time. ``first_potential``: ``None`` once a potential exists,
    else ``"labelling"``, ``"ready"`` (train version 1 now) or why it is impossible.
    """

    elapsed: float = 0.0  # s since this process started
    newest_version: int | None = None
    retrains: int = 0  # published versions after the first
    walkers: tuple[WalkerView, ...] = ()
    active: dict[str, int] = field(default_factory=dict)
    tasks: dict[tuple[str, str], int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    new_labels: int = 0
    fit_owed: bool = False  # new labels exist and the run may still retrain on them
    dft_calls: int = 0
    dft_seconds: float = 0.0  # wall seconds of those labels (every attempt)
    train_failures: int = 0  # consecutive failed fits in this process
    first_potential: str | None = None
    idle: bool = False  # nothing queued or in flight in the dispatcher
    limit_problem: str | None = None  # a blow-up limit below the labeller's forces (see handlers.dft)
    cannot_run: str | None = None  # work that can never be sent (Context.cannot_send)
    probe_error: ProbeError | None = None  # the newest served version's, from the last probe_scores event

    def busy(self, *kinds: str) -> bool:
        return any(self.active.get(k, 0) for k in kinds)

    @property
    def all_waiting(self) -> bool:
        """Every walker still going waits for a potential newer than the newest one."""
        from autopipe.steer.walkers import all_waiting

        return all_waiting(self.walkers, self.newest_version)


def read_view(ctx: Context, *, gammas: bool = False) -> RunView:
    """Fill a :class:`RunView` from the database and the loop's context. Each walker's
    ``last_max_gamma`` only with ``gammas`` (the live display): it needs a pass over every
    segment of the run, which the stopping and training rules, read every loop pass, do not."""
    with ctx.db.session() as s:
        # The version walkers use: gate-rejected and rolled-back versions are not served.
        newest = s.scalar(select(func.max(Potential.version)).where(or_(
            Potential.status.is_(None), Potential.status == PotentialStatus.served)))
        n_versions = int(s.scalar(select(func.count()).select_from(Potential)) or 0)
        snapshot = s.scalar(select(Potential.last_label_id).order_by(Potential.version.desc()).limit(1)) or 0
        last_gamma = {}
        if gammas:
            latest = select(func.max(Segment.id)).where(Segment.max_gamma.is_not(None)).group_by(Segment.walker_id)
            last_gamma = dict(s.execute(select(Segment.walker_id, Segment.max_gamma).where(Segment.id.in_(latest))).all())
        # Columns, not ORM objects: read every pass, this was half of the view's cost at 128 walkers.
        walkers = tuple(WalkerView(status, step, since, waiting, index, last_gamma.get(wid))
                        for wid, status, step, since, waiting, index in s.execute(
                            select(Walker.id, Walker.status, Walker.step, Walker.segments_since_trigger,
                                   Walker.waiting_for_version, Walker.index).order_by(Walker.index)))
        tasks = {(k.value, st.value): int(n) for k, st, n in s.execute(
            select(Task.kind, Task.state, func.count()).group_by(Task.kind, Task.state)).all()}
        labels = {st.value: int(n) for st, n in s.execute(
            select(Label.status, func.count()).group_by(Label.status)).all()}
        # Held-out labels are never trained on: they cannot make a retrain worth its cost.
        new_labels = s.scalar(select(func.count()).select_from(Label).join(Structure).where(
            Label.status == LabelStatus.done, Label.id > snapshot, Structure.heldout.is_(None)))
        dft_calls, dft_seconds = s.execute(select(func.count(), func.sum(Label.walltime)).select_from(Label).join(
            Structure).where(Structure.origin.not_in([Origin.generated, Origin.imported]))).one()
    return RunView(
        elapsed=time.monotonic() - ctx.t0, newest_version=newest, retrains=max(n_versions - 1, 0), walkers=walkers,
        active=_active(tasks), tasks=tasks, labels=labels, new_labels=int(new_labels or 0),
        fit_owed=bool(new_labels) and newest is not None and ctx.run.train.retrain and (
            ctx.run.stop.max_trainings is None or max(n_versions - 1, 0) < ctx.run.stop.max_trainings),
        dft_calls=int(dft_calls or 0), dft_seconds=float(dft_seconds or 0.0), train_failures=ctx.train_failures,
        first_potential=None if newest is not None else ctx.first_potential,
        idle=ctx.dispatcher.idle() if ctx.dispatcher is not None else True, limit_problem=ctx.limit_problem,
        cannot_run=ctx.cannot_run, probe_error=_probe_error(ctx, newest),
    )


def _probe_error(ctx: Context, version: int | None) -> ProbeError | None:
    """``version``'s entry of the last ``probe_scores`` event (:func:`autopipe.steer.probe.rescore`)."""
    from autopipe.steer.probe import SCORES_EVENT

    if version is None:
        return None
    ev = ctx.db.last_event(SCORES_EVENT)
    entry = next((v for v in (ev.data or {}).get("versions", []) if v.get("version") == version), None) if ev else None
    if entry is None:
        return None
    return ProbeError(version, entry.get("rms"), entry.get("upper"), entry.get("upper_confidence"),
                      int(entry.get("n_structures") or 0))


def _active(tasks: dict[tuple[str, str], int]) -> dict[str, int]:
    """Pending or running tasks per kind, from the counts per (kind, state)."""
    busy = (TaskState.pending.value, TaskState.running.value)
    out: dict[str, int] = {}
    for (kind, state), n in tasks.items():
        if state in busy:
            out[kind] = out.get(kind, 0) + n
    return out
