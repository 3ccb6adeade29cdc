"""The Verlet-listed pyace evaluator against pyace's own ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.md.ace import AceEvaluator
from autopipe.md.box import lammps_box
from tests.md.conftest import fcc, pyace_results


def _check(ev, box, atoms, ref, gamma=True):
    r = ev.evaluate(box.to_lammps_positions(atoms.positions), box.lo, box.matrix, gamma=gamma)
    assert r.energy == pytest.approx(ref["energy"], abs=1e-9)
    assert np.abs(box.to_ase_vectors(r.forces) - ref["forces"]).max() < 1e-9
    if gamma:
        assert np.abs(r.gamma - ref["gamma"]).max() < 1e-8
    else:
        assert r.gamma is None
    # LAMMPS virial sum(r ⊗ f) = -stress·V; compare in the LAMMPS frame
    s = box.rotation.T @ (ref["stress"] * atoms.get_volume()) @ box.rotation
    assert np.allclose(r.virial, -s[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]], atol=1e-8)
    return r


def test_evaluator_matches_pyace_through_moves_rebuilds_and_box_changes(pot):
    a = fcc(repeat=2)
    a.set_cell(a.cell @ np.array([[1.0, 0.08, 0.03], [0.0, 1.02, 0.1], [0.05, 0.0, 0.97]]), scale_atoms=True)
    a.rattle(0.1, seed=1)
    box = lammps_box(a.cell, a.pbc, 3)
    ev = AceEvaluator(pot.yaml, pot.asi, a.get_chemical_symbols(), skin=0.6)
    _check(ev, box, a, pyace_results(a, pot))
    rng = np.random.default_rng(0)
    for k in range(6):
        a.positions += rng.normal(0, 0.06, a.positions.shape)
        a.wrap()  # LAMMPS re-wraps atoms too: must not look like a jump
        _check(ev, box, a, pyace_results(a, pot), gamma=k % 2 == 0)
    assert 1 < ev.n_builds < 7  # small moves reuse the list, accumulated ones rebuild it
    # a barostat changes the box: the list must notice and stay exact
    builds = ev.n_builds
    b = a.copy()
    b.set_cell(a.cell * 1.002, scale_atoms=True)
    box2 = lammps_box(b.cell, b.pbc, 3)
    assert np.allclose(box2.rotation, box.rotation)
    _check(ev, box2, b, pyace_results(b, pot))
    c = a.copy()
    c.set_cell(a.cell * 1.2, scale_atoms=True)
    _check(ev, lammps_box(c.cell, c.pbc, 3), c, pyace_results(c, pot))
    assert ev.n_builds > builds


def test_evaluator_on_a_small_cell_with_many_images(pot):
    from ase.build import bulk

    a = bulk("Ar", "fcc", a=3.4)  # one atom, cutoff much longer than the cell
    a.rattle(0.0)
    box = lammps_box(a.cell, a.pbc, 3)
    ev = AceEvaluator(pot.yaml, pot.asi, a.get_chemical_symbols())
    _check(ev, box, a, pyace_results(a, pot))


def test_evaluator_rejects_unknown_elements(pot):
    with pytest.raises(ValueError, match="does not cover"):
        AceEvaluator(pot.yaml, pot.asi, ["Ar", "Cu"])
