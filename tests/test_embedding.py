"""Tests for autopipe.embedding: periodic carving, masks, removals, centre choice.

The reference for "which atoms belong in the sub-cell" is an independent brute
force: loop over an ample block of explicit lattice translations and keep
every image whose Cartesian displacement from the centre lies in the
half-open cube.  The physics check is that a short-ranged pair potential
(ASE's smooth Lennard-Jones) gives the same force on every unmasked atom in
the sub-cell as in the parent.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.geometry import find_mic, get_distances
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autopipe.embedding import (
    DEFAULT_MIN_DISTANCE,
    extract_periodic_subsystem,
    select_centers,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def brute_force(atoms: Atoms, center: int, half: float) -> tuple[np.ndarray, np.ndarray]:
    """(parent index, displacement) of every image in [-half, half) on periodic axes.

    Enumerates translations n with |n_j| <= ceil(2*half / height_j) + 1 along
    each periodic cell vector: far more than needed, which is the point.
    """
    cell = np.array(atoms.cell)
    pbc = np.asarray(atoms.pbc)
    pos = atoms.positions
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    reach = np.ceil(2 * half / heights).astype(int) + 1
    ranges = [range(-r, r + 1) if p else range(1) for r, p in zip(reach, pbc)]
    idx, disp = [], []
    for n in itertools.product(*ranges):
        d = pos + np.array(n, dtype=float) @ cell - pos[center]
        inside = np.all((d[:, pbc] >= -half) & (d[:, pbc] < half), axis=1)
        idx.append(np.flatnonzero(inside))
        disp.append(d[inside])
    return np.concatenate(idx), np.concatenate(disp)


def canonical(idx: np.ndarray, disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    key = np.round(disp, 6)
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0], idx))
    return idx[order], disp[order]


def sub_displacements(sub: Atoms) -> np.ndarray:
    # Periodic axes: positions are d + L/2; non-periodic: parent coordinates.
    # Either way, subtracting the centre's coordinate gives the displacement.
    return sub.positions - sub.positions[0]


def assert_matches_brute_force(atoms: Atoms, center: int, cutoff: float, buffer: float,
                               sub: Atoms, masked: np.ndarray) -> None:
    half = cutoff + buffer
    ref_idx, ref_disp = canonical(*brute_force(atoms, center, half))
    got_idx, got_disp = canonical(sub.arrays["parent_index"], sub_displacements(sub))
    assert len(sub) == len(ref_idx)
    np.testing.assert_array_equal(got_idx, ref_idx)
    np.testing.assert_allclose(got_disp, ref_disp, atol=1e-9)
    # The mask, recomputed from the returned sub-cell itself.
    dist = np.linalg.norm(sub_displacements(sub), axis=1)
    np.testing.assert_array_equal(masked, np.flatnonzero(dist > cutoff))
    assert masked.dtype.kind == "i"
    assert np.all(np.diff(masked) > 0)


def sc_grid(n: int, a: float, symbol: str = "Ar") -> Atoms:
    return bulk(symbol, "sc", a=a).repeat((n, n, n))


def random_cell(rng: np.random.Generator, pbc: tuple[bool, bool, bool], skew: float,
                lo: float, hi: float) -> np.ndarray:
    """A cell whose non-periodic axes are Cartesian-aligned (vacuum 15-25 Å)."""
    cell = np.zeros((3, 3))
    per = [k for k in range(3) if pbc[k]]
    for k in range(3):
        if pbc[k]:
            cell[k, k] = rng.uniform(lo, hi)
            for j in per:
                if j != k:
                    cell[k, j] = skew * rng.uniform(-1, 1) * cell[k, k]
        else:
            cell[k, k] = rng.uniform(15.0, 25.0)
    return cell


PBC_KINDS = {
    "cubic": (True, True, True),
    "triclinic": (True, True, True),
    "slab_z": (True, True, False),
    "slab_x": (False, True, True),
    "wire": (True, False, False),
    "cluster": (False, False, False),
}


# ------------------------------------------------------------------ spec and geometry


def test_simple_cubic_argon_grid_against_brute_force():
    atoms = sc_grid(10, 3.6)
    center = 5 * 100 + 5 * 10 + 5  # grid point (5, 5, 5)
    cutoff, buffer = 5.0, 4.0  # L = 18 Å = 5 lattice spacings
    sub, masked = extract_periodic_subsystem(atoms, center, cutoff, buffer)

    np.testing.assert_allclose(np.array(sub.cell), np.diag([18.0, 18.0, 18.0]))
    assert sub.pbc.all()
    # -9 <= d < 9 admits d in {-7.2, -3.6, 0, 3.6, 7.2} per axis.
    assert len(sub) == 125
    # Unmasked: the centre and its 6 nearest neighbours (3.6 < 5 < 5.09).
    assert len(masked) == 125 - 7
    assert sub.arrays["parent_index"][0] == center
    np.testing.assert_allclose(sub.positions[0], [9.0, 9.0, 9.0])
    assert sub.info["embedding_center"] == center
    assert sub.info["embedding_cutoff"] == cutoff
    assert sub.info["embedding_buffer"] == buffer
    assert sub.info["embedding_min_distance"] == DEFAULT_MIN_DISTANCE
    assert sub.get_chemical_symbols() == ["Ar"] * 125
    assert_matches_brute_force(atoms, center, cutoff, buffer, sub, masked)


def test_cube_is_half_open():
    # Exactly representable spacing: atoms sit exactly on both faces at d = +-8.
    atoms = sc_grid(10, 4.0)
    sub, masked = extract_periodic_subsystem(atoms, 555, 4.0, 4.0)
    d = sub_displacements(sub)
    assert len(sub) == 64  # d in {-8, -4, 0, 4}^3: the -8 face only
    assert d.min() == -8.0 and d.max() == 4.0
    assert_matches_brute_force(atoms, 555, 4.0, 4.0, sub, masked)
    # The result is a perfect simple-cubic crystal of the sub-cell.
    dist = get_distances(sub.positions, cell=sub.cell, pbc=True)[1]
    assert np.isclose(dist[np.triu_indices(len(sub), 1)].min(), 4.0)


def test_wrap_around_from_a_corner():
    atoms = sc_grid(10, 3.6)
    sub, masked = extract_periodic_subsystem(atoms, 0, 5.0, 4.0)
    assert_matches_brute_force(atoms, 0, 5.0, 4.0, sub, masked)
    # Grid coordinates of the parent atoms used: both low and high faces.
    grid = np.round(atoms.positions[sub.arrays["parent_index"]] / 3.6).astype(int)
    assert set(np.unique(grid)) == {0, 1, 2, 8, 9}
    # Translation invariance: same displacement set as from the middle.
    mid, mid_masked = extract_periodic_subsystem(atoms, 555, 5.0, 4.0)
    def key(s: Atoms) -> np.ndarray:
        return np.sort(np.round(sub_displacements(s), 6).view("f8,f8,f8").ravel())

    np.testing.assert_array_equal(key(sub), key(mid))
    assert len(masked) == len(mid_masked)


def test_triclinic_parent():
    rng = np.random.default_rng(3)
    cell = np.array([[11.0, 0.0, 0.0], [4.0, 10.0, 0.0], [-3.0, 2.5, 9.0]])
    atoms = Atoms("Cu60", scaled_positions=rng.random((60, 3)), cell=cell, pbc=True)
    sub, masked = extract_periodic_subsystem(atoms, 17, 3.0, 4.0, min_distance=0.0)
    np.testing.assert_allclose(np.array(sub.cell), np.diag([14.0] * 3))
    assert_matches_brute_force(atoms, 17, 3.0, 4.0, sub, masked)


def test_parent_smaller_than_cube_gives_several_images():
    atoms = bulk("Cu", "fcc", a=3.6)  # one atom, primitive (triclinic) cell
    sub, masked = extract_periodic_subsystem(atoms, 0, 4.0, 4.0)
    assert np.all(sub.arrays["parent_index"] == 0)
    assert len(sub) > 300  # ~ (16 Å)^3 / 11.66 Å^3 per atom
    assert_matches_brute_force(atoms, 0, 4.0, 4.0, sub, masked)
    # No two images coincide under the new periodicity (half-open cube).  The
    # fcc lattice does not fit the 16 Å cube, so the carved faces do bring
    # atoms closer than the 2.55 Å bond, but not below min_distance here.
    dist = get_distances(sub.positions, cell=sub.cell, pbc=True)[1]
    assert dist[np.triu_indices(len(sub), 1)].min() > DEFAULT_MIN_DISTANCE
    assert sub.info["embedding_n_removed"] == 0


@pytest.mark.parametrize("hexagonal", [False, True])
def test_two_dimensional_parent(hexagonal):
    a = 3.0
    n = 9
    ij = np.array(list(itertools.product(range(n), range(n))), dtype=float)
    if hexagonal:
        vecs = np.array([[a, 0.0], [a / 2, a * np.sqrt(3) / 2]])
    else:
        vecs = np.array([[a, 0.0], [0.0, a]])
    xy = ij @ vecs
    pos = np.column_stack([xy, np.full(len(xy), 10.0)])
    cell = np.zeros((3, 3))
    cell[:2, :2] = n * vecs
    cell[2, 2] = 20.0
    atoms = Atoms(f"C{len(pos)}", positions=pos, cell=cell, pbc=(True, True, False))
    center = 40
    sub, masked = extract_periodic_subsystem(atoms, center, 4.0, 3.0)
    np.testing.assert_allclose(np.array(sub.cell), np.diag([14.0, 14.0, 20.0]))
    assert list(sub.pbc) == [True, True, False]
    np.testing.assert_allclose(sub.positions[:, 2], 10.0)  # the plane stays put
    np.testing.assert_allclose(sub.positions[0, :2], [7.0, 7.0])
    assert_matches_brute_force(atoms, center, 4.0, 3.0, sub, masked)


def test_two_dimensional_parent_without_a_z_vector():
    # A 2D layer may come with a zero cell vector along the vacuum axis.
    rng = np.random.default_rng(5)
    pos = np.column_stack([rng.random((50, 2)) * 15.0, np.zeros(50)])
    flat = Atoms(numbers=np.full(50, 18), positions=pos, cell=[15.0, 15.0, 0.0],
                 pbc=(True, True, False))
    boxed = flat.copy()
    boxed.cell[2, 2] = 20.0
    sub_flat, masked_flat = extract_periodic_subsystem(flat, 7, 3.0, 3.0, min_distance=0.0)
    sub_boxed, masked_boxed = extract_periodic_subsystem(boxed, 7, 3.0, 3.0, min_distance=0.0)
    assert_matches_brute_force(boxed, 7, 3.0, 3.0, sub_boxed, masked_boxed)
    np.testing.assert_array_equal(sub_flat.positions, sub_boxed.positions)
    np.testing.assert_array_equal(masked_flat, masked_boxed)
    np.testing.assert_allclose(np.array(sub_flat.cell), np.diag([12.0, 12.0, 0.0]))


def test_per_atom_arrays_follow_and_parent_metadata_does_not():
    atoms = sc_grid(6, 3.6)
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)))
    atoms.set_tags(np.arange(len(atoms)))
    atoms.new_array("gamma", rng.random(len(atoms)))
    atoms.info["energy"] = -1.0
    atoms.calc = LennardJones()
    sub, _ = extract_periodic_subsystem(atoms, 100, 4.0, 3.0)
    pi = sub.arrays["parent_index"]
    np.testing.assert_array_equal(sub.get_momenta(), atoms.get_momenta()[pi])
    np.testing.assert_array_equal(sub.get_tags(), pi)
    np.testing.assert_array_equal(sub.arrays["gamma"], atoms.arrays["gamma"][pi])
    np.testing.assert_array_equal(sub.numbers, atoms.numbers[pi])
    assert "energy" not in sub.info
    assert sub.calc is None


# ------------------------------------------------------------ property: containment


@st.composite
def random_parents(draw):
    kind = draw(st.sampled_from(sorted(PBC_KINDS)))
    seed = draw(st.integers(0, 2**32 - 1))
    natoms = draw(st.integers(1, 40))
    rng = np.random.default_rng(seed)
    skew = 0.0 if kind == "cubic" else 0.6
    lo, hi = draw(st.sampled_from([(2.5, 6.0), (5.0, 15.0), (12.0, 30.0)]))
    cell = random_cell(rng, PBC_KINDS[kind], skew, lo, hi)
    if kind == "cubic":
        cell = np.eye(3) * cell[0, 0]
    frac = rng.random((natoms, 3))
    frac[:, ~np.array(PBC_KINDS[kind])] = 0.3 + 0.4 * frac[:, ~np.array(PBC_KINDS[kind])]
    atoms = Atoms(numbers=np.full(natoms, 18), scaled_positions=frac, cell=cell,
                  pbc=PBC_KINDS[kind])
    center = draw(st.integers(0, natoms - 1))
    cutoff = draw(st.floats(0.5, 6.0))
    buffer = draw(st.floats(0.5, 6.0))
    return atoms, center, cutoff, buffer


@FAST
@given(random_parents())
def test_containment_matches_brute_force(case):
    atoms, center, cutoff, buffer = case
    sub, masked = extract_periodic_subsystem(atoms, center, cutoff, buffer, min_distance=0.0)
    assert sub.arrays["parent_index"][0] == center
    np.testing.assert_allclose(sub_displacements(sub)[0], 0.0)
    assert list(sub.pbc) == list(atoms.pbc)
    for k in range(3):
        if atoms.pbc[k]:
            np.testing.assert_allclose(sub.cell[k], np.eye(3)[k] * 2 * (cutoff + buffer))
            assert sub.positions[0, k] == pytest.approx(cutoff + buffer)
        else:
            np.testing.assert_allclose(sub.cell[k], atoms.cell[k])
    assert_matches_brute_force(atoms, center, cutoff, buffer, sub, masked)


# ---------------------------------------------------------------- property: forces

RC = 4.0  # LJ range, Å
SPACING = 2.5
JITTER = 0.3


def liquid_like(rng: np.random.Generator, kind: str, size: float) -> Atoms:
    """Jittered lattice filling the periodic cell; 1-2 jittered layers for a slab."""
    pbc = (True, True, False) if kind == "slab" else (True, True, True)
    skew = 0.0 if kind == "cubic" else 0.3
    cell = random_cell(rng, pbc, skew, size, size * 1.3)
    if kind == "cubic":
        cell = np.eye(3) * cell[0, 0]
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    counts = [max(1, int(round(h / SPACING))) if p else 1 for h, p in zip(heights, pbc)]
    if kind == "slab":
        counts[2] = int(rng.integers(1, 3))
    grid = np.array(list(itertools.product(*map(range, counts))), dtype=float)
    frac = grid / counts
    if kind == "slab":
        frac[:, 2] = 0.4 + grid[:, 2] * SPACING / cell[2, 2]
    pos = frac @ cell + rng.uniform(-JITTER, JITTER, (len(grid), 3))
    return Atoms(numbers=np.full(len(grid), 18), positions=pos, cell=cell, pbc=pbc)


def lj_forces(atoms: Atoms) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = LennardJones(sigma=2.2, epsilon=1.0, rc=RC, smooth=True)
    return atoms.get_forces()


def assert_forces_preserved(parent: Atoms, center: int, cutoff: float, md: float) -> Atoms:
    buffer = RC + md / 2
    sub, masked = extract_periodic_subsystem(parent, center, cutoff, buffer, min_distance=md)
    unmasked = np.setdiff1d(np.arange(len(sub)), masked)
    assert 0 in unmasked
    f_parent = lj_forces(parent)[sub.arrays["parent_index"][unmasked]]
    f_sub = lj_forces(sub)[unmasked]
    assert np.abs(f_parent).max() > 1e-6  # the comparison is not vacuous
    np.testing.assert_allclose(f_sub, f_parent, rtol=0, atol=1e-8)
    return sub


@SLOW
@given(
    kind=st.sampled_from(["cubic", "triclinic", "slab"]),
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([9.0, 13.0, 18.0]),
    cutoff=st.floats(2.0, 4.0),
    md=st.sampled_from([0.0, DEFAULT_MIN_DISTANCE, 0.8]),
)
def test_unmasked_forces_equal_parent_forces(kind, seed, size, cutoff, md):
    rng = np.random.default_rng(seed)
    parent = liquid_like(rng, kind, size)
    # Jittered lattice: no physical pair is near min_distance.
    dist = get_distances(parent.positions, cell=parent.cell, pbc=parent.pbc)[1]
    assume(dist[np.triu_indices(len(parent), 1)].min() > 2 * max(md, 0.5))
    center = int(rng.integers(len(parent)))
    assert_forces_preserved(parent, center, cutoff, md)


def test_forces_preserved_when_atoms_are_removed():
    # A fixed case where carving does create contacts (checked below), so the
    # removal path is exercised by the force property too.
    removed = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        parent = liquid_like(rng, "triclinic", 20.0)
        for center in (0, len(parent) // 2):
            sub = assert_forces_preserved(parent, center, 3.0, 0.8)
            removed += sub.info["embedding_n_removed"]
    assert removed > 0


# ------------------------------------------------------------------ min_distance


def lone_atoms(displacements: list[tuple[float, float, float]]) -> Atoms:
    """A centre atom at the middle of a big empty box plus atoms at given offsets."""
    mid = np.full(3, 25.0)
    pos = np.vstack([mid, mid + np.array(displacements, dtype=float)])
    return Atoms(numbers=np.full(len(pos), 18), positions=pos, cell=np.eye(3) * 50.0, pbc=True)


def contact_pairs(sub: Atoms, md: float) -> int:
    if len(sub) < 2:
        return 0
    dist = get_distances(sub.positions, cell=sub.cell, pbc=sub.pbc)[1]
    return int(np.count_nonzero(dist[np.triu_indices(len(sub), 1)] < md))


def test_atom_with_most_contacts_is_removed():
    # cutoff 3, buffer 3: L = 12.  A (+5.8) touches B and C (-5.9, +-0.3)
    # across the x faces (0.42 Å); B-C are 0.6 Å apart.  A has two contacts,
    # so it goes although B and C are nearer the face.
    atoms = lone_atoms([(5.8, 0.0, 0.0), (-5.9, 0.3, 0.0), (-5.9, -0.3, 0.0), (0.0, 2.0, 0.0)])
    sub, masked = extract_periodic_subsystem(atoms, 0, 3.0, 3.0)
    assert sorted(sub.arrays["parent_index"]) == [0, 2, 3, 4]
    assert sub.info["embedding_n_removed"] == 1
    assert contact_pairs(sub, DEFAULT_MIN_DISTANCE) == 0
    # Re-indexed into the returned sub-cell: exactly B and C are masked.
    pi = sub.arrays["parent_index"]
    np.testing.assert_array_equal(masked, np.flatnonzero(np.isin(pi, [2, 3])))
    dist = np.linalg.norm(sub_displacements(sub), axis=1)
    np.testing.assert_array_equal(masked, np.flatnonzero(dist > 3.0))


def test_tie_removes_the_atom_nearest_the_face():
    atoms = lone_atoms([(5.7, 0.0, 0.0), (-5.9, 0.1, 0.0)])
    sub, _ = extract_periodic_subsystem(atoms, 0, 3.0, 3.0)
    assert sorted(sub.arrays["parent_index"]) == [0, 1]


def test_min_distance_zero_keeps_everything():
    atoms = lone_atoms([(5.8, 0.0, 0.0), (-5.9, 0.3, 0.0), (-5.9, -0.3, 0.0), (0.0, 2.0, 0.0)])
    sub, masked = extract_periodic_subsystem(atoms, 0, 3.0, 3.0, min_distance=0.0)
    assert len(sub) == 5 and sub.info["embedding_n_removed"] == 0
    assert contact_pairs(sub, DEFAULT_MIN_DISTANCE) == 2
    assert_matches_brute_force(atoms, 0, 3.0, 3.0, sub, masked)


def test_contact_with_unmasked_atom_raises():
    # Buffer 0.3 Å < min_distance: the unmasked atom at +2.9 touches the
    # masked one at -3.25 across the face (L = 6.6, gap 0.45 Å).
    atoms = lone_atoms([(2.9, 0.0, 0.0), (-3.25, 0.0, 0.0)])
    with pytest.raises(ValueError, match="buffer"):
        extract_periodic_subsystem(atoms, 0, 3.0, 0.3)
    sub, masked = extract_periodic_subsystem(atoms, 0, 3.0, 0.3, min_distance=0.0)
    assert len(sub) == 3 and list(masked) == [np.flatnonzero(sub.arrays["parent_index"] == 2)[0]]


def test_close_pair_in_parent_near_centre_raises():
    atoms = lone_atoms([(1.0, 0.0, 0.0), (1.3, 0.0, 0.0)])
    with pytest.raises(ValueError, match="min_distance"):
        extract_periodic_subsystem(atoms, 0, 3.0, 3.0)


# ------------------------------------------------------------------------ bad input


def _aligned_slab() -> Atoms:
    return Atoms("Ar2", positions=[[1, 1, 10], [3, 3, 10]], cell=[10, 10, 20],
                 pbc=(True, True, False))


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (lambda: Atoms(cell=[10, 10, 10], pbc=True), {}, "no atoms"),
        (lambda: sc_grid(3, 3.6), {"center": 27}, "out of range"),
        (lambda: sc_grid(3, 3.6), {"center": -1}, "out of range"),
        (lambda: sc_grid(3, 3.6), {"center": 1.5}, "integer"),
        (lambda: sc_grid(3, 3.6), {"cutoff": 0.0}, "cutoff"),
        (lambda: sc_grid(3, 3.6), {"cutoff": -2.0}, "cutoff"),
        (lambda: sc_grid(3, 3.6), {"cutoff": float("nan")}, "cutoff"),
        (lambda: sc_grid(3, 3.6), {"buffer": 0.0}, "buffer"),
        (lambda: sc_grid(3, 3.6), {"buffer": -1.0}, "buffer"),
        (lambda: sc_grid(3, 3.6), {"min_distance": -0.1}, "min_distance"),
        (lambda: sc_grid(3, 3.6), {"min_distance": 8.0}, "min_distance"),
        (
            lambda: Atoms("Ar", positions=[[1, 1, 1]], cell=[[10, 0, 0], [0, 10, 0], [2, 0, 20]],
                          pbc=(True, True, False)),
            {},
            "not Cartesian-aligned",
        ),
        (
            lambda: Atoms("Ar", positions=[[1, 1, 1]], cell=[[10, 0, 1], [0, 10, 0], [0, 0, 20]],
                          pbc=(True, True, False)),
            {},
            "not Cartesian-aligned",
        ),
        (lambda: Atoms("Ar", positions=[[1, 1, 1]], pbc=True), {}, "degenerate"),
    ],
)
def test_bad_input_raises(make, kwargs, match):
    args = {"center": 0, "cutoff": 4.0, "buffer": 4.0} | kwargs
    with pytest.raises(ValueError, match=match):
        extract_periodic_subsystem(make(), args.pop("center"), args.pop("cutoff"),
                                   args.pop("buffer"), **args)


def test_aligned_slab_and_cluster_are_accepted():
    sub, _ = extract_periodic_subsystem(_aligned_slab(), 0, 3.0, 3.0)
    assert len(sub) == 2
    cluster = Atoms("Ar3", positions=[[0, 0, 0], [3, 0, 0], [9, 0, 0]])  # no cell at all
    sub, masked = extract_periodic_subsystem(cluster, 1, 4.0, 1.0)
    assert list(sub.arrays["parent_index"]) == [1, 0, 2]
    assert list(masked) == [2]
    np.testing.assert_array_equal(sub.positions, cluster.positions[[1, 0, 2]])


# --------------------------------------------------------------------- select_centers


def test_select_centers_basic():
    atoms = Atoms("Ar6", positions=[[1, 1, 1], [2, 1, 1], [10, 10, 10], [19, 1, 1],
                                    [10, 1, 1], [15, 15, 15]],
                  cell=[20, 20, 20], pbc=True)
    gamma = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 1.0])
    # 1 is too close to 0; 3 is too close to 0 through the periodic boundary.
    assert select_centers(atoms, gamma, 2.0, 10, 5.0) == [0, 2, 4]
    assert select_centers(atoms, gamma, 2.0, 2, 5.0) == [0, 2]
    assert select_centers(atoms, gamma, 2.0, 0, 5.0) == []
    assert select_centers(atoms, gamma, 2.0, 10, 0.0) == [0, 1, 2, 3, 4]
    # Without the cell (plain positions), 3 is 18 Å from 0 and is taken.
    assert select_centers(atoms.positions, gamma, 2.0, 10, 5.0) == [0, 2, 3, 4]
    assert select_centers(atoms.positions, gamma, 2.0, 10, 5.0, cell=atoms.cell) == [0, 2, 4]
    # The most uncertain atom comes first even when nothing exceeds the threshold.
    assert select_centers(atoms, gamma, 100.0, 10, 5.0) == [0]
    assert all(type(i) is int for i in select_centers(atoms, gamma, 2.0, 10, 5.0))


def test_select_centers_ties_and_errors():
    pos = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0]])
    assert select_centers(pos, [3.0, 5.0, 5.0], 1.0, 3, 5.0) == [1, 2, 0]
    with pytest.raises(ValueError, match="gamma"):
        select_centers(pos, [1.0, 2.0], 1.0, 3, 5.0)
    with pytest.raises(ValueError, match="max_extractions"):
        select_centers(pos, [1.0, 2.0, 3.0], 1.0, -1, 5.0)
    with pytest.raises(ValueError, match="min_separation"):
        select_centers(pos, [1.0, 2.0, 3.0], 1.0, 1, -5.0)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    natoms=st.integers(1, 60),
    threshold=st.floats(0.0, 1.0),
    max_extractions=st.integers(0, 8),
    min_separation=st.floats(0.0, 12.0),
    triclinic=st.booleans(),
)
def test_select_centers_matches_greedy_reference(seed, natoms, threshold, max_extractions,
                                                 min_separation, triclinic):
    rng = np.random.default_rng(seed)
    cell = random_cell(rng, (True, True, True), 0.5 if triclinic else 0.0, 8.0, 20.0)
    atoms = Atoms(numbers=np.full(natoms, 18), scaled_positions=rng.random((natoms, 3)),
                  cell=cell, pbc=True)
    gamma = rng.random(natoms)
    got = select_centers(atoms, gamma, threshold, max_extractions, min_separation)

    expected: list[int] = []
    for i in sorted(range(natoms), key=lambda i: (-gamma[i], i)):
        if len(expected) == max_extractions:
            break
        if expected and gamma[i] <= threshold:
            continue
        far = all(
            find_mic(atoms.positions[i] - atoms.positions[j], cell, True)[1] >= min_separation
            for j in expected
        )
        if far:
            expected.append(i)
    assert got == expected
