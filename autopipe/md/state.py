"""The state of an MD walker between segments, and its checkpoint files.

A walker's state is its atoms (positions Å, momenta, cell, pbc, masses) and its MD step
count. Checkpoints are ``.npz`` files written atomically (temporary file in the same
directory, flushed, then ``os.replace``), so a reader sees either the old or the new file,
never half of one.

File contents (units): ``numbers``, ``positions`` (Å), ``velocities`` (Å/fs), ``cell`` (Å),
``pbc``, ``step``, ``masses`` (u) and ``momenta`` (ASE units). ``velocities`` are for
readers of the file; ``momenta`` are what :func:`load_state` restores, so that a
save/load cycle reproduces the atoms bit for bit.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import MDConfig

__all__ = ["MDState", "save_state", "load_state", "initial_state", "kinetic_temperature", "velocities_fs"]

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


def save_state(path: Path | str, state: MDState) -> Path:
    """Write ``state`` to ``path`` (an ``.npz`` file) atomically; returns the path."""
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
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_state(path: Path | str) -> MDState:
    """Read a checkpoint written by :func:`save_state`."""
    from ase import Atoms, units

    with np.load(Path(path), allow_pickle=False) as z:
        atoms = Atoms(numbers=z["numbers"], positions=z["positions"], cell=z["cell"], pbc=z["pbc"])
        atoms.set_masses(z["masses"])
        if "momenta" in z:
            atoms.set_momenta(z["momenta"])
        else:  # a file from another writer: velocities in Å/fs are the documented field
            atoms.set_velocities(z["velocities"] / units.fs)
        step = int(z["step"])
    return MDState(atoms=atoms, step=step)


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
