"""Running the native (ML-PACE) route's LAMMPS script, and reading what LAMMPS wrote.

The script (:func:`autopipe.md.lammps_input.render_native_input`) does the whole segment by
itself. It runs as its own process, ``launcher + [lmp] + lammps_args + ["-in", script,
...]``: one rank without a launcher, or under an MPI launcher (``["mpirun", "-np", "2"]``,
``["srun", "-n", "4"]``), bounded by a timeout after which the whole process group is
killed. Never in this process: the ACE library throws C++ exceptions that LAMMPS's library
interface does not catch (a missing or corrupt ``.asi`` aborts the process that loaded it),
and a separate process keeps such a crash, or a hang, away from the steering loop.

The results are LAMMPS's own files (dumps, ``print`` records, the log), parsed here into
arrays; :mod:`autopipe.md.segment` turns them into a ``SegmentResult``.

``mpirun``/``mpiexec`` given by bare name are taken from this environment's ``bin/`` first:
the installer builds LAMMPS against the MPICH that the ``mpich`` wheel puts there, and
another MPI's launcher would start N unrelated single-rank copies. Running as root,
OpenMPI's ``mpirun`` refuses to start unless told otherwise: the environment variables that
allow it are set for every launch (MPICH ignores them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autopipe.md.lammps_input import BOX_NAMES, lammps_command

__all__ = [
    "NativeFiles",
    "LammpsRun",
    "run_native_script",
    "lmp_executable",
    "resolve_launcher",
    "read_dump_frame",
    "read_gamma_trace",
    "read_box",
    "DEFAULT_TIMEOUT",
]

#: Default bound (s) on one LAMMPS subprocess: a hung MPI job must not hang the loop.
DEFAULT_TIMEOUT = 3600.0

_MPI_LAUNCHERS = ("mpirun", "mpiexec", "mpiexec.hydra")


@dataclass(frozen=True)
class NativeFiles:
    """The files of one native segment, all in the segment's work directory."""

    input: Path
    log: Path
    stdout: Path
    gamma: Path
    thermo: Path
    dump: Path
    start_trigger: Path
    final: Path
    box: Path

    @classmethod
    def at(cls, workdir: Path, tag: str) -> "NativeFiles":
        """Files named ``<workdir>/<tag>.<suffix>``, absolute (``lmp`` runs with the segment's directory
        as its working directory, so a relative work directory would point nowhere); stale outputs
        of an earlier attempt are removed."""
        workdir = Path(workdir).resolve()
        names = dict(input="in", log="log", stdout="stdout", gamma="gamma", thermo="thermo", dump="lammpstrj",
                     start_trigger="start-trigger.dump", final="final.dump", box="box")
        files = cls(**{k: Path(workdir) / f"{tag}.{v}" for k, v in names.items()})
        for k in names:
            if k != "input":
                getattr(files, k).unlink(missing_ok=True)
        return files


@dataclass
class LammpsRun:
    """How a LAMMPS execution went.

    ``error``: LAMMPS's own error line (or why it did not run), None on success.
    ``loop_time``: LAMMPS's "Loop time" of the longest run in the script (s), NaN if none
    was logged. ``n_ranks``: MPI ranks LAMMPS reported (0 if none). ``wall``: wall time of
    the whole execution (s), process start-up included.
    """

    error: str | None
    loop_time: float
    n_ranks: int
    wall: float


def lmp_executable() -> str:
    """The ``lmp`` of this Python environment (the installer puts it there), else the one on PATH."""
    here = Path(sys.executable).parent / "lmp"
    if here.exists():
        return str(here)
    return shutil.which("lmp") or "lmp"


def resolve_launcher(launcher: Sequence[str]) -> list[str]:
    """``launcher`` with a bare ``mpirun``/``mpiexec`` taken from this environment's ``bin/`` if it has one."""
    argv = [str(a) for a in launcher]
    if argv and argv[0] in _MPI_LAUNCHERS:
        local = Path(sys.executable).parent / argv[0]
        if local.exists():
            argv[0] = str(local)
    return argv


def _launch_env(launcher: Sequence[str]) -> dict[str, str]:
    env = dict(os.environ)
    if not launcher:
        # A lone lmp initialises MPI by itself (singleton). Inherited process-manager
        # variables (this process may be a rank of srun or mpirun) would make it try to
        # join that job instead.
        for key in [k for k in env if k.startswith(("PMI_", "PMIX_", "HYDRA_"))]:
            del env[key]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


# LAMMPS's own error lines, and what lmp's main() prints for a C++ exception LAMMPS did not
# catch (the ACE library throws them, e.g. for an unreadable .asi).
_ERROR = re.compile(r"^((?:ERROR(?: on proc \d+)?|Exception):.*)$", re.MULTILINE)
_LOOP = re.compile(r"^Loop time of (\S+) on (\d+) procs for (\d+) steps", re.MULTILINE)


