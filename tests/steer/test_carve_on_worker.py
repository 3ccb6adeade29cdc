"""Carve where the frame is: a trigger frame larger than ``embedding.keep_frames_up_to`` is carved
on the MD worker; only its cells and a compact record travel and are stored (issue 22, item 1)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.config.run import EmbeddingConfig
from autopipe.steer.work import WorkerCarve, carve_on_worker
from tests.lj import lj2d_template

EMB = EmbeddingConfig(core_radius=3.0, buffer=5.0, min_distance=0.8)  # box 16 Å


def _triggered(frame):
    from autopipe.md import MDState
    from autopipe.md.result import finish

    state = MDState(atoms=frame.copy(), step=10)
    return finish("triggered", state, 0, [(0, 1.0), (10, float(frame.arrays["gamma"].max()))],
                  trigger_frame=frame, trigger_atom=int(np.argmax(frame.arrays["gamma"])))


def _big_layer(n_side=20):
    a = lj2d_template(n_side=n_side)  # 800 atoms, 48 x 83 Å: far larger than the box
    a.arrays["gamma"] = np.ones(len(a))
    a.arrays["gamma"][[5, 400]] = [9.0, 8.0]
    a.info["step"] = 10
    return a


def test_a_large_frame_stays_on_the_worker_and_its_cells_and_record_come_back():
    frame = _big_layer()
    res = _triggered(frame)
    carve_on_worker(res, WorkerCarve(EMB, threshold=5.0, max_extractions=2, keep_frames_up_to=100))
    assert res.trigger_frame is None and res.frame_route == "carved on the MD worker"
    assert [c.center for c in res.carved] == [5, 400] and all(c.atoms is not None for c in res.carved)
    rec = res.frame_record
    assert rec.info["frame_atoms"] == len(frame) and rec.info["step"] == 10 and rec.info["centres"] == [5, 400]
    idx = rec.arrays["parent_index"]
    assert {5, 400} <= set(idx.tolist()) and len(rec) < len(frame) // 10
    np.testing.assert_allclose(rec.positions, frame.positions[idx])
    np.testing.assert_allclose(rec.arrays["gamma"], frame.arrays["gamma"][idx])
    # Every kept atom lies within core_radius of a centre; every atom within it is kept.
    d = np.min([frame.get_distances(c, np.arange(len(frame)), mic=True) for c in (5, 400)], axis=0)
    assert set(np.flatnonzero(d <= EMB.core_radius).tolist()) == set(idx.tolist())
    # What travels back no longer grows with the frame.
    small = len(pickle.dumps(res))
    whole = _triggered(_big_layer())
    assert small < len(pickle.dumps(whole)) - 0.5 * len(pickle.dumps(frame))


def test_a_small_frame_or_one_the_cell_would_swallow_travels_whole_and_says_why():
    res = _triggered(_big_layer())
    carve_on_worker(res, WorkerCarve(EMB, threshold=5.0, max_extractions=2, keep_frames_up_to=1000))
    assert res.trigger_frame is not None and res.carved is None and "keep_frames_up_to (1000)" in res.frame_route
    tiny = lj2d_template(n_side=4)  # smaller than the box: labelled whole
    tiny.arrays["gamma"] = np.ones(len(tiny))
    tiny.arrays["gamma"][3] = 9.0
    res = _triggered(tiny)
    carve_on_worker(res, WorkerCarve(EMB, threshold=5.0, max_extractions=2, keep_frames_up_to=0))
    assert res.trigger_frame is not None and res.carved is None and res.frame_route.startswith("whole: ")


@pytest.mark.slow
def test_a_trigger_on_a_walker_larger_than_the_carve_stores_cells_and_a_record_not_the_frame(ctx):
    """The real path: md.args -> md_work (LAMMPS) -> md.done, with the loop's own handlers."""
    from autopipe.db import (Candidate, Origin, Segment, SegmentStatus, Structure, Task, TaskKind, TaskState, Walker,
                             WalkerStatus)
    from autopipe.steer.handlers import md
    from autopipe.steer.work import md_work
    from tests.steer.test_by_value import _segment_task
    from tests.steer.test_selection import _frame

    frame = _frame()  # 128 atoms with a squeezed pair: gamma far above the threshold at the first check
    ctx.run.embedding = ctx.run.embedding.model_copy(update={"keep_frames_up_to": 64})
    task_id = _segment_task(ctx, frame, n_steps=20)
    with ctx.db.session() as s:
        seg_id = s.get(Task, task_id).segment_id
        walker_id = s.get(Segment, seg_id).walker_id
    with ctx.db.session() as s:
        args = md.args(ctx, s.get(Task, task_id))
    ran = md_work(*args)
    assert ran.value is not None and ran.value.status == "triggered", ran.too_large or ran.value.error
    # The worker keeps no copy of what its answer restates (checkpoints, LAMMPS's final and start
    # dumps: 240-300 MB a segment at 10^6 atoms); its input and log stay.
    left = {p.name for p in Path(args[4].path()).rglob("*") if p.is_file()}
    assert any(n.endswith(".log") for n in left), left
    assert not [n for n in left if n.endswith((".npz", ".final.dump", ".start-trigger.dump"))], left
    md.done(ctx, task_id, ran.value)
    with ctx.db.session() as s:
        # No whole frame in the database: the compact record stands for it.
        assert s.scalars(select(Structure).where(Structure.origin == Origin.md_frame)).all() == []
        [rec] = s.scalars(select(Structure).where(Structure.origin == Origin.frame_record)).all()
        assert rec.info["frame_atoms"] == len(frame) and rec.n_atoms < len(frame)
        assert rec.info["frame_route"] == "carved on the MD worker" and rec.max_gamma > ctx.run.otf.uncertainty_threshold
        cells = s.scalars(select(Structure).where(Structure.origin == Origin.embedded)).all()
        assert cells and all(c.force_mask for c in cells)
        # Lineage: cell -> frame record -> segment -> walker, and the centre is in the record.
        for cell in cells:
            parent = s.get(Structure, cell.parent_id)
            assert parent.id == rec.id and s.get(Segment, parent.segment_id).id == seg_id
            assert s.get(Walker, s.get(Segment, parent.segment_id).walker_id).id == walker_id
            assert cell.center_index in set(rec.parent_index.tolist())
            assert int(cell.parent_index[0]) == cell.center_index  # the cell's first atom is its centre
        assert {c.frame_id for c in s.scalars(select(Candidate))} == {rec.id}
        [embed] = s.scalars(select(Task).where(Task.kind == TaskKind.embed)).all()
        assert embed.state is TaskState.done and embed.payload["carved_on"] == "md worker"
        dft = s.scalars(select(Task).where(Task.kind == TaskKind.dft, Task.state == TaskState.pending)).all()
        assert {t.structure_id for t in dft} <= {c.id for c in cells} and dft
        assert s.get(Segment, seg_id).status is SegmentStatus.triggered
        assert s.get(Walker, walker_id).status is WalkerStatus.waiting


