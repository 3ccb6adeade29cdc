"""Lattice-commensurate carving: a periodic sub-cell made of whole periods of the crystal.

A cube of side ``2(core + buffer)`` never matches a crystal's period, so every face of a
cube carve joins atoms at bond lengths the crystal does not have, and for real DFT that
error reaches the core (``examples/si-vacancy/README.md``: 0.5-1.4 eV/Å). Here the sub-cell
is spanned by integer multiples ``n_i a_i`` of a reference lattice's vectors instead:

1. The parent must be a (possibly strained) supercell of the reference lattice: its cell is
   ``P @ A0`` for an integer matrix ``P``, up to a strain (``max_strain``).
2. Every parent atom is assigned to its nearest reference site. The site lattice is found in
   the frame itself (its origin from the atoms around the centre), so a crystal that drifted
   during MD is carved correctly.
3. The sites whose offsets from the centre's site fall in the half-open window
   ``[-1/2, 1/2)`` of the sub-cell's fractional coordinates are taken, each with the atom (or
   atoms, for an interstitial) assigned to it and that atom's own displacement. Since the
   window is half-open and a whole number of periods wide, a site and its periodic image
   never both enter, and an empty site (a vacancy) stays empty.
4. The sub-cell's lattice is the parent's average unit cell (``P^-1`` times the parent's
   cell), so under NPT the seams join at the strained bond lengths. ``local_strain=True``
   fits the lattice to the atoms in the window instead (a local affine strain); off by
   default: at 1300 K the fit on a 64-atom window scatters by 1-2 % (measured on the shared
   Si frame) where the average is exact for a homogeneous cell.

The atoms keep their exact positions relative to the centre atom; only the seams differ
from the parent. Core atoms (within ``core_radius`` Å of the centre) keep their forces;
the others are masked, as with the cube.

Units: lengths in Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.geometry import find_mic

__all__ = [
    "ReferenceLattice",
    "ParentTooSmall",
    "LatticeMismatch",
    "tiling_matrix",
    "supercell_counts",
    "carve_commensurate",
]

# Arrays that the sub-cell builds itself instead of slicing from the parent.
_OWN_ARRAYS = frozenset({"positions", "numbers", "parent_index"})

#: Atoms around the centre used to find the site lattice's origin and the local strain.
_ORIGIN_ATOMS = 48


class LatticeMismatch(ValueError):
    """The reference lattice does not tile the parent cell (or the parent is not 3D periodic)."""


class ParentTooSmall(ValueError):
    """The commensurate sub-cell would hold a parent atom twice: label the whole frame."""


@dataclass(frozen=True)
class ReferenceLattice:
    """A crystal's unit cell: lattice vectors (rows, Å) and site fractional coordinates.

    Conventional or primitive: the carve uses whichever is given (a primitive cell gives
    smaller steps in the sub-cell's size, a conventional cubic one rectangular sub-cells).
    """

    cell: np.ndarray  # (3, 3), rows are lattice vectors, Å
    basis: np.ndarray  # (n_sites, 3), fractional coordinates of the sites in [0, 1)
    numbers: np.ndarray  # (n_sites,), atomic numbers of the sites (informational)

    @classmethod
    def from_atoms(cls, unit: Atoms) -> ReferenceLattice:
        """The lattice of a unit cell given as :class:`ase.Atoms` (all three axes periodic)."""
        if not np.all(unit.pbc) or len(unit) == 0:
            raise LatticeMismatch("a reference lattice needs a 3D periodic unit cell with at least one atom")
        cell = np.array(unit.cell, dtype=float)
        if abs(np.linalg.det(cell)) < 1e-9:
            raise LatticeMismatch(f"the reference cell {cell.tolist()} has no volume")
        frac = np.mod(unit.get_scaled_positions(wrap=False), 1.0)
        frac[np.isclose(frac, 1.0)] = 0.0
        return cls(cell=cell, basis=frac, numbers=np.asarray(unit.numbers).copy())

    @property
    def n_sites(self) -> int:
        return len(self.basis)


def tiling_matrix(parent_cell: np.ndarray, lattice: ReferenceLattice, max_strain: float = 0.1) -> np.ndarray:
    """Integer ``P`` with ``parent_cell ≈ P @ lattice.cell`` (rows are vectors).

    ``max_strain``: the largest relative deviation tolerated between ``parent_cell`` and the
    ideal ``P @ A0`` (thermal expansion, a barostat). Raises :class:`LatticeMismatch` when no
    integer matrix fits.
    """
    parent_cell = np.asarray(parent_cell, dtype=float)
    p = parent_cell @ np.linalg.inv(lattice.cell)
    rounded = np.round(p)
    if abs(np.linalg.det(rounded)) < 0.5:
        raise LatticeMismatch(
            f"the reference lattice {np.round(lattice.cell, 4).tolist()} does not tile the parent cell "
            f"{np.round(parent_cell, 4).tolist()}: parent = {np.round(p, 3).tolist()} x reference"
        )
    ideal = rounded @ lattice.cell
    deviation = np.linalg.norm(parent_cell - ideal, axis=1) / np.linalg.norm(ideal, axis=1)
    if np.any(deviation > max_strain):
        raise LatticeMismatch(
            f"the reference lattice {np.round(lattice.cell, 4).tolist()} does not tile the parent cell "
            f"{np.round(parent_cell, 4).tolist()}: parent = {np.round(p, 3).tolist()} x reference, "
            f"{100 * float(deviation.max()):.1f} % from the nearest whole multiple (at most "
            f"{100 * max_strain:.0f} % allowed)"
        )
    return rounded.astype(np.int64)


def supercell_counts(cell: np.ndarray, half_width: float) -> np.ndarray:
    """Smallest ``n_i`` such that the cell spanned by ``n_i a_i`` has perpendicular widths
    of at least ``2 * half_width`` Å (``cell``: rows are the lattice vectors ``a_i``)."""
    reciprocal = np.linalg.inv(np.asarray(cell, dtype=float)).T  # rows b_i, a_i . b_j = delta_ij
    width = 1.0 / np.linalg.norm(reciprocal, axis=1)  # perpendicular width of one period, Å
    return np.maximum(1, np.ceil(2.0 * half_width / width - 1e-9)).astype(np.int64)


def _nearest_sites(d: np.ndarray, origin: np.ndarray, cell: np.ndarray, inv: np.ndarray,
                   basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For displacements ``d`` (N, 3): (site fractional coordinates k + b relative to
    ``origin``, basis index, distance to the site in Å)."""
    f = (d - origin) @ inv  # fractional coordinates along the reference vectors
    best = np.full(len(d), np.inf)
    site = np.zeros_like(f)
    which = np.zeros(len(d), dtype=np.int64)
    for j, b in enumerate(basis):
        r = f - b
        k = np.round(r)
        dist = np.linalg.norm((r - k) @ cell, axis=1)
        better = dist < best
        best[better] = dist[better]
        site[better] = k[better] + b
        which[better] = j
    return site, which, best


def _site_origin(d_local: np.ndarray, cell: np.ndarray, inv: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Origin (Å, relative to the centre atom) of the site lattice that fits the local atoms best.

    Candidates put a basis site exactly on one of the atoms nearest the centre; the one with
    the smallest sum of squared atom-to-site distances wins, and is refined by the mean
    displacement. Trying every basis site on several atoms makes this immune to the crystal's
    drift during MD and to the centre atom being off its site (a hopping atom).
    """
    best_cost, best_origin = np.inf, np.zeros(3)
    for x in d_local[: min(len(d_local), 8)]:
        for b in basis:
            origin = x - b @ cell
            _, _, dist = _nearest_sites(d_local, origin, cell, inv, basis)
            # Robust cost: an interstitial or a hopping atom should not pull the fit.
            cost = float(np.sum(np.minimum(dist, 1.0) ** 2))
            if cost < best_cost:
                best_cost, best_origin = cost, origin
    site, _, dist = _nearest_sites(d_local, best_origin, cell, inv, basis)
    ok = dist < np.median(dist) * 3 + 1e-6
    shift = (d_local[ok] - best_origin - site[ok] @ cell).mean(axis=0)
    return best_origin + shift


def carve_commensurate(
    atoms: Atoms,
    center: int,
    core_radius: float,
    buffer: float,
    lattice: ReferenceLattice,
    *,
    min_distance: float = 0.5,
    max_strain: float = 0.1,
    local_strain: bool = False,
) -> tuple[Atoms, np.ndarray]:
    """Carve a periodic sub-cell of whole lattice periods around atom ``center``.

    The sub-cell is spanned by ``n_i`` times the (locally strained) reference vectors, with
    ``n_i`` the smallest whose perpendicular widths reach ``2(core_radius + buffer)`` Å.
    Returns ``(sub, masked)`` as :func:`autopipe.embedding.extract_periodic_subsystem` does:
    ``sub[0]`` is the centre atom, ``sub.arrays["parent_index"]`` maps back to the parent,
    ``masked`` indexes the atoms farther than ``core_radius`` Å from the centre. ``sub.info``
    has ``embedding_strategy="commensurate"``, ``embedding_supercell`` (n_1, n_2, n_3),
    ``embedding_tiling`` (the parent's P), ``embedding_vacant_sites``,
    ``embedding_shared_sites`` (sites with more than one atom: interstitials),
    ``embedding_strain`` (the fitted local deformation, 3x3) and the cube's keys.

    Raises :class:`LatticeMismatch` when the lattice does not tile the parent,
    :class:`ParentTooSmall` when the sub-cell would need a parent atom twice (label the whole
    frame instead), and ``ValueError`` when a core atom is closer than ``min_distance`` Å to
    another atom of the sub-cell.
    """
    natoms = len(atoms)
    if natoms == 0:
        raise ValueError("the parent configuration has no atoms")
    c = int(center)
    if not 0 <= c < natoms:
        raise ValueError(f"center index {c} is out of range for a parent with {natoms} atoms")
    for name, value in (("core_radius", core_radius), ("buffer", buffer)):
        if not (math.isfinite(float(value)) and float(value) > 0):
            raise ValueError(f"{name} must be a finite positive length in Å, got {value!r}")
    if not np.all(atoms.pbc):
        raise LatticeMismatch("commensurate carving needs a parent periodic along all three axes")
    parent_cell = np.array(atoms.cell, dtype=float)
    tiling = tiling_matrix(parent_cell, lattice, max_strain)
    cell = np.linalg.inv(tiling.astype(float)) @ parent_cell  # the parent's average strained unit cell
    inv = np.linalg.inv(cell)
    n = supercell_counts(cell, float(core_radius) + float(buffer))

    pos = atoms.arrays["positions"]
    d, dist_c = find_mic(pos - pos[c], parent_cell, True)  # nearest-image displacement from the centre
    near = np.argsort(dist_c, kind="stable")[:_ORIGIN_ATOMS]
    origin = _site_origin(d[near], cell, inv, lattice.basis)
    site, _, _ = _nearest_sites(d, origin, cell, inv, lattice.basis)
    center_site = site[c].copy()
    offset = site - center_site  # site offsets from the centre's site, reference fractional coords

    # Parent images: any whole parent period that brings a site into the window.
    window_frac = offset / n
    shifts = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    tiling_f = tiling.astype(float)
    members, images = [], []
    for t in shifts:
        h = window_frac + (t @ tiling_f) / n
        inside = np.all((h >= -0.5 - 1e-9) & (h < 0.5 - 1e-9), axis=1)
        idx = np.flatnonzero(inside)
        members.append(idx)
        images.append(np.repeat(t[None, :], len(idx), axis=0))
    idx = np.concatenate(members)
    img = np.concatenate(images)
    if len(np.unique(idx)) < len(idx):
        raise ParentTooSmall(
            f"the commensurate sub-cell ({'x'.join(str(int(v)) for v in n)} reference cells) is larger than "
            f"the parent ({np.round(tiling, 3).tolist()} reference cells) along some direction: label the whole frame"
        )
    # Exact displacements from the centre atom (image-consistent with the window).
    w = d[idx] + img @ parent_cell
    site_vec = (offset[idx] + img @ tiling_f) @ cell  # ideal site offsets, Å

    strain = np.eye(3)
    if local_strain and len(idx) >= 4:
        # Fit the local lattice: atom offsets from the centre's site ≈ ideal offsets @ M.
        y = w - (origin + center_site @ cell)
        fitted, *_ = np.linalg.lstsq(np.c_[site_vec, np.ones(len(idx))], y, rcond=None)
        m = fitted[:3]
        # A fit far from the average strain means the frame is no crystal here: keep the average.
        if np.all(np.abs(m - np.eye(3)) < max_strain):
            strain = m
    sub_cell = (n[:, None] * cell) @ strain
    # Place the centre's site at the middle of the sub-cell; positions keep their exact offsets.
    centre_site_pos = origin + center_site @ cell  # relative to the centre atom
    sub_pos = w - centre_site_pos + 0.5 * sub_cell.sum(axis=0)

    # The centre first (its zero image), then the rest in parent order.
    by_parent = np.lexsort(tuple(img.T[::-1]) + (idx,))
    first = [i for i in by_parent if idx[i] == c and np.all(img[i] == 0)]
    order = np.concatenate((first, [i for i in by_parent if i != first[0]])).astype(np.int64)
    idx, sub_pos, w = idx[order], sub_pos[order], w[order]
    dist = np.linalg.norm(w, axis=1)
    is_masked = dist > float(core_radius)

    keep = np.ones(len(idx), dtype=bool)
    if min_distance > 0 and len(idx) > 1:
        probe = Atoms(positions=sub_pos, cell=sub_cell, pbc=True)
        pair = probe.get_all_distances(mic=True)
        np.fill_diagonal(pair, np.inf)
        ci, cj = np.nonzero(np.triu(pair < min_distance))
        bad = ~is_masked[ci] | ~is_masked[cj]
        if np.any(bad):
            a, b = int(ci[np.flatnonzero(bad)[0]]), int(cj[np.flatnonzero(bad)[0]])
            raise ValueError(
                f"unmasked atom in a contact closer than min_distance={min_distance} Å: parent atoms "
                f"{int(idx[a])} and {int(idx[b])} are {pair[a, b]:.3f} Å apart in the commensurate sub-cell"
            )
        # Resolve seam contacts among masked atoms: the one farther from the centre goes.
        for a, b in zip(ci, cj):
            if keep[a] and keep[b]:
                keep[a if dist[a] > dist[b] else b] = False

    taken_sites = offset[idx[keep]] + img[order][keep] @ tiling_f
    unique_sites = np.unique(np.round(taken_sites * 1e6).astype(np.int64), axis=0)
    n_sites = int(np.prod(n)) * lattice.n_sites
    sub = Atoms(numbers=atoms.arrays["numbers"][idx[keep]], positions=sub_pos[keep], cell=sub_cell, pbc=True)
    for name, values in atoms.arrays.items():
        if name not in _OWN_ARRAYS:
            sub.new_array(name, values[idx[keep]])
    sub.new_array("parent_index", idx[keep].astype(np.int64))
    sub.info.update(
        embedding_strategy="commensurate",
        embedding_center=c,
        embedding_cutoff=float(core_radius),
        embedding_buffer=float(buffer),
        embedding_min_distance=float(min_distance),
        embedding_n_removed=int(np.count_nonzero(~keep)),
        embedding_supercell=[int(v) for v in n],
        embedding_tiling=tiling.tolist(),
        embedding_vacant_sites=n_sites - len(unique_sites),
        embedding_shared_sites=int(np.count_nonzero(keep)) - len(unique_sites),
        embedding_strain=np.round(strain, 6).tolist(),
    )
    return sub, np.flatnonzero(is_masked[keep])
