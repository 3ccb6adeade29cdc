"""Shared fixtures.

Trained potentials (``lj_potential``, ``lj2d_potential``) are session-scoped and cached on
disk under ``tests/.cache/`` keyed by a hash of the training recipe: the first session
trains them (about a minute each with pacemaker on 2 cores), later sessions and other
test modules reuse them. Treat the returned files as read-only. Delete ``tests/.cache``
to force a rebuild.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CACHE_DIR = Path(__file__).parent / ".cache"


def _lj_cached(dimension: int):
    from tests.lj import build_lj_recipe, cached_potential, lj_recipe

    recipe = lj_recipe(dimension)
    return cached_potential(CACHE_DIR, recipe["name"], recipe, lambda d: build_lj_recipe(d, recipe))


@pytest.fixture(scope="session")
def lj_potential():
    """A trained ACE potential for 3D LJ argon (element "Ar", cutoff 5 Å): ``PotentialFiles``.

    LJ: sigma 2.0 Å, epsilon 0.1 eV, smooth cutoff 5 Å (``tests/lj.py``).
    Trained on 32 rattled/strained/randomly packed 32-atom cells at ≈0.1 atoms/Å³;
    ``.yaml``, ``.yace`` and ``.asi`` are all present.
    """
    return _lj_cached(3)


@pytest.fixture(scope="session")
def lj2d_potential():
    """Like ``lj_potential`` for a 2D LJ layer: atoms in the z=0 plane, vacuum along z, pbc (T, T, F)."""
    return _lj_cached(2)
