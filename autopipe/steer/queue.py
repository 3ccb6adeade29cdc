"""Per-executor priority queues in front of Parsl.

Parsl hands a task to an executor as soon as it is submitted, and most executors run
tasks in arrival order. To make DFT go first, the steering loop keeps its own queue per
executor and submits only while the executor has room (``capacity`` tasks in flight),
lowest priority number first. On a HighThroughputExecutor it also passes Parsl's
per-task ``priority``, so the interchange orders whatever it already holds the same way.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

# Lower runs first, as in Parsl's HTEX.
PRIORITY = {"embed": 0, "dft": 10, "train": 20, "md": 30}


@dataclass(order=True)
class Queued:
    priority: int
    seq: int
    key: Any = field(compare=False)  # what the caller wants back with the future (e.g. a task id)
    app: Callable[..., Future] = field(compare=False)
    args: tuple = field(compare=False, default=())
    kwargs: dict = field(compare=False, default_factory=dict)


class Dispatcher:
    """Holds tasks per executor and submits them in priority order when there is room.

    ``capacities`` maps executor label to the number of tasks kept in flight there;
    ``priority_aware`` is the set of labels whose apps accept
    ``parsl_resource_specification={"priority": p}`` (HighThroughputExecutors).
    """

    def __init__(self, capacities: dict[str, int], priority_aware: set[str] | None = None):
        self.capacities = dict(capacities)
        self.priority_aware = set(priority_aware or ())
        self._queues: dict[str, list[Queued]] = {label: [] for label in capacities}
        self._in_flight: dict[Future, tuple[str, Any]] = {}
        self._completed: dict[Future, float] = {}  # time.monotonic() when a submitted future finished
        self._seq = itertools.count()

    def push(self, executor: str, priority: int, key: Any, app: Callable[..., Future], *args, **kwargs) -> None:
        """Queue ``app(*args, **kwargs)`` for ``executor``; ``key`` comes back with its future."""
        heapq.heappush(self._queues[executor], Queued(priority, next(self._seq), key, app, args, kwargs))

    def pump(self) -> list[tuple[Any, Future]]:
        """Submit queued tasks while executors have room; returns the (key, future) pairs submitted."""
        started = []
        for label, heap in self._queues.items():
            while heap and self.running(label) < self.capacities[label]:
                q = heapq.heappop(heap)
                kwargs = dict(q.kwargs)
                if label in self.priority_aware:
                    kwargs["parsl_resource_specification"] = {"priority": q.priority}
                fut = q.app(*q.args, **kwargs)
                self._in_flight[fut] = (label, q.key)
                fut.add_done_callback(self._stamp)
                started.append((q.key, fut))
        return started

    def running(self, executor: str) -> int:
        return sum(1 for label, _ in self._in_flight.values() if label == executor)

    def queued(self, executor: str | None = None) -> list[Queued]:
        if executor is not None:
            return sorted(self._queues[executor])
        return sorted(q for heap in self._queues.values() for q in heap)

    def done(self) -> list[tuple[Any, Future]]:
        """Pop and return the (key, future) pairs that have finished."""
        finished = [(key, fut) for fut, (_, key) in self._in_flight.items() if fut.done()]
        for _, fut in finished:
            del self._in_flight[fut]
        return finished

    def _stamp(self, fut: Future) -> None:
        self._completed[fut] = time.monotonic()  # runs in the thread that completed it

    def waited(self, fut: Future) -> float:
        """Seconds since ``fut`` (returned by :meth:`done`) finished: how long it waited for its handler."""
        stamp = self._completed.pop(fut, None)
        return time.monotonic() - stamp if stamp is not None else 0.0

    def wait(self, timeout: float) -> None:
        """Block until a task in flight finishes, or ``timeout`` seconds pass."""
        if self._in_flight:
            concurrent.futures.wait(list(self._in_flight), timeout=timeout, return_when="FIRST_COMPLETED")
        else:
            time.sleep(min(timeout, 0.05))

    def in_flight(self) -> list[Any]:
        return [key for _, key in self._in_flight.values()]

    def idle(self) -> bool:
        return not self._in_flight and not any(self._queues.values())

    def clear_queued(self) -> list[Any]:
        """Drop every queued (not yet submitted) task; returns their keys."""
        keys = [q.key for heap in self._queues.values() for q in heap]
        for heap in self._queues.values():
            heap.clear()
        return keys
