"""Bulk crystals of a run file's ``bulk`` structures: the unit cell ase.build.bulk makes (one element
or a two-element prototype) and the species of a random alloy on its sites. Pure functions; the
config checks them at load time, :mod:`autopipe.generate` and :mod:`autopipe.carving.reference`
build with them. Lengths in Å."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import BulkStructure


def bulk_formula(src: BulkStructure, run_elements: Sequence[str]) -> str:
    """The species string ase.build.bulk builds ``src``'s unit cell from: a prototype's formula
    (``MgO``; fluorite ``CaF2``), else the crystal's one element (an alloy's first: its species are
    substituted after the repeat)."""
    if src.elements:
        first, second = src.elements
        return first + second + (second if src.crystal == "fluorite" else "")
    if src.composition:
        return next(iter(src.composition))
    return src.element or run_elements[0]


def bulk_unit_cell(src: BulkStructure, run_elements: Sequence[str]) -> Atoms:
    """The unit cell of a ``bulk`` structure (before repeat, alloy species, vacancies and rattle)."""
    from ase.build import bulk

    return bulk(bulk_formula(src, run_elements), src.crystal, a=src.a, cubic=src.cubic)


def alloy_counts(composition: dict[str, float], n_sites: int) -> dict[str, int]:
    """Whole atoms per element for ``composition`` (fractions summing to 1) on ``n_sites`` sites:
    floors, the remaining sites to the largest remainders (ties: the order given). Raises
    ``ValueError`` when an element would get no atom."""
    exact = {e: f * n_sites for e, f in composition.items()}
    counts = {e: int(np.floor(x + 1e-9)) for e, x in exact.items()}
    left = n_sites - sum(counts.values())
    for e in sorted(exact, key=lambda e: -(exact[e] - counts[e]))[:max(left, 0)]:
        counts[e] += 1
    empty = [e for e, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"{n_sites} sites give no {', '.join(empty)} atom: repeat the crystal or raise the fraction")
    return counts


def substitute(atoms: Atoms, composition: dict[str, float], seed: int) -> None:
    """Put :func:`alloy_counts` of each element on ``atoms``' sites at random (seeded), in place."""
    counts = alloy_counts(composition, len(atoms))
    # Its own stream of the seed: the species must not change with the vacancy count or the rattle.
    order = np.random.default_rng([seed, 21]).permutation(len(atoms))
    symbols = np.empty(len(atoms), dtype=object)
    symbols[order] = [e for e, n in counts.items() for _ in range(n)]
    atoms.symbols = list(symbols)
