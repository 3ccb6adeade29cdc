"""pyace takes fully periodic or fully open cells only: make mixed-pbc cells (2D, slabs) periodic.

A 2D layer (pbc (T, T, F)) becomes fully periodic with the cell along each open axis
long enough that no atom sees a periodic image across it: length >= extent + cutoff +
margin. Energies and forces are then those of the open system.
"""

from __future__ import annotations

import numpy as np

MARGIN = 1.0  # Å beyond the cutoff, so rounding never lets an image creep inside it


def closed_for_ace(atoms, cutoff: float):
    """A fully periodic copy of ``atoms`` equivalent to it for a potential of range ``cutoff`` (Å).

    Fully periodic or fully open cells are returned as they are (same object). Open axes
    must be Cartesian-aligned (as for 2D systems with vacuum along z).
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all() or not pbc.any():
        return atoms
    out = atoms.copy()
    cell = out.cell.array.copy()
    for k in np.flatnonzero(~pbc):
        axis = np.zeros(3)
        axis[k] = 1.0
        if not np.allclose(np.abs(cell[k] / (np.linalg.norm(cell[k]) or 1.0)), axis, atol=1e-8) or np.any(
            np.abs(np.delete(cell, k, axis=0)[:, k]) > 1e-8
        ):
            raise ValueError(f"open axis {k} is not Cartesian-aligned; cannot close the cell for ACE")
        extent = float(np.ptp(out.positions[:, k])) if len(out) else 0.0
        need = extent + cutoff + MARGIN
        if cell[k, k] < need:
            cell[k, k] = need
    out.set_cell(cell, scale_atoms=False)
    out.pbc = True
    return out
