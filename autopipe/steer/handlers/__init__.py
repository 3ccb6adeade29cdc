"""One handler per task kind, registered in :data:`HANDLERS`.

A handler knows three things about its kind of task:

* ``args(ctx, task)``: the app's arguments, rebuilt from the database (so a task resumed
  after a restart runs exactly as it was planned);
* ``done(ctx, task_id, result)``: what a returned result changes (rows, walkers, new tasks);
* ``crashed(ctx, task_id, error)``: what an app that raised on its last attempt leaves behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from autopipe.db import Task, TaskKind
from autopipe.steer.handlers import dft, embed, md, train

if TYPE_CHECKING:
    from autopipe.steer.context import Context


@dataclass(frozen=True)
class Handler:
    args: Callable[[Context, Task], tuple]
    done: Callable[[Context, int, Any], None]
    crashed: Callable[[Context, int, str], None]


HANDLERS: dict[TaskKind, Handler] = {
    TaskKind.md: Handler(md.args, md.done, md.crashed),
    TaskKind.embed: Handler(embed.args, embed.done, embed.crashed),
    TaskKind.dft: Handler(dft.args, dft.done, dft.crashed),
    TaskKind.train: Handler(train.args, train.done, train.crashed),
}
