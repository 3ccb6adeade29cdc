"""A user's own potential and pacemaker training data, checked and imported into the run database.

A materials scientist brings a pacemaker potential (B-basis ``.yaml``) and the dataset it
was fitted on: a gzip pickle of a pandas DataFrame with ``ase_atoms``, ``forces`` (eV/Å,
n_atoms × 3) and ``energy_corrected`` and/or ``energy`` (eV per structure), optionally
``w_energy`` (per structure), ``w_forces`` (per atom) and ``reference_energy`` (eV per
structure, ``energy - energy_corrected``). :func:`read_training_data` validates it
completely and :func:`insert_imported` writes every row as a :class:`Structure`
(``Origin.imported``) with a :class:`Label` (code ``"imported"``) in one transaction, so
either the whole dataset is in the database or none of it.

Energy reference (pacemaker's convention ``energy_corrected = energy - Σ_atoms E_ref(element)``):
the imported potential predicts ``energy_corrected``, and new DFT labels are total
energies, so both must be put in one reference before a retrain sees them.

* ``energy`` and ``energy_corrected`` both given: the per-element references follow from
  a least-squares fit of ``energy - energy_corrected`` on the compositions; the fit must be
  exact (to :data:`REFERENCE_TOLERANCE`), otherwise the data do not follow the convention
  and the import is refused. ``train.reference_energies``, if a dict, must agree.
* only ``energy_corrected``: the references must come from ``train.reference_energies``
  (a dict); the total energy stored is ``energy_corrected + Σ E_ref``.
* only ``energy``: raw totals, like new labels; the run's ``train.reference_energies``
  applies to both.

Each label stores its total energy and, under ``parameters["reference_energies"]``, the
references; :func:`autopipe.potentials.dataset.build_dataset` subtracts exactly those
from every label (imported and new), which gives back the imported ``energy_corrected``.

Weights: the file's ``w_energy`` / ``w_forces`` are rescaled to mean 1 over the dataset
(pacemaker itself normalises them to sum 1, so a fitting_data_info file has weights of
order 1/N that would count for almost nothing against new labels of weight 1); their
ratios are kept. The scale factors are recorded with every label.

Reading a pickle runs code from the file: import only datasets you trust (pacemaker has
the same property).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import RunConfig
    from autopipe.db import Database

log = logging.getLogger(__name__)

#: ``Label.code`` of imported rows.
IMPORTED_CODE = "imported"
#: ``Label.parameters`` key holding the per-element reference energies (eV/atom).
REFERENCE_KEY = "reference_energies"
#: Largest per-atom residual (eV/atom) of ``energy - energy_corrected`` against per-element
#: references that still counts as exact: pacemaker computes it in float64 from energies of
#: at most ~1e5 eV, so rounding stays many orders of magnitude below this.
REFERENCE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ImportedRow:
    """One validated row: geometry, total energy (eV, in the dataset's reference), forces (eV/Å), weights."""

    index: int  # position in the file
    atoms: Atoms
    energy: float
    forces: np.ndarray
    energy_weight: float | None  # rescaled; None: the file has no w_energy
    force_weights: np.ndarray | None  # rescaled; None: the file has no w_forces


@dataclass(frozen=True)
class ImportedDataset:
    """A pacemaker dataset that passed every check, ready for :func:`insert_imported`."""

    path: Path
    sha256: str
    rows: list[ImportedRow]
    reference_energies: dict[str, float] | None  # eV/atom; None: raw totals (the run's setting applies)
    reference_source: str  # where the references came from, for the record
    weight_scales: dict[str, float] = field(default_factory=dict)  # column -> factor applied

    @property
    def n_atoms(self) -> int:
        return int(sum(len(r.atoms) for r in self.rows))


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`insert_imported` left in the database."""

    n_structures: int
    n_atoms: int
    first_label_id: int
    last_label_id: int  # publish the imported version 1 with this, so its own data are not "new"
    reference_energies: dict[str, float] | None
    already_imported: bool  # True: found from an earlier start, nothing written


@dataclass(frozen=True)
class PotentialFileInfo:
    """What a valid pacemaker B-basis potential file declares."""

    path: Path
    elements: list[str]
    cutoff: float  # Å, the largest radial cutoff (rcutij / bond rcut)


def _bad(path: Path, problem: str) -> AutopipeError:
    return AutopipeError(f"training data {path}: {problem}")


# ----------------------------------------------------------------------------- potential file


def validate_potential_file(path: Path | str, elements: Sequence[str] | None = None) -> PotentialFileInfo:
    """Parse a pacemaker B-basis ``.yaml``; one-line :class:`AutopipeError` if it is not one.

    ``elements``: the run's elements, which the potential must cover.
    """
    path = Path(path)
    if not path.is_file():
        raise AutopipeError(f"initial potential {path}: file not found")
    from pyace import ACEBBasisSet  # heavy: C++ extension

    try:
        basis = ACEBBasisSet(str(path))
        pot_elements = [str(e) for e in basis.elements_name]
        cutoff = float(basis.cutoffmax)
    except Exception as exc:  # pyace raises RuntimeError with yaml-cpp's message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AutopipeError(f"initial potential {path}: not a pacemaker B-basis potential (.yaml): {first}") from None
    if not pot_elements or not np.isfinite(cutoff) or cutoff <= 0:
        raise AutopipeError(f"initial potential {path}: no elements or no positive cutoff in the basis")
    if elements is not None:
        missing = sorted(set(elements) - set(pot_elements))
        if missing:
            raise AutopipeError(
                f"initial potential {path}: covers {', '.join(pot_elements)} but the run also has {', '.join(missing)}"
            )
    return PotentialFileInfo(path=path, elements=pot_elements, cutoff=cutoff)


# ----------------------------------------------------------------------------- reading the dataset


def _load_frame(path: Path):
    import pandas as pd

    if not path.is_file():
        raise _bad(path, "file not found")
    try:
        try:
            obj = pd.read_pickle(path, compression="gzip")
        except OSError:  # not gzip: pacemaker also reads plain pickles
            obj = pd.read_pickle(path, compression=None)
    except Exception as exc:
        raise _bad(path, f"not a pacemaker dataset (gzip pickle of a pandas DataFrame): "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(obj, pd.DataFrame):
        raise _bad(path, f"not a pacemaker dataset: holds a {type(obj).__name__}, not a pandas DataFrame")
    if len(obj) == 0:
        raise _bad(path, "the dataset has no rows")
    return obj.reset_index(drop=True)


def _finite_float(path: Path, i: int, column: str, value: Any) -> float | None:
    """``value`` as a float, None when missing (NaN/None); refuses infinities and non-numbers."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise _bad(path, f"row {i}: {column} is not a number ({type(value).__name__})") from None
    if np.isnan(x):
        return None
    if not np.isfinite(x):
        raise _bad(path, f"row {i}: {column} is infinite")
    return x


def _row_arrays(path: Path, i: int, atoms: Any, forces: Any, elements: set[str]):
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise _bad(path, f"row {i}: ase_atoms is a {type(atoms).__name__}, not an ase.Atoms")
    n = len(atoms)
    if n == 0:
        raise _bad(path, f"row {i}: the structure has no atoms")
    other = sorted(set(atoms.get_chemical_symbols()) - elements)
    if other:
        raise _bad(path, f"row {i} has element(s) {', '.join(other)} that the run does not "
                         f"(run elements: {', '.join(sorted(elements))})")
    if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell[:])):
        raise _bad(path, f"row {i}: positions or cell contain NaN or inf")
    if forces is None or (np.ndim(forces) == 0 and not isinstance(forces, (list, tuple))):
        raise _bad(path, f"row {i} lacks forces")
    try:
        f = np.array(forces, dtype=float)
    except (TypeError, ValueError):
        raise _bad(path, f"row {i}: forces are not a numeric array") from None
    if f.shape != (n, 3):
        raise _bad(path, f"row {i}: forces have shape {f.shape}, expected ({n}, 3) for its {n} atoms")
    if not np.all(np.isfinite(f)):
        raise _bad(path, f"row {i}: forces contain NaN or inf")
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:], pbc=atoms.pbc)
    return clean, f


