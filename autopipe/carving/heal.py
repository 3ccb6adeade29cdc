"""Seam healing: relax the outer shell of a carved cell with the current potential before DFT.

Where no lattice fits (liquids, amorphous material, grain boundaries), a cube carve joins
atoms across its faces at arbitrary separations: some pairs nearly overlap, others leave
holes. DFT then sees a strained, unphysical seam, and its effect reaches the core. Relaxing
the atoms near the seams with the current potential (which is good enough for
near-equilibrium bulk-like environments, though not for the configuration that triggered)
makes the seam bulk-like, while the core and an inner shell around it stay exactly as they
were in the parent. Hodapp and Shapeev relax the outer atoms the same way.

Bounds keep the healing honest, and a cell that breaks one is refused with the reason:
- no atom moves more than ``max_displacement`` Å (a seam that needs more is not a seam);
- no pair ends closer than ``min_distance`` Å;
- the relaxed atoms' extrapolation grade stays below ``max_gamma`` when the calculator
  reports one (the potential must not heal the seam with configurations it cannot judge);
- at most ``steps`` descent steps (the result records whether ``fmax`` was reached).

Units: Å, eV, eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["HealBounds", "HealingRefused", "heal_seams"]


class HealingRefused(ValueError):
    """The seams could not be healed within the bounds; the message says which bound and by how much."""


@dataclass(frozen=True)
class HealBounds:
    """How far seam healing may go. ``fixed_shell``: Å beyond the core radius that stay fixed too;
    ``seam_width``: only atoms within this many Å of a face of the cell move (their neighbours
    across the face are images, not the parent's atoms)."""

    fixed_shell: float = 1.0
    seam_width: float = 1.5
    max_displacement: float = 1.0
    min_distance: float = 1.2
    max_gamma: float | None = None
    steps: int = 100
    fmax: float = 0.05
    alpha: float = 0.02  # Å per eV/Å of residual force in one step
    maxstep: float = 0.05  # Å, largest move of one atom in one step


def heal_seams(sub: Atoms, masked: np.ndarray, calc: Any, bounds: HealBounds = HealBounds(),
               target_forces: np.ndarray | None = None) -> tuple[Atoms, dict]:
    """Relax the seam atoms of ``sub`` (within ``seam_width`` Å of a face and farther than
    ``core + fixed_shell`` Å from the centre ``sub[0]``) with ``calc``; everything else stays where
    the parent had it.

    ``target_forces`` (eV/Å, one row per atom of ``sub``): the forces the potential gives these
    atoms in the parent frame. The seam atoms then relax under ``F_cell - F_target``: only the
    part of their force that the carve created is relaxed away, and the thermal forces of a hot
    frame (which a plain minimisation would also remove, moving atoms far from where the parent
    had them) are kept. Without it, a plain relaxation.

    ``masked`` (indices of atoms beyond the core, as the carvers return it) fixes the core
    radius: the largest distance of an unmasked atom. Steepest descent with at most
    ``maxstep`` Å per atom and step. Returns the healed copy (``info["embedding_healed"]``:
    steps, largest displacement, final residual force, whether ``fmax`` was reached, atoms
    moved) and the same record. Raises :class:`HealingRefused`.
    """
    atoms = sub.copy()
    atoms.calc = calc
    d = atoms.get_distances(0, range(len(atoms)), mic=True)
    core = np.setdiff1d(np.arange(len(atoms)), masked)
    core_radius = float(d[core].max()) if len(core) else 0.0
    frac = atoms.get_scaled_positions(wrap=True)
    width = 1.0 / np.linalg.norm(np.linalg.inv(np.array(atoms.cell)).T, axis=1)  # perpendicular widths, Å
    periodic = np.asarray(atoms.pbc, dtype=bool)
    to_face = np.min(((0.5 - np.abs(frac - 0.5)) * width)[:, periodic], axis=1) if periodic.any() else np.full(len(atoms), np.inf)
    moving = np.flatnonzero((d > core_radius + bounds.fixed_shell + 1e-9) & (to_face <= bounds.seam_width))
    target = np.zeros((len(atoms), 3)) if target_forces is None else np.asarray(target_forces, dtype=float)
    start = atoms.positions.copy()
    steps, residual, converged = 0, 0.0, moving.size == 0
    while not converged and steps < bounds.steps:
        f = (atoms.get_forces() - target)[moving]
        if not periodic.all():  # a slab or a 2D layer stays in its plane along the open axes
            f[:, ~periodic] = 0.0
        norms = np.linalg.norm(f, axis=1)
        residual = float(norms.max())
        if residual < bounds.fmax:
            converged = True
            break
        step = bounds.alpha * f
        length = np.linalg.norm(step, axis=1)
        step *= np.minimum(1.0, bounds.maxstep / np.maximum(length, 1e-12))[:, None]
        positions = atoms.positions
        positions[moving] += step
        atoms.positions = positions
        steps += 1
    shift = np.linalg.norm(atoms.positions - start, axis=1)
    record = {"steps": steps, "max_displacement": float(shift.max()) if len(shift) else 0.0,
              "residual_force": residual, "converged": bool(converged), "moved": int(moving.size)}
    if record["max_displacement"] > bounds.max_displacement:
        raise HealingRefused(f"seam healing moved an atom {record['max_displacement']:.2f} Å (at most "
                             f"{bounds.max_displacement:g} Å allowed): the seam is no small defect")
    if len(atoms) > 1:
        pair = atoms.get_all_distances(mic=True)
        np.fill_diagonal(pair, np.inf)
        if pair.min() < bounds.min_distance:
            raise HealingRefused(f"after seam healing two atoms are {pair.min():.2f} Å apart (at least "
                                 f"{bounds.min_distance:g} Å required)")
    gamma = getattr(calc, "results", {}).get("gamma")
    if bounds.max_gamma is not None and gamma is not None and moving.size:
        atoms.get_forces()  # the results of the final positions
        g = float(np.max(np.asarray(calc.results["gamma"])[moving]))
        record["max_gamma"] = g
        if g > bounds.max_gamma:
            raise HealingRefused(f"the healed seam extrapolates (gamma {g:.2f} > {bounds.max_gamma:g}): the potential "
                                 "cannot be trusted to heal it")
    atoms.calc = None
    atoms.info["embedding_healed"] = record
    atoms.info["embedding_strategy"] = "healed"
    return atoms, record
