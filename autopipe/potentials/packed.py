"""A training set packed as arrays, for the trip from the steering process to the worker that fits.

The steering side builds pacemaker's DataFrame from the database
(:func:`autopipe.potentials.dataset.build_dataset`) and packs it with :func:`pack`: the
structures' numbers, positions (Å), cells (Å), pbc, energies (eV), forces (eV/Å) and weights
as flat numpy arrays in one compressed ``.npz`` (no pickles inside: the worker reads it with
``allow_pickle=False``). The worker rebuilds the same DataFrame with :meth:`TrainingSet.frame`
and never opens the database.

Size: about 58 bytes per atom and 130 per structure before compression (positions and forces
in float64 dominate); e.g. 2,000 structures of 100 atoms are about 11 MB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: Per-structure columns besides the geometry, and their dtypes in the pack.
_PER_STRUCTURE = {"energy": float, "energy_corrected": float, "w_energy": float, "structure_id": np.int64,
                  "label_id": np.int64, "embedded": bool}


@dataclass(frozen=True)
class TrainingSet:
    """A packed training set (``data``: ``.npz`` bytes) with what went into it, or why none
    could be built (``error``, e.g. every energy weight zero)."""

    data: bytes = b""
    n_structures: int = 0
    n_atoms: int = 0
    n_embedded: int = 0
    n_masked_atoms: int = 0
    last_label_id: int = 0
    error: str | None = None

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def frame(self) -> pd.DataFrame:
        """pacemaker's DataFrame, as :func:`~autopipe.potentials.dataset.build_dataset` built it."""
        import pandas as pd
        from ase import Atoms

        from autopipe.potentials.dataset import ID_COLUMNS

        with np.load(io.BytesIO(self.data), allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        ends = np.cumsum(a["n_atoms"])
        starts = ends - a["n_atoms"]
        rows = []
        for i, (s, e) in enumerate(zip(starts, ends)):
            atoms = Atoms(numbers=a["numbers"][s:e], positions=a["positions"][s:e], cell=a["cells"][i],
                          pbc=a["pbc"][i])
            row = {"ase_atoms": atoms, "forces": a["forces"][s:e], "w_forces": a["w_forces"][s:e]}
            row.update({k: a[k][i].item() for k in _PER_STRUCTURE})
            rows.append(row)
        columns = ["ase_atoms", "energy", "energy_corrected", "forces", "w_energy", "w_forces", *ID_COLUMNS,
                   "embedded"]
        return pd.DataFrame(rows, columns=columns)


def pack(df: pd.DataFrame) -> TrainingSet:
    """Pack a DataFrame of :func:`~autopipe.potentials.dataset.build_dataset` (see the module docstring)."""
    atoms = list(df["ase_atoms"])
    n = np.array([len(x) for x in atoms], dtype=np.int64)
    arrays = {
        "n_atoms": n,
        "numbers": np.concatenate([x.numbers for x in atoms]).astype(np.int16) if atoms else np.zeros(0, np.int16),
        "positions": np.concatenate([x.positions for x in atoms]) if atoms else np.zeros((0, 3)),
        "cells": np.array([np.asarray(x.cell[:], float) for x in atoms]).reshape(-1, 3, 3),
        "pbc": np.array([x.pbc for x in atoms], dtype=bool).reshape(-1, 3),
        "forces": np.concatenate([np.asarray(f, float).reshape(-1, 3) for f in df["forces"]]) if atoms
        else np.zeros((0, 3)),
        "w_forces": np.concatenate([np.asarray(w, float) for w in df["w_forces"]]) if atoms else np.zeros(0),
    }
    for key, dtype in _PER_STRUCTURE.items():
        arrays[key] = df[key].to_numpy(dtype=dtype)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    w_forces = arrays["w_forces"]
    return TrainingSet(data=buf.getvalue(), n_structures=len(atoms), n_atoms=int(n.sum()),
                       n_embedded=int(arrays["embedded"].sum()), n_masked_atoms=int(np.sum(w_forces == 0)),
                       last_label_id=int(arrays["label_id"].max()) if len(atoms) else 0)
