"""Running the native (ML-PACE) route's LAMMPS script, and reading what LAMMPS wrote.

The script (:func:`autopipe.md.lammps_input.render_native_input`) does the whole segment by
itself. It runs as its own process, ``launcher + [lmp] + lammps_args + ["-in", script,
...]``: one rank without a launcher, or under an MPI launcher (``["mpirun", "-np", "2"]``,
``["srun", "-n", "4"]``), bounded by a timeout after which the whole process group is
killed. Never in this process: the ACE library throws C++ exceptions that LAMMPS's library
interface does not catch (a missing or corrupt ``.asi`` aborts the process that loaded it),
and a separate process keeps such a crash, or a hang, away from the steering loop.

The results are LAMMPS's own files (dumps, read by :mod:`autopipe.md.dump`, ``print``
records, the log): :func:`run_native`, the native route of
:func:`autopipe.md.segment.run_segment`, turns them into a ``SegmentResult``. A blow-up's
last frame carries the box LAMMPS dumped with it: under a barostat it is not the box the
segment started with.

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
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from autopipe.md.box import LammpsBox
from autopipe.md.dump import DumpFrame, read_dump_frame, read_last_dump_frame
from autopipe.md.lammps_input import BOX_NAMES, NATIVE_GAMMA_FIX, SegmentInput, lammps_command, render_native_input
from autopipe.md.result import SegmentResult, finish, gamma_frame, read_thermo, state_from_lammps
from autopipe.md.state import MDState

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.md.external import BlowUpLimits

__all__ = [
    "NativeFiles",
    "LammpsRun",
    "run_native_script",
    "lmp_executable",
    "resolve_launcher",
    "read_gamma_trace",
    "read_box",
    "DEFAULT_TIMEOUT",
    "run_native",
    "blowup_fields",
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


# ----------------------------------------------------------------------------- the native route


def run_native(state: MDState, potential, box: LammpsBox, spec_kw: dict[str, Any], workdir: Path, tag: str, failed,
               limits: BlowUpLimits, launcher: Sequence[str], lammps_args: Sequence[str],
               timeout: float | None) -> SegmentResult:
    """The ML-PACE route of :func:`autopipe.md.segment.run_segment`: LAMMPS runs the whole segment
    script as a process of its own; the result is read from its files.

    ``spec_kw``: the :class:`SegmentInput` fields; ``failed(message, **fields)``: the dispatcher's
    failed result; files go to ``workdir/<tag>.*`` (:class:`NativeFiles`).
    """
    atoms = state.atoms
    start, n = spec_kw["start_step"], spec_kw["n_steps"]
    version = getattr(potential, "version", None)
    files = NativeFiles.at(workdir, tag)
    spec = SegmentInput(**spec_kw, dump_file=str(files.dump), gamma_file=str(files.gamma),
                        yaml=str(potential.yaml), asi=str(potential.asi),
                        start_trigger_file=str(files.start_trigger), final_file=str(files.final),
                        box_file=str(files.box), max_force=limits.max_force,
                        max_energy_change=limits.max_energy_change)
    files.input.write_text("\n".join(render_native_input(spec)) + "\n")
    run = run_native_script(files, launcher=launcher, lammps_args=lammps_args, timeout=timeout)
    trace = read_gamma_trace(files.gamma)
    extra = dict(trajectory=files.dump, lammps_dump=files.dump, potential_version=version, route="native",
                 timings={"run": run.loop_time, "lammps": run.wall}, n_ranks=run.n_ranks or 1)
    if run.error is not None:
        return failed(_error_message(run.error, limits), gamma_trace=trace, **extra,
                      **blowup_fields(run.error, files.dump, box, atoms, version))
    extra["thermo"] = read_thermo(files.thermo)
    if files.start_trigger.exists():
        # Already above the threshold at the start: nothing of this run is kept; the box is the start's.
        frame = _gamma_frame(read_dump_frame(files.start_trigger), "f_ap_gamma_start", box, atoms, box.lo,
                             box.matrix, version)
        return _triggered(state, frame, start, trace, **extra)
    try:
        dump = read_dump_frame(files.final)
        _, b = read_box(files.box)  # the box as LAMMPS holds it (the dump's header gives its bounding box)
        lo = np.array([b["xlo"], b["ylo"], b["zlo"]])
        matrix = box.matrix_from_lammps(lo, [b["xhi"], b["yhi"], b["zhi"]], b["xy"], b["yz"], b["xz"])
        cols = dump.columns
        flags = np.stack([cols["ix"], cols["iy"], cols["iz"]], axis=1)
        x = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
        v = np.stack([cols["vx"], cols["vy"], cols["vz"]], axis=1)
        final = state_from_lammps(box, atoms, cols["id"], x, v, flags, lo, matrix, dump.step)
    except Exception as exc:  # noqa: BLE001
        return failed(f"could not read the final state: {exc}", gamma_trace=trace, **extra)
    step = dump.step
    # A check step whose gamma is above the threshold ends the segment, whether fix halt
    # stopped the run there or it was the run's last step anyway.
    last = trace[-1] if trace else None
    if last is not None and last[0] == step and step % spec.check_frequency == 0 and last[1] > spec.threshold:
        return _triggered(final, _gamma_frame(dump, "f_ap_gamma_end", box, atoms, lo, matrix, version), start, trace,
                          **extra)
    if step != start + n:
        return failed(f"run stopped at step {step} before {start + n} without a trigger", gamma_trace=trace, **extra)
    end_gamma = np.empty(len(atoms))
    end_gamma[np.asarray(cols["id"], dtype=np.int64) - 1] = cols["f_ap_gamma_end"]  # the final state's order
    return finish("completed", final, start, trace, end_gamma=end_gamma, **extra)


def _gamma_frame(dump: DumpFrame, column: str, box: LammpsBox, atoms: Atoms, lo: np.ndarray, matrix: np.ndarray,
                 version: int | None) -> Atoms:
    """The atoms of a dump frame (IDs, wrapped positions) in the LAMMPS box (``lo``, ``matrix``),
    with per-atom gamma from ``column``."""
    cols = dump.columns
    idx = np.asarray(cols["id"], dtype=np.int64) - 1
    pos, gamma = np.empty((len(idx), 3)), np.empty(len(idx))
    pos[idx] = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
    gamma[idx] = cols[column]
    return gamma_frame(box, atoms, pos, lo, matrix, gamma, dump.step, version)


def _triggered(final: MDState, frame: Atoms, start: int, trace, **extra: Any) -> SegmentResult:
    return finish("triggered", final, start, trace, trigger_frame=frame,
                  trigger_atom=int(np.argmax(frame.arrays["gamma"])), **extra)


_HALT = re.compile(r"fix-id (ap_halt_force|ap_halt_energy) met on step (\d+) with value (\S+)")


def blowup_fields(error: str, dump: Path, box: LammpsBox, atoms: Atoms, version: int | None) -> dict[str, Any]:
    """``failure``, ``failed_step`` and ``last_frame`` of a failed native segment: a blow-up when a
    blow-up bound halted it or LAMMPS lost atoms; the last frame is the dump's last one with gamma,
    in the box LAMMPS dumped with it (under a barostat not the segment's starting box)."""
    m = _HALT.search(error)
    if not (m or "lost atoms" in error.lower()):
        return {"failure": "error"}
    last = None
    try:
        frame = read_last_dump_frame(dump)
        gamma_col = f"f_{NATIVE_GAMMA_FIX}"
        if gamma_col in frame.columns:
            last = _gamma_frame(frame, gamma_col, box, atoms, frame.lo, frame.matrix, version)
    except (OSError, ValueError):
        last = None
    return {"failure": "blowup", "failed_step": int(m.group(2)) if m else None, "last_frame": last}


def _error_message(error: str, limits: BlowUpLimits) -> str:
    """LAMMPS's error line; the blow-up bounds' halts are said in the callback route's words too."""
    m = _HALT.search(error)
    if not m:
        return f"LAMMPS error: {error}"
    fix, step, value = m.group(1), m.group(2), float(m.group(3))
    if fix == "ap_halt_force":
        what = f"force {value:.3g} eV/Å exceeds {limits.max_force:g} eV/Å"
    else:
        what = f"the energy changed by {value:.3g} eV/atom, more than {limits.max_energy_change:g} eV/atom"
    return f"step {step}: {what} (blown up); LAMMPS: {error}"
