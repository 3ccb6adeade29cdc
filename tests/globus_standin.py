"""A local stand-in for ``globus_compute_sdk.Executor``.

There is no network here (and no Globus login in CI), so the Globus Compute route is
exercised up to the SDK's boundary: Parsl's ``GlobusComputeExecutor`` gets this
subclass of the SDK's ``Executor``, which runs each function in a local thread
instead of sending it to an endpoint. Test-only: ``autopipe check`` validates Globus
sites offline without it and says that no endpoint was contacted.
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
