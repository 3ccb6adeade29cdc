"""Selection before DFT: healed candidates and duplicate environments are dropped."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from autopipe.embedding import extract_periodic_subsystem
from autopipe.steer.selection import core_fingerprint, same_environment, select_candidates


def _liquid(seed, n=200, box=14.0):
    rng = np.random.default_rng(seed)
    return Atoms("Ar" * n, positions=rng.uniform(0, box, (n, 3)), cell=[box] * 3, pbc=True)


def _carve(atoms, c):
    sub, _ = extract_periodic_subsystem(atoms, c, 3.0, 3.0, min_distance=0.0)
    return sub


def test_identical_environments_are_duplicates_and_highest_gamma_wins():
    parent = _liquid(0)
    a = _carve(parent, 5)
    b = a.copy()  # same hole seen by a second walker
    c = _carve(parent, 77)  # a different environment
    d = select_candidates([a, b, c], [6.0, 9.0, 7.0], threshold=5.0)
    assert [x.keep for x in d] == [False, True, True]
    assert "duplicate" in d[0].reason


def test_small_displacements_beyond_tolerance_are_not_duplicates():
    a = _carve(_liquid(1), 3)
    b = a.copy()
    b.positions[1:] += 0.2  # moves every neighbour: distances from the centre change
    assert not same_environment(core_fingerprint(a), core_fingerprint(b), 0.05)
    d = select_candidates([a, b], [6.0, 6.0], threshold=5.0, tolerance=0.05)
    assert all(x.keep for x in d)


def test_existing_structures_count_as_duplicates():
    a = _carve(_liquid(2), 9)
    d = select_candidates([a], [8.0], threshold=5.0, existing=[a.copy()])
    assert not d[0].keep


def test_healed_candidates_are_dropped_with_the_new_gamma_in_the_reason():
    a, b = _carve(_liquid(3), 1), _carve(_liquid(3), 100)
    regamma = {id(a): 1.3, id(b): 12.0}
    d = select_candidates([a, b], [9.0, 9.0], threshold=5.0, regamma=lambda x: regamma[id(x)])
    assert not d[0].keep and "healed" in d[0].reason and "1.30" in d[0].reason
    assert d[1].keep


def test_a_core_smaller_than_a_bond_does_not_make_everything_a_duplicate():
    from ase.build import bulk

    si = bulk("Si", "diamond", a=5.43, cubic=True).repeat(3)
    si.rattle(0.1, seed=4)
    a, _ = extract_periodic_subsystem(si, 0, 2.0, 2.5, min_distance=0.0)  # core radius < Si-Si bond
    b, _ = extract_periodic_subsystem(si, 50, 2.0, 2.5, min_distance=0.0)
    d = select_candidates([a, b], [3.0, 3.0], threshold=2.0)
    assert all(x.keep for x in d)
