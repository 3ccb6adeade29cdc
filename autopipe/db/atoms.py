"""Converting between :class:`ase.Atoms` and :class:`Structure` rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from autopipe.db.models import Origin, Structure


def structure_from_atoms(atoms, origin: Origin | str, **fields: Any) -> Structure:
    """A new (unsaved) :class:`Structure` row for ``atoms``.

    Per-atom arrays ``parent_index`` and ``gamma`` are taken from ``atoms.arrays``
    when present and not given explicitly.
    """
    arrays = atoms.arrays
    if "parent_index" not in fields and "parent_index" in arrays:
        fields["parent_index"] = np.asarray(arrays["parent_index"], dtype=np.int64)
    if "gamma" not in fields and "gamma" in arrays:
        fields["gamma"] = np.asarray(arrays["gamma"], dtype=float)
    if fields.get("gamma") is not None and fields.get("max_gamma") is None and len(atoms):
        fields["max_gamma"] = float(np.max(fields["gamma"]))
    if "force_mask" in fields and fields["force_mask"] is not None:
        fields["force_mask"] = [int(i) for i in fields["force_mask"]]
    return Structure(
        origin=Origin(origin),
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=float),
        cell=np.asarray(atoms.cell[:], dtype=float),
        pbc=[int(bool(p)) for p in atoms.pbc],
        n_atoms=len(atoms),
        **fields,
    )


def atoms_from_structure(row: Structure):
    """The :class:`ase.Atoms` of a structure row, with ``gamma``/``parent_index`` arrays and info."""
    from ase import Atoms

    atoms = Atoms(numbers=row.numbers, positions=row.positions, cell=row.cell, pbc=[bool(p) for p in row.pbc])
    if row.gamma is not None:
        atoms.arrays["gamma"] = np.asarray(row.gamma, dtype=float)
    if row.parent_index is not None:
        atoms.arrays["parent_index"] = np.asarray(row.parent_index)
    atoms.info.update(row.info or {})
    atoms.info["structure_id"] = row.id
    if row.force_mask is not None:
        atoms.info["force_mask"] = list(row.force_mask)
    return atoms
