"""The state of an MD walker between segments, and its checkpoint files.

A walker's state is its atoms (positions Å, momenta, cell, pbc, masses) and its MD step
count. Checkpoints are ``.npz`` files written atomically (temporary file in the same
directory, flushed, then ``os.replace``), so a reader sees either the old or the new file,
never half of one.

File contents (units): ``numbers``, ``positions`` (Å), ``velocities`` (Å/fs), ``cell`` (Å),
``pbc``, ``step``, ``masses`` (u) and ``momenta`` (ASE units). ``velocities`` are for
readers of the file; ``momenta`` are what :func:`load_state` restores, so that a
save/load cycle reproduces the atoms bit for bit.

By reference (:class:`StateRef`, :class:`OnScratch`): where a site declares a scratch directory
that the steering host and the MD workers both reach (``shared_scratch`` in the site file),
checkpoints stay there. The steering side keeps only a :class:`StateRef` (path, size in bytes,
sha256 of the file, MD step, about 200 bytes) instead of the arrays (about 56 bytes per atom),
and the worker verifies the checksum before it resumes (:class:`StateRefused` when it does not
match).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import MDConfig

__all__ = ["MDState", "save_state", "load_state", "initial_state", "kinetic_temperature", "velocities_fs",
           "StateRef", "StateRefused", "OnScratch", "save_state_ref", "load_state_ref"]

#: Boltzmann constant (eV/K), CODATA 2018 as in ASE.
KB = 8.617333262e-05
_FORMAT = 1


@dataclass(frozen=True, eq=False)
class MDState:
    """An MD walker between segments.

    ``atoms``: positions (Å, not necessarily wrapped into the cell), velocities through the
    momenta, cell, pbc, masses. ``step``: number of MD steps done so far. Treat ``atoms`` as
    read-only: functions here return new states instead of changing one.
    """

    atoms: Atoms
    step: int = 0

    def __post_init__(self) -> None:
        if int(self.step) < 0:
            raise ValueError(f"step must be >= 0, not {self.step}")
        object.__setattr__(self, "step", int(self.step))


def velocities_fs(atoms: Atoms) -> np.ndarray:
    """Velocities of ``atoms`` in Å/fs."""
    from ase import units

    return atoms.get_velocities() * units.fs


def save_state(path: Path | str, state: MDState, *, durable: bool = True) -> Path:
    """Write ``state`` to ``path`` (an ``.npz`` file) atomically; returns the path. ``durable``: on
    disk (fsync) before this returns; without it the file survives the writing process being killed
    (it is complete before its rename), not necessarily a power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = state.atoms
    data = {
        "format": np.int64(_FORMAT),
        "numbers": a.get_atomic_numbers(),
        "positions": a.get_positions(),
        "velocities": velocities_fs(a),
        "momenta": a.get_momenta(),
        "masses": a.get_masses(),
        "cell": np.array(a.get_cell()),
        "pbc": np.array(a.get_pbc(), dtype=bool),
        "step": np.int64(state.step),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **data)  # a file object: numpy does not append ".npz" to the name
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_state(path: Path | str | io.BytesIO) -> MDState:
    """Read a checkpoint written by :func:`save_state` (a path, or its bytes in a ``BytesIO``)."""
    from ase import Atoms, units

    with np.load(path if isinstance(path, io.BytesIO) else Path(path), allow_pickle=False) as z:
        atoms = Atoms(numbers=z["numbers"], positions=z["positions"], cell=z["cell"], pbc=z["pbc"])
        atoms.set_masses(z["masses"])
        if "momenta" in z:
            atoms.set_momenta(z["momenta"])
        else:  # a file from another writer: velocities in Å/fs are the documented field
            atoms.set_velocities(z["velocities"] / units.fs)
        step = int(z["step"])
    return MDState(atoms=atoms, step=step)


def as_saved(state: MDState) -> MDState:
    """The state :func:`load_state` would read back from :func:`save_state`'s file: the same
    arrays, copied, and nothing else (no calculator, info or per-atom extras)."""
    from ase import Atoms

    a = state.atoms
    atoms = Atoms(numbers=a.get_atomic_numbers(), positions=a.get_positions(), cell=np.array(a.get_cell()),
                  pbc=np.array(a.get_pbc(), dtype=bool))
    atoms.set_masses(a.get_masses())
    atoms.set_momenta(a.get_momenta())
    return MDState(atoms=atoms, step=int(state.step))


def kinetic_temperature(atoms: Atoms, dimension: int = 3) -> float:
    """Instantaneous temperature (K) with LAMMPS's count of degrees of freedom, d·(N-1)."""
    dof = dimension * (len(atoms) - 1)
    if dof <= 0:
        return 0.0
    return 2.0 * float(atoms.get_kinetic_energy()) / (dof * KB)


