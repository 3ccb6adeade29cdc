"""The fixture potential: loads in pyace, fits LJ, and its gamma separates known from unknown."""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.generate import is_2d
from autopipe.potentials import gamma, get_calculator, max_gamma
from tests.lj import lj2d_template, lj3d_template, lj_label
from autopipe.potentials.uncertainty import evaluate

from tests.potentials.helpers import lj_structures

pytestmark = pytest.mark.slow  # the fixture potentials are trained on a cold cache


def test_fixture_files_and_metrics(lj_potential):
    p = lj_potential
    assert p.version == 1 and p.yaml.exists() and p.yace.exists() and p.asi.exists()
    assert p.metrics["n_structures"] == 32
    # The fit itself: pacemaker's train metrics, computed from its predictions.
    assert p.metrics["train_forces_rmse"] < 0.25  # eV/Å; LJ forces here span several eV/Å
    assert p.metrics["train_energy_rmse"] < 0.02  # eV/atom
    assert p.metrics["final_loss"] < 0.05 * p.metrics["initial_loss"]


def test_potential_reproduces_lj_on_training_like_cells(lj_potential):
    err_f, f_ref_all = [], []
    for atoms in lj_structures(5, seed=11, rattle=0.08):
        out = evaluate(atoms, lj_potential)
        ref = lj_label(atoms)
        e_ref, f_ref = ref.energy, ref.forces
        assert np.isfinite(out["energy"]) and np.all(np.isfinite(out["forces"]))
        assert abs(out["energy"] - e_ref) / len(atoms) < 0.03  # eV/atom
        err_f.append(out["forces"] - f_ref)
        f_ref_all.append(f_ref)
    rmse = float(np.sqrt(np.mean(np.concatenate(err_f) ** 2)))
    scale = float(np.sqrt(np.mean(np.concatenate(f_ref_all) ** 2)))
    assert rmse < 0.2 and rmse < 0.5 * scale, (rmse, scale)


def test_gamma_small_inside_and_large_outside(lj_potential):
    inside = [max_gamma(a, lj_potential)[0] for a in lj_structures(4, seed=5, rattle=0.05)]
    assert max(inside) < 2.0, inside
    squeezed = lj3d_template(a=2.7)  # nearest neighbours 1.9 Å, never seen in training
    squeezed.rattle(0.02, seed=1)
    g_out, idx = max_gamma(squeezed, lj_potential)
    assert g_out > 10.0
    g = gamma(squeezed, lj_potential)
    assert g.shape == (len(squeezed),) and idx == int(np.argmax(g)) and g_out == pytest.approx(g.max())


def test_gamma_points_at_the_perturbed_atom(lj_potential):
    atoms = lj3d_template()
    atoms.rattle(0.03, seed=2)
    # Push atom 7 towards a neighbour: 1.6 Å contact, far outside the data.
    atoms.positions[7] += 0.8 * (atoms.positions[0] - atoms.positions[7]) / np.linalg.norm(
        atoms.positions[0] - atoms.positions[7])
    atoms.positions[7] = atoms.positions[0] + 1.6 * (atoms.positions[7] - atoms.positions[0]) / np.linalg.norm(
        atoms.positions[7] - atoms.positions[0])
    g, i = max_gamma(atoms, lj_potential)
    assert g > 5 and i in (0, 7)


def test_yaml_path_and_cache(lj_potential):
    atoms = lj_structures(1, seed=9)[0]
    before = atoms.copy()
    by_files = gamma(atoms, lj_potential)
    by_path = gamma(atoms, str(lj_potential.yaml))  # .asi alongside
    assert np.allclose(by_files, by_path)
    assert get_calculator(lj_potential)[0] is get_calculator(lj_potential.yaml)[0]
    assert atoms.calc is None and np.allclose(atoms.positions, before.positions)
    # A different structure through the same cached calculator gives its own result.
    other = lj3d_template(a=2.8)
    assert not np.allclose(gamma(other, lj_potential), by_files)


def test_missing_active_set_is_a_clear_error(lj_potential, tmp_path):
    lone = tmp_path / "lone.yaml"
    lone.write_bytes(lj_potential.yaml.read_bytes())
    with pytest.raises(FileNotFoundError, match="active set"):
        gamma(lj3d_template(), lone)


def test_2d_potential(lj2d_potential):
    assert lj2d_potential.metrics["train_forces_rmse"] < 0.25  # eV/Å
    assert lj2d_potential.metrics["train_energy_rmse"] < 0.02  # eV/atom
    layer = lj2d_template()
    layer.positions[:, :2] += np.random.default_rng(0).normal(0, 0.05, size=(len(layer), 2))
    assert is_2d(layer)
    assert max_gamma(layer, lj2d_potential)[0] < 2.0
    dense = lj2d_template(spacing=1.8)
    assert max_gamma(dense, lj2d_potential)[0] > 10.0
