"""Periodic embedding: carve a small periodic cell around an uncertain atom.

When an MD run flags an atom whose ACE extrapolation grade (gamma) is too high,
the whole parent configuration is usually far too large for DFT.  Instead we
cut a cube of side ``L = 2 * (cutoff + buffer)`` (Å) centred on that atom and
make the cube periodic.  The atoms within ``cutoff`` of the centre see exactly
the environment they had in the parent (as long as ``buffer`` exceeds the
interaction range), so their DFT forces are usable training labels.  The atoms
in the buffer shell see an artificial environment near the carved faces; their
forces are *masked* (not trained on).

Why it is exact for unmasked atoms: an unmasked atom ``u`` has ``|d_u| <=
cutoff`` from the centre, so every neighbour of ``u`` within a range ``r_c``
has ``|d_k| <= cutoff + r_c < L/2`` on each axis and is therefore in the cube,
exactly once and with the right image.  Any *spurious* neighbour created by
the new periodicity lies at least ``L - L/2 - cutoff = buffer`` away from
``u`` along some axis, hence outside ``r_c`` when ``buffer >= r_c``.  Removing
buffer atoms that collide across a carved face (see ``min_distance``) costs
another ``min_distance / 2`` of buffer; see :func:`extract_periodic_subsystem`.
Here ``r_c`` is the range of the *forces*: the cutoff of a pair potential, but
twice the cutoff of a many-body potential such as ACE (the force on ``u``
involves the energies of its neighbours, which see their own neighbours), and
for DFT a physical range to be measured (``autopipe buffer-scan``).

Everything here is pure geometry on numpy arrays (no I/O, no database) and is
O(N) in the parent size: fractional coordinates are computed axis by axis and
only for atoms still in play, only the periodic image shifts that can reach
the cube are enumerated, and all pair searches are done on the small sub-cell.

Units: lengths in Å throughout.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.geometry import find_mic
from scipy.spatial import cKDTree

__all__ = [
    "DEFAULT_MIN_DISTANCE",
    "extract_periodic_subsystem",
    "select_centers",
]

#: Default for ``min_distance`` (Å).  See :func:`extract_periodic_subsystem`.
DEFAULT_MIN_DISTANCE = 0.5

# Arrays that the sub-cell builds itself instead of slicing from the parent.
_OWN_ARRAYS = frozenset({"positions", "numbers", "parent_index"})

# Upper bound on (image shifts x atoms) handled in one broadcast, to keep the
# temporary arrays small for parents that need many images.
_BATCH_ELEMENTS = 2_000_000


def _positive_length(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in Å, got {value!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite positive length in Å, got {value!r}")
    return value


def _center_index(center: object, natoms: int) -> int:
    if isinstance(center, bool) or not isinstance(center, numbers.Integral):
        raise ValueError(f"center must be an integer atom index, got {center!r}")
    c = int(center)
    if not 0 <= c < natoms:
        raise ValueError(
            f"center index {c} is out of range for a parent with {natoms} atoms "
            f"(valid: 0..{natoms - 1}; negative indices are not accepted)"
        )
    return c


def _checked_cell(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Return (cell with exact zeros where alignment demands them, periodic axes).

    A non-periodic axis ``k`` must be Cartesian-aligned: cell vector ``k`` lies
    along Cartesian axis ``k`` and no periodic cell vector has a component along
    it.  Only then are "periodic axis k" and "Cartesian axis k" the same thing,
    and a cube along the periodic Cartesian axes is well defined.
    """
    cell = np.array(atoms.cell, dtype=float)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    periodic = np.flatnonzero(pbc)
    # Tolerance for "zero" cell components: round-off of the cell itself.
    tol = 1e-10 * max(1.0, float(np.abs(cell).max()))
    for k in np.flatnonzero(~pbc):
        off_axis = np.delete(cell[k], k)
        if np.any(np.abs(off_axis) > tol):
            raise ValueError(
                f"non-periodic axis {k} is not Cartesian-aligned: cell vector {k} = "
                f"{cell[k].tolist()} must point along Cartesian axis {k}"
            )
        if periodic.size and np.any(np.abs(cell[periodic, k]) > tol):
            raise ValueError(
                f"non-periodic axis {k} is not Cartesian-aligned: periodic cell vectors "
                f"{periodic.tolist()} have components {cell[periodic, k].tolist()} along "
                f"Cartesian axis {k}; they must lie in the plane perpendicular to it"
            )
        cell[k, np.arange(3) != k] = 0.0
        cell[periodic, k] = 0.0
    if periodic.size:
        block = cell[np.ix_(periodic, periodic)]
        scale = float(np.prod(np.linalg.norm(block, axis=1)))
        if scale == 0.0 or abs(np.linalg.det(block)) <= 1e-12 * scale:
            raise ValueError(
                f"the periodic cell vectors {cell[periodic].tolist()} are degenerate "
                "(zero volume/area); a periodic axis needs a proper cell vector"
            )
    return cell, periodic


