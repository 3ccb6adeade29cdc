"""Walker state by reference on a shared scratch: the database keeps path, size and sha256; the
worker verifies the checksum before it resumes; a tampered checkpoint is refused with one line
and the walker restarts from its previous good one. Without a shared scratch a walker too big
for the executor's payload bound is refused at start, with one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from sqlalchemy import select

from autopipe.db import Segment, SegmentStatus, Task, TaskKind, Walker, WalkerStatus
from autopipe.errors import ConfigError
from autopipe.md.state import (MDState, OnScratch, StateRef, StateRefused, initial_state, load_state_ref,
                               save_state_ref)
from autopipe.steer import walkers
from autopipe.steer.handlers import md as md_handler
from autopipe.steer.work import md_work


def _on_shared_scratch(ctx, monkeypatch, tmp_path, workers_write_there: bool = False):
    """The ctx's site with a shared scratch written as '${VAR}/...' (expanded on the steering host);
    ``workers_write_there``: the executor's own scratch is the same directory (as on Perlmutter,
    where both would be $PSCRATCH/autopipe)."""
    monkeypatch.setenv("AP_TEST_SCRATCH", str(tmp_path / "pscratch"))
    update = {"shared_scratch": "${AP_TEST_SCRATCH}/autopipe"}
    if workers_write_there:
        update["scratch"] = "${AP_TEST_SCRATCH}/autopipe"
    ex = ctx.site.executors[0].model_copy(update=update)
    ctx.site = ctx.site.model_copy(update={"executors": [ex]})
    return tmp_path / "pscratch" / "autopipe"


def _placeable(ctx) -> None:
    """A 2D liquid the generator can place (the fixture's 0.17 atoms/Å² is for its templates)."""
    st = ctx.run.system.structure.model_copy(update={"density": 0.12})
    ctx.run.system = ctx.run.system.model_copy(update={"structure": st})


def _run_pending_segment(ctx) -> tuple[int, tuple]:
    """Start segments, run the pending MD task with the real worker function, hand it to the handler."""
    walkers.start_segments(ctx)
    with ctx.db.session() as s:
        task = s.scalars(select(Task).where(Task.kind == TaskKind.md).order_by(Task.id.desc())).first()
        task_id = task.id
        app_args = ctx.args[TaskKind.md](ctx, task)
    ran = md_work(*app_args)
    md_handler.done(ctx, task_id, ran.value)
    return task_id, app_args


def _walker(ctx) -> Walker:
    with ctx.db.session() as s:
        w = s.scalars(select(Walker)).one()
        s.expunge(w)
        return w


def test_a_reference_round_trips_and_a_changed_file_is_refused_with_one_line(tmp_path):
    from tests.lj import lj2d_template
    from autopipe.config.run import MDConfig

    state = initial_state(lj2d_template(), MDConfig(dimension=2), step=40)
    ref = save_state_ref(tmp_path / "ck.npz", state)
    assert StateRef.from_text(ref.to_text()) == ref and StateRef.from_text(str(tmp_path / "ck.npz")) is None
    back = load_state_ref(ref)
    assert back.step == 40 and (back.atoms.get_momenta() == state.atoms.get_momenta()).all()
    data = bytearray((tmp_path / "ck.npz").read_bytes())
    data[-100] ^= 0x01  # one bit, same size
    (tmp_path / "ck.npz").write_bytes(bytes(data))
    with pytest.raises(StateRefused) as exc:
        load_state_ref(ref)
    assert "\n" not in str(exc.value) and str(exc.value).startswith(f"walker checkpoint {ref.path}: ")
    (tmp_path / "ck.npz").unlink()
    with pytest.raises(StateRefused, match="cannot be read"):
        load_state_ref(ref)


@pytest.mark.parametrize("workers_write_there", [False, True], ids=["own-scratch", "scratch-is-shared"])
def test_states_stay_on_scratch_and_a_tampered_checkpoint_restarts_the_walker_from_its_previous_one(
        ctx, monkeypatch, tmp_path, workers_write_there):
    # With the workers' scratch on the shared one, the files a worker drops after a segment
    # (work.drop_restated) sit where the states by reference are kept: they must survive.
    root = _on_shared_scratch(ctx, monkeypatch, tmp_path, workers_write_there)
    _placeable(ctx)
    ctx.run.md = ctx.run.md.model_copy(update={"segment_steps": 20})
    ctx.run.otf = ctx.run.otf.model_copy(update={"uncertainty_threshold": 1e9})  # quiet segments only

    # Segment 0: the initial state goes by reference; the end state comes back by reference.
    _, app_args = _run_pending_segment(ctx)
    state = app_args[0]
    assert isinstance(state, OnScratch) and state.ref.path.startswith(str(root))
    assert len(pickle.dumps(state)) < 1024  # a path, a size and a checksum, not the arrays
    w = _walker(ctx)
    first = StateRef.from_text(w.checkpoint)
    assert w.step == 20 and first is not None and first.step == 20 and first.path.startswith(str(root))
    assert load_state_ref(first).step == 20  # the file on scratch matches what the database recorded

    # Segment 1 moves it on to step 40.
    _run_pending_segment(ctx)
    w = _walker(ctx)
    second = StateRef.from_text(w.checkpoint)
    assert w.step == 40 and second.step == 40

    # The step-40 checkpoint changes on scratch: the worker refuses it (one line), the walker goes
    # back to the step-20 checkpoint, still on scratch and intact, and runs on from there.
    data = bytearray(open(second.path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(second.path, "wb").write(bytes(data))
    logged: list[str] = []
    monkeypatch.setattr(ctx.progress, "log", logged.append)
    _run_pending_segment(ctx)
    with ctx.db.session() as s:
        refused = s.scalars(select(Segment).order_by(Segment.number.desc())).first()
        assert refused.status is SegmentStatus.failed and refused.start_step == 40
        assert refused.error.startswith(f"walker checkpoint {second.path}: ") and "\n" not in refused.error
    w = _walker(ctx)
    assert w.status is WalkerStatus.running and w.step == 20 and StateRef.from_text(w.checkpoint) == first
    assert "refused: restarts from step 20" in w.note
    assert [m for m in logged if "segment 2 failed: walker checkpoint" in m and "\n" not in m]

    _run_pending_segment(ctx)  # resumes from the previous good checkpoint
    w = _walker(ctx)
    assert w.step == 40 and w.failures == 0 and load_state_ref(StateRef.from_text(w.checkpoint)).step == 40


def test_without_shared_scratch_states_travel_by_value(ctx):
    _placeable(ctx)
    ctx.run.md = ctx.run.md.model_copy(update={"segment_steps": 20})
    ctx.run.otf = ctx.run.otf.model_copy(update={"uncertainty_threshold": 1e9})
    _, app_args = _run_pending_segment(ctx)
    assert isinstance(app_args[0], MDState)
    w = _walker(ctx)
    assert w.step == 20 and StateRef.from_text(w.checkpoint) is None and w.checkpoint.endswith(".npz")


def test_a_walker_above_the_payload_bound_without_shared_scratch_is_refused_at_start_with_one_line(
        ctx, monkeypatch, tmp_path):
    from autopipe.steer.loop import Steering

    run = ctx.run.model_copy(update={"workdir": tmp_path / "work"})
    run.system = run.system.model_copy(update={"structure": run.system.structure.model_copy(
        update={"n_atoms": 2000, "density": 0.12})})  # about 110 kB pickled
    ex = ctx.site.executors[0].model_copy(update={"max_payload_mb": 0.05})
    site = ctx.site.model_copy(update={"executors": [ex]})
    with pytest.raises(ConfigError) as exc:
        Steering(site, run).run()
    msg = str(exc.value)
    assert "\n" not in msg and "a walker of 2000 atoms is" in msg and "no shared_scratch" in msg
    assert not (tmp_path / "work" / "parsl").exists()  # refused before Parsl started
    # The same walker with a shared scratch passes the check (its state never travels by value).
    monkeypatch.setenv("AP_TEST_SCRATCH", str(tmp_path / "pscratch"))
    shared = site.model_copy(update={"executors": [ex.model_copy(update={"shared_scratch": "$AP_TEST_SCRATCH"})]})
    assert walkers.check_state_route(shared, run) > ex.payload_bytes()
    # A variable not set on the steering host: one line at start too.
    monkeypatch.delenv("AP_TEST_SCRATCH")
    with pytest.raises(ConfigError, match=r"shared_scratch '\$AP_TEST_SCRATCH' is '\$AP_TEST_SCRATCH' here: a variable"):
        walkers.check_state_route(shared, run)


@pytest.mark.slow
def test_sigkill_while_states_sit_on_scratch_resumes_with_nothing_lost(lj2d_potential, tmp_path):
    """The kill/resume guarantee on the shared-scratch route: the steering process is killed while
    walker checkpoints sit on scratch and segments are in flight; the next start resumes every
    walker from its recorded reference and the segment chain has no gap and no repeat."""
    import signal
    import subprocess
    import time

    import yaml

    from autopipe.db import Database, TaskState
    from tests.steer.test_loop import BIN, ROOT, from_fixture

    scratch = tmp_path / "pscratch"
    site = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    site["executors"][0]["shared_scratch"] = "${AP_TEST_SCRATCH}/autopipe"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    run = from_fixture(tmp_path, lj2d_potential, walkers={"count": 2},
                       md={"segment_steps": 200}, otf={"uncertainty_threshold": 1e9},  # quiet: MD only
                       stop={"max_md_steps": 1200, "max_walltime": 600})
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "AP_TEST_SCRATCH": str(scratch)}

    def steer() -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "autopipe-steer"), "--site", str(site_file), "--run", str(run),
                                 "--no-live"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    db_path = tmp_path / "work" / "autopipe.db"
    proc = steer()
    deadline, recorded = time.time() + 300, {}
    while time.time() < deadline and proc.poll() is None:
        try:
            with Database(f"sqlite:///{db_path}", create=False).session() as s:
                refs = {w.index: w.checkpoint for w in s.scalars(select(Walker))
                        if w.step > 0 and StateRef.from_text(w.checkpoint)}
                running = s.scalar(select(Task.id).where(Task.kind == TaskKind.md, Task.state == TaskState.running))
        except Exception:
            refs, running = {}, None  # the database is not there yet
        if len(refs) == 2 and running:  # both walkers past a segment by reference, one segment in flight
            recorded = refs
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"the loop ended early:\n{proc.stdout.read()[-3000:]}")
    assert recorded, "no walker reached a checkpoint on scratch before the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = Database(f"sqlite:///{db_path}")
    with db.session() as s:
        done_before = {(seg.walker_id, seg.number): seg.end_checkpoint for seg in s.scalars(
            select(Segment).where(Segment.status == SegmentStatus.completed))}
        left_running = set(s.scalars(select(Task.id).where(Task.kind == TaskKind.md,
                                                           Task.state == TaskState.running)))
    assert left_running

    out, _ = steer().communicate(timeout=600)
    assert "stopped:" in out, out[-3000:]
    with db.session() as s:
        for w in s.scalars(select(Walker)):
            assert w.step == 1200 and w.status is WalkerStatus.finished, (w.index, w.step, w.note)
            ref = StateRef.from_text(w.checkpoint)
            assert ref.path.startswith(str(scratch)) and load_state_ref(ref).step == 1200
            segs = s.scalars(select(Segment).where(Segment.walker_id == w.id, Segment.status == SegmentStatus.completed)
                             .order_by(Segment.number)).all()
            # One completed segment per 200 steps, each starting where the previous one ended.
            assert [(g.start_step, g.end_step) for g in segs] == [(i, i + 200) for i in range(0, 1200, 200)]
            assert all(g.start_checkpoint == p.end_checkpoint for p, g in zip(segs, segs[1:]))
            assert all(StateRef.from_text(g.end_checkpoint) for g in segs)
            # The newest md.keep_checkpoints (3) segments keep their files; older ones were deleted.
            on_disk = [Path(StateRef.from_text(g.end_checkpoint).path).exists() for g in segs]
            assert on_disk == [False] * (len(segs) - 3) + [True] * 3
        for key, ck in done_before.items():  # what was recorded before the kill stands
            seg = s.scalars(select(Segment).where(Segment.walker_id == key[0], Segment.number == key[1])).one()
            assert seg.end_checkpoint == ck
            if Path(StateRef.from_text(ck).path).exists():
                assert load_state_ref(StateRef.from_text(ck)).step == seg.end_step
        resumed = s.scalars(select(Task).where(Task.id.in_(left_running))).all()
        assert all(t.state is TaskState.done and t.attempts >= 2 for t in resumed)