def _energies(path: Path, df, i: int, n_atoms: int) -> tuple[float | None, float | None]:
    """(energy, energy_corrected) of row ``i``, completing one from ``reference_energy`` if present."""
    cols = df.columns
    e = _finite_float(path, i, "energy", df.at[i, "energy"]) if "energy" in cols else None
    c = _finite_float(path, i, "energy_corrected", df.at[i, "energy_corrected"]) if "energy_corrected" in cols else None
    ref = _finite_float(path, i, "reference_energy", df.at[i, "reference_energy"]) if "reference_energy" in cols else None
    if ref is not None:
        if e is None and c is not None:
            e = c + ref
        elif c is None and e is not None:
            c = e - ref
        elif e is not None and c is not None and abs((e - c) - ref) > REFERENCE_TOLERANCE * n_atoms:
            raise _bad(path, f"row {i}: energy - energy_corrected = {e - c:.6f} eV but reference_energy is {ref:.6f} eV")
    if e is None and c is None:
        raise _bad(path, f"row {i}: energy and energy_corrected are both missing or NaN")
    return e, c


def _weights(path: Path, df, n_atoms: list[int]) -> tuple[list[float | None], list[np.ndarray | None], dict[str, float]]:
    """Rescaled per-structure energy weights and per-atom force weights (None where absent)."""
    n = len(df)
    w_e: list[float | None] = [None] * n
    w_f: list[np.ndarray | None] = [None] * n
    scales: dict[str, float] = {}
    if "w_energy" in df.columns:
        raw = []
        for i in range(n):
            w = _finite_float(path, i, "w_energy", df.at[i, "w_energy"])
            if w is None or w < 0:
                raise _bad(path, f"row {i}: w_energy must be a finite number >= 0, got {df.at[i, 'w_energy']!r}")
            raw.append(w)
        total = float(np.sum(raw))
        if total <= 0:
            raise _bad(path, "every w_energy is 0: no energy would be fitted")
        scales["w_energy"] = n / total  # mean 1: new labels weigh 1 each
        w_e = [w * scales["w_energy"] for w in raw]
    if "w_forces" in df.columns:
        raw_f = []
        for i in range(n):
            try:
                w = np.array(df.at[i, "w_forces"], dtype=float).reshape(-1)
            except (TypeError, ValueError):
                raise _bad(path, f"row {i}: w_forces is not a numeric array") from None
            if w.shape != (n_atoms[i],):
                raise _bad(path, f"row {i}: w_forces has {w.size} values, expected {n_atoms[i]} (one per atom)")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise _bad(path, f"row {i}: w_forces must be finite and >= 0")
            raw_f.append(w)
        total = float(sum(w.sum() for w in raw_f))
        if total <= 0:
            raise _bad(path, "every w_forces is 0: no force would be fitted")
        scales["w_forces"] = sum(n_atoms) / total  # mean 1 per atom
        w_f = [w * scales["w_forces"] for w in raw_f]
    return w_e, w_f, scales


