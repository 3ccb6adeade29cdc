"""ACE energies, forces, virial and extrapolation grades on raw positions, for MD.

pyace's ``PyACECalculator`` rebuilds its neighbour environment from scratch on every call
(in C++, but with a search that grows faster than linearly: about 25 µs/atom at 256 atoms,
2 ms/atom at 16k atoms), which is as much as or far more than the ACE evaluation itself
(25-40 µs/atom for a small basis). In MD the neighbours barely change from step to step, so
this module keeps a Verlet list with a skin:

* the list (periodic images, neighbour indices, image origins) is built with
  ``scipy.spatial.cKDTree`` for the cutoff plus a skin;
* on every later call only the coordinates of the atoms and of their images are refreshed
  (``ae.x``), until an atom has moved by more than half the skin (or the box changed by
  as much), then the list is rebuilt;
* pyace's C++ ``ACECalculator`` evaluates on that environment; neighbours beyond the cutoff
  contribute nothing, so the skin does not change any result.

Two pyace evaluators share the environment: the recursive Ctilde evaluator for forces
alone, and the B-basis evaluator with the active set loaded for the steps that also need
per-atom gamma (``compute_projections``).

Works in any orthogonal frame (the caller passes LAMMPS's box and coordinates). Units:
Å, eV, eV/Å. Not thread-safe: one evaluator per MD segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["AceEvaluator", "AceResult", "potential_cutoff", "potential_elements"]


@dataclass
class AceResult:
    """One evaluation: energy (eV), forces (n, 3) eV/Å, virial (6,) eV in LAMMPS order
    (xx, yy, zz, xy, xz, yz, sign of sum r·f), per-atom gamma (n,) or None."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    gamma: np.ndarray | None


def potential_elements(yaml: Path | str) -> list[str]:
    """Element symbols of a B-basis potential, in the potential's own order."""
    from pyace.basis import ACEBBasisSet

    basis = ACEBBasisSet(str(yaml))
    return [str(e) for e in basis.elements_name]


def potential_cutoff(yaml: Path | str) -> float:
    """Largest radial cutoff of a B-basis potential (Å)."""
    from pyace.basis import ACEBBasisSet

    return float(ACEBBasisSet(str(yaml)).cutoffmax)


