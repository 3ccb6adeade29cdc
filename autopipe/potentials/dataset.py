"""The pacemaker training set, built from the labelled structures in the database.

pacemaker reads a gzip-pickled pandas DataFrame with columns ``ase_atoms``,
``energy_corrected`` (eV, per structure), ``forces`` (eV/Å, n_atoms × 3) and, here,
explicit weights ``w_energy`` (per structure) and ``w_forces`` (per atom). When both
weight columns are present pacemaker uses them as given, each renormalised to sum 1
over the training set; a zero in ``w_forces`` removes that atom's force from the loss.

Weights:

* ordinary structures: ``w_energy = 1``, ``w_forces = 1`` for every atom;
* an embedded sub-cell (``Origin.embedded``): the atoms in ``Structure.force_mask`` get
  force weight 0 (their forces feel the artificial boundary), and the energy weight is
  ``TrainConfig.embedded_energy_weight`` (default 0): a carved cell's total energy is an
  artefact of its boundary too.
* a structure with its own weights (``Structure.energy_weight``, ``Structure.force_weights``;
  imported pacemaker data carry them) uses those; ``force_mask`` still zeroes on top.

Energies: ``energy_corrected = energy - sum of per-element reference energies`` (pacemaker's
convention). The references are, in this order: the ``reference_energies`` argument; those
recorded with imported labels (:mod:`autopipe.potentials.imported`), so that new labels land
in the reference the imported potential was fitted in; ``TrainConfig.reference_energies``.

Stress is not fitted (tensorpot fits energies and forces; a carved cell's stress is an
artefact anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from autopipe.config.run import TrainConfig
    from autopipe.db import Database

log = logging.getLogger(__name__)

#: Columns autopipe adds besides pacemaker's; pacemaker carries them through to its
#: ``fitting_data_info.pckl.gzip`` and ``train_pred.pckl.gzip``.
ID_COLUMNS = ("structure_id", "label_id")


@dataclass(frozen=True)
class DatasetInfo:
    """What went into a training set."""

    n_structures: int
    n_atoms: int
    last_label_id: int  # newest Label.id included (0 if none)
    n_embedded: int
    n_masked_atoms: int


def record_weights(
    n_atoms: int,
    *,
    embedded: bool,
    force_mask: Sequence[int] | None,
    embedded_energy_weight: float = 0.0,
    energy_weight: float | None = None,
    force_weights: Sequence[float] | np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Energy weight and per-atom force weights of one structure (before pacemaker's renormalisation).

    ``energy_weight`` / ``force_weights`` (length ``n_atoms``) are the structure's own weights
    when it has them (``Structure.energy_weight``/``force_weights``); otherwise ordinary
    structures weigh 1 and embedded ones ``embedded_energy_weight`` for the energy, 1 per
    atom for the forces. ``force_mask`` lists atom indices whose forces are not trained on:
    it zeroes them whatever their own weight. It is honoured for any structure that has one,
    though only embedded sub-cells are expected to.
    """
    if force_weights is None:
        w_forces = np.ones(n_atoms, dtype=float)
    else:
        w_forces = np.array(force_weights, dtype=float)
        if w_forces.shape != (n_atoms,):
            raise ValueError(f"force_weights has shape {w_forces.shape}, expected ({n_atoms},)")
    if force_mask:
        idx = np.asarray(list(force_mask), dtype=int)
        if idx.size and (idx.min() < 0 or idx.max() >= n_atoms):
            raise ValueError(f"force_mask index out of range for {n_atoms} atoms: {sorted(set(idx.tolist()))}")
        w_forces[idx] = 0.0
    if energy_weight is not None:
        w_energy = float(energy_weight)
    else:
        w_energy = float(embedded_energy_weight) if embedded else 1.0
    return w_energy, w_forces


def fit_reference_energies(rows: list[dict]) -> dict[str, float]:
    """Per-element energies (eV/atom) that best explain the labelled energies (least squares).

    Only rows with a non-zero energy weight count (carved cells' energies are artefacts).
    Subtracting them leaves pacemaker the binding part to fit, instead of total DFT
    energies of hundreds of eV per atom.
    """
    use = [r for r in rows if r["w_energy"] > 0] or rows
    elements = sorted({sym for r in use for sym in r["ase_atoms"].get_chemical_symbols()})
    counts = np.array([[r["ase_atoms"].get_chemical_symbols().count(e) for e in elements] for r in use], float)
    energies = np.array([r["energy"] for r in use])
    coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return dict(zip(elements, (float(c) for c in coef)))


