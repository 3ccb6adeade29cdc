"""Choosing which carved sub-cells are worth a DFT call: D-optimal selection across walkers.

A sub-cell is worth labelling by how much its trusted (unmasked) atoms would add to what
the potential already knows. That is measured the way the extrapolation grade itself is
(MaxVol, as pacemaker's ``pace_activeset``/``pace_select`` do it): with ``A`` the active
set of the newest potential, an atom's B-basis projection ``b`` has grade
``gamma = max |b A^-1|``; ``gamma > 1`` means ``b`` would enlarge the volume spanned by
the active set, and replacing the row at ``argmax |b A^-1|`` by ``b`` does so.

One round of :func:`select_d_optimal`:

1. extend ``A`` with the trusted atoms of the cells that will be trained on soon: queued
   for DFT, or labelled successfully since the newest potential's training snapshot.
   Cells whose DFT failed are *not* included: their environments may be sent again;
2. greedily take the candidate whose trusted atoms have the highest grade against the
   extended set, while that grade exceeds the threshold, and extend the set with it.

So two walkers that hit equivalent holes buy one DFT call, and a candidate the newest
potential already covers (healed since it triggered) buys none. The linear algebra is
pure numpy (:func:`select_d_optimal`); :func:`trusted_projections` gets the projections
from pyace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: Per species type (pyace's index), an array of B-basis projections, one row per atom.
Rows = Mapping[int, np.ndarray]

#: A projection enlarges the active set only when its grade exceeds this (MaxVol's tolerance).
SWAP_TOLERANCE = 1.0 + 1e-6


@dataclass(frozen=True)
class Decision:
    keep: bool
    score: float  # max gamma of the trusted atoms against the extended active set when judged
    reason: str


def grade(rows: Rows, inverses: Mapping[int, np.ndarray]) -> float:
    """Largest extrapolation grade of ``rows`` against active-set inverses (0 for no rows)."""
    best = 0.0
    for st, r in rows.items():
        if len(r):
            best = max(best, float(np.abs(r @ inverses[st]).max()))
    return best


def extend(active: dict[int, np.ndarray], rows: Rows) -> int:
    """Swap rows into the active sets (MaxVol, most extrapolative first); returns rows taken.

    ``active`` maps species type to its square active-set matrix and is changed in place.
    """
    taken = 0
    for st, r in rows.items():
        a = active[st]
        inv = np.linalg.inv(a)
        todo = list(np.asarray(r, dtype=float))
        while todo:
            c = np.array([v @ inv for v in todo])
            k = int(np.argmax(np.abs(c).max(axis=1)))
            j = int(np.argmax(np.abs(c[k])))
            if abs(c[k, j]) <= SWAP_TOLERANCE:
                break
            a[j] = todo.pop(k)
            inv = np.linalg.inv(a)
            taken += 1
    return taken


def select_d_optimal(
    active_inverse: Mapping[int, np.ndarray],
    coming: Sequence[Rows],
    candidates: Sequence[Rows],
    threshold: float,
) -> list[Decision]:
    """One :class:`Decision` per candidate (see the module docstring).

    ``active_inverse``: the newest potential's active-set inverses (its ``.asi``);
    ``coming``: trusted-atom projections of cells that will be trained on soon;
    ``candidates``: trusted-atom projections of the new candidates; ``threshold``: the
    uncertainty threshold that triggers the MD (a candidate below it adds nothing worth a label).
    """
    active = {st: np.linalg.inv(np.asarray(inv, dtype=float)) for st, inv in active_inverse.items()}
    for rows in coming:
        extend(active, rows)
    decisions: list[Decision | None] = [None] * len(candidates)
    left = [k for k, rows in enumerate(candidates) if any(len(r) for r in rows.values())]
    for k in set(range(len(candidates))) - set(left):
        decisions[k] = Decision(False, 0.0, "no trusted atoms")
    while left:
        inverses = {st: np.linalg.inv(a) for st, a in active.items()}
        scores = {k: grade(candidates[k], inverses) for k in left}
        best = max(left, key=lambda k: scores[k])
        if scores[best] <= threshold:
            for k in left:
                decisions[k] = Decision(False, scores[k], f"covered: core gamma {scores[k]:.2f} <= {threshold:g} "
                                                          "against the active set and the cells already chosen")
            break
        decisions[best] = Decision(True, scores[best], f"selected: core gamma {scores[best]:.2f}")
        extend(active, candidates[best])
        left.remove(best)
    return [d for d in decisions if d is not None]


def trusted_projections(cells, potential) -> tuple[dict[int, np.ndarray], list[dict[int, np.ndarray]]]:
    """(active-set inverses by species type, per cell the B-projections of its trusted atoms).

    ``cells``: ``[(atoms, masked_indices)]``; ``potential``: a ``PotentialFiles`` (B-basis
    ``yaml`` and ``asi``). Mixed-pbc cells (2D layers) are closed as for training.
    """
    from pyace import ACEBBasisSet, BBasisConfiguration
    from pyace.activelearning import compute_B_projections

    from autopipe.md.segment import potential_cutoff_from_yaml
    from autopipe.potentials.periodic import closed_for_ace

    bbasis = ACEBBasisSet(BBasisConfiguration(str(potential.yaml)))
    index = dict(bbasis.elements_to_index_map)
    with np.load(potential.asi) as asi:
        inverses = {index[el]: np.array(asi[el]) for el in asi.files if el in index}
    cutoff = potential_cutoff_from_yaml(potential.yaml)
    out = []
    for atoms, masked in cells:
        proj = compute_B_projections(bbasis, [closed_for_ace(atoms, cutoff)], is_full=False)
        trusted = np.ones(len(atoms), bool)
        trusted[list(masked)] = False
        species = np.array([index[s] for s in atoms.get_chemical_symbols()])
        out.append({st: proj[st][trusted[species == st]] for st in proj})
    return inverses, out
