"""k-point grids and structure checks (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from hypothesis import given, settings
from hypothesis import strategies as st

from autopipe.dft.geometry import clean_copy, closest_pair, kpoint_grid, structure_problem


def test_kpoint_grid_cubic_by_hand():
    # |b| = 2π / 5.43 Å = 1.1571 1/Å; 1.1571 / 0.25 = 4.63 -> 5
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    assert kpoint_grid(atoms, 0.25, 20.0) == (5, 5, 5)
    # 1.1571 / 0.6 = 1.93 -> 2
    assert kpoint_grid(atoms, 0.6, 20.0) == (2, 2, 2)
    # larger than |b|: one k-point
    assert kpoint_grid(atoms, 2.0, 20.0) == (1, 1, 1)


def test_kpoint_grid_exact_ratio_does_not_round_up():
    a = 2 * math.pi / (4 * 0.25)  # |b| / kspacing == 4 exactly
    atoms = Atoms("H", cell=[a, a, a], pbc=True)
    assert kpoint_grid(atoms, 0.25, 100.0) == (4, 4, 4)


def test_kpoint_grid_non_periodic_axis_gets_one_point():
    atoms = Atoms("Si2", positions=[[0, 0, 10], [1.2, 1.2, 11]], cell=[4.0, 5.0, 25.0], pbc=[True, True, False])
    # 2π/4/0.25 = 6.28 -> 7; 2π/5/0.25 = 5.03 -> 6; z non-periodic -> 1
    assert kpoint_grid(atoms, 0.25, 20.0) == (7, 6, 1)


def test_gamma_only_when_every_periodic_length_exceeds_threshold():
    big = Atoms("Si", cell=[21.0, 22.0, 23.0], pbc=True)
    assert kpoint_grid(big, 0.25, 20.0) is None
    one_short = Atoms("Si", cell=[21.0, 19.0, 23.0], pbc=True)
    assert kpoint_grid(one_short, 0.25, 20.0) is not None
    # A short non-periodic axis does not count.
    slab = Atoms("Si", cell=[21.0, 22.0, 5.0], pbc=[True, True, False])
    assert kpoint_grid(slab, 0.25, 20.0) is None
    molecule = Atoms("Si", cell=[5.0, 5.0, 5.0], pbc=False)
    assert kpoint_grid(molecule, 0.25, 20.0) is None


cells = st.lists(st.floats(-1.5, 1.5), min_size=9, max_size=9).map(lambda v: np.eye(3) * 6.0 + np.reshape(v, (3, 3)))


@settings(max_examples=60, deadline=None)
@given(cell=cells, kspacing=st.floats(0.1, 1.0))
def test_kpoint_grid_is_the_smallest_meeting_the_spacing(cell, kspacing):
    atoms = Atoms("H", cell=cell, pbc=True)
    grid = kpoint_grid(atoms, kspacing, 100.0)
    b = 2 * math.pi * np.linalg.inv(cell).T  # rows: reciprocal vectors with 2π
    for n, bi in zip(grid, b):
        length = np.linalg.norm(bi)
        assert length / n <= kspacing * (1 + 1e-9)  # fine enough
        assert n == 1 or length / (n - 1) > kspacing * (1 - 1e-9)  # and no finer than needed


def test_closest_pair_sees_periodic_images():
    atoms = Atoms("Si2", positions=[[0.1, 0, 0], [4.9, 0, 0]], cell=[5.0, 5.0, 5.0], pbc=True)
    i, j, d = closest_pair(atoms, 0.5)
    assert (i, j) == (0, 1) and d == pytest.approx(0.2)
    atoms.pbc = False
    assert closest_pair(atoms, 0.5) is None
    # periodic=True overrides pbc: what a plane-wave code sees.
    assert closest_pair(atoms, 0.5, periodic=True)[2] == pytest.approx(0.2)


def test_closest_pair_self_image_and_coincident_atoms():
    tiny = Atoms("Si", cell=[0.3, 5.0, 5.0], pbc=True)
    i, j, d = closest_pair(tiny, 0.5)
    assert (i, j) == (0, 0) and d == pytest.approx(0.3)
    same = Atoms("Si2", positions=[[1, 1, 1], [1, 1, 1]], cell=[5.0, 5.0, 5.0], pbc=True)
    assert closest_pair(same, 0.5)[2] == pytest.approx(0.0)


def test_structure_problem_reasons():
    ok = bulk("Si", "diamond", a=5.43)
    assert structure_problem(ok, min_distance=0.5, needs_full_cell=True) is None
    assert "no atoms" in structure_problem(Atoms(cell=[5, 5, 5], pbc=True), min_distance=0.5, needs_full_cell=True)
    flat = Atoms("Si", cell=[5.0, 5.0, 0.0], pbc=[True, True, False])
    assert "three-dimensional" in structure_problem(flat, min_distance=0.5, needs_full_cell=True)
    assert structure_problem(flat, min_distance=0.5, needs_full_cell=False) is None
    close = ok.copy()
    close.positions[1] = close.positions[0] + [0.3, 0, 0]
    reason = structure_problem(close, min_distance=0.5, needs_full_cell=True)
    assert "atoms 0 and 1" in reason and "0.300" in reason
    nan = ok.copy()
    nan.positions[0, 0] = np.nan
    assert "non-finite" in structure_problem(nan, min_distance=0.5, needs_full_cell=True)


def test_clean_copy_drops_constraints_and_moments():
    from ase.constraints import FixAtoms

    atoms = bulk("Fe", "bcc", a=2.87, cubic=True)
    atoms.set_constraint(FixAtoms([0]))
    atoms.set_initial_magnetic_moments([2.0, 2.0])
    clean = clean_copy(atoms)
    assert clean.constraints == [] and not clean.get_initial_magnetic_moments().any()
    assert np.array_equal(clean.positions, atoms.positions) and np.array_equal(clean.pbc, atoms.pbc)