def build_dataset(
    db: Database,
    train_config: TrainConfig,
    *,
    max_label_id: int | None = None,
    reference_energies: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, DatasetInfo]:
    """pacemaker's DataFrame from every successful label (``LabelStatus.done``) up to ``max_label_id``,
    except held-out ones (``Structure.heldout``), which are never trained on.

    A structure with several successful labels contributes once, with its newest label
    (within the id limit). ``reference_energies`` (eV per atom of each element) are
    subtracted to give ``energy_corrected``; without them, those recorded by an import of
    the user's training data, else ``train_config.reference_energies``; without any the raw
    energy is used, which is right for analytic oracles (LJ, EMT) whose isolated atoms
    have zero energy. Explicit references that contradict imported ones raise ``ValueError``:
    imported and new labels must share one reference.

    Returns the DataFrame (columns ``ase_atoms``, ``energy``, ``energy_corrected``,
    ``forces``, ``w_energy``, ``w_forces``, ``structure_id``, ``label_id``) and a
    :class:`DatasetInfo`. Raises ``ValueError`` when every energy or every force weight
    is zero, because pacemaker would divide by that sum.
    """
    import pandas as pd
    from sqlalchemy import select

    from autopipe.db import Label, LabelStatus, Origin, Structure, atoms_from_structure
    from autopipe.potentials.periodic import closed_for_ace

    from autopipe.potentials.imported import reference_energies_of

    explicit_reference = reference_energies
    rows: list[dict] = []
    with db.session() as s:
        q = (
            select(Label, Structure)
            .join(Structure, Label.structure_id == Structure.id)
            .where(Label.status == LabelStatus.done)
            # Held-out labels (Structure.heldout) measure potentials; training on them would void the gate.
            .where(Structure.heldout.is_(None))
            .order_by(Label.id)
        )
        if max_label_id is not None:
            q = q.where(Label.id <= max_label_id)
        newest: dict[int, tuple] = {}
        for label, struct in s.execute(q):
            if label.energy is None or label.forces is None:
                continue  # a 'done' label without data cannot be trained on
            newest[struct.id] = (label, struct)  # ordered by id: the last one wins
        chosen = sorted(newest.values(), key=lambda ls: ls[0].id)
        reference_energies, auto_reference = _choose_reference(
            explicit_reference, reference_energies_of(label for label, _ in chosen), train_config
        )
        for label, struct in chosen:
            atoms = atoms_from_structure(struct)
            forces = np.asarray(label.forces, dtype=float).reshape(len(atoms), 3)
            embedded = struct.origin == Origin.embedded
            w_e, w_f = record_weights(
                len(atoms),
                embedded=embedded,
                force_mask=struct.force_mask,
                embedded_energy_weight=train_config.embedded_energy_weight,
                energy_weight=struct.energy_weight,
                force_weights=struct.force_weights,
            )
            e_ref = 0.0
            if reference_energies:
                e_ref = float(sum(reference_energies[sym] for sym in atoms.get_chemical_symbols()))
            # pyace/pacemaker accept only fully periodic or fully open cells (2D layers are closed
            # with enough vacuum that nothing changes).
            atoms = closed_for_ace(atoms, train_config.cutoff)
            # pacemaker only needs geometry; drop arrays/info that would bloat its pickles.
            atoms.info = {}
            for key in list(atoms.arrays):
                if key not in ("numbers", "positions"):
                    del atoms.arrays[key]
            rows.append(
                {
                    "ase_atoms": atoms,
                    "energy": float(label.energy),
                    "energy_corrected": float(label.energy) - e_ref,
                    "forces": forces,
                    "w_energy": w_e,
                    "w_forces": w_f,
                    "structure_id": int(struct.id),
                    "label_id": int(label.id),
                    "embedded": bool(embedded),
                }
            )
    if auto_reference and rows:
        refs = fit_reference_energies(rows)
        for r in rows:
            e_ref = float(sum(refs[sym] for sym in r["ase_atoms"].get_chemical_symbols()))
            r["energy_corrected"] = r["energy"] - e_ref
    df = pd.DataFrame(
        rows,
        columns=["ase_atoms", "energy", "energy_corrected", "forces", "w_energy", "w_forces", *ID_COLUMNS, "embedded"],
    )
    if len(df):
        if df["w_energy"].sum() <= 0:
            raise ValueError("every structure has energy weight 0 (only embedded cells?): nothing to fit energies to")
        if sum(float(np.sum(w)) for w in df["w_forces"]) <= 0:
            raise ValueError("every force weight is 0: nothing to fit forces to")
    info = DatasetInfo(
        n_structures=len(df),
        n_atoms=int(sum(len(a) for a in df["ase_atoms"])),
        last_label_id=int(df["label_id"].max()) if len(df) else 0,
        n_embedded=int(df["embedded"].sum()) if len(df) else 0,
        n_masked_atoms=int(sum(int(np.sum(w == 0)) for w in df["w_forces"])),
    )
    return df, info


def _choose_reference(
    explicit: Mapping[str, float] | None,
    imported: dict[str, float] | None,
    train_config: TrainConfig,
) -> tuple[Mapping[str, float] | None, bool]:
    """(per-element reference energies or None, whether to fit them by least squares).

    Imported references win over the run's setting ('auto' would re-fit them and shift
    the imported potential's energy zero); explicit ones must agree with them.
    """
    configured = getattr(train_config, "reference_energies", None)
    if isinstance(explicit, str):  # 'auto' passed explicitly: a setting, not references
        configured, explicit = explicit, None
    if imported is not None:
        if explicit is not None and not _same_reference(explicit, imported):
            raise ValueError(
                f"reference energies {dict(explicit)} contradict those of the imported training data {imported}"
            )
        if isinstance(configured, Mapping) and not _same_reference(configured, imported):
            log.warning(
                "train.reference_energies %s differ from the imported training data's %s; using the imported ones",
                dict(configured), imported,
            )
        return imported, False
    chosen = explicit if explicit is not None else configured
    if chosen == "auto":
        return None, True
    return chosen, False


def _same_reference(a: Mapping[str, float], b: Mapping[str, float], tol: float = 1e-6) -> bool:
    """Same elements and energies within ``tol`` eV/atom."""
    return set(a) == set(b) and all(abs(float(a[k]) - float(b[k])) <= tol for k in a)


def write_dataset(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``df`` as pacemaker's gzip pickle (protocol 4, which pacemaker itself writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_pickle(path, compression="gzip", protocol=4)
    return path
