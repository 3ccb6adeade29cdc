"""Restart reconciliation on a database left by a killed process (no Parsl needed)."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from autopipe.db import Database, Label, LabelStatus, Origin, Task, TaskKind, TaskState, structure_from_atoms
from autopipe.steer.tasks import reconcile


def test_labelled_tasks_are_done_unlabelled_ones_requeued_and_fits_restarted(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'autopipe.db'}")
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[10, 10, 10], pbc=True)
    with db.session() as s:
        rows = [structure_from_atoms(atoms, Origin.generated, selected=True) for _ in range(3)]
        s.add_all(rows)
        s.flush()
        # Killed after the label of rows[0] was committed but before its task was marked done.
        s.add(Label(structure_id=rows[0].id, status=LabelStatus.done, code="lj", energy=-0.1,
                    forces=np.zeros((2, 3))))
        tasks = [Task(kind=TaskKind.dft, executor="local", state=state, structure_id=r.id, attempts=1)
                 for r, state in zip(rows, (TaskState.running, TaskState.running, TaskState.pending))]
        tasks.append(Task(kind=TaskKind.train, executor="local", state=TaskState.running, payload={}))
        s.add_all(tasks)
        s.flush()
        ids = [t.id for t in tasks]
    requeue = reconcile(db)
    with db.session() as s:
        states = [s.get(Task, i).state for i in ids]
    assert states == [TaskState.done, TaskState.pending, TaskState.pending, TaskState.failed]
    assert requeue == ids[1:3]  # labelled work is not redone
    assert db.last_event("resume").message.startswith("requeued 2 task(s)")
    assert reconcile(db) == ids[1:3]  # pending ones are requeued again on the next start, nothing else
