"""Module A: initial structures for the first training set.

Three families, all built from a template structure (its cell, atom count and
dimensionality):

* rattled copies: Gaussian displacements of the template positions;
* strained copies: a random isotropic + shear strain of the cell, then a rattle;
* randomly packed cells: the template's cell filled with random positions (or, when
  the cell is too dense for random packing, strongly disordered template positions).

Every structure honours ``min_distance`` (Å): a candidate with any pair closer than
that is rejected and redrawn. That is how a deliberately defective potential is made
for the healing demo: it never sees close contacts, so MD that reaches them
extrapolates and the loop has something to learn.

2D templates (atoms in the z=0 plane, pbc (T, T, F)) stay 2D: displacements, strains
and random positions are in-plane only.

Lengths are in Å throughout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import InitialPotentialGenerate, SystemConfig

#: Attempts at drawing one structure before giving up on ``min_distance``.
MAX_ATTEMPTS = 200
#: Random-packing attempts before a dense cell falls back to strong disorder.
PACKING_ATTEMPTS = 3


def is_2d(atoms: Atoms) -> bool:
    """True for a planar system: periodic in x and y only, every atom at the same z."""
    pbc = tuple(bool(p) for p in atoms.pbc)
    if pbc != (True, True, False):
        return False
    z = atoms.positions[:, 2]
    return bool(len(z) == 0 or np.ptp(z) < 1e-6)


def min_pair_distance(atoms: Atoms) -> float:
    """Smallest interatomic distance under the minimum-image convention (Å); inf for < 2 atoms."""
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=True)
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min())


def template_atoms(system: SystemConfig) -> Atoms:
    """The starting structure a :class:`SystemConfig` describes (bulk crystal, 2D liquid or file)."""
    from autopipe.bulk import bulk_unit_cell, substitute

    src = system.structure
    if src.kind == "bulk":
        atoms = bulk_unit_cell(src, system.elements).repeat(src.repeat)
        if src.composition:
            substitute(atoms, src.composition, src.seed)
        if src.vacancies:
            if src.vacancies >= len(atoms):
                raise ValueError(f"{src.vacancies} vacancies in a crystal of {len(atoms)} atoms leave nothing")
            # Its own generator: the sites must not change when the rattle amplitude does.
            del atoms[np.random.default_rng(src.seed).choice(len(atoms), size=src.vacancies, replace=False)]
        if src.rattle > 0:
            atoms.rattle(src.rattle, seed=src.seed)
        return atoms
    if src.kind == "liquid2d":
        from ase import Atoms

        side = float(np.sqrt(src.n_atoms / src.density))
        cell = np.diag([side, side, src.vacuum])
        rng = np.random.default_rng(src.seed)
        pos = _random_positions(rng, cell, src.n_atoms, src.min_distance, planar=True)
        if pos is None:
            raise ValueError(
                f"cannot place {src.n_atoms} atoms at {src.density} atoms/Å² with min_distance {src.min_distance} Å"
            )
        symbols = [system.elements[i % len(system.elements)] for i in range(src.n_atoms)]
        return Atoms(symbols, positions=pos, cell=cell, pbc=(True, True, False))
    from ase.io import read

    return read(src.path, format=src.format)


def _random_positions(
    rng: np.random.Generator, cell: np.ndarray, n: int, min_distance: float, *, planar: bool, tries: int = 2000
) -> np.ndarray | None:
    """Sequential random placement with a minimum-image distance check; None if it jams."""
    cell = np.asarray(cell, dtype=float)
    inv = np.linalg.inv(cell)
    periodic = np.array([True, True, not planar])
    out: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(tries):
            frac = rng.random(3)
            if planar:
                frac[2] = 0.0
            p = frac @ cell
            if out and min_distance > 0:
                dfrac = (np.asarray(out) - p) @ inv
                dfrac[:, periodic] -= np.round(dfrac[:, periodic])
                if np.min(np.linalg.norm(dfrac @ cell, axis=1)) < min_distance:
                    continue
            out.append(p)
            break
        else:
            return None
    return np.asarray(out).reshape(n, 3)


def _strain_matrix(rng: np.random.Generator, strain: float, planar: bool) -> np.ndarray:
    """A symmetric deformation gradient with entries up to ``strain`` (isotropic part included)."""
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    eps += np.eye(3) * rng.uniform(-strain, strain)
    if planar:
        # Only the in-plane block: the vacuum height and the plane itself stay put.
        eps[2, :] = 0.0
        eps[:, 2] = 0.0
    return np.eye(3) + eps


def close_atoms(atoms: Atoms, min_distance: float) -> np.ndarray:
    """Indices of atoms that have a neighbour closer than ``min_distance`` (Å)."""
    if min_distance <= 0 or len(atoms) < 2:
        return np.zeros(0, dtype=int)
    from ase.neighborlist import neighbor_list

    i = neighbor_list("i", atoms, float(min_distance))
    return np.unique(i)


def _rattle(rng: np.random.Generator, atoms: Atoms, std: float, min_distance: float, planar: bool) -> None:
    """Gaussian displacements (std in Å) that leave no pair closer than ``min_distance``.

    Atoms with a too-close neighbour get their displacement redrawn with a shrinking
    amplitude; whatever is still too close after that goes back to its template site.
    Redrawing only the offending atoms keeps large rattles possible in large cells,
    where some close pair is almost certain; the fallback to the template sites ends the
    loop whenever the template itself honours ``min_distance``.
    """
    base = atoms.positions.copy()
    n_rounds = 20

    def draw(n: int, scale: float) -> np.ndarray:
        d = rng.normal(0.0, scale, size=(n, 3))
        if planar:
            d[:, 2] = 0.0
        return d

    atoms.positions = base + draw(len(atoms), std)
    for k in range(n_rounds):
        bad = close_atoms(atoms, min_distance)
        if bad.size == 0:
            return
        pos = atoms.positions
        pos[bad] = base[bad] + draw(bad.size, std * (1.0 - k / n_rounds))
        atoms.positions = pos
    for _ in range(len(atoms)):
        bad = close_atoms(atoms, min_distance)
        if bad.size == 0:
            return
        pos = atoms.positions
        pos[bad] = base[bad]
        atoms.positions = pos


def _assign_species(rng: np.random.Generator, atoms: Atoms, elements: Sequence[str]) -> None:
    """Mix species for multi-element systems so every element and pair appears in the data."""
    if len(elements) > 1:
        atoms.symbols = list(rng.choice(list(elements), size=len(atoms)))


def dataset_template(run_config) -> Atoms:
    """The template of the initial dataset: ``initial_potential.structure`` or the system's structure."""
    from autopipe.config.run import SystemConfig

    src = getattr(run_config.initial_potential, "structure", None)
    system = run_config.system if src is None else SystemConfig(elements=run_config.system.elements, structure=src)
    return template_atoms(system)


