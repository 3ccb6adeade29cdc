"""ASE cell <-> LAMMPS box: LAMMPS's restricted triclinic frame, 2D boxes.

LAMMPS stores a periodic box as three edge vectors forming a lower-triangular matrix::

    A = (lx, 0, 0),  B = (xy, ly, 0),  C = (xz, yz, lz),   lx, ly, lz > 0

anchored at the corner ``lo = (xlo, ylo, zlo)``. An arbitrary ASE cell is brought into
that form by a rotation ``Q`` (QR decomposition of the cell): LAMMPS coordinates are
``r_lmp = (r_ase - origin) @ Q`` and ASE coordinates come back with
``r_ase = r_lmp @ Q.T + origin``. Velocities and forces transform with ``Q`` alone.

A left-handed ASE cell cannot be rotated into LAMMPS's (right-handed) form, so one of its
vectors (c in 3D, b in 2D) is negated for LAMMPS; both describe the same lattice, so the
periodic system is unchanged, and the sign is restored on the way back.

2D (``dimension 2``): LAMMPS needs a periodic z whose box straddles z = 0, atoms at z = 0,
and no tilt out of the plane. The ASE side is a layer (pbc ``(T, T, F)``) whose atoms share
one z (usually 0) and whose third cell vector is perpendicular to the layer. The layer's
z is moved to 0 for LAMMPS (``origin``), and the LAMMPS box height is made at least
``2 * min_half_height`` so that no atom sees its own periodic image along z through the
potential; the ASE cell keeps its own third vector on the way back.

Lengths in Å throughout. Pure numpy: no LAMMPS needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LammpsBox", "lammps_box", "frame_atoms"]

# Tilt factors and off-plane components smaller than this (Å) count as zero.
_TINY = 1e-10


@dataclass(frozen=True)
class LammpsBox:
    """How one ASE cell maps onto a LAMMPS box (all lengths Å).

    ``rotation`` is ``Q`` (3x3, orthogonal, proper): ``r_lmp = (r_ase - origin) @ Q``.
    ``lo`` is the LAMMPS box corner; ``matrix`` holds the LAMMPS edge vectors A, B, C as rows
    (lower triangular). ``flip`` is the index of the ASE cell vector negated for LAMMPS
    (a left-handed cell), or None.
    ``ase_c`` is the ASE third cell vector kept for 2D layers (the LAMMPS z extent is artificial there).
    """

    rotation: np.ndarray
    origin: np.ndarray
    lo: np.ndarray
    matrix: np.ndarray
    dimension: int
    flip: int | None = None
    ase_c: np.ndarray | None = None

    @property
    def hi(self) -> np.ndarray:
        """Upper bounds (xhi, yhi, zhi) of the LAMMPS box."""
        return self.lo + np.diag(self.matrix)

    @property
    def tilt(self) -> tuple[float, float, float]:
        """LAMMPS tilt factors (xy, xz, yz), Å."""
        m = self.matrix
        return float(m[1, 0]), float(m[2, 0]), float(m[2, 1])

    @property
    def triclinic(self) -> bool:
        """True when any tilt factor is non-zero."""
        return any(abs(t) > _TINY for t in self.tilt)

    # ------------------------------------------------------------------ conversions
    def to_lammps_positions(self, positions: np.ndarray) -> np.ndarray:
        """ASE positions (n, 3) Å -> LAMMPS positions (n, 3) Å."""
        return (np.asarray(positions, float) - self.origin) @ self.rotation

    def to_ase_positions(self, positions: np.ndarray) -> np.ndarray:
        """LAMMPS positions (n, 3) Å -> ASE positions (n, 3) Å."""
        return np.asarray(positions, float) @ self.rotation.T + self.origin

    def to_lammps_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate vectors (velocities, forces) from the ASE into the LAMMPS frame (no shift)."""
        return np.asarray(vectors, float) @ self.rotation

    def to_ase_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate vectors (velocities, forces) from the LAMMPS into the ASE frame (no shift)."""
        return np.asarray(vectors, float) @ self.rotation.T

    def ase_cell(self, matrix: np.ndarray | None = None) -> np.ndarray:
        """The ASE cell (rows a, b, c) of a LAMMPS box ``matrix`` (default: this box's own).

        For a box changed by a barostat pass its new lower-triangular matrix; the rotation
        stays the one fixed at the start of the segment.
        """
        m = self.matrix if matrix is None else np.asarray(matrix, float)
        cell = m @ self.rotation.T
        if self.flip is not None:
            cell[self.flip] = -cell[self.flip]
        if self.dimension == 2 and self.ase_c is not None:
            cell[2] = self.ase_c
        return cell

    def matrix_from_lammps(self, boxlo, boxhi, xy: float, yz: float, xz: float) -> np.ndarray:
        """Lower-triangular edge matrix from LAMMPS's (boxlo, boxhi, xy, yz, xz) as ``extract_box`` gives them."""
        lx, ly, lz = (float(boxhi[i]) - float(boxlo[i]) for i in range(3))
        return np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])