def initial_state(atoms: Atoms, md_config: MDConfig, step: int = 0) -> MDState:
    """A state with Maxwell-Boltzmann velocities at ``initial_temperature`` (or ``temperature``), K.

    Draws with ``md_config.seed``, removes the centre-of-mass momentum, zeroes the
    z-velocities for ``dimension == 2``, then rescales to the exact target temperature
    counted over d·(N-1) degrees of freedom (LAMMPS's ``compute temp``). Positions, cell,
    pbc and masses are copied from ``atoms``.
    """
    temperature = md_config.initial_temperature if md_config.initial_temperature is not None else md_config.temperature
    dim = int(md_config.dimension)
    a = atoms.copy()
    a.calc = None
    n = len(a)
    masses = a.get_masses()
    rng = np.random.default_rng(md_config.seed)
    # sigma_p = sqrt(m kB T) per component (ASE momentum units: u·Å/ase-time, energies in eV).
    p = rng.standard_normal((n, 3)) * np.sqrt(masses * KB * max(temperature, 0.0))[:, None]
    if dim == 2:
        p[:, 2] = 0.0
    if n > 1:
        p -= masses[:, None] * (p.sum(axis=0) / masses.sum())
    a.set_momenta(p)
    t_now = kinetic_temperature(a, dim)
    if t_now > 0:
        a.set_momenta(p * np.sqrt(temperature / t_now))
    else:
        a.set_momenta(np.zeros((n, 3)))
    return MDState(atoms=a, step=step)


# ----------------------------------------------------------------------------- by reference


class StateRefused(AutopipeError):
    """A checkpoint by reference that does not match its recorded size and sha256 (changed, truncated
    or missing on scratch): the worker does not resume from it."""


@dataclass(frozen=True)
class StateRef:
    """A walker state by reference: ``path`` (absolute, the same on the steering host and the
    workers), ``size`` (bytes) and ``sha256`` of the checkpoint file, and its MD ``step``."""

    path: str
    size: int
    sha256: str
    step: int

    def to_text(self) -> str:
        """The form kept in the database's checkpoint columns (a JSON object; a plain path is by value)."""
        return json.dumps({"path": self.path, "size": self.size, "sha256": self.sha256, "step": self.step})

    @classmethod
    def from_text(cls, text: str | None) -> StateRef | None:
        """The reference a checkpoint column holds, or None for a plain path (a checkpoint on the steering host)."""
        if not text or not text.lstrip().startswith("{"):
            return None
        d = json.loads(text)
        return cls(path=str(d["path"]), size=int(d["size"]), sha256=str(d["sha256"]), step=int(d["step"]))


def save_state_ref(path: Path | str, state: MDState) -> StateRef:
    """Write ``state`` to ``path`` (:func:`save_state`) and return its reference."""
    path = save_state(path, state)
    data = path.read_bytes()  # what landed on the file system is what the next reader checks
    return StateRef(path=str(path.resolve()), size=len(data), sha256=hashlib.sha256(data).hexdigest(), step=state.step)


def load_state_ref(ref: StateRef) -> MDState:
    """The state ``ref`` names, read once and checked against its size and sha256 before use;
    :class:`StateRefused` (one line) when the file is missing or does not match."""
    try:
        data = Path(ref.path).read_bytes()
    except OSError as exc:
        raise StateRefused(f"walker checkpoint {ref.path}: cannot be read ({exc.strerror or exc}); not resumed") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != ref.size or digest != ref.sha256:
        raise StateRefused(f"walker checkpoint {ref.path}: {len(data)} bytes with sha256 {digest[:12]}, recorded "
                           f"{ref.size} bytes with sha256 {ref.sha256[:12]}; not resumed")
    state = load_state(io.BytesIO(data))
    if state.step != ref.step:
        raise StateRefused(f"walker checkpoint {ref.path}: holds step {state.step}, recorded {ref.step}; not resumed")
    return state


@dataclass(frozen=True)
class OnScratch:
    """What an MD task receives instead of a state on the shared-scratch route: the reference of
    the state it resumes from, and ``directory`` (absolute, on the shared scratch) where it writes
    the states it returns by reference. Earlier checkpoints are never overwritten: a segment writes
    only into its own directory, so the walker's previous good checkpoint stays until the next is
    recorded (and after)."""

    ref: StateRef
    directory: str

    def load(self) -> MDState:
        return load_state_ref(self.ref)

    def keep(self, result):
        """``result`` (a ``SegmentResult``) with its final and rewind states written under
        ``directory`` and replaced by their :class:`StateRef`; a failed segment's final state is
        the unchanged start, returned as the reference it came as."""
        from autopipe.layout import checkpoint_file

        def put(state: MDState) -> StateRef:
            if state.step == self.ref.step:
                return self.ref  # the start state: already on scratch
            return save_state_ref(checkpoint_file(self.directory, state.step), state)

        final = self.ref if result.status == "failed" else put(result.final_state)
        rewind = put(result.rewind_state) if result.rewind_state is not None else None
        return replace(result, final_state=final, rewind_state=rewind)