def _composition(atoms_list: list[Atoms], elements: list[str]) -> np.ndarray:
    """(n_structures, n_elements) atom counts."""
    index = {e: k for k, e in enumerate(elements)}
    out = np.zeros((len(atoms_list), len(elements)))
    for i, a in enumerate(atoms_list):
        for sym in a.get_chemical_symbols():
            out[i, index[sym]] += 1
    return out


def _residual_per_atom(counts: np.ndarray, delta: np.ndarray, refs: np.ndarray) -> float:
    return float(np.max(np.abs(counts @ refs - delta) / counts.sum(axis=1)))


def derive_reference_energies(
    path: Path,
    atoms_list: list[Atoms],
    delta: np.ndarray,
    run_elements: Sequence[str],
    configured: Mapping[str, float] | None,
) -> dict[str, float]:
    """Per-element references (eV/atom) from ``delta = energy - energy_corrected`` per structure.

    Least squares on the compositions; refused unless the fit is exact and determines a
    reference for every run element (a configured dict may fill in or must agree).
    """
    present = sorted({s for a in atoms_list for s in a.get_chemical_symbols()})
    counts = _composition(atoms_list, present)
    coef, _, rank, _ = np.linalg.lstsq(counts, delta, rcond=None)
    cfg = {k: float(v) for k, v in configured.items()} if configured else None
    if rank < len(present):
        # Fixed stoichiometry: the data cannot separate the elements' references.
        if cfg is None or any(e not in cfg for e in present):
            raise _bad(path, "its compositions do not determine per-element reference energies "
                             "(energy - energy_corrected); give them as train.reference_energies")
        coef = np.array([cfg[e] for e in present])
    resid = _residual_per_atom(counts, delta, coef)
    if resid > REFERENCE_TOLERANCE:
        raise _bad(path, f"energy - energy_corrected is not a sum of per-element reference energies "
                         f"(worst residual {resid:.2e} eV/atom), so new labels cannot share its reference")
    refs = {e: float(c) for e, c in zip(present, coef)}
    if cfg is not None:
        off = {e: (cfg[e], refs[e]) for e in present if e in cfg and abs(cfg[e] - refs[e]) > REFERENCE_TOLERANCE}
        if off:
            e, (want, got) = next(iter(off.items()))
            raise _bad(path, f"its energies imply a reference of {got:.6f} eV/atom for {e} but "
                             f"train.reference_energies says {want:.6f}")
    for e in run_elements:
        if e not in refs:
            if cfg is None or e not in cfg:
                raise _bad(path, f"has no {e}, so its reference energy is unknown; give it in train.reference_energies")
            refs[e] = cfg[e]
    return refs


