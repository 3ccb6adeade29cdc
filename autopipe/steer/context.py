"""What every part of the loop works with: configuration, database, potentials, layout,
Parsl apps, the priority dispatcher and the progress display."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
    t0: float = field(default_factory=time.monotonic)

    def new_task(self, kind: TaskKind, **fields: Any) -> Task:
        """A pending task row on the executor serving ``kind``; add it in the caller's transaction."""
        return tasks.new_row(kind, self.apps.executors[kind.value], **fields)

    def push(self, *task_ids: int) -> None:
        """Queue pending task rows with the dispatcher, their arguments rebuilt from the database."""
        for task_id in task_ids:
            with self.db.session() as s:
                task = s.get(Task, task_id)
                kind = task.kind
                app_args = self.args[kind](self, task)
            label = self.apps.executors[kind.value]
            self.dispatcher.push(label, PRIORITY[kind.value], task_id, getattr(self.apps, kind.value), *app_args)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0
