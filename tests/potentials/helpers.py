"""Helpers for the potentials tests: LJ-labelled structures in a database, cached run copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from autopipe.db import Database, Label, LabelStatus, structure_from_atoms
from tests.lj import lj3d_template, lj_label


def lj_structures(n: int, seed: int = 0, rattle: float = 0.1):
    """``n`` rattled 32-atom LJ fcc cells (a = 3.3-3.5 Å)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        at = lj3d_template(a=float(rng.uniform(3.3, 3.5)))
        at.positions += rng.normal(0, rattle, size=at.positions.shape)
        out.append(at)
    return out


def add_labelled(db: Database, atoms_list, origin: str = "generated", status: str = "done", **fields) -> list[int]:
    """Insert structures with LJ labels; returns the label ids."""
    ids = []
    with db.session() as s:
        for atoms in atoms_list:
            st = structure_from_atoms(atoms, origin, **fields)
            s.add(st)
            s.flush()
            ref = lj_label(atoms)
            lab = Label(structure_id=st.id, status=LabelStatus(status), code="lj",
                        energy=ref.energy if status == "done" else None, forces=ref.forces if status == "done" else None)
            s.add(lab)
            s.flush()
            ids.append(lab.id)
    return ids


def copy_cached_run(potential, dest: Path) -> Path:
    """Copy the cache directory behind a fixture potential (database + store) to ``dest``."""
    src = Path(potential.directory).parent.parent  # <cache>/<recipe>/potentials/v0001 -> <cache>/<recipe>
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest
