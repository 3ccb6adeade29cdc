"""ASE cell <-> LAMMPS restricted triclinic box."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autopipe.md.box import frame_atoms, lammps_box

cells = st.lists(st.floats(-3.0, 3.0), min_size=9, max_size=9).map(lambda v: np.eye(3) * 8.0 + np.reshape(v, (3, 3)))


@settings(max_examples=60, deadline=None)
@given(cell=cells, flip=st.booleans(), seed=st.integers(0, 1000))
def test_triclinic_round_trip(cell, flip, seed):
    if flip:  # a left-handed cell
        cell = cell[[1, 0, 2]]
    assume(abs(np.linalg.det(cell)) > 50)
    box = lammps_box(cell, (True, True, True), 3)
    m = box.matrix
    # LAMMPS form: lower triangular, positive diagonal, rotation proper
    assert np.all(np.triu(m, 1) == 0) and np.all(np.diag(m) > 0)
    assert np.allclose(box.rotation @ box.rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(box.rotation) == pytest.approx(1.0)
    # the same lattice: the LAMMPS edge vectors are the (rotated) cell vectors, one negated if left-handed
    assert np.allclose(box.ase_cell(), cell, atol=1e-10)
    pos = np.random.default_rng(seed).normal(0, 6, (7, 3))
    lp = box.to_lammps_positions(pos)
    assert np.allclose(box.to_ase_positions(lp), pos, atol=1e-10)
    # distances and fractional coordinates are preserved (so is the periodic system)
    d = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    assert np.allclose(d(lp), d(pos), atol=1e-10)
    frac_ase = pos @ np.linalg.inv(cell)
    frac_lmp = (lp - box.lo) @ np.linalg.inv(m)
    if flip and box.flip is not None:
        frac_lmp[:, box.flip] *= -1
    assert np.allclose(frac_ase, frac_lmp, atol=1e-10)
    v = np.random.default_rng(seed + 1).normal(size=(7, 3))
    assert np.allclose(box.to_ase_vectors(box.to_lammps_vectors(v)), v, atol=1e-12)


def test_orthorhombic_cell_needs_no_rotation():
    box = lammps_box(np.diag([3.0, 4.0, 5.0]), True, 3)
    assert not box.triclinic
    assert np.array_equal(box.rotation, np.eye(3))
    assert np.array_equal(box.hi, [3.0, 4.0, 5.0])


def test_frame_atoms_wraps_into_the_cell_and_follows_a_moved_corner():
    cell = np.array([[6.0, 0, 0], [2.0, 5.0, 0], [1.0, -1.0, 7.0]])
    box = lammps_box(cell, True, 3)
    pos = np.array([[-1.0, 2.0, 3.0], [13.0, -4.0, 20.0]])
    lp = box.to_lammps_positions(pos)
    shift = np.array([0.3, -0.2, 0.1])  # a barostat moved the LAMMPS box corner
    a = frame_atoms(box, [18, 18], (True,) * 3, lp + shift, box.lo + shift, box.matrix)
    frac = a.get_scaled_positions(wrap=False)
    assert np.all(frac >= -1e-9) and np.all(frac < 1)
    b = a.copy()
    b.positions = pos
    b.wrap()
    assert np.allclose(a.positions, b.positions, atol=1e-9)


def test_2d_layer_box():
    cell = np.array([[5.0, 1.0, 0.0], [-1.0, 6.0, 0.0], [0.0, 0.0, 12.0]])
    pos = np.array([[0.5, 0.5, 3.0], [2.0, 4.0, 3.0]])
    box = lammps_box(cell, (True, True, False), 2, pos, min_half_height=8.0)
    lp = box.to_lammps_positions(pos)
    assert np.allclose(lp[:, 2], 0.0)  # atoms at z=0 for LAMMPS
    assert box.lo[2] < 0 < box.hi[2]  # the z box straddles 0
    assert box.hi[2] - box.lo[2] >= 16.0
    assert box.tilt[1] == 0 and box.tilt[2] == 0
    assert np.allclose(box.to_ase_positions(lp), pos)
    assert np.allclose(box.ase_cell(), cell)  # the ASE cell keeps its own vacuum
    # a left-handed in-plane basis
    flipped = cell[[1, 0, 2]]
    b2 = lammps_box(flipped, (True, True, False), 2, pos)
    assert np.allclose(b2.ase_cell(), flipped)


@pytest.mark.parametrize(
    "cell, pbc, dim, pos",
    [
        (np.eye(3) * 5, (True, True, False), 3, None),  # 3D must be periodic
        (np.eye(3) * 5, (False, True, False), 2, None),
        (np.array([[5, 0, 1.0], [0, 5, 0], [0, 0, 5]]), (True, True, False), 2, None),  # a out of plane
        (np.array([[5, 0, 0], [0, 5, 0], [1.0, 0, 5]]), (True, True, False), 2, None),  # c tilted
        (np.eye(3) * 5, (True, True, False), 2, np.array([[0, 0, 0], [1, 1, 0.5]])),  # not planar
        (np.zeros((3, 3)), (True, True, True), 3, None),
    ],
)
def test_boxes_lammps_cannot_hold_are_rejected(cell, pbc, dim, pos):
    with pytest.raises(ValueError):
        lammps_box(cell, pbc, dim, pos)
