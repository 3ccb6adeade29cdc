"""store_label: labels round-trip through the database, force masks stay with the structure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from sqlalchemy import select

from autopipe.config.run import LJOracleConfig
from autopipe.db import Label, LabelStatus, Structure, atoms_from_structure, structure_from_atoms
from autopipe.dft import LabelResult, label, store_label
from autopipe.errors import AutopipeError
from tests.dbutil import DB_KINDS, fresh_database


def _add_structure(db, atoms, **fields) -> int:
    with db.session() as s:
        row = structure_from_atoms(atoms, "embedded", **fields)
        s.add(row)
        s.flush()
        return row.id


@pytest.mark.parametrize("kind", DB_KINDS)
def test_done_label_round_trip_keeps_mask_and_all_forces(kind, tmp_path):
    db = fresh_database(kind, tmp_path)
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.rattle(0.1, seed=2)
    sid = _add_structure(db, atoms, force_mask=[1, 3])
    # The structure as a worker gets it: mask in info, every atom present.
    with db.session() as s:
        work = atoms_from_structure(s.get(Structure, sid))
    result = label(work, LJOracleConfig(code="lj", epsilon=0.0104, sigma=3.4, cutoff=8.5))
    label_id = store_label(db, sid, result)
    with db.session() as s:
        row = s.get(Label, label_id)
        assert row.structure_id == sid and row.status is LabelStatus.done and row.code == "lj"
        assert row.energy == pytest.approx(result.energy)
        assert row.forces.shape == (4, 3) and np.array_equal(row.forces, result.forces)
        assert np.array_equal(row.stress, result.stress)
        assert row.parameters == result.parameters and row.parameters["sigma"] == 3.4
        assert row.attempts == result.attempts and row.attempts[0]["status"] == "done"
        assert row.walltime == pytest.approx(result.walltime) and row.error is None
        assert row.structure.force_mask == [1, 3]


@pytest.mark.parametrize("kind", DB_KINDS)
def test_failed_and_refused_labels_store_reasons(kind, tmp_path):
    db = fresh_database(kind, tmp_path)
    sid = _add_structure(db, bulk("Si", "diamond", a=5.43))
    failed = LabelResult(
        status="failed", code="espresso", walltime=12.5, error="3 attempt(s) failed; last: timeout",
        parameters={"kpts": (2, 2, 2), "timeout": np.float64(4.0)},  # non-JSON types are converted
        attempts=[{"attempt": 1, "status": "timeout", "walltime": np.float32(4.0), "error": "killed"}],
    )
    refused = LabelResult.refused("espresso", "refused: no pseudopotential for Ar")
    ids = [store_label(db, sid, failed), store_label(db, sid, refused)]
    assert ids[0] != ids[1]
    with db.session() as s:
        rows = s.scalars(select(Label).where(Label.structure_id == sid).order_by(Label.id)).all()
        assert [r.status for r in rows] == [LabelStatus.failed, LabelStatus.refused]
        assert rows[0].parameters == {"kpts": [2, 2, 2], "timeout": 4.0}
        assert rows[0].attempts[0]["walltime"] == 4.0
        assert rows[0].energy is None and rows[0].forces is None and rows[0].stress is None
        assert rows[1].error == "refused: no pseudopotential for Ar" and rows[1].attempts == []
        json.dumps(rows[0].attempts)


def test_unknown_structure_raises(tmp_path):
    db = fresh_database("sqlite", tmp_path)
    with pytest.raises(AutopipeError, match="structure 42 does not exist"):
        store_label(db, 42, LabelResult.refused("lj", "nope"))


def test_label_result_validates_itself():
    with pytest.raises(ValueError):
        LabelResult(status="done", code="lj")  # no energy/forces
    with pytest.raises(ValueError):
        LabelResult(status="failed", code="lj")  # no reason
    with pytest.raises(ValueError):
        LabelResult(status="maybe", code="lj", error="x")
    with pytest.raises(ValueError):
        LabelResult(status="done", code="lj", energy=1.0, forces=np.zeros(3))
