"""A stand-in Globus Compute endpoint: runs tasks serialised by the SDK, in worker processes.

Started by :func:`tests.globus_standin.make_endpoint_standin` as
``python -m tests.globus_endpoint N`` inside a mount namespace of its own (the run's work
directory hidden, read-only and empty; its scratch a private tmpfs). It reads tasks from
stdin and writes results to stdout, each a header line ``<id> <kind> <length>`` and then
``length`` characters:

* in: ``<id> task <n>`` + the SDK's packed buffer (function, args, kwargs, each serialised by
  ``ComputeSerializer``), as the SDK sends it to the service;
* out: ``<id> result <n>`` + the result serialised by ``ComputeSerializer``, or
  ``<id> error <n>`` + the remote traceback, as an endpoint reports a failed task.

Each task runs in one of ``N`` worker processes (spawned, so they share this namespace but
nothing of the steering process's memory).
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ProcessPoolExecutor


def execute(packed: str) -> tuple[str, str]:
    """Deserialise with the SDK, run, serialise the result with the SDK: ("result"|"error", text)."""
    import traceback

    from globus_compute_sdk.serialize import ComputeSerializer

    serde = ComputeSerializer()
    try:
        fn, args, kwargs = serde.unpack_and_deserialize(packed)
        return "result", serde.serialize(fn(*args, **kwargs))
    except BaseException:  # an endpoint reports every failure as the remote traceback
        return "error", traceback.format_exc()


def write(lock: threading.Lock, task_id: str, kind: str, text: str) -> None:
    with lock:
        sys.stdout.write(f"{task_id} {kind} {len(text)}\n{text}")
        sys.stdout.flush()


def main(workers: int) -> None:
    import multiprocessing

    for stream in (sys.stdin, sys.stdout):  # lengths count characters: no newline translation
        stream.reconfigure(encoding="utf-8", newline="")
    lock = threading.Lock()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def deliver(task_id: str, fut) -> None:
        try:
            kind, text = fut.result()
        except BaseException as exc:  # a worker process died
            kind, text = "error", f"worker process lost: {exc!r}"
        write(lock, task_id, kind, text)

    while True:
        header = sys.stdin.readline()
        if not header:
            break
        task_id, _, n = header.split()
        packed = sys.stdin.read(int(n))
        fut = pool.submit(execute, packed)
        fut.add_done_callback(lambda f, t=task_id: deliver(t, f))
    pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
