"""What a segment returns, and the pieces of it both routes build alike.

:class:`SegmentResult` is the outcome of :func:`autopipe.md.segment.run_segment` on either
route. The callback route (:mod:`autopipe.md.external`) reads atoms from a live LAMMPS
instance, the native route (:mod:`autopipe.md.native`) from LAMMPS's files; both turn them
into an :class:`MDState` with :func:`state_from_lammps`, into a trigger frame with
:func:`gamma_frame`, and into a result with :func:`finish`.

Units: Å, eV, fs (states), K, bar; LAMMPS's own arrays in ``units metal`` (Å/ps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from autopipe.md.box import LammpsBox, frame_atoms
from autopipe.md.state import MDState

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["Status", "SegmentResult", "finish", "gamma_frame", "state_from_lammps", "read_thermo"]

#: completed: all steps below the threshold; triggered: stopped at a check above it; failed: see ``failure``.
Status = Literal["completed", "triggered", "failed"]


@dataclass
class SegmentResult:
    """Outcome of one segment (see :mod:`autopipe.md.segment` for ``status``).

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
    ``carved``/``frame_record``/``frame_route``: a trigger frame carved on the MD worker (then
    ``trigger_frame`` is None), see :func:`autopipe.steer.work.carve_on_worker`. ``end_gamma``/``probe``:
    the false-negative probe's input and its cell, both made on the MD worker (see
    :func:`autopipe.steer.work.probe_on_worker`).
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
    # Set by autopipe.steer.work.carve_on_worker on the MD worker (a large trigger frame stays there):
    carved: list[Any] | None = None  # the cells carved around its centres (CarvedCell), or None
    frame_record: Atoms | None = None  # the atoms near the centres, see autopipe.carving.record
    frame_route: str | None = None  # how the frame travelled: whole (and why) or carved on the worker
    # Per-atom gamma of ``final_state`` at ``end_step`` (completed segments), where the route computed it
    # there (native: the final ``run 0``; callback: a check on the last step). Read on the MD worker by the
    # false-negative probe (autopipe.steer.work.probe_on_worker) and dropped before the answer travels.
    end_gamma: np.ndarray | None = None
    # Set on the MD worker when the steering side asked for it: the false-negative probe's cell carved
    # from the end of a segment that did not trigger (autopipe.steer.work.ProbeFound), or None.
    probe: Any = None


def finish(status: Status, final: MDState, start: int, trace: list[tuple[int, float]], **kw: Any) -> SegmentResult:
    arr = np.array(trace, dtype=float).reshape(-1, 2)
    max_gamma = float(np.max(arr[:, 1])) if len(arr) else math.nan
    return SegmentResult(status=status, final_state=final, start_step=start, end_step=final.step,
                         max_gamma=max_gamma, gamma_trace=arr, **kw)


def state_from_lammps(box: LammpsBox, template: Atoms, ids: np.ndarray, x: np.ndarray, v: np.ndarray,
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


def gamma_frame(box: LammpsBox, template: Atoms, positions: np.ndarray, lo: np.ndarray, matrix: np.ndarray,
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


def read_thermo(path: Path) -> dict[str, list[float]]:
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
