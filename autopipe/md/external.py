"""The ``fix external`` callback: pyace forces, energy, virial and gamma checks inside a LAMMPS run.

LAMMPS calls :meth:`ExternalForces.__call__` in ``post_force`` of every step (and once in
the run's setup) with the IDs, positions and the force array of the local atoms (all atoms
in serial). The callback

* evaluates ACE on the positions (in LAMMPS's frame, ordered by atom ID) through
  :class:`autopipe.md.ace.AceEvaluator`, writes the forces, sets the global energy
  (``fix_modify energy yes`` puts it into ``pe``) and the virial (pressure, NPT);
* on check steps (the segment's first step and every step that is a multiple of
  ``check_frequency``) also computes per-atom gamma, appends (step, max gamma) to the trace
  and publishes the max as ``f_ext[1]``, which ``fix halt`` compares with the threshold;
  the frame of the last check above the threshold is kept for the trigger output;
* writes a trajectory frame (extxyz, ASE frame, positions wrapped into the cell, forces,
  and gamma on check steps) every ``dump_every`` steps.

:func:`run_external` is the callback route of :func:`autopipe.md.segment.run_segment`: it
starts LAMMPS in this process (:mod:`autopipe.md.bootstrap`), runs the segment's script with
this callback, and reads the result back from the live instance.

Serial only: the callback expects every atom to be local (one MPI rank); with more ranks
the atom count check fails the segment with a clear message.

ctypes prints and swallows exceptions raised in a callback, so nothing here raises: any
failure (exception, non-finite or exploding energy or forces) is recorded in ``error``,
the forces are zeroed so that LAMMPS never integrates NaNs, and the stop flag ``f_ext[2]``
is raised; ``fix halt 1 v_ap_stop > 0.5`` then ends the run at the end of the step.
"""

from __future__ import annotations

import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, IO, Any

import numpy as np

from autopipe.md.ace import AceEvaluator
from autopipe.md.bootstrap import LAMMPS_LOCK, new_lammps
from autopipe.md.box import LammpsBox, frame_atoms
from autopipe.md.lammps_input import EXT_FIX, STOP_ERROR, STOP_TRIGGER, SegmentInput, render_external_input, render_run
from autopipe.md.result import SegmentResult, finish, gamma_frame, read_thermo, state_from_lammps
from autopipe.md.state import MDState

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["ExternalForces", "BlowUpLimits", "TriggerRecord", "run_external"]


@dataclass(frozen=True)
class BlowUpLimits:
    """Bounds beyond which a run counts as blown up (status "failed").

    ``max_force``: largest force on any atom (eV/Å). ``max_energy_change``: largest change of
    the potential energy per atom since the segment's first step (eV/atom). A change, not an
    absolute bound: potentials trained on DFT total energies sit at thousands of eV per atom.
    """

    max_force: float = 1.0e3
    max_energy_change: float = 10.0


@dataclass
class TriggerRecord:
    """The frame of a check whose max gamma exceeded the threshold (LAMMPS frame, ID order)."""

    step: int
    positions: np.ndarray  # Å, as LAMMPS had them (not yet wrapped)
    lo: np.ndarray
    matrix: np.ndarray
    gamma: np.ndarray