def read_training_data(
    path: Path | str,
    elements: Sequence[str],
    reference_energies: Mapping[str, float] | str | None = None,
) -> ImportedDataset:
    """Read and validate a pacemaker dataset against the run's ``elements``.

    ``reference_energies`` is the run's ``train.reference_energies`` (dict, ``"auto"`` or
    None). Raises a one-line :class:`AutopipeError` naming the file and the problem: not
    a DataFrame pickle, missing columns, elements outside the run, missing or misshapen
    forces, NaN/inf, bad weights, or an energy reference new labels cannot share.
    """
    path = Path(path)
    df = _load_frame(path)
    missing = [c for c in ("ase_atoms", "forces") if c not in df.columns]
    if "forces" in missing:
        raise _bad(path, "lacks forces (no 'forces' column)")
    if missing:
        raise _bad(path, "not a pacemaker dataset: no 'ase_atoms' column")
    if "energy" not in df.columns and "energy_corrected" not in df.columns:
        raise _bad(path, "has neither 'energy' nor 'energy_corrected'")
    run_elements = set(elements)
    atoms_list, forces_list, e_list, c_list = [], [], [], []
    for i in range(len(df)):
        atoms, forces = _row_arrays(path, i, df.at[i, "ase_atoms"], df.at[i, "forces"], run_elements)
        e, c = _energies(path, df, i, len(atoms))
        atoms_list.append(atoms)
        forces_list.append(forces)
        e_list.append(e)
        c_list.append(c)
    absent = [e for e in elements if not any(e in a.symbols for a in atoms_list)]
    if absent:
        # pacemaker would fit that element's embedding and reference on no data at all.
        raise _bad(path, f"has no {', '.join(absent)} atom in any row, so the potential cannot learn it "
                         f"(run elements: {', '.join(elements)})")
    has_e = all(e is not None for e in e_list)
    has_c = all(c is not None for c in c_list)
    configured = reference_energies if isinstance(reference_energies, Mapping) else None
    if has_e and has_c:
        delta = np.array(e_list, float) - np.array(c_list, float)
        refs: dict[str, float] | None = derive_reference_energies(path, atoms_list, delta, elements, configured)
        source = "derived from energy - energy_corrected"
        totals = list(e_list)
    elif has_c:
        if configured is None or any(e not in configured for e in elements):
            raise _bad(path, "has only energy_corrected: new total-energy labels need train.reference_energies "
                             "(eV/atom for every element) to share its reference")
        refs = {e: float(configured[e]) for e in elements}
        source = "train.reference_energies"
        totals = [c + sum(refs[s] for s in a.get_chemical_symbols()) for c, a in zip(c_list, atoms_list)]
    elif has_e:
        refs, source, totals = None, "none: total energies, the run's train.reference_energies applies", list(e_list)
    else:
        raise _bad(path, "some rows have only energy and others only energy_corrected")
    w_e, w_f, scales = _weights(path, df, [len(a) for a in atoms_list])
    rows = [
        ImportedRow(index=i, atoms=a, energy=float(t), forces=f, energy_weight=we, force_weights=wf)
        for i, (a, t, f, we, wf) in enumerate(zip(atoms_list, totals, forces_list, w_e, w_f))
    ]
    return ImportedDataset(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), rows=rows,
                           reference_energies=refs, reference_source=source, weight_scales=scales)


