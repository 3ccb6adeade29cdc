"""k-point rules for carved cells: equal density, or the parent's mesh folded onto the cell.

``density``: the cell gets the k-point spacing the run sets for every structure
(``dft.kspacing``), as the parent does. Simple, but a carved cell's mesh then samples the
Brillouin zone differently from the parent's, which adds its own error to the carve's.

``fold``: the cell's Gamma-centred mesh is the smallest that contains every k-point of the
parent's mesh. Then the cell samples (at least) the states the parent samples, and a
commensurate cell of a crystal sees the same band structure as its parent up to the
seams. For a 3x3x3-period Si parent at Gamma carved into a 2x2x2-period cell this gives
3x3x3 (``../shared/data/si215-vacancy-md``: core rms 0.13 eV/Å against 0.26 at Gamma).
A cube carve is generally incommensurate with the parent's lattice: no mesh folds, and
the rule falls back to ``density`` (said in the result).

Reciprocal vectors here are without the 2π (``a_i . b_j = δ_ij``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KpointChoice", "folded_mesh", "choose_kpoints"]

#: Largest mesh the fold rule considers along one axis; beyond it the rule gives up.
MAX_FOLD = 16
#: How close to an integer a folded coordinate must be.
_INTEGER_TOL = 1e-4


@dataclass(frozen=True)
class KpointChoice:
    """The mesh a carved cell gets: ``mesh`` (None: the Gamma point, with pw.x's real-wavefunction
    routines), the rule that made it, and a note when the rule had to fall back."""

    mesh: tuple[int, int, int] | None
    rule: str  # "density" or "fold"
    note: str = ""


def folded_mesh(cell: np.ndarray, parent_cell: np.ndarray,
                parent_mesh: tuple[int, int, int] = (1, 1, 1)) -> tuple[int, int, int] | None:
    """Smallest Gamma-centred mesh of ``cell`` containing every point of the parent's Gamma-centred
    ``parent_mesh`` (cells: rows are lattice vectors, Å). None when the cells are not commensurate
    enough for a mesh of at most :data:`MAX_FOLD` points per axis to do it.

    A parent point ``k = m_i b_i^P / K_i`` lies on the cell's mesh ``j_j b_j / N_j`` when
    ``N_j (k . a_j)`` is an integer for every ``j``; it suffices to check the generators
    ``b_i^P / K_i``.
    """
    cell = np.asarray(cell, dtype=float)
    parent_recip = np.linalg.inv(np.asarray(parent_cell, dtype=float)).T
    generators = parent_recip / np.asarray(parent_mesh, dtype=float)[:, None]
    coords = generators @ cell.T  # coords[i, j] = generator_i . a_j
    mesh = []
    for j in range(3):
        for n in range(1, MAX_FOLD + 1):
            x = n * coords[:, j]
            if np.all(np.abs(x - np.round(x)) < _INTEGER_TOL):
                mesh.append(n)
                break
        else:
            return None
    return tuple(mesh)  # type: ignore[return-value]


def choose_kpoints(rule: str, cell: np.ndarray, parent_cell: np.ndarray,
                   parent_mesh: tuple[int, int, int] | None,
                   density_mesh: tuple[int, int, int] | None) -> KpointChoice:
    """The mesh of a carved cell under ``rule`` (``density`` or ``fold``).

    ``parent_mesh``: the parent's mesh under the run's k-spacing (None: Gamma);
    ``density_mesh``: the cell's own mesh under the same spacing (None: Gamma). ``fold`` falls
    back to ``density_mesh`` when no mesh folds (a cube carve of a crystal), with a note.
    """
    if rule == "density":
        return KpointChoice(density_mesh, "density")
    if rule != "fold":
        raise ValueError(f"unknown k-point rule {rule!r} (density or fold)")
    mesh = folded_mesh(cell, parent_cell, parent_mesh or (1, 1, 1))
    if mesh is None:
        return KpointChoice(density_mesh, "density",
                            "no k-point mesh of the carved cell folds onto the parent's (the cell is not a "
                            "whole number of the parent's periods): equal k-point density instead")
    return KpointChoice(None if mesh == (1, 1, 1) else mesh, "fold")
