"""A warm trainer: pacemaker fits in a long-lived process that keeps TensorFlow loaded.

A cold fit (:func:`autopipe.potentials.pacemaker.run_pacemaker`) starts the ``pacemaker``
program: Python, pyace, TensorFlow and the traced loss graph are paid again by every
retrain (about a third of a small retrain). Here the process that runs fits (a Parsl
worker, or the steering process on the threads executor) starts one trainer process on
first use (:mod:`autopipe.potentials.warm_worker`) and sends it every later fit over a
socket pair; only the first fit of a run pays start-up and graph tracing. The trainer runs
pacemaker's own CLI entry point on the same ``input.yaml`` and ``-p`` arguments as the cold
route, so the fits are the same (see the worker's docstring for what is kept and why that
is sound).

Failures never take the caller down:

* pacemaker raises (bad data, corrupted parent potential): a failed :class:`FitOutput`;
  the trainer stays up.
* the trainer process dies (segfault, OOM killer, killed by hand): it is reaped, and the
  fit is retried once on a fresh trainer; a second death gives a failed :class:`FitOutput`
  with the error and the log tail.
* the fit outlasts ``TrainConfig.timeout`` (each attempt gets the whole timeout): the
  trainer's process group is killed and reaped, and the fit fails; the next fit starts a
  fresh trainer.

The trainer leaves when its parent closes the connection (at interpreter exit,
:func:`shutdown`), and on its own within a second if its parent dies without closing.
Idle trainers are pooled per process, so concurrent fits each get their own trainer.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from autopipe.config.run import TrainConfig
    from autopipe.potentials.fitoutput import FitOutput

#: After a trainer process dies mid-fit, retry the fit this many times on a fresh one.
RETRIES_AFTER_CRASH = 1
#: Idle trainers kept per process (each holds TensorFlow: a few hundred MB).
MAX_IDLE = 2
#: Seconds a trainer gets to leave after ``stop`` before it is killed.
STOP_GRACE = 5.0


class TrainerDied(RuntimeError):
    """The trainer process ended while a fit was in flight."""


class TrainerTimeout(RuntimeError):
    """No answer from the trainer within the fit's timeout."""


