"""The batch scheduler as the steering process sees it through Parsl.

- :class:`PolledSlurmProvider`: Parsl's ``SlurmProvider`` with a settable ``squeue`` polling
  interval (Parsl fixes it at 60 s, so a cancelled block went unnoticed for up to a minute).
- :func:`retry_lost_workers`: a Parsl ``retry_handler`` that resubmits a task only when its
  worker or block was lost (``scancel``, node failure, end of walltime), never on the app's own
  error (those the loop records and handles).
- :func:`scheduler_refusal` / :func:`refusal_from_exception`: Slurm's own words when ``sbatch``
  refused a block (bad account, constraint, QOS, limits), as one line the loop can log and stop on.
- :func:`sbatch_test_only`: ask slurmctld whether it would accept an executor's block, without
  submitting anything (``autopipe check`` uses it when Slurm is reachable).

Imports Parsl at module import: import this module only where Parsl is needed anyway.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost
from parsl.jobs.states import JobState
from parsl.providers import SlurmProvider
from parsl.utils import wtime_to_minutes


class PolledSlurmProvider(SlurmProvider):
    """``SlurmProvider`` whose jobs are polled every ``status_polling_interval`` seconds."""

    def __init__(self, *args: Any, status_polling_interval: int = 60, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._polling_interval = int(status_polling_interval)

    @property
    def status_polling_interval(self) -> int:
        return self._polling_interval


# Parsl raises these when the worker process, or the whole worker pool of a block, went away.
LOST_WORKER_ERRORS = (ManagerLost, WorkerLost)


def retry_lost_workers(exc: BaseException, task_record: Any) -> float:
    """Parsl ``retry_handler``: cost 1 for a lost worker/block, otherwise more than any budget.

    With ``Config(retries=n)`` a task whose block was cancelled or ran out of walltime is
    resubmitted up to ``n`` times (to a new block); an exception raised by the app itself is
    returned to the caller at once.
    """
    if not isinstance(exc, LOST_WORKER_ERRORS):
        return 1e9
    # Parsl empties fail_history when it retries: keep why each try was lost for the loop's record.
    if task_record is not None:
        task_record.setdefault(LOST_TRIES, []).append(f"{type(exc).__name__}: {exc}")
    return 1.0


#: Key of the task record under which :func:`retry_lost_workers` lists the tries lost with their block.
LOST_TRIES = "autopipe_lost_tries"


# 'sbatch: error: Batch job submission failed: Invalid feature specification' (sbatch) and
# 'allocation failure: Invalid feature specification' (sbatch --test-only).
_SLURM_ERROR = re.compile(r"(?:sbatch: error:|allocation failure:)\s*(.+?)\s*(?:\\n|\n|'|\"|$)")
_GENERIC = ("Unspecified error",)


def slurm_errors(text: str) -> list[str]:
    """Slurm's own error messages in ``text`` (sbatch output, or a Parsl message quoting it).

    Generic follow-ups ('... Unspecified error' after a job_submit plugin's own message) are
    dropped when a more specific message is present; order is kept, repeats removed.
    """
    found: list[str] = []
    for m in _SLURM_ERROR.finditer(text):
        msg = m.group(1).strip()
        if msg and msg not in found:
            found.append(msg)
    specific = [m for m in found if not m.endswith(_GENERIC)]
    return specific or found


def _refusal_of(executor: Any) -> str | None:
    """Slurm's message for the first block of ``executor`` that sbatch refused, else None."""
    status = getattr(executor, "status_facade", None)
    if status is None:  # not a block-based executor (threads, Globus Compute)
        return None
    for _, st in sorted(status.items()):
        # FAILED when the submission failed; MISSING once a later poll has not found the job.
        if st.state in (JobState.FAILED, JobState.MISSING) and st.message:
            msgs = slurm_errors(st.message)
            if msgs:
                return "; ".join(msgs)
    exc = getattr(executor, "executor_exception", None)
    if exc is not None:
        msgs = slurm_errors(str(exc))
        if msgs:
            return "; ".join(msgs)
    return None


def scheduler_refusal(dfk: Any) -> str | None:
    """One line naming the executor and Slurm's message when sbatch refused one of its blocks.

    ``dfk`` is the loaded :class:`parsl.dataflow.dflow.DataFlowKernel`. Parsl keeps a refused
    block as FAILED (later MISSING) with sbatch's stderr in its message and, once every block
    it tried was refused (the first one, with ``min_blocks`` 0 or 1), puts the executor in a bad
    state: its running and future tasks fail with ``BadStateException`` (later submissions with
    ``TooManyJobFailuresError``). No block of it will ever start, so the loop should stop with
    this line instead of waiting.
    """
    for label, executor in dfk.executors.items():
        msg = _refusal_of(executor)
        if msg:
            return f"Slurm refused the job of executor {label!r}: {msg}"
    return None


def refusal_from_exception(exc: BaseException) -> str | None:
    """Slurm's message if a task failed because its executor's block was refused, else None."""
    msgs = slurm_errors(str(exc))
    return "; ".join(msgs) if msgs else None


def slurm_reachable(timeout: float = 10.0) -> bool:
    """True when ``sinfo`` exists here and the controller answers."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def sbatch_test_only(provider: SlurmProvider, timeout: float = 30.0) -> str | None:
    """Ask slurmctld whether it would accept a block of ``provider``; Slurm's refusal or None.

    The batch header is the one Parsl writes (nodes, time, tasks per node, then the provider's
    ``#SBATCH`` lines: account, QOS, constraint, partition, GPUs); ``sbatch --test-only``
    validates it (partition, constraint, limits, job_submit plugins) and submits nothing.
    """
    header = (
        "#!/bin/bash\n"
        f"#SBATCH --nodes={provider.nodes_per_block}\n"
        f"#SBATCH --time={wtime_to_minutes(provider.walltime)}\n"
        "#SBATCH --ntasks-per-node=1\n"
        f"{provider.scheduler_options}\ntrue\n"
    )
    with tempfile.TemporaryDirectory(prefix="autopipe-sbatch-") as tmp:
        script = Path(tmp) / "block.sh"
        script.write_text(header)
        try:
            out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                 timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return f"sbatch --test-only did not answer in {timeout:g} s"
    if out.returncode == 0:
        return None
    msgs = slurm_errors(out.stderr + "\n" + out.stdout)
    return "; ".join(msgs) if msgs else (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
