"""Lattice-commensurate carving: one atom per site, vacancies kept, exact core forces with EMT."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from autopipe.carving.lattice import (
    LatticeMismatch,
    ParentTooSmall,
    ReferenceLattice,
    carve_commensurate,
    supercell_counts,
    tiling_matrix,
)


def _sites_of(sub: Atoms, lattice: ReferenceLattice, centre_basis: int) -> np.ndarray:
    """Fractional site coordinates (reference units, relative to the centre's site) of every
    atom of ``sub``, read back from the sub-cell itself (not from the carve's bookkeeping).
    ``centre_basis``: which basis site the centre atom sits on."""
    n = np.asarray(sub.info["embedding_supercell"])
    cell = np.array(sub.cell) / n[:, None]  # the sub-cell's own unit cell
    centre_site = 0.5 * np.array(sub.cell).sum(axis=0)
    f = (sub.positions - centre_site) @ np.linalg.inv(cell)
    best = np.full(len(sub), np.inf)
    site = np.zeros_like(f)
    for b in lattice.basis - lattice.basis[centre_basis]:
        r = f - b
        k = np.round(r)
        dist = np.linalg.norm((r - k) @ cell, axis=1)
        better = dist < best
        best[better], site[better] = dist[better], (k + b)[better]
    # Wrap into the sub-cell's period so an atom and its image would collide here.
    return np.mod(np.round(site, 6), n)


CRYSTALS = {
    "diamond": (bulk("Si", "diamond", a=5.43, cubic=True), (3, 3, 3)),
    "fcc": (bulk("Cu", "fcc", a=3.61, cubic=True), (4, 4, 4)),
    "bcc": (bulk("Fe", "bcc", a=2.87, cubic=True), (5, 5, 5)),
    "fcc-primitive": (bulk("Cu", "fcc", a=3.61), (6, 6, 6)),  # rhombohedral: a triclinic primitive cell
    "hcp": (bulk("Mg", "hcp", a=3.21, c=5.21), (4, 4, 3)),
}


@pytest.mark.parametrize("name", sorted(CRYSTALS))
@pytest.mark.parametrize("rattle", [0.0, 0.12])
def test_each_site_once(name: str, rattle: float) -> None:
    unit, rep = CRYSTALS[name]
    lattice = ReferenceLattice.from_atoms(unit)
    parent = unit.repeat(rep)
    rng = np.random.default_rng(3)
    parent.positions += rng.normal(0, rattle, parent.positions.shape) + [0.9, -1.7, 0.4]  # thermal + drift
    # min_distance=0: no contact removal, so uniqueness comes from the half-open window alone.
    sub, masked = carve_commensurate(parent, 7, 2.2, 2.0, lattice, min_distance=0.0)
    n = np.asarray(sub.info["embedding_supercell"])
    assert len(sub) == int(np.prod(n)) * len(unit)
    sites = _sites_of(sub, lattice, 7 % len(unit))  # repeat() tiles whole unit cells
    assert len(np.unique(sites, axis=0)) == len(sub)  # every site exactly once
    assert len(np.unique(sub.arrays["parent_index"])) == len(sub)  # no atom twice
    # The sub-cell is whole periods of the lattice, wide enough for core + buffer.
    widths = 1 / np.linalg.norm(np.linalg.inv(np.array(sub.cell)).T, axis=1)
    assert np.all(widths >= 2 * (2.2 + 2.0) - 1e-9)
    assert np.allclose(np.array(sub.cell), n[:, None] * np.array(unit.cell), atol=1e-9)
    assert sub.arrays["parent_index"][0] == 7
    core = np.setdiff1d(np.arange(len(sub)), masked)
    d = np.linalg.norm(sub.positions - sub.positions[0], axis=1)
    assert np.all(d[core] <= 2.2) and np.all(d[masked] > 2.2)


def test_vacancy_stays_a_vacancy() -> None:
    unit = bulk("Si", "diamond", a=5.43, cubic=True)
    lattice = ReferenceLattice.from_atoms(unit)
    parent = unit.repeat((3, 3, 3))
    gone = 13
    neighbour = int(np.argsort(parent.get_distances(gone, range(len(parent)), mic=True))[1])
    del parent[gone]
    neighbour -= neighbour > gone
    sub, _ = carve_commensurate(parent, neighbour, 2.6, 2.8, lattice)
    assert len(sub) == 63 and sub.info["embedding_vacant_sites"] == 1
    assert sub.info["embedding_shared_sites"] == 0


def test_strained_parent_scales_the_cell() -> None:
    """Under a barostat the parent's cell is strained: the carve follows the parent's average strain."""
    unit = bulk("Cu", "fcc", a=3.61, cubic=True)
    lattice = ReferenceLattice.from_atoms(unit)
    parent = unit.repeat((5, 5, 5))
    parent.set_cell(np.array(parent.cell) * [1.04, 0.98, 1.01], scale_atoms=True)
    sub, _ = carve_commensurate(parent, 0, 2.0, 2.0, lattice)
    n = np.asarray(sub.info["embedding_supercell"])
    assert np.allclose(np.diag(sub.cell), n * 3.61 * np.array([1.04, 0.98, 1.01]))


@pytest.mark.parametrize("center", [0, 101])
def test_core_forces_exact_with_emt(center: int) -> None:
    """With a short-ranged many-body labeller (EMT) the core forces match the whole frame once the
    buffer covers its range, and a commensurate cell beats the cube at the same thin buffer."""
    from autopipe.embedding import extract_periodic_subsystem

    unit = bulk("Cu", "fcc", a=3.61, cubic=True)
    lattice = ReferenceLattice.from_atoms(unit)
    parent = unit.repeat((6, 6, 6))
    del parent[100]
    parent.positions += np.random.default_rng(1).normal(0, 0.08, parent.positions.shape)
    parent.calc = EMT()
    reference = parent.get_forces()

    def core_error(sub: Atoms, masked: np.ndarray) -> float:
        sub.calc = EMT()
        core = np.setdiff1d(np.arange(len(sub)), masked)
        return float(np.abs(sub.get_forces()[core] - reference[sub.arrays["parent_index"][core]]).max())

    assert core_error(*carve_commensurate(parent, center, 2.6, 5.0, lattice)) < 1e-4
    thin_commensurate = core_error(*carve_commensurate(parent, center, 2.6, 3.0, lattice))
    thin_cube = core_error(*extract_periodic_subsystem(parent, center, 2.6, 3.0))
    assert thin_commensurate < thin_cube / 5


def test_parent_smaller_than_the_cell() -> None:
    unit = bulk("Si", "diamond", a=5.43, cubic=True)
    with pytest.raises(ParentTooSmall, match="whole frame"):
        carve_commensurate(unit.repeat((2, 2, 1)), 0, 2.6, 2.8, ReferenceLattice.from_atoms(unit))


def test_lattice_that_does_not_tile() -> None:
    si = ReferenceLattice.from_atoms(bulk("Si", "diamond", a=5.43, cubic=True))
    with pytest.raises(LatticeMismatch, match="does not tile the parent cell"):
        tiling_matrix(np.eye(3) * 3.61 * 4, si)
    assert tiling_matrix(np.eye(3) * 5.43 * 3, si).tolist() == (3 * np.eye(3, dtype=int)).tolist()


def test_supercell_counts_use_perpendicular_widths() -> None:
    fcc_primitive = np.array(bulk("Cu", "fcc", a=3.61).cell)
    n = supercell_counts(fcc_primitive, 4.0)
    widths = n / np.linalg.norm(np.linalg.inv(fcc_primitive).T, axis=1)
    assert np.all(widths >= 8.0) and np.all(widths - 1 / np.linalg.norm(np.linalg.inv(fcc_primitive).T, axis=1) < 8.0)