class WarmTrainer:
    """One trainer process and the connection to it; started lazily, restartable.

    Not thread-safe: one fit at a time (the module's pool hands each caller its own).
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.owner = os.getpid()  # a forked child must not use or kill its parent's trainers
        self.n_fits = 0  # fits sent to the current process

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, log_path: Path) -> None:
        """Start the trainer process; until its first fit redirects them, its stdout and
        stderr go to ``log_path`` (so an import failure shows up in the fit's log)."""
        from multiprocessing.connection import Connection

        from autopipe.potentials.pacemaker import _subprocess_env

        self.kill()
        ours, theirs = socket.socketpair()
        env = _subprocess_env()
        # The trainer must import this very autopipe (a worktree, not some installed copy).
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "autopipe.potentials.warm_worker", str(theirs.fileno())]
        try:
            with open(log_path, "ab") as fh:
                self.proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                             stdout=fh, stderr=subprocess.STDOUT, env=env,
                                             cwd=tempfile.gettempdir(), start_new_session=True)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.n_fits = 0

    def fit(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one fit and wait for its reply (raises :class:`TrainerTimeout`, :class:`TrainerDied`)."""
        assert self.conn is not None and self.proc is not None
        self.n_fits += 1
        try:
            self.conn.send({"op": "fit", "request": request})
            if not self.conn.poll(timeout):
                raise TrainerTimeout(f"no reply within {timeout:.0f} s")
            return self.conn.recv()
        except (EOFError, OSError) as exc:  # OSError covers BrokenPipeError/ConnectionResetError
            raise TrainerDied(self._how_it_ended()) from exc

    def _how_it_ended(self) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            return f"warm trainer (pid {self.proc.pid}) closed its connection but is still running"
        if rc < 0:
            return f"warm trainer (pid {self.proc.pid}) died: killed by {signal.Signals(-rc).name}"
        return f"warm trainer (pid {self.proc.pid}) died: exit code {rc}"

    def kill(self) -> None:
        """Kill the trainer's process group and reap it (no-op when none is running)."""
        from autopipe.potentials.pacemaker import kill_group

        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None

    def close(self) -> None:
        """Ask the trainer to leave; kill it if it does not within :data:`STOP_GRACE`."""
        if self.proc is not None and self.conn is not None and self.alive():
            try:
                self.conn.send({"op": "stop"})
                self.proc.wait(timeout=STOP_GRACE)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


# ----------------------------------------------------------------------------- the pool

_lock = threading.Lock()
_idle: list[WarmTrainer] = []
_all: list[WarmTrainer] = []


def acquire() -> WarmTrainer:
    """An idle trainer of this process (alive or to be started), or a new one."""
    with _lock:
        while _idle:
            trainer = _idle.pop()
            if trainer.owner == os.getpid():
                return trainer
        trainer = WarmTrainer()
        _all.append(trainer)
        return trainer


def release(trainer: WarmTrainer) -> None:
    """Give a trainer back to the pool (closed instead when :data:`MAX_IDLE` are idle)."""
    with _lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(trainer)
            return
        _all.remove(trainer)
    trainer.close()


def shutdown() -> None:
    """Stop every trainer this process started (registered with :mod:`atexit`)."""
    with _lock:
        mine = [t for t in _all if t.owner == os.getpid()]
        _idle.clear()
        _all.clear()
    for trainer in mine:
        trainer.close()


atexit.register(shutdown)


# ----------------------------------------------------------------------------- one fit


def warm_fit_and_export(
    workdir: Path | str,
    train_config: TrainConfig,
    elements: Sequence[str],
    data_file: Path | str,
    *,
    parent_yaml: Path | str | None = None,
    iterations: int | None = None,
    trainer: WarmTrainer | None = None,
    grow: bool = False,
) -> FitOutput:
    """:func:`autopipe.potentials.trainer.fit_and_export` in a warm trainer.

    Same input, same outputs in ``workdir`` (pacemaker's files, ``potential.yaml/.yace/.asi``,
    ``pacemaker.log``), same :class:`FitOutput`. ``metrics`` gains ``trainer_pid``,
    ``trainer_fit_index`` (1 for the fit that started the process), ``trainer_graph``
    (``traced``, or ``reused`` when no graph was built) and ``trainer_crashes`` (trainer
    processes that died during this fit);
    ``timings`` holds ``pacemaker`` (s, request to fitted potential, including the
    trainer's start when this fit started it), ``export`` and, for the first fit of a
    process, ``trainer_imports``. ``trainer`` defaults to one from this process's pool.
    """
    from autopipe.potentials.pacemaker import LOG_FILE, _tail, log_marker, prepare_input
    from autopipe.potentials.fitoutput import FitOutput

    t0 = time.perf_counter()
    workdir, args = prepare_input(workdir, train_config, elements, data_file,
                                  initial_potential=parent_yaml, iterations=iterations, grow=grow)
    log_path = workdir / LOG_FILE
    out = FitOutput(status="failed", argv=["pacemaker[warm]", *args])
    pooled = trainer is None
    trainer = trainer or acquire()
    timeout = float(train_config.timeout)
    crashes = 0
    try:
        for attempt in range(1 + RETRIES_AFTER_CRASH):
            if not trainer.alive():
                trainer.start(log_path)
            log_marker(log_path, f"start: {' '.join(out.argv)} (warm trainer pid {trainer.pid}, "
                                 f"fit {trainer.n_fits + 1} of this process)")
            t_fit = time.perf_counter()
            try:
                reply = trainer.fit({"workdir": str(workdir), "args": args}, timeout)
            except TrainerTimeout:
                trainer.kill()
                log_marker(log_path, f"killed the warm trainer after the {timeout:.0f} s timeout")
                out.error = f"pacemaker timed out after {timeout:.0f} s (warm trainer killed)"
                break
            except TrainerDied as exc:
                trainer.kill()
                crashes += 1
                retry = attempt < RETRIES_AFTER_CRASH
                log_marker(log_path, f"{exc}" + ("; retrying on a fresh trainer" if retry else ""))
                out.error = str(exc)
                continue
            _fill(out, reply, time.perf_counter() - t_fit)
            break
    except BaseException:
        trainer.kill()  # interrupted (KeyboardInterrupt, test teardown): never leave a fit running
        raise
    finally:
        if pooled:
            release(trainer)
    out.metrics["trainer_crashes"] = crashes
    if not out.ok:
        out.log_tail = _tail(log_path)
    out.walltime = time.perf_counter() - t0
    return out


def _fill(out: FitOutput, reply: dict[str, Any], round_trip: float) -> None:
    """Copy the trainer's reply into ``out``."""
    worker_timings = reply.get("timings", {})
    export = float(worker_timings.get("export", 0.0))
    out.status = reply["status"]
    out.error = reply.get("error")
    out.files = dict(reply.get("files", {}))
    out.metrics = dict(reply.get("metrics", {}))
    out.timings = {"pacemaker": round_trip - export}
    if "export" in worker_timings:
        out.timings["export"] = export
    if "imports" in worker_timings:
        out.timings["trainer_imports"] = float(worker_timings["imports"])
    if out.ok:
        out.metrics["fit_walltime"] = out.timings["pacemaker"]
    out.metrics.update(trainer_pid=reply.get("pid"), trainer_fit_index=reply.get("fit_index"),
                       trainer_graph=reply.get("graph"))
