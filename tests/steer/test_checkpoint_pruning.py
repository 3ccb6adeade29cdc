"""Old walker checkpoints are deleted as the walker moves on (here and on the shared scratch):
the newest ``md.keep_checkpoints`` segments keep theirs, the first state and the current and
previous good states are never deleted, and a refused state still finds its previous one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from autopipe.db import Segment, SegmentStatus
from autopipe.md.state import StateRef, load_state, load_state_ref
from autopipe.steer import walkers
from tests.steer.test_state_by_reference import _on_shared_scratch, _placeable, _run_pending_segment, _walker


def _checkpoints(root) -> set[str]:
    """Checkpoint files under ``root`` as paths from the walker directory on (``w00/seg0004/...``)."""
    return {"/".join(p.parts[p.parts.index("walkers") + 1:]) for p in root.rglob("checkpoint-*.npz")}


@pytest.mark.parametrize("route", ["by value", "shared scratch"])
def test_old_checkpoints_go_and_the_ones_a_resume_needs_stay(ctx, monkeypatch, tmp_path, route):
    scratch = _on_shared_scratch(ctx, monkeypatch, tmp_path) if route == "shared scratch" else None
    _placeable(ctx)
    ctx.run.md = ctx.run.md.model_copy(update={"segment_steps": 10, "keep_checkpoints": 2})
    ctx.run.otf = ctx.run.otf.model_copy(update={"uncertainty_threshold": 1e9})  # quiet segments only
    for _ in range(6):
        _run_pending_segment(ctx)
    w = _walker(ctx)
    assert w.step == 60
    where = scratch if scratch is not None else tmp_path / "walkers"
    on_disk = _checkpoints(where)
    # Segments 4 and 5 keep theirs (the newest two); 0-3 have none left; the first state stays here.
    assert {p.split("/")[1] for p in on_disk if "/seg" in p} == {"seg0004", "seg0005"}, on_disk
    assert (tmp_path / "walkers" / "w00" / "checkpoint-00000000.npz").exists()
    current = walkers.checkpoint_path(w.checkpoint)
    assert current.exists()
    state = load_state_ref(StateRef.from_text(w.checkpoint)) if scratch else load_state(current)
    assert state.step == 60

    # A walker that goes back to its previous good state still finds it on disk.
    with ctx.db.session() as s:
        prev = walkers.previous_state(s, s.merge(w))
    assert prev is not None and walkers.checkpoint_path(prev[1]).exists()

    # keep_checkpoints None keeps everything from then on.
    ctx.run.md = ctx.run.md.model_copy(update={"keep_checkpoints": None})
    before = _checkpoints(where)
    for _ in range(3):
        _run_pending_segment(ctx)
    assert before <= _checkpoints(where)
    with ctx.db.session() as s:
        assert s.scalars(select(Segment).where(Segment.status == SegmentStatus.failed)).first() is None


def test_a_walker_stuck_on_an_old_checkpoint_keeps_it(ctx):
    """Triggers without a rewind state leave the walker on its old checkpoint: it is never deleted."""
    _placeable(ctx)
    ctx.run.md = ctx.run.md.model_copy(update={"segment_steps": 10, "keep_checkpoints": 1})
    ctx.run.otf = ctx.run.otf.model_copy(update={"uncertainty_threshold": 1e9})
    for _ in range(2):
        _run_pending_segment(ctx)
    w = _walker(ctx)
    held = walkers.checkpoint_path(w.checkpoint)
    assert "seg0001" in str(held)
    # A newer segment that does not move it (a failed one starts from the same checkpoint) puts its
    # segment past the newest one kept: the file the walker sits on stays.
    with ctx.db.session() as s:
        for n in (2,):
            s.add(Segment(walker_id=s.merge(w).id, number=n, status=SegmentStatus.failed, start_step=w.step,
                          start_checkpoint=w.checkpoint, potential_version=1))
    deleted = walkers.prune_checkpoints(ctx, w.index)
    assert held.exists() and held not in deleted
