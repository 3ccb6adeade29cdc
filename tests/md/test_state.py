"""MDState checkpoints and initial velocities."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase import Atoms, units
from hypothesis import given, settings
from hypothesis import strategies as st

from autopipe.md import MDState, initial_state, kinetic_temperature, load_state, save_state
from tests.md.conftest import fcc, md_config


def _random_atoms(seed: int, n: int, pbc) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 6 + rng.normal(0, 0.8, (3, 3))
    symbols = rng.choice(["Ar", "Cu", "H"], size=n)
    a = Atoms(symbols=list(symbols), positions=rng.normal(0, 5, (n, 3)), cell=cell, pbc=pbc)
    a.set_momenta(rng.normal(0, 3, (n, 3)))
    masses = a.get_masses()
    masses[0] *= 1.5  # a custom mass must survive too
    a.set_masses(masses)
    return a


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 20), step=st.integers(0, 10**9),
       pbc=st.sampled_from([(True, True, True), (True, True, False), (False, False, False)]))
def test_checkpoint_round_trip_is_exact(tmp_path_factory, seed, n, step, pbc):
    d = tmp_path_factory.mktemp("ck")
    a = _random_atoms(seed, n, pbc)
    path = save_state(d / "checkpoint-1.npz", MDState(a, step))
    b = load_state(path)
    assert b.step == step
    assert np.array_equal(b.atoms.numbers, a.numbers)
    for get in ("get_positions", "get_momenta", "get_masses", "get_velocities"):
        assert np.array_equal(getattr(b.atoms, get)(), getattr(a, get)()), get
    assert np.array_equal(b.atoms.cell[:], a.cell[:])
    assert tuple(b.atoms.pbc) == pbc
    # and the file documents velocities in Å/fs
    with np.load(path) as z:
        assert np.allclose(z["velocities"], a.get_velocities() * units.fs, rtol=1e-14, atol=0)
        assert int(z["step"]) == step


def test_checkpoint_write_is_atomic_and_leaves_no_temporaries(tmp_path, monkeypatch):
    a = fcc(repeat=1)
    path = save_state(tmp_path / "checkpoint-00000010.npz", MDState(a, 10))
    before = path.read_bytes()

    def boom(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_state(path, MDState(a, 20))
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no stray temporary


def test_mdstate_rejects_negative_step():
    with pytest.raises(ValueError):
        MDState(fcc(repeat=1), -1)


@pytest.mark.parametrize("dimension", [3, 2])
def test_initial_state_exact_temperature_zero_momentum_and_seeded(dimension):
    a = fcc(repeat=2)
    if dimension == 2:
        a = Atoms("Ar16", positions=np.c_[np.random.default_rng(0).uniform(0, 10, (16, 2)), np.zeros(16)],
                  cell=[10, 10, 15], pbc=(True, True, False))
    cfg = md_config(temperature=300.0, initial_temperature=120.0, dimension=dimension, seed=11)
    s = initial_state(a, cfg)
    assert s.step == 0
    assert kinetic_temperature(s.atoms, dimension) == pytest.approx(120.0, rel=1e-12)
    assert np.allclose(s.atoms.get_momenta().sum(axis=0), 0.0, atol=1e-12)
    if dimension == 2:
        assert np.all(s.atoms.get_velocities()[:, 2] == 0.0)
    again = initial_state(a, cfg)
    assert np.array_equal(again.atoms.get_momenta(), s.atoms.get_momenta())
    other = initial_state(a, cfg.model_copy(update={"seed": 12}))
    assert not np.allclose(other.atoms.get_momenta(), s.atoms.get_momenta())
    assert a.get_momenta().sum() == 0.0  # the input atoms are not modified


def test_initial_state_uses_temperature_when_no_initial_temperature():
    s = initial_state(fcc(repeat=2), md_config(temperature=75.0))
    assert kinetic_temperature(s.atoms) == pytest.approx(75.0, rel=1e-12)
    assert np.all(initial_state(fcc(repeat=2), md_config(temperature=0.0)).atoms.get_momenta() == 0.0)


def test_a_state_kept_in_memory_equals_the_one_read_back_from_its_file(tmp_path):
    """walkers.record_state keeps small states in memory for the next segment: they must be what the
    file holds, bit for bit, and nothing more."""
    import numpy as np
    from ase.build import bulk

    from autopipe.config.run import MDConfig
    from autopipe.md.state import as_saved, initial_state, load_state, save_state

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    state = initial_state(atoms, MDConfig(temperature=500.0, seed=3), step=120)
    state.atoms.info["junk"] = 1
    state.atoms.arrays["gamma"] = np.arange(len(atoms), dtype=float)
    kept, back = as_saved(state), load_state(save_state(tmp_path / "ck.npz", state))
    assert kept.step == back.step == 120
    for get in ("get_atomic_numbers", "get_positions", "get_momenta", "get_masses", "get_cell", "get_pbc"):
        assert np.array_equal(np.asarray(getattr(kept.atoms, get)()), np.asarray(getattr(back.atoms, get)())), get
    assert set(kept.atoms.arrays) == set(back.atoms.arrays) and not kept.atoms.info
    assert kept.atoms.positions is not state.atoms.positions  # a copy: the segment's own object may change
