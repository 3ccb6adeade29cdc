"""The handlers send work by value, within each executor's size bound, and a bound that is
exceeded (arguments here, or a result on the worker) stops the run with one line instead of
sending or waiting."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.db import Event, Segment, SegmentStatus, Task, TaskKind, TaskState, Walker, WalkerStatus
from autopipe.layout import RunLayout
from autopipe.md import MDState, initial_state, save_state
from autopipe.steer import tasks
from autopipe.steer.stopping import stop_reason
from autopipe.steer.view import read_view
from autopipe.potentials.shipped import ShippedPotential
from autopipe.transfer import FileSet, PayloadTooLarge, Scratch


def _segment_task(ctx, atoms=None, n_steps: int = 50) -> int:
    """A walker (0) at step 0 on ``atoms`` (default: the 2D LJ template), its first segment and md task."""
    from tests.lj import lj2d_template

    state = initial_state(lj2d_template() if atoms is None else atoms, ctx.run.md)
    ck = save_state(ctx.layout.initial_checkpoint(0), state)
    with ctx.db.session() as s:
        w = Walker(index=0, status=WalkerStatus.running, step=0, checkpoint=str(ck))
        s.add(w)
        s.flush()
        seg = Segment(walker_id=w.id, number=0, potential_version=1, status=SegmentStatus.pending, start_step=0,
                      start_checkpoint=str(ck))
        s.add(seg)
        s.flush()
        task = ctx.new_task(TaskKind.md, segment_id=seg.id, payload={"n_steps": n_steps})
        s.add(task)
        s.flush()
        return task.id


def test_md_arguments_are_values_and_the_worker_writes_under_its_scratch(ctx):
    task_id = _segment_task(ctx)
    with ctx.db.session() as s:
        state, pot, md, otf, scratch, n_steps, launcher, lammps_args, carve, probe = ctx.args[TaskKind.md](
            ctx, s.get(Task, task_id))
    assert isinstance(state, MDState) and len(state.atoms) and n_steps == 50
    assert carve.keep_frames_up_to == ctx.run.embedding.keep_frames_up_to  # how the worker carves a large frame
    assert (probe.walker, probe.segment, probe.version) == (0, 0, 1)  # the first probe goes at once
    assert isinstance(pot, ShippedPotential) and set(pot.files.files) == {"yaml", "yace", "asi"}
    assert isinstance(scratch, Scratch) and scratch.relative == "walkers/w00/seg0000"
    assert scratch.root == str(ctx.layout.root.resolve())  # threads: workers share the work directory
    # Nothing in the arguments names a file of the run: a worker elsewhere needs none.
    assert str(ctx.layout.root) not in repr((state, pot, md, otf, carve, probe))


def test_a_remote_executor_writes_in_a_directory_of_its_own_per_run(ctx, tmp_path):
    ex = ctx.site.executors[0].model_copy(update={"scratch": "$PSCRATCH/ap", "max_payload_mb": 3.0})
    ctx.site = ctx.site.model_copy(update={"executors": [ex]})
    s = ctx.scratch("dft", ctx.layout.dft_dir(7))
    assert s.root.startswith(f"$PSCRATCH/ap/{ctx.run.name}-") and s.relative == "dft/s000007"
    assert s.max_result_bytes == 3 * 2**20


def test_arguments_above_the_bound_are_not_sent_and_stop_the_run(ctx):
    ex = ctx.site.executors[0].model_copy(update={"max_payload_mb": 0.01})  # 10 kB: less than a potential
    ctx.site = ctx.site.model_copy(update={"executors": [ex]})
    task_id = _segment_task(ctx)
    ctx.push(task_id)
    assert ctx.dispatcher.idle()  # nothing queued, nothing sent
    with ctx.db.session() as s:
        assert s.get(Task, task_id).state is TaskState.pending  # a restart with a larger bound runs it
        [event] = s.scalars(select(Event).where(Event.kind == "cannot_run")).all()
    expected = f"the arguments of task {task_id} (md) is "
    assert event.message.startswith(expected) and "kB pickled, above the 10 kB bound of its executor" in event.message
    assert stop_reason(read_view(ctx), ctx.run.stop) == event.message


def test_a_result_above_the_bound_comes_back_as_one_line_and_where_it_ran(ctx, tmp_path):
    from autopipe.steer.work import _ran

    task_id = _segment_task(ctx)
    small = Scratch(str(tmp_path), "x", max_result_bytes=1000)
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result(_ran(np.zeros(1000), 0.0, small, "MD segment x"))
    with pytest.raises(PayloadTooLarge, match=r"the result of MD segment x is 8 kB pickled, above the 1 kB bound"):
        tasks.received(ctx.db, task_id, fut)
    fut = concurrent.futures.Future()
    fut.set_result(_ran("fits", 0.0, small, "MD segment x"))
    assert tasks.received(ctx.db, task_id, fut) == "fits"
    with ctx.db.session() as s:
        ran = s.get(Task, task_id).payload["ran"]
    assert ran["tries"] == 1 and ran["host"] and ran["started"].startswith("1970-01-01")


def test_what_travels_is_recorded_with_where_it_ran(ctx, tmp_path):
    """The bytes a task's arguments and answer carry (issue 22's "what travels") reach its row."""
    from autopipe.steer.work import _ran
    from autopipe.transfer import pickled_size

    task_id = _segment_task(ctx)
    ctx.push(task_id)
    with ctx.db.session() as s:
        args = ctx.args[TaskKind.md](ctx, s.get(Task, task_id))
    sent = ctx.sent_bytes[task_id]
    assert sent == pickled_size(args) and sent > 1000  # the state and the potential's files
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result(_ran(np.zeros(4000), 0.0, Scratch(str(tmp_path), "x", max_result_bytes=10**6), "MD segment x"))
    tasks.received(ctx.db, task_id, fut, ctx.sent_bytes.pop(task_id))
    with ctx.db.session() as s:
        ran = s.get(Task, task_id).payload["ran"]
    assert ran["sent_bytes"] == sent and ran["result_bytes"] == pickled_size(np.zeros(4000))


def test_pseudopotentials_travel_by_value_and_are_found_on_the_worker(ctx, tmp_path):
    from tests.dft.conftest import HAVE_PWX, PSEUDO_DIR

    if not HAVE_PWX:
        pytest.skip("no Si pseudopotential")
    from autopipe.config.run import EspressoConfig

    ctx.run = ctx.run.model_copy(update={"dft": EspressoConfig(code="espresso", pseudo_dir=PSEUDO_DIR),
                                         "system": ctx.run.system.model_copy(update={"elements": ["Si"]})})
    shipped = ctx.pseudopotentials()
    assert isinstance(shipped, FileSet) and list(shipped.files) == ["Si"] and shipped.files["Si"].name.endswith("UPF")
    paths = shipped.materialise(tmp_path / "cache")
    assert paths["Si"].read_bytes() == (Path(PSEUDO_DIR) / paths["Si"].name).read_bytes()


def test_layout_keeps_worker_paths_relative(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.relative(layout.segment_dir(3, 12)) == "walkers/w03/seg0012"
