"""Running an external program in its own directory under its own timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from autopipe.errors import AutopipeError

# Between SIGTERM and SIGKILL: mpirun forwards SIGTERM to its ranks if given a moment.
_GRACE = 2.0


@dataclass(frozen=True)
class RunOutcome:
    """How a program run ended: exit code (``None`` if killed on timeout) and wall time (s).
    ``reused``: the run happened earlier and its files were read instead of running again."""

    returncode: int | None
    timed_out: bool
    walltime: float
    reused: bool = False


def _kill_group(pgid: int, proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, give it a moment, then SIGKILL whatever is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=_GRACE)
    except subprocess.TimeoutExpired:
        pass
    # Children may ignore SIGTERM or outlive the leader: finish the group regardless.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(argv: list[str], cwd: Path, *, timeout: float, stdout: Path, stderr: Path, env: dict[str, str] | None = None) -> RunOutcome:
    """Run ``argv`` in ``cwd``, writing its output to files, killing it after ``timeout`` s.

    The program gets its own process group (session) so that the timeout kills
    everything it started (mpirun ranks, shell children), not just the leader.
    Parsl's app walltime does not do this, hence a timeout here. Raises
    :class:`AutopipeError` when the executable cannot be started at all (a
    configuration error that no retry fixes).
    """
    start = time.monotonic()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise AutopipeError(f"cannot start {argv[0]!r}: {exc.strerror or exc}.") from None
        pgid = proc.pid  # start_new_session makes the child its group leader
        try:
            returncode: int | None = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(pgid, proc)
            returncode, timed_out = None, True
        except BaseException:
            # KeyboardInterrupt or a Parsl worker shutting down: leave no orphans behind.
            _kill_group(pgid, proc)
            raise
        else:
            # A finished leader may leave background children in its group; they are ours.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return RunOutcome(returncode=returncode, timed_out=timed_out, walltime=time.monotonic() - start)
