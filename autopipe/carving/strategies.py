"""One entry point for every carving strategy, and the k-point rule applied to its cell.

``cube``: :func:`autopipe.embedding.extract_periodic_subsystem` (any structure, liquids
included). ``commensurate``: :func:`autopipe.carving.lattice.carve_commensurate` (crystals
with a reference lattice). Both return ``(sub, masked)`` with the same conventions, so the
loop, the buffer scan and the tests treat them alike.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from autopipe.carving.kpoints import KpointChoice, choose_kpoints
from autopipe.carving.lattice import ReferenceLattice, carve_commensurate

__all__ = ["STRATEGIES", "carve", "apply_kpoint_rule", "AsBigAsTheFrame", "check_worth_carving"]

STRATEGIES = ("cube", "commensurate")


class AsBigAsTheFrame(ValueError):
    """A carved cell holding at least a given fraction of its frame's atoms: no saving over the whole frame."""


def check_worth_carving(n_cell: int, n_frame: int, fraction: float) -> None:
    """Raise :class:`AsBigAsTheFrame` when a cell of ``n_cell`` atoms holds at least ``fraction`` of
    the frame's ``n_frame``: label the whole frame instead. The one rule of the loop
    (``embedding.whole_frame_fraction``) and of the carving instrument (which measures up to 1.0).
    Atom counts, not volumes: a long thin parent's cube holds as many atoms as the parent."""
    if n_cell >= fraction * n_frame:
        raise AsBigAsTheFrame(f"a carved cell would hold {n_cell} atoms, at least {fraction:g} of the frame's {n_frame}")


def carve(frame: Atoms, center: int, strategy: str, core_radius: float, buffer: float, *,
          lattice: ReferenceLattice | None = None, min_distance: float = 0.5) -> tuple[Atoms, np.ndarray]:
    """Carve a periodic cell around atom ``center`` of ``frame`` with ``strategy`` (Å throughout).

    Raises ``ValueError`` (its subclasses :class:`~autopipe.carving.lattice.ParentTooSmall` and
    :class:`~autopipe.carving.lattice.LatticeMismatch` included) when the cell cannot be made.
    """
    if strategy == "cube":
        from autopipe.embedding import extract_periodic_subsystem

        sub, masked = extract_periodic_subsystem(frame, center, core_radius, buffer, min_distance=min_distance)
        sub.info["embedding_strategy"] = "cube"
        return sub, masked
    if strategy == "commensurate":
        if lattice is None:
            raise ValueError("commensurate carving needs a reference lattice (embedding.lattice, or a bulk system)")
        return carve_commensurate(frame, center, core_radius, buffer, lattice, min_distance=min_distance)
    raise ValueError(f"unknown carving strategy {strategy!r} (one of {', '.join(STRATEGIES)})")


def apply_kpoint_rule(sub: Atoms, parent: Atoms, rule: str, kspacing: float, gamma_only_length: float) -> KpointChoice:
    """Give ``sub`` its k-point mesh under ``rule`` (``density``/``fold``), recorded in ``sub.info``
    (``embedding_kpts``, ``embedding_kpoint_rule``, and ``embedding_kpoint_note`` on a fall-back),
    where the pw.x labeller reads it. ``kspacing`` (1/Å, 2π included) and ``gamma_only_length`` (Å)
    are the run's ``dft`` settings, which the parent's own mesh follows."""
    from autopipe.dft.geometry import kpoint_grid

    choice = choose_kpoints(rule, np.array(sub.cell), np.array(parent.cell),
                            kpoint_grid(parent, kspacing, gamma_only_length),
                            kpoint_grid(sub, kspacing, gamma_only_length))
    sub.info["embedding_kpts"] = list(choice.mesh) if choice.mesh is not None else [1, 1, 1]
    sub.info["embedding_kpoint_rule"] = choice.rule
    if choice.note:
        sub.info["embedding_kpoint_note"] = choice.note
    return choice
