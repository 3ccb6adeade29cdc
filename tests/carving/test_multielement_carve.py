"""Carving a two-element frame: a random Cu3Au-like fcc alloy (species substituted at random on the
sites by :func:`autopipe.bulk.substitute`), carved by both strategies around a Cu and an Au centre.
The sub-cell must keep each core atom's element and its whole neighbourhood (which species at which
distance), and under ASE's EMT (many-body, multi-element) its core forces must be the parent's once
the buffer covers EMT's range."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from autopipe.carving.lattice import ReferenceLattice
from autopipe.carving.strategies import carve
from autopipe.bulk import substitute

CORE, BUFFER = 3.0, 6.5  # Å; measured: buffer 6.0 leaves 1e-4 eV/Å on the cube, 6.5 leaves 4e-5


@pytest.fixture(scope="module")
def alloy():
    unit = bulk("Cu", "fcc", a=3.75, cubic=True)
    parent = unit.repeat((7, 7, 7))
    substitute(parent, {"Cu": 0.75, "Au": 0.25}, 5)
    parent.positions += np.random.default_rng(1).normal(0, 0.08, parent.positions.shape)
    parent.calc = EMT()
    forces = parent.get_forces()
    parent.calc = None
    symbols = parent.get_chemical_symbols()
    centres = {"Cu": symbols.index("Cu"), "Au": symbols.index("Au")}
    return parent, forces, ReferenceLattice.from_atoms(unit), centres


def _shells(atoms: Atoms, cutoff: float) -> dict[int, list[tuple[float, str]]]:
    """Atom -> its sorted (distance rounded to 1e-6 Å, species) neighbours within ``cutoff``."""
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    symbols = atoms.get_chemical_symbols()
    out: dict[int, list[tuple[float, str]]] = {k: [] for k in range(len(atoms))}
    for a, b, r in zip(i, j, d):
        out[int(a)].append((round(float(r), 6), symbols[b]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("strategy", ["cube", "commensurate"])
@pytest.mark.parametrize("species", ["Cu", "Au"])
def test_core_atoms_keep_their_element_and_neighbourhood(alloy, strategy, species):
    parent, _, lattice, centres = alloy
    sub, masked = carve(parent, centres[species], strategy, CORE, BUFFER, lattice=lattice)
    assert sub.get_chemical_symbols()[0] == species
    core = np.setdiff1d(np.arange(len(sub)), masked)
    assert len(core) >= 13  # the centre and its first shell at least
    pidx = sub.arrays["parent_index"]
    assert [sub.get_chemical_symbols()[k] for k in core] == [parent.get_chemical_symbols()[p] for p in pidx[core]]
    # Both species present in the cell and in the core's neighbourhood: the test is about a compound.
    assert set(sub.get_chemical_symbols()) == {"Cu", "Au"}
    reach = 4.6  # Å: first and second shells; CORE + reach stays inside the buffer
    mine, theirs = _shells(sub, reach), _shells(parent, reach)
    for k in core:
        assert mine[int(k)] == theirs[int(pidx[k])], f"core atom {k} (parent {pidx[k]}) sees another neighbourhood"


@pytest.mark.parametrize("strategy", ["cube", "commensurate"])
@pytest.mark.parametrize("species", ["Cu", "Au"])
def test_core_forces_match_the_parent_under_emt(alloy, strategy, species):
    """EMT's cut-off is smooth and element-dependent (Au's the longest); with a 6.5 Å buffer the core
    forces are the parent's to 1e-4 eV/Å, and with a thin one they are not (the test can fail)."""
    parent, reference, lattice, centres = alloy

    def core_error(buffer: float) -> float:
        sub, masked = carve(parent, centres[species], strategy, CORE, buffer, lattice=lattice)
        sub.calc = EMT()
        core = np.setdiff1d(np.arange(len(sub)), masked)
        return float(np.abs(sub.get_forces()[core] - reference[sub.arrays["parent_index"][core]]).max())

    assert core_error(BUFFER) < 1e-4
    assert core_error(2.5) > 1e-2