@pytest.mark.slow
def test_the_probe_of_a_walker_larger_than_the_carve_is_carved_on_its_md_worker(ctx):
    """The real path for a segment that did not trigger: md.args asks for a probe, md_work (LAMMPS)
    picks the atom from LAMMPS's end gamma and carves its cell there, md.done stores the cell and the
    frame's compact record: the steering process evaluates nothing and never holds the frame's gamma."""
    from autopipe.db import Origin, Structure, Task, TaskKind, TaskState
    from autopipe.potentials.uncertainty import gamma
    from autopipe.steer.handlers import md
    from autopipe.steer.probe import PROBE_PRIORITY
    from autopipe.steer.work import md_work
    from tests.steer.test_by_value import _segment_task

    ctx.run.embedding = ctx.run.embedding.model_copy(update={"keep_frames_up_to": 64})
    task_id = _segment_task(ctx, lj2d_template(n_side=12), n_steps=20)  # 288 atoms of the 2D LJ layer: quiet
    with ctx.db.session() as s:
        args = md.args(ctx, s.get(Task, task_id))
    assert args[-1] is not None  # the first probe goes at once
    ran = md_work(*args)
    res = ran.value
    assert res.status == "completed" and res.end_gamma is None  # read on the worker, not sent back
    found = res.probe
    assert found is not None and found.cell is not None and found.step == 20
    # The atom was picked below the threshold from the end gamma, as pyace gives it for the final state.
    end = gamma(res.final_state.atoms, ctx.store.get(1, verify=False))
    assert found.info["gamma"] == pytest.approx(end[found.cell.center], rel=1e-6)
    assert found.info["gamma"] < ctx.run.otf.uncertainty_threshold
    assert found.frame.info["frame_atoms"] == len(res.final_state.atoms) > len(found.frame)
    md.done(ctx, task_id, res)
    with ctx.db.session() as s:
        [probe_task] = s.scalars(select(Task).where(Task.kind == TaskKind.dft)).all()
        assert (probe_task.priority, probe_task.state) == (PROBE_PRIORITY, TaskState.pending)
        cell = s.get(Structure, probe_task.structure_id)
        assert s.get(Structure, cell.parent_id).origin == Origin.frame_record
        assert cell.force_mask and cell.info["probe"]["segment"] == 0
