"""Fixtures of the MD tests: small LJ-argon systems and the shared trained potentials.

The potentials come from ``tests/conftest.py`` (``lj_potential``: 3D LJ argon, cutoff 5 Å;
``lj2d_potential``: a 2D layer). Systems are kept at about a hundred atoms so that a
segment of a few hundred steps takes about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from autopipe.config.run import MDConfig, OTFConfig


@dataclass(frozen=True)
class Pot:
    """A duck-typed potential (what ``run_segment`` needs): version and file paths."""

    version: int
    yaml: Path
    yace: Path | None
    asi: Path | None


@pytest.fixture(scope="session")
def pot(lj_potential) -> Pot:
    """The shared 3D LJ potential as version 1."""
    return Pot(1, Path(lj_potential.yaml), lj_potential.yace, Path(lj_potential.asi))


@pytest.fixture(scope="session")
def pot_v2(pot, tmp_path_factory) -> Pot:
    """A different potential (all ACE coefficients scaled by 1.05), published as version 2.

    The active set is reused: gamma stays computable (same basis functions) though it no
    longer measures anything precise; the tests using it only need different forces.
    """
    from pyace.basis import BBasisConfiguration

    d = tmp_path_factory.mktemp("pot_v2")
    cfg = BBasisConfiguration(str(pot.yaml))
    cfg.set_all_coeffs(np.array(cfg.get_all_coeffs()) * 1.05)
    cfg.save(str(d / "potential.yaml"))
    (d / "potential.asi").write_bytes(Path(pot.asi).read_bytes())
    return Pot(2, d / "potential.yaml", None, d / "potential.asi")


def fcc(a: float = 3.4, repeat: int = 3):
    """fcc argon-like crystal, 4·repeat³ atoms (108 by default), the lattice the potential was trained near."""
    from ase.build import bulk

    return bulk("Ar", "fcc", a=a, cubic=True).repeat((repeat, repeat, repeat))


def md_config(**kw) -> MDConfig:
    """An MDConfig with test defaults (NVE, 2 fs, 50 K, short segments)."""
    base = dict(ensemble="nve", temperature=50.0, timestep=2.0, segment_steps=100, thermo_every=10, dump_every=20,
                seed=7)
    base.update(kw)
    return MDConfig(**base)


def otf_config(**kw) -> OTFConfig:
    base = dict(uncertainty_threshold=5.0, check_frequency=10)
    base.update(kw)
    return OTFConfig(**base)


def pyace_results(atoms, potential) -> dict:
    """Energy, forces, stress and gamma from pyace's own ASE calculator: the reference."""
    from pyace import PyACECalculator

    calc = PyACECalculator(str(potential.yaml))
    calc.set_active_set(str(potential.asi))
    a = atoms.copy()
    a.calc = calc
    out = {"energy": a.get_potential_energy(), "forces": a.get_forces().copy(), "gamma": calc.results["gamma"].copy()}
    if all(a.pbc):
        out["stress"] = a.get_stress(voigt=False).copy()
    return out