def lammps_box(cell, pbc, dimension: int, positions=None, min_half_height: float = 0.0) -> LammpsBox:
    """The LAMMPS box of an ASE cell.

    ``cell``: 3x3 (rows a, b, c, Å). ``pbc``: three booleans; 3D needs all periodic, 2D needs
    ``(True, True, False)`` (a periodic z is accepted too). ``positions`` (2D only) fix the
    layer's z. ``min_half_height`` (2D only): the LAMMPS box spans at least
    ``[-min_half_height, +min_half_height]`` along z (Å).

    Raises ``ValueError`` for boxes LAMMPS cannot represent this way.
    """
    cell = np.array(cell, dtype=float).reshape(3, 3)
    pbc = tuple(bool(p) for p in np.broadcast_to(pbc, 3))
    if dimension not in (2, 3):
        raise ValueError(f"dimension must be 2 or 3, not {dimension}")
    if dimension == 3:
        if not all(pbc):
            raise ValueError(f"3D MD needs a fully periodic cell, got pbc={pbc}")
        return _box3d(cell)
    if not (pbc[0] and pbc[1]):
        raise ValueError(f"2D MD needs periodic x and y, got pbc={pbc}")
    return _box2d(cell, positions, min_half_height)


def _rotation(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, L): proper orthogonal Q and lower-triangular L with cell @ Q = L, diag(L) > 0."""
    if abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError("the cell is singular (zero volume)")
    q, r = np.linalg.qr(cell.T)  # cell.T = q r  =>  cell = r.T q.T  =>  cell @ q = r.T
    signs = np.sign(np.diag(r))
    q = q * signs  # flip columns so that diag(r) > 0
    lower = cell @ q
    # Remove the round-off above the diagonal; it is exactly zero in exact arithmetic.
    lower = np.tril(lower)
    return q, lower


def _box3d(cell: np.ndarray) -> LammpsBox:
    flip = np.linalg.det(cell) < 0
    work = cell.copy()
    if flip:
        work[2] = -work[2]
    q, lower = _rotation(work)
    return LammpsBox(rotation=q, origin=np.zeros(3), lo=np.zeros(3), matrix=lower, dimension=3, flip=2 if flip else None)


def _box2d(cell: np.ndarray, positions, min_half_height: float) -> LammpsBox:
    a, b, c = cell
    if abs(a[2]) > _TINY or abs(b[2]) > _TINY:
        raise ValueError("2D MD needs the first two cell vectors in the xy plane (zero z components)")
    if abs(c[0]) > _TINY or abs(c[1]) > _TINY or c[2] <= 0:
        raise ValueError("2D MD needs the third cell vector along +z (0, 0, c>0)")
    z0 = 0.0
    if positions is not None and len(positions):
        z = np.asarray(positions, float)[:, 2]
        z0 = float(z[0])
        if np.max(np.abs(z - z0)) > 1e-6:
            raise ValueError("2D MD needs all atoms in one plane (equal z)")
    # In-plane rotation only: work on the 2x2 block, z stays z.
    ab = np.array([a[:2], b[:2]])
    flip = np.linalg.det(ab) < 0
    if flip:
        ab[1] = -ab[1]
    q2, r2 = np.linalg.qr(ab.T)
    q2 = q2 * np.sign(np.diag(r2))
    low2 = np.tril(ab @ q2)
    q = np.eye(3)
    q[:2, :2] = q2
    h = max(0.5 * float(c[2]), float(min_half_height))
    matrix = np.array([[low2[0, 0], 0.0, 0.0], [low2[1, 0], low2[1, 1], 0.0], [0.0, 0.0, 2 * h]])
    return LammpsBox(
        rotation=q,
        origin=np.array([0.0, 0.0, z0]),
        lo=np.array([0.0, 0.0, -h]),
        matrix=matrix,
        dimension=2,
        flip=1 if flip else None,
        ase_c=c.copy(),
    )


def frame_atoms(box: LammpsBox, numbers, pbc, positions: np.ndarray, lo: np.ndarray, matrix: np.ndarray,
                masses=None, wrap: bool = True):
    """An ``ase.Atoms`` in the ASE frame from LAMMPS-frame ``positions`` (Å).

    ``lo`` and ``matrix`` describe the LAMMPS box at that moment (under a barostat both
    differ from the segment's starting box; the ASE cell origin follows the LAMMPS corner).
    ``wrap``: wrap the positions into the cell along periodic directions.
    """
    from ase import Atoms

    ase_pos = box.to_ase_positions(np.asarray(positions, float) - lo + box.lo)
    atoms = Atoms(numbers=numbers, positions=ase_pos, cell=box.ase_cell(matrix), pbc=pbc)
    if masses is not None:
        atoms.set_masses(masses)
    if wrap:
        atoms.wrap()
    return atoms