def check_training_data(run_config: RunConfig) -> ImportedDataset | None:
    """Validate the run's ``initial_potential.training_data`` (None when there is none)."""
    init = run_config.initial_potential
    if init.kind != "file" or init.training_data is None:
        return None
    return read_training_data(init.training_data, run_config.system.elements, run_config.train.reference_energies)


# ----------------------------------------------------------------------------- database


def _existing_import(db: Database) -> tuple[ImportSummary, str | None] | None:
    """The summary of an earlier import and the sha256 of its file; None if nothing was imported."""
    from sqlalchemy import func, select

    from autopipe.db import Label, Origin, Structure

    with db.session() as s:
        q = select(func.count(Label.id), func.min(Label.id), func.max(Label.id), func.sum(Structure.n_atoms)).join(
            Structure, Label.structure_id == Structure.id).where(Structure.origin == Origin.imported)
        n, lo, hi, n_atoms = s.execute(q).one()
        if not n:
            return None
        first = s.get(Label, lo)
        params = dict(first.parameters or {})
    return ImportSummary(n_structures=int(n), n_atoms=int(n_atoms or 0), first_label_id=int(lo), last_label_id=int(hi),
                         reference_energies=params.get(REFERENCE_KEY), already_imported=True), params.get("sha256")


def insert_imported(db: Database, dataset: ImportedDataset) -> ImportSummary:
    """Write every row of ``dataset`` as an imported structure + label, in one transaction.

    Idempotent: when the database already holds this file's rows (same sha256) nothing is
    written; rows from a different file are refused.
    """
    from autopipe.db import Label, LabelStatus, Origin, structure_from_atoms

    found = _existing_import(db)
    if found is not None:
        summary, sha = found
        if sha != dataset.sha256:
            raise AutopipeError(
                f"training data {dataset.path}: the database already holds {summary.n_structures} structures "
                "imported from a different file; use a fresh work directory to import another"
            )
        return summary
    common = {"source": str(dataset.path), "sha256": dataset.sha256, "reference_source": dataset.reference_source,
              "weight_scales": dict(dataset.weight_scales)}
    if dataset.reference_energies is not None:
        common[REFERENCE_KEY] = dict(dataset.reference_energies)
    with db.session() as s:
        labels = []
        for row in dataset.rows:
            st = structure_from_atoms(
                row.atoms, Origin.imported, selected=True, info={"source": dataset.path.name, "row": row.index},
                energy_weight=row.energy_weight, force_weights=row.force_weights,
            )
            s.add(st)
            s.flush()
            lab = Label(structure_id=st.id, status=LabelStatus.done, code=IMPORTED_CODE, energy=row.energy,
                        forces=row.forces, parameters={**common, "row": row.index}, walltime=0.0)
            s.add(lab)
            labels.append(lab)
        s.flush()
        ids = [int(lab.id) for lab in labels]
    log.info("imported %d structures from %s (reference: %s)", len(ids), dataset.path, dataset.reference_source)
    return ImportSummary(n_structures=len(ids), n_atoms=dataset.n_atoms, first_label_id=min(ids),
                         last_label_id=max(ids), reference_energies=dataset.reference_energies, already_imported=False)


def import_training_data(db: Database, run_config: RunConfig) -> ImportSummary | None:
    """Validate and import the run's ``initial_potential.training_data`` (None when there is none)."""
    dataset = check_training_data(run_config)
    return None if dataset is None else insert_imported(db, dataset)


def reference_energies_of(labels: Iterable[Any]) -> dict[str, float] | None:
    """The reference energies recorded with the imported labels among ``labels`` (None if none).

    Raises ``ValueError`` if imported labels disagree (two imports in one database).
    """
    found: dict[str, float] | None = None
    for label in labels:
        if label.code != IMPORTED_CODE:
            continue
        refs = (label.parameters or {}).get(REFERENCE_KEY)
        if refs is None:
            continue
        if found is None:
            found = {k: float(v) for k, v in refs.items()}
        elif set(found) != set(refs) or any(abs(found[k] - float(refs[k])) > REFERENCE_TOLERANCE for k in found):
            raise ValueError(f"imported labels carry different reference energies: {found} and {refs}")
    return found