def generate_structures(
    elements: Sequence[str] | SystemConfig,
    template: Atoms,
    config: InitialPotentialGenerate,
    *,
    packing_min_distance: float | None = None,
) -> list[Atoms]:
    """Rattled, strained and randomly packed structures around ``template``.

    Parameters
    ----------
    elements:
        Chemical symbols of the run (or the run's :class:`SystemConfig`). With one element
        every structure keeps the template's species; with several, species are drawn at
        random per atom (except in the first, rattled copy, which keeps the template's).
    template:
        The cell, atom count and dimensionality to start from. A 2D template (pbc
        (T, T, F), all atoms at one z) yields 2D structures.
    config:
        ``n_structures``, ``rattle`` (Gaussian std, Å), ``strain`` (largest strain
        component), ``min_distance`` (Å) and ``seed``.
    packing_min_distance:
        Smallest pair distance of randomly packed cells (Å). Default: the larger of
        ``config.min_distance`` and 0.75 × the template's nearest-neighbour distance,
        because unconstrained random packing makes near-overlapping pairs whose huge
        energies would swamp the fit.

    Returns
    -------
    ``config.n_structures`` structures; about half rattled, a quarter strained (and
    rattled), a quarter randomly packed. ``atoms.info["generator"]`` says which.
    """
    if not isinstance(elements, (list, tuple)):
        elements = list(elements.elements)  # a SystemConfig
    elements = list(elements)
    planar = is_2d(template)
    dmin = float(config.min_distance)
    d_template = min_pair_distance(template)
    if d_template < dmin:
        raise ValueError(
            f"the template has a pair at {d_template:.3f} Å, closer than min_distance {dmin:.3f} Å"
        )
    if packing_min_distance is None:
        packing_min_distance = max(dmin, 0.75 * d_template if np.isfinite(d_template) else dmin)
    d_ref = d_template if np.isfinite(d_template) else max(packing_min_distance, 1.0)

    rng = np.random.default_rng(config.seed)
    n = config.n_structures
    n_packed = n // 4
    n_strained = n // 4
    n_rattled = n - n_packed - n_strained
    kinds = ["rattled"] * n_rattled + ["strained"] * n_strained + ["packed"] * n_packed

    out: list[Atoms] = []
    for i, kind in enumerate(kinds):
        for _attempt in range(MAX_ATTEMPTS):
            atoms = template.copy()
            atoms.calc = None
            if i > 0 or kind != "rattled":
                _assign_species(rng, atoms, elements)
            if kind == "strained":
                F = _strain_matrix(rng, config.strain, planar)
                atoms.set_cell(atoms.cell[:] @ F, scale_atoms=True)
            if kind == "packed":
                pos = None
                if _attempt < PACKING_ATTEMPTS:
                    pos = _random_positions(rng, atoms.cell[:], len(atoms), packing_min_distance, planar=planar,
                                            tries=300)
                if pos is not None:
                    atoms.positions = pos
                else:
                    # Random sequential packing jams above ~38 % volume fraction (3D); a dense
                    # cell then gets a strong disorder instead: the template with displacements
                    # of 40 % of its nearest-neighbour distance, close pairs redrawn.
                    atoms.info["packing"] = "disordered"
                    _rattle(rng, atoms, 0.4 * d_ref, max(dmin, packing_min_distance), planar)
            elif config.rattle > 0:
                _rattle(rng, atoms, config.rattle, dmin, planar)
            floor = max(dmin, packing_min_distance) if kind == "packed" else dmin
            if min_pair_distance(atoms) < floor:
                continue  # resample: this structure would teach the short range
            atoms.wrap()
            atoms.info["generator"] = kind
            out.append(atoms)
            break
        else:
            raise RuntimeError(
                f"could not draw a {kind} structure without pairs closer than {dmin} Å in {MAX_ATTEMPTS} attempts; "
                "lower rattle/strain or min_distance"
            )
    return out
