"""Local stand-ins for ``globus_compute_sdk.Executor``.

There is no network here (and no Globus login in CI), so the Globus Compute route is
exercised up to the SDK's boundary: Parsl's ``GlobusComputeExecutor`` gets a subclass of
the SDK's ``Executor`` that does not send tasks to the service.

* :func:`make_offline_globus_executor` runs each function in a local thread (the route's
  plumbing: Parsl, the executor boundary, resource specifications);
* :func:`make_endpoint_standin` runs each task as an endpoint would: serialised by the SDK,
  in a separate process that cannot see the run's work directory (apps by value).

Test-only: ``autopipe check`` validates Globus sites offline without them and says that no
endpoint was contacted.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


def make_offline_globus_executor(endpoint_id: str, max_workers: int = 2):
    """A ``globus_compute_sdk.Executor`` subclass instance that runs tasks locally."""
    from globus_compute_sdk import Executor

    class OfflineGlobusExecutor(Executor):  # type: ignore[misc]
        def __init__(self, endpoint_id: str, max_workers: int):  # no super(): it would build a Client
            self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="globus-standin")
            self._endpoint = endpoint_id
            self.submitted: list[dict[str, Any]] = []
            self._rs: dict | None = None
            self._uec: dict | None = None

        # The SDK exposes these as properties; Parsl reads and writes them around submit.
        endpoint_id = property(lambda self: self._endpoint)
        resource_specification = property(
            lambda self: self._rs, lambda self, v: setattr(self, "_rs", v)
        )
        user_endpoint_config = property(
            lambda self: self._uec, lambda self, v: setattr(self, "_uec", v)
        )

        def __repr__(self) -> str:
            return f"OfflineGlobusExecutor<ep_id:{self._endpoint}>"

        def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
            self.submitted.append(
                {"function": getattr(fn, "__name__", repr(fn)), "endpoint_id": self._endpoint,
                 "resource_specification": self._rs}
            )
            return self._pool.submit(fn, *args, **kwargs)

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

        def _get_result_watcher(self):
            return self._pool  # has the shutdown(wait, cancel_futures) Parsl calls

    return OfflineGlobusExecutor(endpoint_id, max_workers)


def make_endpoint_standin(endpoint_id: str, *, hidden: list[str], scratch: str, workers: int = 2):
    """A ``globus_compute_sdk.Executor`` subclass whose tasks run in a separate endpoint process.

    Every task goes through the SDK's own serialisation (``ComputeSerializer``: function, args
    and kwargs out, the result back) and runs in a worker process of ``tests.globus_endpoint``,
    started with ``unshare`` in a mount namespace where each directory of ``hidden`` is an
    empty read-only tmpfs (the run's work directory: reading a file there fails, writing fails)
    and ``scratch`` a private tmpfs that the steering process cannot see. Needs root.
    ``submitted`` records each task's function and its serialised size in bytes, ``results``
    the size of each result.
    """
    import io
    import itertools
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from globus_compute_sdk import Executor
    from globus_compute_sdk.errors import TaskExecutionFailed
    from globus_compute_sdk.serialize import ComputeSerializer

    root = Path(__file__).resolve().parents[1]
    mounts = [f"mount -t tmpfs -o ro,size=4k autopipe-hidden {shlex.quote(h)}" for h in hidden]
    mounts.append(f"mount -t tmpfs -o size=2g autopipe-scratch {shlex.quote(scratch)}")
    script = " && ".join([*mounts, f"cd {shlex.quote(scratch)}",
                          f"exec {shlex.quote(sys.executable)} -m tests.globus_endpoint {workers}"])

    class EndpointStandin(Executor):  # type: ignore[misc]
        def __init__(self) -> None:  # no super(): it would build a Client and log in
            self._endpoint = endpoint_id
            self._rs: dict | None = None
            self._uec: dict | None = None
            self.serde = ComputeSerializer()
            self.submitted: list[dict[str, Any]] = []
            self.results: list[int] = []
            self._futures: dict[str, Future] = {}
            self._ids = itertools.count()
            self._lock = threading.Lock()
            Path(scratch).mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(root)}
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
                                         start_new_session=True)
            # Lengths count characters: utf-8 both ways, no newline translation.
            self._in = io.TextIOWrapper(self.proc.stdin, encoding="utf-8", newline="")
            self._out = io.TextIOWrapper(self.proc.stdout, encoding="utf-8", newline="")
            self._reader = threading.Thread(target=self._read, daemon=True, name="globus-standin-results")
            self._reader.start()

        endpoint_id = property(lambda self: self._endpoint)
        resource_specification = property(lambda self: self._rs, lambda self, v: setattr(self, "_rs", v))
        user_endpoint_config = property(lambda self: self._uec, lambda self, v: setattr(self, "_uec", v))

        def __repr__(self) -> str:
            return f"EndpointStandin<ep_id:{self._endpoint}>"

        def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
            packed = self.serde.pack_buffers(
                [self.serde.serialize(fn), self.serde.serialize(args), self.serde.serialize(kwargs)])
            fut: Future = Future()
            with self._lock:
                task_id = str(next(self._ids))
                self._futures[task_id] = fut
                self.submitted.append({"function": getattr(fn, "__name__", repr(fn)), "bytes": len(packed)})
                self._in.write(f"{task_id} task {len(packed)}\n{packed}")
                self._in.flush()
            return fut

        def _read(self) -> None:
            out = self._out
            while header := out.readline():
                task_id, kind, n = header.split()
                text = out.read(int(n))
                fut = self._futures.pop(task_id)
                if kind == "result":
                    self.results.append(len(text))
                    fut.set_result(self.serde.deserialize(text))
                else:
                    fut.set_exception(TaskExecutionFailed(text))
            for fut in list(self._futures.values()):  # the endpoint went away
                if not fut.done():
                    fut.set_exception(TaskExecutionFailed("the endpoint process exited"))

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            if self.proc.poll() is None:
                self._in.close()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # the endpoint and its workers: one session
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()

        def _get_result_watcher(self):
            return self

    return EndpointStandin()
