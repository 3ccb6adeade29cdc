"""Choosing which carved sub-cells are worth a DFT call.

Two documented criteria, applied in order to the candidates of all walkers:

1. **Still uncertain.** A candidate was carved with the potential that triggered. If a
   newer potential has been published since, its gamma on the candidate's core atoms
   (the unmasked ones, whose forces will be trained on) is recomputed; when it is below
   the threshold the hole is already healed and the candidate is dropped.
2. **Not a duplicate.** Two candidates describe the same environment when their centre
   atoms have the same species and their sorted centre-neighbour distances within
   ``cutoff + buffer`` (everything that shapes the trained core's forces) agree to
   ``tolerance`` Å (same count, max difference below it). Of a
   group of duplicates the one with the highest gamma is kept; candidates are compared
   with each other and with structures already sent to DFT. Walkers that hit the same
   hole at once therefore buy one DFT call, not several.

Pure functions over ``ase.Atoms``; the loop records what was dropped and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def core_fingerprint(atoms, center: int = 0, cutoff: float | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """(centre Z, sorted neighbour distances (Å), neighbour Z in that order) within ``cutoff``.

    Distances use the sub-cell's own periodicity (minimum image). ``cutoff`` defaults to
    ``embedding_cutoff + embedding_buffer`` from ``atoms.info``: a core radius alone can be
    shorter than a bond (then every environment would look alike).
    """
    if cutoff is None:
        cutoff = float(atoms.info["embedding_cutoff"]) + float(atoms.info.get("embedding_buffer", 0.0))
    d = atoms.get_distances(center, np.arange(len(atoms)), mic=bool(np.any(atoms.pbc)))
    sel = np.flatnonzero((d <= cutoff) & (np.arange(len(atoms)) != center))
    order = np.argsort(d[sel], kind="stable")
    return int(atoms.numbers[center]), d[sel][order], atoms.numbers[sel][order]


def same_environment(a, b, tolerance: float) -> bool:
    """True when two fingerprints describe the same local environment (see module doc)."""
    za, da, na = a
    zb, db, nb = b
    if za != zb or len(da) != len(db) or not np.array_equal(np.sort(na), np.sort(nb)):
        return False
    return bool(len(da) == 0 or np.max(np.abs(da - db)) < tolerance)


def select_candidates(
    candidates: Sequence,
    gammas: Sequence[float],
    *,
    threshold: float,
    existing: Sequence = (),
    regamma: Callable[[object], float] | None = None,
    tolerance: float = 0.05,
) -> list[Decision]:
    """One :class:`Decision` per candidate sub-cell (``ase.Atoms`` with ``embedding_cutoff`` in info).

    ``gammas`` are the candidates' gamma at carving; ``existing`` are structures already
    labelled or queued for DFT; ``regamma(atoms)`` (optional) returns the newest
    potential's max gamma over the candidate's core atoms.
    """
    decisions: list[Decision | None] = [None] * len(candidates)
    if regamma is not None:
        for i, atoms in enumerate(candidates):
            g = regamma(atoms)
            if g < threshold:
                decisions[i] = Decision(False, f"healed: newest potential's core gamma {g:.2f} < {threshold:g}")
    prints = [core_fingerprint(a) for a in candidates]
    kept_prints = [core_fingerprint(a) for a in existing]
    # Highest gamma first, so a duplicate group keeps its most uncertain member.
    for i in sorted(range(len(candidates)), key=lambda k: -gammas[k]):
        if decisions[i] is not None:
            continue
        dup = next((j for j, fp in enumerate(kept_prints) if same_environment(prints[i], fp, tolerance)), None)
        if dup is not None:
            decisions[i] = Decision(False, f"duplicate of an environment already sent to DFT (within {tolerance:g} Å)")
        else:
            decisions[i] = Decision(True, f"selected: gamma {gammas[i]:.2f}")
            kept_prints.append(prints[i])
    return [d for d in decisions if d is not None]
