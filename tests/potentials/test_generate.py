"""Module A: generated structures honour min_distance and keep 2D systems planar."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopipe.config.run import InitialPotentialGenerate, SystemConfig
from autopipe.generate import generate_structures, is_2d, min_pair_distance, template_atoms
from tests.lj import lj2d_template, lj3d_template


def _cfg(**kw) -> InitialPotentialGenerate:
    return InitialPotentialGenerate(kind="generate", **kw)


def test_counts_kinds_and_reproducibility():
    cfg = _cfg(n_structures=12, rattle=0.1, strain=0.04, seed=3)
    a = generate_structures(["Ar"], lj3d_template(), cfg)
    b = generate_structures(["Ar"], lj3d_template(), cfg)
    assert len(a) == 12
    kinds = [x.info["generator"] for x in a]
    assert kinds.count("rattled") == 6 and kinds.count("strained") == 3 and kinds.count("packed") == 3
    for x, y in zip(a, b):
        assert np.allclose(x.positions, y.positions) and np.allclose(x.cell[:], y.cell[:])
    strained = [x for x in a if x.info["generator"] == "strained"]
    assert any(not np.allclose(x.cell[:], a[0].cell[:]) for x in strained)
    assert all(set(x.get_chemical_symbols()) == {"Ar"} for x in a)


def test_min_distance_is_honoured_3d():
    # Rattle 0.25 Å from 2.40 Å neighbours: without rejection many pairs fall below 2.0 Å.
    cfg_free = _cfg(n_structures=8, rattle=0.25, strain=0.0, seed=1)
    free = generate_structures(["Ar"], lj3d_template(), cfg_free)
    assert min(min_pair_distance(x) for x in free) < 2.0
    cfg = _cfg(n_structures=8, rattle=0.25, strain=0.0, min_distance=2.0, seed=1)
    out = generate_structures(["Ar"], lj3d_template(), cfg)
    assert min(min_pair_distance(x) for x in out) >= 2.0


def test_packed_cells_keep_the_packing_distance():
    # A dense 2D layer (area fraction above what random packing reaches): the fallback
    # still keeps every pair at 0.75 x the template's 2.40 Å neighbour distance.
    out = generate_structures(["Ar"], lj2d_template(), _cfg(n_structures=8, rattle=0.1, seed=5))
    packed = [x for x in out if x.info["generator"] == "packed"]
    assert packed and min(min_pair_distance(x) for x in packed) >= 0.75 * 2.4 - 1e-9


def test_2d_stays_planar():
    tmpl = lj2d_template()
    assert is_2d(tmpl)
    out = generate_structures(["Ar"], tmpl, _cfg(n_structures=8, rattle=0.2, strain=0.05, min_distance=1.9, seed=2))
    for x in out:
        assert tuple(x.pbc) == (True, True, False)
        assert np.allclose(x.positions[:, 2], 0.0)
        assert np.isclose(x.cell[2, 2], tmpl.cell[2, 2]) and np.allclose(x.cell[2, :2], 0)
        assert min_pair_distance(x) >= 1.9


def test_multi_element_mixes_species():
    out = generate_structures(["Cu", "Ni"], lj3d_template(a=3.6), _cfg(n_structures=6, seed=4))
    assert {s for x in out[1:] for s in x.get_chemical_symbols()} == {"Cu", "Ni"}


def test_template_closer_than_min_distance_is_an_error():
    with pytest.raises(ValueError, match="closer than min_distance"):
        generate_structures(["Ar"], lj3d_template(), _cfg(n_structures=4, min_distance=3.0))


def test_impossible_min_distance_raises_clearly(monkeypatch):
    import autopipe.generate as gen

    # Every strain compresses by 10 %: 2.40 Å neighbours become 2.16 Å < 2.3 Å, whatever the rattle.
    monkeypatch.setattr(gen, "_strain_matrix", lambda rng, strain, planar: np.eye(3) * 0.9)
    monkeypatch.setattr(gen, "MAX_ATTEMPTS", 5)
    with pytest.raises(RuntimeError, match="could not draw a strained"):
        generate_structures(["Ar"], lj3d_template(repeat=1), _cfg(n_structures=4, strain=0.1, min_distance=2.3))


def test_template_from_system_config():
    bulk = template_atoms(SystemConfig(elements=["Ar"], structure={"kind": "bulk", "crystal": "fcc", "a": 3.4,
                                                                   "repeat": (2, 2, 2)}))
    assert len(bulk) == 32 and all(bulk.pbc)
    layer = template_atoms(SystemConfig(elements=["Ar"], structure={"kind": "liquid2d", "n_atoms": 20,
                                                                    "density": 0.15, "min_distance": 2.0}))
    assert len(layer) == 20 and is_2d(layer) and min_pair_distance(layer) >= 2.0


@settings(max_examples=15, deadline=None)
@given(dmin=st.floats(1.6, 2.2), rattle=st.floats(0.0, 0.2), seed=st.integers(0, 1000))
def test_min_distance_property(dmin, rattle, seed):
    out = generate_structures(["Ar"], lj3d_template(repeat=1), _cfg(n_structures=4, rattle=rattle, strain=0.03,
                                                                     min_distance=dmin, seed=seed))
    assert all(min_pair_distance(x) >= dmin for x in out)