class AceEvaluator:
    """ACE on a fixed set of atoms in a periodic box, with a Verlet neighbour list.

    ``yaml``: B-basis potential. ``asi``: active set (None: no gamma). ``symbols``: chemical
    symbol of every atom, in the order positions will be given. ``skin`` (Å): extra
    neighbour-list radius; larger means rarer rebuilds and more neighbours per evaluation.
    """

    def __init__(self, yaml: Path | str, asi: Path | str | None, symbols: Sequence[str], skin: float = 1.0):
        from pyace.basis import ACEBBasisSet
        from pyace.calculator import ACECalculator
        from pyace.evaluator import ACEBEvaluator, ACERecursiveEvaluator

        # The evaluators keep raw pointers to their basis: the basis objects must stay
        # referenced for as long as the evaluators live (else: crash or bad_array_new_length).
        self._basis = ACEBBasisSet(str(yaml))
        elements = [str(e) for e in self._basis.elements_name]
        missing = sorted(set(symbols) - set(elements))
        if missing:
            raise ValueError(f"potential {yaml} does not cover element(s) {missing}; it has {elements}")
        self.species = np.array([elements.index(s) for s in symbols], dtype=np.int64)
        self.cutoff = float(self._basis.cutoffmax)
        self.skin = float(skin)
        # Plain steps: the recursive evaluator on the Ctilde form of the same basis (what
        # LAMMPS's pair_style pace uses). Same forces to 1e-14 eV/Å, measured 20-25% faster
        # than the B-basis evaluator.
        self._ctilde = self._basis.to_ACECTildeBasisSet()
        self._plain_eval = ACERecursiveEvaluator(self._ctilde)
        self._plain_eval.set_recursive(True)
        self._plain = ACECalculator()
        self._plain.set_evaluator(self._plain_eval)
        self._gamma = None
        if asi is not None:
            self._gamma_basis = ACEBBasisSet(str(yaml))
            self._gamma_eval = ACEBEvaluator(self._gamma_basis)
            self._gamma_eval.load_active_set(str(asi))
            self._gamma = ACECalculator()
            self._gamma.set_evaluator(self._gamma_eval)
        self.n_builds = 0
        self._ae = None

    @property
    def has_gamma(self) -> bool:
        """True when an active set is loaded."""
        return self._gamma is not None

    # ------------------------------------------------------------------ neighbour list
    def _build(self, positions: np.ndarray, lo: np.ndarray, matrix: np.ndarray) -> None:
        from pyace.catomicenvironment import ACEAtomicEnvironment
        from scipy.spatial import cKDTree

        n = len(positions)
        rc = self.cutoff + self.skin
        inv = np.linalg.inv(matrix)
        frac = (positions - lo) @ inv
        frac -= np.floor(frac)
        real = frac @ matrix + lo
        # Images of atoms within rc of the cell: margin rc/height in fractional units per axis.
        volume = abs(np.linalg.det(matrix))
        heights = np.array([volume / np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)])
        margin = rc / heights
        nmax = np.ceil(margin).astype(int)
        ghost_x, ghost_origin, ghost_shift = [], [], []
        index = np.arange(n)
        for i in range(-nmax[0], nmax[0] + 1):
            for j in range(-nmax[1], nmax[1] + 1):
                for k in range(-nmax[2], nmax[2] + 1):
                    if i == j == k == 0:
                        continue
                    shift = np.array([i, j, k], dtype=float)
                    s = frac + shift
                    keep = np.all((s > -margin) & (s < 1.0 + margin), axis=1)
                    if keep.any():
                        ghost_x.append(s[keep] @ matrix + lo)
                        ghost_origin.append(index[keep])
                        ghost_shift.append(np.broadcast_to(shift, (int(keep.sum()), 3)))
        if ghost_x:
            gx = np.concatenate(ghost_x)
            self._ghost_origin = np.concatenate(ghost_origin)
            self._ghost_shift = np.concatenate(ghost_shift)
        else:
            gx = np.zeros((0, 3))
            self._ghost_origin = np.zeros(0, dtype=np.int64)
            self._ghost_shift = np.zeros((0, 3))
        x_ext = np.concatenate([real, gx])
        tree = cKDTree(x_ext)
        lists = tree.query_ball_point(real, rc, return_sorted=False)
        neighbours = [[j for j in nb if j != i] for i, nb in enumerate(lists)]
        ae = ACEAtomicEnvironment()
        ae.x = x_ext
        ae.species_type = np.concatenate([self.species, self.species[self._ghost_origin]]).tolist()
        ae.neighbour_list = neighbours
        ae.origins = np.concatenate([index, self._ghost_origin]).tolist()
        self._ae = ae
        self._ref = real
        self._ref_matrix = matrix.copy()
        self._shift_cells = np.unique(self._ghost_shift, axis=0) if len(self._ghost_shift) else np.zeros((0, 3))
        self.n_builds += 1

    def _refresh(self, positions: np.ndarray, lo: np.ndarray, matrix: np.ndarray) -> None:
        """Update coordinates in the current list, or rebuild it when it may be stale."""
        if self._ae is None or self._ref.shape != positions.shape:
            self._build(positions, lo, matrix)
            return
        inv = np.linalg.inv(matrix)
        # Minimum-image displacement since the build: LAMMPS wraps atoms back into the box
        # at its own re-neighbouring, which must not look like a jump of one box length.
        d = positions - self._ref
        d -= np.round(d @ inv) @ matrix
        max_disp = float(np.sqrt(np.max(np.einsum("ij,ij->i", d, d)))) if len(d) else 0.0
        box_change = 0.0
        if not np.array_equal(matrix, self._ref_matrix) and len(self._shift_cells):
            box_change = float(np.max(np.linalg.norm(self._shift_cells @ (matrix - self._ref_matrix), axis=1)))
        # A pair's distance changes by at most 2*max_disp + box_change since the build.
        if 2.0 * max_disp + box_change > self.skin:
            self._build(positions, lo, matrix)
            return
        real = self._ref + d
        ghosts = real[self._ghost_origin] + self._ghost_shift @ matrix
        # pybind converts nested lists ~15% faster than a numpy array (measured); this
        # copy is the main cost of the Verlet list besides the evaluation itself.
        self._ae.x = np.concatenate([real, ghosts]).tolist()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, positions: np.ndarray, lo: np.ndarray, matrix: np.ndarray, gamma: bool = False) -> AceResult:
        """Energy, forces, virial (and per-atom gamma if asked and an active set is loaded).

        ``positions`` (n, 3) Å in the same frame as the box; ``lo`` the box corner (3,);
        ``matrix`` the box edge vectors as rows (3, 3), Å.
        """
        positions = np.asarray(positions, dtype=float)
        lo = np.asarray(lo, dtype=float)
        matrix = np.asarray(matrix, dtype=float)
        self._refresh(positions, lo, matrix)
        want_gamma = gamma and self._gamma is not None
        calc = self._gamma if want_gamma else self._plain
        calc.compute(self._ae, compute_projections=want_gamma)
        forces = np.array(calc.forces, dtype=float)
        # pyace's virial is sum(r ⊗ dE/dr) = -sum(r ⊗ f): ASE's stress times volume. LAMMPS
        # wants sum(r ⊗ f), same component order (xx, yy, zz, xy, xz, yz).
        virial = -np.array(calc.virial, dtype=float)
        g = np.array(calc.gamma_grade, dtype=float) if want_gamma else None
        return AceResult(energy=float(calc.energy), forces=forces, virial=virial, gamma=g)