def _image_shifts(half_frac: np.ndarray) -> np.ndarray:
    """Integer shifts ``n`` with ``f + n`` able to reach ``[-h, h]`` for some ``|f| <= 1/2``.

    ``half_frac[j]`` is the half-extent ``h_j`` of the cube in fractional
    coordinate ``j``.  A small tolerance only adds candidate shifts; the exact
    decision is made later in Cartesian coordinates.
    """
    tol = 1e-9
    ranges = [
        range(math.ceil(-h - 0.5 - tol), math.floor(h + 0.5 + tol) + 1) for h in half_frac
    ]
    return np.array(list(itertools.product(*ranges)), dtype=np.int64).reshape(-1, len(half_frac))


def _wrapped_fractions(
    pos: np.ndarray, pos_c: np.ndarray, periodic: np.ndarray, inv: np.ndarray, limit: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-image fractional displacements from the centre, pre-filtered.

    Returns ``(frac, wrap, cand)``: for the parent atoms ``cand`` (sorted),
    ``frac`` are their fractional displacements along the periodic cell
    vectors wrapped to [-1/2, 1/2) and ``wrap`` the integer image shift that
    did the wrapping.  Along a fractional axis where the cube is narrower than
    the cell (``limit < 1/2``) only the nearest image can be in the cube, so
    atoms with ``|frac| > limit`` are dropped right away.  The most selective
    axis goes first and later axes are only computed for the survivors: for a
    large parent this is about one pass over the positions instead of a full
    (N, 3) @ (3, 3) product.
    """
    natoms = len(pos)
    p = len(periodic)
    cand = np.arange(natoms)
    frac = np.empty((natoms, p))
    wrap = np.empty((natoms, p), dtype=np.int64)
    for j in np.argsort(limit):
        # Column-wise sum over the Cartesian components that contribute
        # (an orthorhombic cell has a diagonal inverse: one term).
        f = np.zeros(len(cand))
        for k in range(p):
            if inv[k, j] != 0.0:
                col = pos[:, periodic[k]] if len(cand) == natoms else pos[cand, periodic[k]]
                f += (col - pos_c[periodic[k]]) * inv[k, j]
        w = np.floor(f + 0.5)
        f -= w
        frac[:, j] = f
        wrap[:, j] = -w.astype(np.int64)
        if limit[j] < 0.5:
            keep = np.abs(f) <= limit[j]
            cand = cand[keep]
            frac = frac[keep]
            wrap = wrap[keep]
    return frac, wrap, cand


def _contacts(
    x: np.ndarray, periodic: np.ndarray, side: float, min_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) closer than ``min_distance`` under the sub-cell's periodicity.

    The sub-cell is orthorhombic, so a periodic k-d tree does the job; along a
    non-periodic axis the "box" is made wider than the data plus
    ``2 * min_distance`` so that its wrap-around can never create a contact.
    """
    n = len(x)
    if n < 2:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty
    data = np.empty_like(x)
    box = np.empty(3)
    isper = np.zeros(3, dtype=bool)
    isper[periodic] = True
    for k in range(3):
        if isper[k]:
            col = np.mod(x[:, k], side)
            col[col >= side] = 0.0  # np.mod can round up to exactly `side`
            data[:, k] = col
            box[k] = side
        else:
            lo = x[:, k].min()
            data[:, k] = x[:, k] - lo
            box[k] = float(data[:, k].max()) + 2.0 * min_distance + 1.0
    pairs = cKDTree(data, boxsize=box).query_pairs(min_distance, output_type="ndarray")
    if pairs.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty
    i, j = pairs[:, 0], pairs[:, 1]
    # The tree returns pairs with distance <= r; re-measure for the strict "<".
    delta = x[i] - x[j]
    delta[:, isper] -= side * np.round(delta[:, isper] / side)
    close = np.einsum("ij,ij->i", delta, delta) < min_distance**2
    return i[close].astype(np.intp), j[close].astype(np.intp)


def extract_periodic_subsystem(
    atoms: Atoms,
    center: int,
    cutoff: float,
    buffer: float,
    *,
    min_distance: float = DEFAULT_MIN_DISTANCE,
) -> tuple[Atoms, np.ndarray]:
    """Carve a periodic cube of side ``L = 2*(cutoff + buffer)`` Å around one atom.

    Parameters
    ----------
    atoms:
        Parent configuration.  Any cell (triclinic included) and any size
        (also smaller than ``L``: then several periodic images of one parent
        atom enter the sub-cell).  A non-periodic axis must be
        Cartesian-aligned (a slab or 2D sheet with vacuum along x, y or z).
    center:
        Index of the centre atom in ``atoms`` (non-negative).
    cutoff:
        Radius (Å) of the sphere around the centre whose atoms keep their
        forces.  Atoms farther than this (Euclidean) are masked.
    buffer:
        Thickness (Å) of the shell between the sphere and the cube faces.
        For a potential of range ``r_c`` the forces on unmasked atoms are exact
        when ``buffer >= r_c + min_distance/2`` (see "Exactness" below).
    min_distance:
        Atoms closer than this (Å) to another atom under the new periodicity
        are removed (masked atoms only).  ``0`` disables the check.  Must be
        smaller than ``L/2``.

        Default 0.5 Å: carving puts atoms from opposite faces next to each
        other at arbitrary separations.  Below ~0.5 Å two atoms are essentially
        on top of each other (the shortest real bond, H2, is 0.74 Å); such a
        pair gives a DFT calculation overlapping cores and huge forces or a
        failed SCF, so those atoms must go.  Anything larger would start
        deleting pairs that are merely compressed, and every Å of
        ``min_distance`` costs half an Å of extra buffer (i.e. a larger,
        costlier DFT cell).  0.5 Å is the smallest value that is never a
        physical distance, so it removes only true carving artefacts.

    Returns
    -------
    sub, masked:
        ``sub`` is an :class:`ase.Atoms` with cell ``L`` along each periodic
        axis of the parent (a cube for a fully periodic parent); along a
        non-periodic axis the parent's cell vector is kept.  ``sub.pbc`` is
        the parent's.  ``sub[0]`` is the centre atom, at ``L/2`` along each
        periodic axis; along non-periodic axes all coordinates are the
        parent's (so a slab stays where it was in its vacuum box).  ``sub``
        holds every parent atom *or periodic image* whose Cartesian
        displacement ``d`` from the centre satisfies ``-L/2 <= d_k < L/2`` on
        every periodic axis ``k`` (half-open, so an atom and its image ``L``
        apart are never both taken), minus removed atoms.
        ``sub.arrays["parent_index"]`` maps to parent indices; other per-atom
        arrays of the parent (momenta, tags, gamma, ...) are sliced along.
        ``sub.info`` has ``embedding_center`` (parent index),
        ``embedding_cutoff``, ``embedding_buffer``, ``embedding_min_distance``
        and ``embedding_n_removed``.  Parent ``info``, constraints and
        calculator are not carried over: they describe the parent, not ``sub``.

        ``masked`` is a sorted integer array of indices into ``sub`` of the
        atoms farther than ``cutoff`` from the centre.

    Removal rule
    ------------
    Contacts (pairs closer than ``min_distance``) are resolved greedily: the
    masked atom with the most contacts is removed first; ties go to the atom
    with the largest displacement from the centre along any periodic axis
    (largest ``max_k |d_k|``), i.e. the one nearest a carved face.  Repeat
    until no contact is left.  A contact involving an unmasked atom raises
    ``ValueError`` (the buffer is thinner than ``min_distance``, or the parent
    itself has atoms that close near the centre).

    Exactness
    ---------
    For a pair potential of range ``r_c`` the force on every unmasked atom in
    ``sub`` equals the parent's when ``buffer >= r_c + min_distance``: an atom
    removed for a contact across a carved face has ``|d_k| > L/2 -
    min_distance`` on that axis, so it is more than ``r_c`` from any unmasked
    atom.  With the tie-break above, ``buffer >= r_c + min_distance/2``
    suffices when such contacts come in pairs (the normal case: two colliding
    atoms have ``|d_k| + |d'_k| > L - min_distance``, so the outer one, which
    is removed, has ``|d_k| > L/2 - min_distance/2``).  Contacts that already
    exist in the parent (atoms closer than ``min_distance`` there) are not
    carving artefacts and void the guarantee if they lie within ``r_c`` of an
    unmasked atom.

    Raises
    ------
    ValueError
        Empty parent; centre not an index of it; non-positive or non-finite
        ``cutoff``/``buffer``; ``min_distance`` negative or ``>= L/2``; a
        non-periodic axis that is not Cartesian-aligned; a degenerate periodic
        cell; non-finite positions; an unmasked atom in a contact.
    """
    natoms = len(atoms)
    if natoms == 0:
        raise ValueError("the parent configuration has no atoms")
    c = _center_index(center, natoms)
    cutoff = _positive_length("cutoff", cutoff)
    buffer = _positive_length("buffer", buffer)
    half = cutoff + buffer
    side = 2.0 * half
    try:
        min_distance = float(min_distance)
    except (TypeError, ValueError):
        raise ValueError(f"min_distance must be a number in Å, got {min_distance!r}") from None
    if not math.isfinite(min_distance) or min_distance < 0.0:
        raise ValueError(f"min_distance must be a finite length >= 0 Å, got {min_distance!r}")
    if min_distance >= half:
        raise ValueError(
            f"min_distance={min_distance} Å must be smaller than L/2 = cutoff + buffer = "
            f"{half} Å, otherwise every atom touches its own periodic image"
        )
    cell, periodic = _checked_cell(atoms)

    pos = atoms.arrays["positions"]
    if not np.isfinite(pos).all():
        raise ValueError("the parent has non-finite (NaN/inf) positions")
    pos_c = pos[c]

    if periodic.size:
        # Fractional coordinates along the periodic cell vectors, relative to
        # the centre.  Thanks to the alignment check the periodic vectors only
        # have components on the periodic Cartesian axes, so the square block
        # of the cell is all we need to invert.
        block = cell[np.ix_(periodic, periodic)]
        inv = np.linalg.inv(block)
        # Half-extent of the cube in each fractional coordinate: the support
        # function of the cube [-L/2, L/2]^p along the reciprocal direction.
        half_frac = half * np.abs(inv).sum(axis=0)
        # Generous bound: only a pre-filter, the exact test is Cartesian.
        limit = half_frac * (1.0 + 1e-9) + 1e-9
        frac, wrap, cand = _wrapped_fractions(pos, pos_c, periodic, inv, limit)
        shifts = _image_shifts(half_frac)
        # Big parents need a single shift (the cube fits in the wrapped cell);
        # small ones need many shifts but then have few atoms: batch so that
        # the broadcast temporary stays bounded either way.
        batch = max(1, _BATCH_ELEMENTS // max(1, len(cand) * periodic.size))
        found_atom: list[np.ndarray] = []
        found_shift: list[np.ndarray] = []
        for start in range(0, len(shifts), batch):
            sb = shifts[start : start + batch]
            if len(sb) == 1:
                ok = np.all(np.abs(frac + sb[0]) <= limit, axis=1)[None, :]
            else:
                ok = np.all(np.abs(frac[None, :, :] + sb[:, None, :]) <= limit, axis=2)
            s_idx, a_idx = np.nonzero(ok)
            found_atom.append(a_idx)
            found_shift.append(sb[s_idx])
        local = np.concatenate(found_atom)
        total_shift = wrap[local] + np.concatenate(found_shift)
        cand = cand[local]
        # Exact Cartesian displacement, computed as (r_i - r_c) + n @ cell.
        disp = (pos[cand] - pos_c) + total_shift.astype(float) @ cell[periodic]
        dper = disp[:, periodic]
        inside = np.all((dper >= -half) & (dper < half), axis=1)
        cand, total_shift, disp = cand[inside], total_shift[inside], disp[inside]
        # Deterministic order: by parent index, then by image shift; then the
        # centre's own (zero-shift) copy goes to the front.
        order = np.lexsort(tuple(total_shift.T[::-1]) + (cand,))
        cand, total_shift, disp = cand[order], total_shift[order], disp[order]
        is_center = (cand == c) & np.all(total_shift == 0, axis=1)
    else:
        # No periodic axis: nothing to carve, the whole parent is the "cube".
        cand = np.arange(natoms)
        disp = pos - pos_c
        is_center = cand == c
    first = int(np.flatnonzero(is_center)[0])
    order = np.concatenate(([first], np.delete(np.arange(len(cand)), first)))
    cand, disp = cand[order], disp[order]

    # Periodic axes: centre at L/2.  Non-periodic axes: parent coordinates.
    sub_pos = pos[cand].copy()
    sub_pos[:, periodic] = disp[:, periodic] + half
    dist = np.sqrt(np.einsum("ij,ij->i", disp, disp))
    is_masked = dist > cutoff

    keep = np.ones(len(cand), dtype=bool)
    if min_distance > 0.0:
        ci, cj = _contacts(sub_pos, periodic, side, min_distance)
        bad = ~is_masked[ci] | ~is_masked[cj]
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            a, b = int(ci[k]), int(cj[k])
            gap = _sub_distance(sub_pos, a, b, periodic, side)
            raise ValueError(
                f"unmasked atom in a contact closer than min_distance={min_distance} Å: "
                f"parent atoms {int(cand[a])} and {int(cand[b])} (at {dist[a]:.3f} and "
                f"{dist[b]:.3f} Å from the centre) are {gap:.3f} Å apart in the sub-cell."
                f" The buffer ({buffer} Å) is too thin for "
                f"min_distance, or the parent itself has atoms this close near the centre"
            )
        # Distance to the nearest carved face, as max_k |d_k| over periodic axes.
        face = np.abs(disp[:, periodic]).max(axis=1) if periodic.size else dist
        while ci.size:
            counts = np.bincount(np.concatenate((ci, cj)), minlength=len(cand))
            most = counts.max()
            tied = np.flatnonzero(counts == most)
            victim = int(tied[np.argmax(face[tied])])
            keep[victim] = False
            alive = (ci != victim) & (cj != victim)
            ci, cj = ci[alive], cj[alive]

    cand, sub_pos, is_masked = cand[keep], sub_pos[keep], is_masked[keep]
    sub_cell = cell.copy()
    for k in periodic:
        sub_cell[k] = 0.0
        sub_cell[k, k] = side
    sub = Atoms(
        numbers=atoms.arrays["numbers"][cand],
        positions=sub_pos,
        cell=sub_cell,
        pbc=atoms.pbc.copy(),
    )
    for name, values in atoms.arrays.items():
        if name not in _OWN_ARRAYS:
            sub.new_array(name, values[cand])
    sub.new_array("parent_index", cand.astype(np.int64))
    sub.info.update(
        embedding_center=c,
        embedding_cutoff=cutoff,
        embedding_buffer=buffer,
        embedding_min_distance=min_distance,
        embedding_n_removed=int(np.count_nonzero(~keep)),
    )
    return sub, np.flatnonzero(is_masked)


def _sub_distance(x: np.ndarray, a: int, b: int, periodic: np.ndarray, side: float) -> float:
    delta = x[a] - x[b]
    delta[periodic] -= side * np.round(delta[periodic] / side)
    return float(np.linalg.norm(delta))


def select_centers(
    atoms_or_positions: Atoms | np.ndarray | Sequence[Sequence[float]],
    gamma: np.ndarray | Sequence[float],
    threshold: float,
    max_extractions: int,
    min_separation: float,
    *,
    cell: np.ndarray | None = None,
    pbc: bool | Sequence[bool] | None = None,
) -> list[int]:
    """Choose the atoms to carve sub-cells around, most uncertain first.

    The atom with the largest ``gamma`` is always chosen first (the caller
    asks because something extrapolated; ties go to the lower index).  Then,
    in decreasing ``gamma`` order, each atom with ``gamma > threshold`` is
    added if it is at least ``min_separation`` Å (minimum-image distance) from
    every centre chosen so far, until ``max_extractions`` centres are chosen.
    The steering loop uses ``min_separation = L`` so that the cubes do not
    overlap much and each extraction covers a different region.

    Parameters
    ----------
    atoms_or_positions:
        An :class:`ase.Atoms` (its cell and pbc define the minimum image) or
        an ``(N, 3)`` array of positions in Å.
    gamma:
        Per-atom extrapolation grades, length N.
    threshold:
        Only atoms with ``gamma > threshold`` are added after the first.
    max_extractions:
        Maximum number of centres (>= 0).
    min_separation:
        Minimum distance in Å between chosen centres (>= 0).
    cell, pbc:
        Only with a positions array: the periodic cell (3x3, Å) and periodic
        flags (default: all periodic if ``cell`` is given, else open).

    Returns
    -------
    list[int]
        Parent atom indices, in selection order.
    """
    if isinstance(atoms_or_positions, Atoms):
        if cell is not None or pbc is not None:
            raise ValueError("pass cell/pbc only with a positions array, not with Atoms")
        positions = atoms_or_positions.positions
        cell_arr = np.array(atoms_or_positions.cell, dtype=float)
        pbc_arr = np.asarray(atoms_or_positions.pbc, dtype=bool)
    else:
        positions = np.asarray(atoms_or_positions, dtype=float)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
        cell_arr = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=float)
        if cell_arr.shape != (3, 3):
            raise ValueError(f"cell must be 3x3, got shape {cell_arr.shape}")
        if pbc is None:
            pbc = cell is not None
        pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    gamma_arr = np.asarray(gamma, dtype=float)
    if gamma_arr.shape != (len(positions),):
        raise ValueError(
            f"gamma must have one value per atom ({len(positions)}), got shape {gamma_arr.shape}"
        )
    if np.isnan(gamma_arr).any():
        raise ValueError("gamma contains NaN")
    if isinstance(max_extractions, bool) or not isinstance(max_extractions, numbers.Integral):
        raise ValueError(f"max_extractions must be an integer, got {max_extractions!r}")
    if max_extractions < 0:
        raise ValueError(f"max_extractions must be >= 0, got {max_extractions}")
    min_separation = float(min_separation)
    if not math.isfinite(min_separation) or min_separation < 0.0:
        raise ValueError(f"min_separation must be a finite length >= 0 Å, got {min_separation}")
    if max_extractions == 0 or len(positions) == 0:
        return []

    # Candidates in decreasing gamma (stable: equal gammas keep index order).
    order = np.argsort(-gamma_arr, kind="stable")
    first = int(order[0])
    rest = order[1:]
    rest = rest[gamma_arr[rest] > threshold]
    chosen = [first]
    # Each chosen centre knocks out the candidates within min_separation of it;
    # the next centre is then the highest-gamma survivor.  One vectorised
    # distance evaluation per chosen centre, not per candidate.
    while rest.size and len(chosen) < max_extractions:
        sep = _mic_lengths(positions[rest] - positions[chosen[-1]], cell_arr, pbc_arr)
        rest = rest[sep >= min_separation]
        if rest.size == 0:
            break
        chosen.append(int(rest[0]))
        rest = rest[1:]
    return chosen


def _mic_lengths(vectors: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    if not pbc.any():
        return np.linalg.norm(vectors, axis=1)
    return find_mic(vectors, cell, pbc)[1]
