"""Structure checks and the k-point grid: pure functions of an ``ase.Atoms``, no I/O.

Lengths in Å, reciprocal lengths in 1/Å (2π included).
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms


def clean_copy(atoms: Atoms) -> Atoms:
    """Numbers, positions, cell and pbc of ``atoms`` and nothing else.

    Constraints would be written as pw.x ``if_pos`` flags, which zero the reported
    forces of fixed atoms, and initial magnetic moments would switch spin on: neither
    belongs in a training label, so they are dropped.
    """
    return Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=atoms.cell[:].copy(), pbc=atoms.pbc.copy())


def closest_pair(atoms: Atoms, within: float, *, periodic: bool | None = None) -> tuple[int, int, float] | None:
    """The closest pair of atoms (i, j, distance in Å) closer than ``within``, else ``None``.

    Periodic images count, including an atom's own image when a cell vector is shorter
    than ``within``. ``periodic=True`` treats all three directions as periodic (what a
    plane-wave code sees whatever ``atoms.pbc`` says); ``None`` uses ``atoms.pbc``.
    """
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0 or within <= 0:
        return None
    probe = atoms.copy()
    if periodic is not None:
        probe.pbc = periodic
    i, j, d = neighbor_list("ijd", probe, float(within), self_interaction=False)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    a, b = sorted((int(i[k]), int(j[k])))
    return a, b, float(d[k])


def structure_problem(atoms: Atoms, *, min_distance: float, needs_full_cell: bool) -> str | None:
    """Why ``atoms`` cannot be computed (a complete sentence), or ``None`` if it can.

    ``needs_full_cell``: plane-wave codes need three linearly independent cell vectors
    (vacuum along non-periodic directions) and see every direction as periodic, so the
    distance check then includes images along all three cell vectors.
    """
    if len(atoms) == 0:
        return "the structure has no atoms."
    if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell[:])):
        return "the structure has non-finite positions or cell."
    if needs_full_cell:
        if atoms.cell.rank < 3 or abs(atoms.cell.volume) < 1e-6:
            return "the cell is not three-dimensional; give non-periodic directions a vacuum cell vector."
    pair = closest_pair(atoms, min_distance, periodic=True if needs_full_cell else None)
    if pair is not None:
        i, j, d = pair
        what = f"atom {i} and a periodic image of itself" if i == j else f"atoms {i} and {j}"
        return f"{what} are {d:.3f} Å apart (periodic images included), closer than min_distance {min_distance:g} Å."
    return None


def kpoint_grid(atoms: Atoms, kspacing: float, gamma_only_length: float) -> tuple[int, int, int] | None:
    """Monkhorst-Pack grid for a largest k-point spacing ``kspacing`` (1/Å, 2π included).

    n_i = max(1, ceil(|b_i| / kspacing)) with b_i the reciprocal vectors including 2π;
    1 along non-periodic directions. Returns ``None`` (Gamma point alone, for which
    pw.x has faster real-wavefunction routines) when every periodic cell vector is
    longer than ``gamma_only_length`` Å, and also when no direction is periodic.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    lengths = atoms.cell.lengths()
    if np.all(lengths[pbc] > gamma_only_length):
        return None
    recip = 2.0 * math.pi * np.asarray(atoms.cell.reciprocal())  # rows b_i/(2π) in ASE
    grid = []
    for axis in range(3):
        if not pbc[axis]:
            grid.append(1)
            continue
        # The small tolerance keeps an exact ratio (e.g. 4.0000000001) from rounding up.
        grid.append(max(1, math.ceil(np.linalg.norm(recip[axis]) / kspacing - 1e-9)))
    return tuple(grid)  # type: ignore[return-value]