@dataclass
class ExternalForces:
    """Callback state of one segment (see the module docstring).

    ``box`` is the segment's LAMMPS box (its rotation converts frames for the trajectory);
    ``variable_box``: re-read the box from LAMMPS every call (barostat).
    """

    lmp: Any
    evaluator: AceEvaluator
    box: LammpsBox
    numbers: np.ndarray
    pbc: tuple[bool, bool, bool]
    start_step: int
    check_frequency: int
    threshold: float
    dump_every: int
    trajectory: IO[str] | None
    variable_box: bool = False
    limits: BlowUpLimits = field(default_factory=BlowUpLimits)
    potential_version: int | None = None
    # --- outputs
    gamma_trace: list[tuple[int, float]] = field(default_factory=list)
    trigger: TriggerRecord | None = None
    last_check: TriggerRecord | None = None  # the frame of the latest check, whatever its gamma
    error: str | None = None
    error_step: int | None = None
    blew_up: bool = False  # the error is the dynamics running away, not a broken evaluator
    n_calls: int = 0
    last_energy: float = float("nan")
    first_energy: float | None = None
    time_callback: float = 0.0  # s spent in the callback, all of it
    time_evaluate: float = 0.0  # s spent in the ACE evaluation (neighbour list included)

    def __post_init__(self) -> None:
        n = len(self.numbers)
        self._positions = np.empty((n, 3))
        self._lo = np.array(self.box.lo, dtype=float)
        self._matrix = np.array(self.box.matrix, dtype=float)

    # ------------------------------------------------------------------ LAMMPS entry point
    def __call__(self, caller: Any, ntimestep: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        """fix external pf/callback signature; never raises (see the module docstring)."""
        t0 = time.perf_counter()
        try:
            self._step(int(ntimestep), tag, x, f)
        except BaseException as exc:  # noqa: BLE001 - must not escape into ctypes
            self._fail(f"callback failed at step {ntimestep}: {exc!r}\n{traceback.format_exc(limit=4)}", f,
                       step=int(ntimestep))
        self.time_callback += time.perf_counter() - t0

    def _fail(self, message: str, f: np.ndarray, *, step: int, blowup: bool = False) -> None:
        if self.error is None:
            self.error, self.error_step, self.blew_up = message, step, blowup
        try:
            f[:] = 0.0
            self.lmp.fix_external_set_energy_global(EXT_FIX, 0.0)
            self.lmp.fix_external_set_vector(EXT_FIX, 2, STOP_ERROR)
        except BaseException:  # noqa: BLE001
            pass

    def _step(self, step: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        self.n_calls += 1
        if self.error is not None:  # already failed: keep LAMMPS harmless until fix halt stops it
            f[:] = 0.0
            return
        n = len(self.numbers)
        if len(tag) != n:
            self._fail(f"step {step}: LAMMPS has {len(tag)} local atoms, expected {n} (lost atoms?)", f,
                       step=step, blowup=True)
            return
        idx = np.asarray(tag, dtype=np.int64) - 1
        pos = self._positions
        pos[idx] = x
        if not np.all(np.isfinite(pos)):
            self._fail(f"step {step}: non-finite positions", f, step=step, blowup=True)
            return
        if self.variable_box:
            self._lo, self._matrix = _lammps_box_now(self.lmp, self.box)
        check = step == self.start_step or step % self.check_frequency == 0
        t0 = time.perf_counter()
        res = self.evaluator.evaluate(pos, self._lo, self._matrix, gamma=check)
        self.time_evaluate += time.perf_counter() - t0
        if check and res.gamma is not None and np.all(np.isfinite(res.gamma)):
            # Kept before the blow-up tests: the frame where forces run away is worth labelling.
            self.last_check = TriggerRecord(step, pos.copy(), self._lo.copy(), self._matrix.copy(), res.gamma.copy())
        fmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", res.forces, res.forces)))) if n else 0.0
        if not (np.isfinite(res.energy) and np.isfinite(fmax)):
            self._fail(f"step {step}: non-finite energy or forces (E={res.energy})", f, step=step, blowup=True)
            return
        if fmax > self.limits.max_force:
            self._fail(f"step {step}: force {fmax:.3g} eV/Å exceeds {self.limits.max_force:g} eV/Å (blown up)", f,
                       step=step, blowup=True)
            return
        if self.first_energy is None:
            self.first_energy = res.energy
        if n and abs(res.energy - self.first_energy) / n > self.limits.max_energy_change:
            self._fail(
                f"step {step}: the energy changed by {(res.energy - self.first_energy) / n:.3g} eV/atom, "
                f"more than {self.limits.max_energy_change:g} eV/atom (blown up)",
                f, step=step, blowup=True,
            )
            return
        f[:] = res.forces[idx]
        self.last_energy = res.energy
        self.lmp.fix_external_set_energy_global(EXT_FIX, res.energy)
        self.lmp.fix_external_set_virial_global(EXT_FIX, res.virial.tolist())
        gamma = None
        if check and res.gamma is not None:
            gamma = res.gamma
            gmax = float(np.max(gamma)) if n else 0.0
            if not np.isfinite(gmax):
                self._fail(f"step {step}: non-finite gamma", f, step=step, blowup=True)
                return
            self.gamma_trace.append((step, gmax))
            self.lmp.fix_external_set_vector(EXT_FIX, 1, gmax)
            if gmax > self.threshold:
                self.trigger = self.last_check
                if step == self.start_step:
                    # fix halt does not look at the setup step: stop right away instead.
                    self.lmp.fix_external_set_vector(EXT_FIX, 2, STOP_TRIGGER)
        if self.trajectory is not None and (step % self.dump_every == 0 or step == self.start_step):
            self._write_frame(step, res.energy, res.forces, gamma)

    # ------------------------------------------------------------------ output frames
    def _write_frame(self, step: int, energy: float, forces: np.ndarray, gamma: np.ndarray | None) -> None:
        from ase.io.extxyz import write_xyz

        atoms = frame_atoms(self.box, self.numbers, self.pbc, self._positions, self._lo, self._matrix)
        if gamma is not None:
            atoms.arrays["gamma"] = np.asarray(gamma, dtype=float).copy()
        atoms.arrays["forces"] = self.box.to_ase_vectors(forces)
        atoms.info["step"] = step
        atoms.info["energy"] = energy
        if self.potential_version is not None:
            atoms.info["potential_version"] = int(self.potential_version)
        write_xyz(self.trajectory, [atoms])


# ----------------------------------------------------------------------------- the callback route


def _lammps_box_now(lmp: Any, box: LammpsBox) -> tuple[np.ndarray, np.ndarray]:
    """(corner, edge matrix) of the live LAMMPS box (Å): under a barostat it changes every step."""
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
    return state_from_lammps(box, template, ids, x, v, flags, lo, matrix, step)


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


def run_external(state: MDState, potential, box: LammpsBox, spec_kw: dict[str, Any], workdir: Path, tag: str,
                 limits: BlowUpLimits, failed) -> SegmentResult:
    """The callback route of :func:`autopipe.md.segment.run_segment`: a LAMMPS instance of this
    process (under :data:`LAMMPS_LOCK`) runs the segment's script with forces from this callback.

    ``spec_kw``: the :class:`SegmentInput` fields; ``failed(message, **fields)``: the dispatcher's
    failed result; files go to ``workdir/<tag>.*``.
    """
    with LAMMPS_LOCK:
        try:
            lmp = new_lammps()
        except Exception as exc:  # noqa: BLE001
            return failed(f"could not start LAMMPS: {exc}")
        try:
            return _run(lmp, state, potential, box, spec_kw, workdir, tag, limits, failed)
        finally:
            try:
                lmp.close()
            except Exception:  # noqa: BLE001
                pass


def _run(lmp, state, potential, box, spec_kw, workdir, tag, limits, failed) -> SegmentResult:
    atoms = state.atoms
    start, n = spec_kw["start_step"], spec_kw["n_steps"]
    spec = SegmentInput(**spec_kw)
    evaluator = AceEvaluator(potential.yaml, potential.asi, atoms.get_chemical_symbols(), skin=spec.neighbor_skin)
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
    thermo = read_thermo(Path(spec.thermo_file))
    trig = cb.trigger
    if trig is not None and trig.step == start:
        # Already above the threshold at the start: nothing of this run is kept.
        frame = gamma_frame(box, atoms, trig.positions, trig.lo, trig.matrix, trig.gamma, trig.step, version)
        return finish("triggered", state, start, cb.gamma_trace, trigger_frame=frame,
                       trigger_atom=int(np.argmax(trig.gamma)), thermo=thermo, **extra)
    try:
        final = _read_state(lmp, box, atoms, step)
    except Exception as exc:  # noqa: BLE001
        return failed(f"could not read the final state: {exc}", trajectory=traj_path)
    _append_last_thermo(lmp, thermo, step)
    if trig is not None and trig.step == step:
        frame = gamma_frame(box, atoms, trig.positions, trig.lo, trig.matrix, trig.gamma, trig.step, version)
        return finish("triggered", final, start, cb.gamma_trace, trigger_frame=frame,
                       trigger_atom=int(np.argmax(trig.gamma)), thermo=thermo, **extra)
    if step != start + n:
        return failed(f"run stopped at step {step} before {start + n} without a trigger", trajectory=traj_path)
    last = cb.last_check
    end_gamma = last.gamma.copy() if last is not None and last.step == step else None  # ID order: the state's
    return finish("completed", final, start, cb.gamma_trace, thermo=thermo, end_gamma=end_gamma, **extra)


def _blowup_fields(blowup: bool, cb, box, atoms, version) -> dict[str, Any]:
    """``failure``, ``failed_step`` and ``last_frame`` of a failed callback-route segment."""
    rec = cb.last_check
    last = None if rec is None else gamma_frame(box, atoms, rec.positions, rec.lo, rec.matrix, rec.gamma, rec.step, version)
    return {"failure": "blowup" if blowup else "error", "failed_step": cb.error_step, "last_frame": last}
