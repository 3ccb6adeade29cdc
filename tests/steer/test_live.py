"""The live table: drawn from the loop's one read of the run (``read_view``), with no queries of its own."""

from __future__ import annotations

from autopipe.db import Segment, Task, TaskKind, TaskState, Walker, WalkerStatus
from autopipe.steer.live import Progress, snapshot
from autopipe.steer.view import read_view


def test_the_live_table_is_drawn_from_the_view_alone(ctx):
    with ctx.db.session() as s:
        w0, w1 = Walker(index=0, step=120), Walker(index=1, step=40, status=WalkerStatus.waiting, waiting_for_version=1)
        s.add_all([w1, w0])  # the table follows the walkers' index, not the rows' order
        s.flush()
        s.add_all([
            Segment(walker_id=w0.id, number=0, potential_version=1, start_step=0, max_gamma=7.0),
            Segment(walker_id=w0.id, number=1, potential_version=1, start_step=100, max_gamma=2.5),
            Segment(walker_id=w0.id, number=2, potential_version=1, start_step=120),  # running: no gamma yet
            Task(kind=TaskKind.dft, executor="local"),
            Task(kind=TaskKind.dft, executor="local", state=TaskState.running),
            Task(kind=TaskKind.train, executor="local", state=TaskState.done),
        ])
    assert all(w.last_max_gamma is None for w in read_view(ctx).walkers)  # what the rules read: no gammas
    view = read_view(ctx, gammas=True)
    snap = snapshot(view, ctx.run)  # no database, no store: everything the table shows is in the view
    assert snap["walkers"] == [(0, "running", 120, 2.5, None), (1, "waiting", 40, None, 1)]
    assert snap["tasks"] == {("dft", "pending"): 1, ("dft", "running"): 1, ("train", "done"): 1}
    assert snap["labels"] == {} and snap["version"] == 1 and snap["elapsed"] == view.elapsed
    assert snap["threshold"] == ctx.run.otf.uncertainty_threshold
    assert view.active == {"dft": 2}  # what the policies read agrees with what the table shows
    caption = Progress(live=False)._table(snap).caption
    assert "DFT: 1 queued, 1 running" in caption and "training: 0 active, 1 done" in caption
