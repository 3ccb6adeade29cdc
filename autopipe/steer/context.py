"""What every part of the loop works with: configuration, database, potentials, layout,
Parsl apps, the priority dispatcher and the progress display; and what the handlers' ``args``
use to send work by value (:mod:`autopipe.transfer`): a task's scratch directory on its
worker, potentials and pseudopotentials as file bytes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from autopipe.db import Task, TaskKind
from autopipe.steer import tasks
from autopipe.steer.queue import PRIORITY

if TYPE_CHECKING:
    from autopipe.config.run import RunConfig
    from autopipe.config.site import SiteConfig
    from autopipe.db import Database
    from autopipe.layout import RunLayout
    from autopipe.potentials.store import PotentialStore
    from autopipe.steer.apps import Apps
    from autopipe.steer.live import Progress
    from autopipe.steer.queue import Dispatcher
    from autopipe.potentials.shipped import ShippedPotential
    from autopipe.transfer import FileSet, Scratch

#: ``args(ctx, task) -> tuple``: the app arguments of a task row, rebuilt from the database.
ArgsFn = Callable[["Context", Task], tuple]


@dataclass
class Context:
    """The loop's shared state. ``apps``, ``dispatcher`` and ``args`` are set once Parsl is up;
    ``args`` maps a task kind to the function that rebuilds its app arguments (the handlers)."""

    site: SiteConfig
    run: RunConfig
    db: Database
    store: PotentialStore
    layout: RunLayout
    progress: Progress
    apps: Apps | None = None
    dispatcher: Dispatcher | None = None
    args: Mapping[TaskKind, ArgsFn] = field(default_factory=dict)
    train_failures: int = 0  # consecutive failed fits in this process
    first_potential: str | None = None  # see RunView.first_potential
    limit_problem: str | None = None  # a blow-up limit the labels show to be below physics
    cannot_run: str | None = None  # work that can never be sent (Slurm refused a block, a payload too big)
    t0: float = field(default_factory=time.monotonic)
    cycle: int = 0  # the steering loop's pass: a batch of finished tasks is handled in one
    per_cycle: dict[str, tuple[int, Any]] = field(default_factory=dict, repr=False)  # see cached_per_cycle
    walkers_exist: bool = False  # the run's walkers are in the database (walkers.ensure_walkers)
    # Checkpoints just written here (by value), path -> MDState, so the next segment's arguments do
    # not read back what was written a moment ago (walkers.record_state / start_state).
    recent_states: dict[str, Any] = field(default_factory=dict, repr=False)
    sent_bytes: dict[int, int] = field(default_factory=dict, repr=False)  # task id -> its arguments pickled (push)
    _shipped: dict[int, ShippedPotential] = field(default_factory=dict, repr=False)  # version -> verified bytes

    def cached_per_cycle(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per loop pass: what many handlers of one batch ask for and what
        may be a pass out of date (the probe's spending). :meth:`forget` drops it early. Outside
        a running loop (``cycle`` 0: tools, tests) nothing is cached."""
        if self.cycle == 0:
            return compute()
        hit = self.per_cycle.get(key)
        if hit is not None and hit[0] == self.cycle:
            return hit[1]
        value = compute()
        self.per_cycle[key] = (self.cycle, value)
        return value

    def forget(self, key: str) -> None:
        self.per_cycle.pop(key, None)

    def new_task(self, kind: TaskKind, **fields: Any) -> Task:
        """A pending task row on the executor serving ``kind``; add it in the caller's transaction."""
        return tasks.new_row(kind, self.apps.executors[kind.value], **fields)

    def push(self, *task_ids: int) -> None:
        """Queue pending task rows with the dispatcher, their arguments rebuilt from the database.

        Arguments above the executor's bound are not sent: the task stays pending (a restart
        with a larger ``max_payload_mb`` runs it) and the run stops (see :meth:`cannot_send`)."""
        from autopipe.transfer import PayloadTooLarge, check_size

        for task_id in task_ids:
            with self.db.session() as s:
                task = s.get(Task, task_id)
                kind = task.kind
                # The row's priority: PRIORITY[kind], or lower for a probe's label (steer.probe).
                priority = PRIORITY[kind.value] if task.priority is None else task.priority
                app_args = self.args[kind](self, task)
            if kind is not TaskKind.embed:  # carving runs in this process: nothing is sent
                try:
                    # Kept here until the task finishes, then stored with where it ran (tasks.received):
                    # a write per push would cost a commit per task.
                    self.sent_bytes[task_id] = check_size(app_args, self.site.executor_for(kind.value).payload_bytes(),
                                                          f"the arguments of task {task_id} ({kind.value})")
                except PayloadTooLarge as exc:
                    self.cannot_send(str(exc))
                    continue
            label = self.apps.executors[kind.value]
            self.dispatcher.push(label, priority, task_id, getattr(self.apps, kind.value), *app_args)

    def cannot_send(self, why: str) -> None:
        """Work that can never run as configured: recorded once, and the run stops (stopping rules)."""
        if self.cannot_run is None:
            self.cannot_run = why
            self.progress.log(f"cannot run: {why}")
            self.db.record_event("cannot_run", why)

    # ------------------------------------------------------------------ by value, for the handlers' args
    def scratch(self, role: str, directory: Path) -> Scratch:
        """Where a task of ``role`` writes on its worker: ``directory``'s place (a path in the run's
        work directory) under the run's directory on that executor's workers."""
        from autopipe.transfer import Scratch

        ex = self.site.executor_for(role)
        return Scratch(self.layout.on_worker(ex.scratch, self.run.name), self.layout.relative(directory),
                       ex.payload_bytes())

    def potential(self, version: int) -> ShippedPotential:
        """Published potential ``version`` by value. A published version's files never change: they
        are read and checksum-verified once per process, not once per segment (10 ms each, most of
        a segment's argument building at 64 walkers: benchmarks/scale.py)."""
        from autopipe.potentials.shipped import ShippedPotential

        if (shipped := self._shipped.get(version)) is None:
            shipped = self._shipped[version] = ShippedPotential.of(self.store.get(version))
        return shipped

    def pseudopotentials(self) -> FileSet | None:
        """The UPF files pw.x uses for the run's elements, by value (read here, where the run file
        names them); ``None`` for the analytic oracles."""
        from autopipe.config.run import EspressoConfig
        from autopipe.dft.pseudo import resolve
        from autopipe.transfer import FileSet

        dft = self.run.dft
        if not isinstance(dft, EspressoConfig):
            return None
        chosen, _ = resolve(sorted(set(self.run.system.elements)), Path(dft.pseudo_dir), dft.pseudopotentials)
        return FileSet.read({el: Path(dft.pseudo_dir) / name for el, name in chosen.items()})

    def elapsed(self) -> float:
        return time.monotonic() - self.t0
