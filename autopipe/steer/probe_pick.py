"""The false-negative probe's pick at a segment's end: pure rules, run on the MD worker
(:func:`autopipe.steer.work.probe_on_worker`); the rest of the probe (its share, what it stores,
its scores) is :mod:`autopipe.steer.probe`.

Units: gamma dimensionless, positions Å.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.steer.work import CarvedCell

__all__ = ["pick_atom", "probe_rng", "probe_cell", "probe_info"]


def pick_atom(gamma: np.ndarray, threshold: float, rng: np.random.Generator) -> int | None:
    """A random atom (uniform) among those with ``gamma < threshold``; None when there is none."""
    below = np.flatnonzero(np.asarray(gamma, dtype=float) < threshold)
    return int(rng.choice(below)) if len(below) else None


def probe_rng(seed: int, walker: int, step: int) -> np.random.Generator:
    """The picker's generator for walker ``walker`` at MD step ``step``: the same after a resume."""
    return np.random.default_rng([int(seed), int(walker), int(step)])


def probe_cell(frame: Atoms, threshold: float, rng: np.random.Generator,
               carve: Callable[[Atoms, int], CarvedCell]) -> tuple[CarvedCell | None, str]:
    """Pick the probe's atom in ``frame`` (``arrays["gamma"]``) and carve around it with
    ``carve(frame, center)``; returns the cell (None: nothing to label) and what happened."""
    gamma = np.asarray(frame.arrays["gamma"], dtype=float)
    center = pick_atom(gamma, threshold, rng)
    if center is None:
        return None, f"no atom below the threshold {threshold:g}"
    cell = carve(frame, center)
    if cell.refused:
        return None, f"atom {center} (gamma {gamma[center]:.2f}): {cell.refused.splitlines()[0]}"
    return cell, f"atom {center} (gamma {gamma[center]:.2f})"


def probe_info(cell: CarvedCell, frame_gamma: np.ndarray, version: int, walker: int, segment: int,
               step: int) -> dict[str, Any]:
    """What a probe structure records: its centre's gamma, the max gamma of the cell's trusted
    atoms (in the frame), the version that ran, the walker, segment and MD step."""
    if cell.whole_frame:
        core = np.asarray(frame_gamma, dtype=float)
    else:
        parent = np.asarray(cell.atoms.arrays["parent_index"])
        trusted = np.ones(len(parent), bool)
        trusted[list(cell.masked)] = False
        core = np.asarray(frame_gamma, dtype=float)[parent[trusted]]
    return {"center": cell.center, "gamma": cell.gamma, "core_max_gamma": float(core.max()) if len(core) else None,
            "version": version, "walker": walker, "segment": segment, "step": step}
