"""The steering loop: start what can start, submit by priority, hand each finished task to
its handler, check the stopping rules. Repeat until a rule fires and nothing is in flight.

The database is the state (see :mod:`autopipe.steer.tasks`): a process killed at any
moment restarts with labels already done never recomputed, tasks left running resubmitted
and walkers resumed from their last good checkpoint. The parts, each in its own module:

* what can start: version 1 (:mod:`~autopipe.steer.first`), walker segments
  (:mod:`~autopipe.steer.walkers`), training rounds (:mod:`~autopipe.steer.training`);
* submission by priority, per executor: :mod:`~autopipe.steer.queue`;
* one handler per task kind: :mod:`~autopipe.steer.handlers`;
* the stopping rules: :mod:`~autopipe.steer.stopping`, over one read of the run's state
  (:mod:`~autopipe.steer.view`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from autopipe.db import Database, TaskKind, TaskState
from autopipe.errors import AutopipeError
from autopipe.layout import RunLayout, write_run_files
from autopipe.steer import tasks
from autopipe.steer.first import import_user_potential, start_first_potential
from autopipe.steer.handlers import HANDLERS
from autopipe.steer.stopping import stop_reason
from autopipe.steer.threshold import restore_threshold
from autopipe.steer.training import start_training
from autopipe.steer.view import read_view
from autopipe.steer.walkers import check_state_route, start_segments

log = logging.getLogger(__name__)

#: What can start, in this order, once per pass after something changed.
STARTERS = (start_first_potential, start_segments, start_training)


@dataclass
class LoopOutcome:
    stopped_because: str
    walltime: float  # s


class Steering:
    """One run of the loop over a site; create, then :meth:`run`."""

    def __init__(self, site, run, *, live: bool = False, parsl_kwargs: dict[str, Any] | None = None,
                 functions: dict[str, Any] | None = None):
        from autopipe.potentials import PotentialStore
        from autopipe.steer.context import Context
        from autopipe.steer.live import Progress

        layout = RunLayout(run.workdir)
        layout.root.mkdir(parents=True, exist_ok=True)
        db = Database(run.database_url())
        self.ctx = Context(site=site, run=run, db=db, store=PotentialStore(db, layout.potentials), layout=layout,
                           progress=Progress(live=live), args={k: h.args for k, h in HANDLERS.items()})
        self.parsl_kwargs = parsl_kwargs or {}
        self.busy = 0.0  # s the steering process spent working (not waiting for results)
        self.busy_cpu = 0.0  # CPU s of the loop's thread in that time (busy minus time descheduled on a loaded host)
        # s from each finished task's completion to its handler's start, with its kind, in handling order
        self.waits: list[tuple[str, float]] = []
        self.functions = functions  # stand-ins for worker functions (see apps.build_apps), or None
        self.dfk = None  # Parsl's DataFlowKernel while the loop runs

    def run(self) -> LoopOutcome:
        """Run (or resume) until a stopping rule fires; returns why and how long it took."""
        import parsl

        from autopipe.steer.apps import STEERING, build_apps, steering_executor
        from autopipe.steer.live import log_to_file
        from autopipe.steer.queue import Dispatcher

        ctx = self.ctx
        if any(e.label == STEERING for e in ctx.site.executors):
            raise AutopipeError(f"site {ctx.site.name!r}: the executor label {STEERING!r} is reserved for autopipe")
        check_state_route(ctx.site, ctx.run)  # a walker state that cannot travel: refused before anything runs
        log_to_file(ctx.layout.log_file)
        import_user_potential(ctx)
        write_run_files(ctx.layout, ctx.run, ctx.site.name)
        restore_threshold(ctx)  # the threshold a force-error target last set (steer.threshold), not the file's
        ctx.db.record_event("start", f"run {ctx.run.name!r} on site {ctx.site.name!r}")
        config = ctx.site.to_parsl_config(ctx.layout.parsl, extra_executors=(steering_executor(),),
                                          **self.parsl_kwargs)
        dfk = self.dfk = parsl.load(config)
        try:
            ctx.apps = build_apps(ctx.site, self.functions)
            caps = {e.label: e.slots() for e in ctx.site.executors}
            aware = {e.label for e in ctx.site.executors if e.kind in ("htex-local", "slurm")}
            ctx.dispatcher = Dispatcher({**caps, STEERING: 1}, aware)
            ctx.push(*tasks.reconcile(ctx.db))
            reason = self._cycle()
        finally:
            ctx.progress.stop()
            dfk.cleanup()
            parsl.clear()
        ctx.db.record_event("stop", reason, walltime=ctx.elapsed(), busy=self.busy, busy_cpu=self.busy_cpu,
                            handled=len(self.waits),
                            max_handler_wait=max((w for _, w in self.waits), default=0.0))
        ctx.progress.log(f"stopped: {reason}")
        return LoopOutcome(stopped_because=reason, walltime=ctx.elapsed())

    def _cycle(self) -> str:
        """The loop itself. The database is read only after something changed (a task
        finished): between events the loop sleeps on the futures in flight, so steering
        costs little next to the work (see benchmarks/loop.py)."""
        ctx, dispatcher = self.ctx, self.ctx.dispatcher
        stopping: str | None = None
        changed = True
        while True:
            tick, tick_cpu = time.perf_counter(), time.thread_time()
            ctx.cycle += 1
            if stopping is None and changed:
                for start in STARTERS:
                    start(ctx)
                tasks.mark_running(ctx.db, [task_id for task_id, _ in dispatcher.pump()])
                if dispatcher.idle():  # nothing runs and nothing could start: nothing will change
                    stopping = self._stop_reason() or "nothing left to run (see `autopipe status`)"
                    ctx.progress.log(f"stopping: {stopping}")
            finished = dispatcher.done()
            for task_id, future in finished:
                self._finish(task_id, future)
            changed = bool(finished)
            if ctx.progress.due():
                from autopipe.steer.live import snapshot

                ctx.progress.update(snapshot(read_view(ctx, gammas=True), ctx.run))
            if stopping is None and (changed or self._out_of_time() or ctx.cannot_run):
                stopping = self._stop_reason()
                if stopping:
                    ctx.progress.log(f"stopping: {stopping}; waiting for {len(dispatcher.in_flight())} "
                                     "running task(s)")
                    dispatcher.clear_queued()  # they stay pending in the database for the next start
            self.busy += time.perf_counter() - tick
            self.busy_cpu += time.thread_time() - tick_cpu
            if stopping and not dispatcher.in_flight():
                return stopping
            if not changed:
                dispatcher.wait(timeout=1.0)

    def _stop_reason(self) -> str | None:
        from autopipe.scheduler import scheduler_refusal

        if self.ctx.cannot_run is None and self.dfk is not None and (refused := scheduler_refusal(self.dfk)):
            self.ctx.cannot_send(refused)
        return stop_reason(read_view(self.ctx), self.ctx.run.stop)

    def _out_of_time(self) -> bool:
        cap = self.ctx.run.stop.max_walltime
        return cap is not None and self.ctx.elapsed() >= cap

    def _finish(self, task_id: int, future) -> None:
        """Hand a finished task to its kind's handler; resubmit an app that crashed while it has attempts left."""
        ctx = self.ctx
        kind: TaskKind = tasks.kind_of(ctx.db, task_id)
        self.waits.append((kind.value, ctx.dispatcher.waited(future)))
        handler = HANDLERS[kind]
        try:
            result = tasks.received(ctx.db, task_id, future, ctx.sent_bytes.pop(task_id, None))
        except Exception as exc:  # the app itself raised (not a failed label or segment)
            msg = f"{type(exc).__name__}: {exc}".strip()
            if (blocked := self._blocked(exc)) is not None:
                # No retry can help: the task waits, pending, for a restart with a fixed site file.
                tasks.mark(ctx.db, task_id, TaskState.pending, error=msg)
                ctx.cannot_send(blocked)
            elif tasks.should_retry(ctx.db, task_id, ctx.run.faults.app_attempts):
                ctx.progress.log(f"task {task_id} ({kind.value}) crashed, retrying: {msg}")
                tasks.mark(ctx.db, task_id, TaskState.pending, error=msg)
                ctx.push(task_id)
            else:
                tasks.mark(ctx.db, task_id, TaskState.failed, error=msg)
                ctx.progress.log(f"task {task_id} ({kind.value}) failed: {msg}")
                handler.crashed(ctx, task_id, msg)
            return
        handler.done(ctx, task_id, result)

    def _blocked(self, exc: Exception) -> str | None:
        """One line when ``exc`` says the work can never run as configured: its result exceeded
        the executor's bound, or Slurm refused the executor's blocks (in Slurm's words)."""
        from autopipe.scheduler import refusal_from_exception, scheduler_refusal
        from autopipe.transfer import PayloadTooLarge

        if isinstance(exc, PayloadTooLarge):
            return str(exc)
        if (msg := refusal_from_exception(exc)) is not None:
            return scheduler_refusal(self.dfk) or f"Slurm refused a block: {msg}"
        return None


def run_loop(site, run, *, live: bool = True, parsl_kwargs: dict[str, Any] | None = None) -> LoopOutcome:
    """Run (or resume) the loop until a stopping rule fires."""
    return Steering(site, run, live=live, parsl_kwargs=parsl_kwargs).run()
