"""The run database on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ase.build import bulk
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from autopipe.db import (
    Database,
    Event,
    Label,
    LabelStatus,
    Origin,
    Potential,
    Segment,
    SegmentStatus,
    Structure,
    Task,
    TaskKind,
    TaskState,
    Walker,
    atoms_from_structure,
    structure_from_atoms,
)
from autopipe.errors import AutopipeError
from autopipe.status import collect_status
from tests.dbutil import DB_KINDS, fresh_database


@pytest.fixture(params=DB_KINDS)
def any_db(request, tmp_path):
    db = fresh_database(request.param, tmp_path)
    yield db
    db.dispose()


def test_structure_round_trip_keeps_arrays_and_mask(any_db):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    atoms.arrays["gamma"] = np.linspace(1, 9, len(atoms))
    atoms.arrays["parent_index"] = np.arange(len(atoms))[::-1].copy()
    with any_db.session() as s:
        parent = structure_from_atoms(atoms, Origin.md_frame)
        s.add(parent)
        s.flush()
        child = structure_from_atoms(atoms[:5], Origin.embedded, parent_id=parent.id, center_index=3,
                                     force_mask=np.array([1, 4]))
        s.add(child)
        s.flush()
        ids = parent.id, child.id
    with any_db.session() as s:
        p, c = s.get(Structure, ids[0]), s.get(Structure, ids[1])
        back = atoms_from_structure(p)
        assert np.array_equal(back.positions, atoms.positions)
        assert np.array_equal(back.cell[:], atoms.cell[:])
        assert back.pbc.tolist() == [True, True, True]
        assert np.array_equal(back.arrays["gamma"], atoms.arrays["gamma"])
        assert p.max_gamma == pytest.approx(9.0)
        assert np.array_equal(back.arrays["parent_index"], atoms.arrays["parent_index"])
        assert c.force_mask == [1, 4] and c.parent_id == p.id and c.center_index == 3
        assert atoms_from_structure(c).info["force_mask"] == [1, 4]


def test_labels_potentials_segments_tasks_and_status(any_db):
    atoms = bulk("Si", "diamond", a=5.43)
    with any_db.session() as s:
        st = structure_from_atoms(atoms, Origin.generated)
        s.add(st)
        s.flush()
        s.add(Label(structure_id=st.id, status=LabelStatus.done, code="espresso", energy=-310.5,
                    forces=np.zeros((2, 3)), stress=np.zeros(6), parameters={"ecutwfc": 20}, walltime=4.8,
                    attempts=[{"status": "done"}]))
        s.add(Label(structure_id=st.id, status=LabelStatus.failed, code="espresso", error="SCF not converged"))
        s.add(Potential(version=1, name="si_initial", directory="/p/v0001", files={"yaml": "p.yaml"},
                        checksums={"yaml": "ab"}, n_train=12, metrics={"rmse_f": 0.01}))
        w = Walker(index=0)
        s.add(w)
        s.flush()
        s.add(Segment(walker_id=w.id, number=0, potential_version=1, start_step=0, status=SegmentStatus.triggered,
                      max_gamma=12.5, gamma_trace=np.array([[0, 1.0], [10, 12.5]])))
        s.add(Task(kind=TaskKind.dft, executor="cpu", priority=0, state=TaskState.running, structure_id=st.id))
    any_db.record_event("stop", "converged: 5 segments without a trigger")
    st = collect_status(any_db)
    assert st["labels"] == {"done": 1, "failed": 1}
    assert st["segments"] == {"triggered": 1} and st["triggers"] == 1
    assert st["tasks"] == {"running": 1}
    assert st["potentials"][0]["name"] == "si_initial" and st["potentials"][0]["n_train"] == 12
    assert st["stopped_because"].startswith("converged")
    assert st["max_gamma"] == pytest.approx(12.5)
    with any_db.session() as s:
        seg = s.scalars(select(Segment)).one()
        assert seg.gamma_trace.shape == (2, 2)
        assert s.scalars(select(Label).where(Label.status == LabelStatus.done)).one().stress.shape == (6,)


def test_potential_version_is_unique(any_db):
    with any_db.session() as s:
        s.add(Potential(version=1, name="a", directory="d", files={}, checksums={}))
    # SQLite: "UNIQUE constraint failed: potentials.version"; PostgreSQL: "Key (version)=(1) already exists"
    with pytest.raises(IntegrityError, match=r"potentials\.version|\(version\)=\(1\)"):
        with any_db.session() as s:
            s.add(Potential(version=1, name="b", directory="e", files={}, checksums={}))
    with any_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Potential)) == 1  # the failed one rolled back


def test_concurrent_writers_lose_nothing(any_db):
    """Worker threads record events at once; every row must land (SQLite locking, PG pool)."""

    def writer(k):
        for i in range(20):
            any_db.record_event("t", f"{k}-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with any_db.session() as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "t")) == 80


def test_bad_url_is_a_clear_error():
    with pytest.raises(AutopipeError, match="cannot open database"):
        Database("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_a_database_from_before_new_columns_is_upgraded_in_place(tmp_path):
    """A run started by an older autopipe resumes: nullable columns it lacks are added, old rows read NULL."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = Database(url)
    with db.session() as s:
        s.add(structure_from_atoms(bulk("Cu", "fcc", a=3.6), "generated"))
    db.dispose()
    con = sqlite3.connect(tmp_path / "old.db")
    for col in ("energy_weight", "force_weights"):  # what an older version created
        con.execute(f"ALTER TABLE structures DROP COLUMN {col}")
    con.commit()
    con.close()
    db = Database(url)
    with db.session() as s:
        row = s.scalars(select(Structure)).one()
        assert row.energy_weight is None and row.force_weights is None
        row.energy_weight = 0.5
    with db.session() as s:
        assert s.scalars(select(Structure)).one().energy_weight == 0.5
    db.dispose()