def _log_facts(*texts: str) -> tuple[str | None, float, int]:
    """(first ERROR line, loop time of the longest run (s), ranks) from LAMMPS's log/screen text."""
    error = None
    loops: list[tuple[int, float, int]] = []
    for text in texts:
        if error is None:
            m = _ERROR.search(text)
            if m:
                error = m.group(1).strip()
        loops += [(int(s), float(t), int(p)) for t, p, s in _LOOP.findall(text)]
    if not loops:
        return error, float("nan"), 0
    _, loop_time, ranks = max(loops)
    return error, loop_time, ranks


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def run_native_script(
    files: NativeFiles,
    *,
    launcher: Sequence[str] = (),
    lammps_args: Sequence[str] = (),
    timeout: float | None = None,
) -> LammpsRun:
    """Execute ``files.input`` with ``lmp`` as a process of its own, under ``launcher`` if given.

    ``lammps_args``: extra LAMMPS command-line switches. ``timeout`` (s, default
    :data:`DEFAULT_TIMEOUT`): the process and everything it started are killed after it.
    Never raises for a LAMMPS failure: it is reported in ``error``, preferably as LAMMPS's
    own ``ERROR`` line.
    """
    t0 = time.perf_counter()
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    cmd = lammps_command(lmp_executable(), str(files.input), str(files.log), resolve_launcher(launcher), lammps_args)
    error = None
    with open(files.stdout, "wb") as out:
        try:
            # A session of its own: on timeout the launcher and every rank it started go together.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=files.input.parent, env=_launch_env(launcher), start_new_session=True)
        except OSError as exc:
            proc, error = None, f"could not start {cmd[0]}: {exc}"
        if proc is not None:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc, error = None, f"did not finish within {timeout:g} s and was killed ({' '.join(cmd)})"
            if rc:
                tail = " | ".join(_read(files.stdout).strip().splitlines()[-3:])
                error = f"exited with code {rc} ({' '.join(cmd)}): {tail}"
    logged, loop_time, ranks = _log_facts(_read(files.log), _read(files.stdout))
    if error and error.startswith("exited") and logged:
        error = logged
    return LammpsRun(error=error, loop_time=loop_time, n_ranks=ranks, wall=time.perf_counter() - t0)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- LAMMPS's files


def _parse_frame(text: str, where: str) -> tuple[int, dict[str, np.ndarray]]:
    lines = text.splitlines()
    step = int(lines[lines.index("ITEM: TIMESTEP") + 1])
    n = int(lines[lines.index("ITEM: NUMBER OF ATOMS") + 1])
    head = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    names = lines[head].split()[2:]
    body = lines[head + 1 : head + 1 + n]
    if len(body) != n:
        raise ValueError(f"{where}: {len(body)} atom lines, expected {n}")
    rows = [line.split() for line in body]
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        try:
            columns[name] = np.array(values, dtype=float)
        except ValueError:  # e.g. the element column of a trajectory dump
            columns[name] = np.array(values)
    return step, columns


def read_dump_frame(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    """(timestep, columns by name) of a one-frame LAMMPS text dump (``dump custom``/``write_dump``)."""
    with open(path) as fh:
        return _parse_frame(fh.read(), str(path))


def read_last_dump_frame(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    """(timestep, columns) of the last complete frame of a multi-frame LAMMPS text dump (a run
    stopped by an error may leave the last frame cut off: then the one before it)."""
    text = _read(path)
    last = text.rfind("ITEM: TIMESTEP")
    if last < 0:
        raise ValueError(f"{path}: no frame")
    prev = text.rfind("ITEM: TIMESTEP", 0, last)
    for a, b in ((last, len(text)), (prev, last)):
        if a < 0:
            continue
        try:
            return _parse_frame(text[a:b], str(path))
        except (ValueError, IndexError):
            continue
    raise ValueError(f"{path}: no complete frame")


def read_gamma_trace(path: Path) -> list[tuple[int, float]]:
    """(step, max gamma) records, one per step (the last record of a step wins), in step order."""
    rows: dict[int, float] = {}
    for line in _read(path).splitlines():
        if line.strip() and not line.startswith("#"):
            s, g = line.split()[:2]
            rows[int(float(s))] = float(g)
    return sorted(rows.items())


def read_box(path: Path) -> tuple[int, dict[str, float]]:
    """(step, {xlo, xhi, ylo, yhi, zlo, zhi, xy, xz, yz}) as the native script printed them (Å)."""
    values = _read(path).split()
    if len(values) != 1 + len(BOX_NAMES):
        raise ValueError(f"{path}: expected step and {len(BOX_NAMES)} box values, got {values!r}")
    return int(float(values[0])), dict(zip(BOX_NAMES, map(float, values[1:])))
