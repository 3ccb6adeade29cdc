"""Restart reconciliation on a database left by a killed process (no Parsl needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from autopipe.config import load_run, load_site
from autopipe.db import Label, LabelStatus, Origin, Task, TaskKind, TaskState, structure_from_atoms
from autopipe.steer.apps import Apps
from autopipe.steer.loop import Steering
from autopipe.steer.queue import Dispatcher
from tests.steer.test_loop import short_run

ROOT = Path(__file__).resolve().parents[2]


def _never_called(*args, **kwargs):
    raise AssertionError("reconciliation must only queue work, not run it")


def test_labelled_tasks_are_done_unlabelled_ones_requeued_and_fits_restarted(tmp_path):
    steering = Steering(load_site(ROOT / "configs/local.yaml"), load_run(short_run(tmp_path)))
    steering.apps = Apps(md=_never_called, dft=_never_called, train=_never_called, embed=_never_called,
                         executors={"md": "local", "dft": "local", "train": "local", "embed": "local"})
    steering.dispatcher = Dispatcher({"local": 2})
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[10, 10, 10], pbc=True)
    with steering.db.session() as s:
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
    steering._reconcile()
    with steering.db.session() as s:
        states = [s.get(Task, i).state for i in ids]
    assert states == [TaskState.done, TaskState.pending, TaskState.pending, TaskState.failed]
    assert sorted(q.key for q in steering.dispatcher.queued()) == ids[1:3]  # labelled work is not redone
