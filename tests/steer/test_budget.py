"""The carving budget in the loop: calibrate on the first trigger frame against its whole label,
choose, carve with the choice, re-check after ``recheck_every`` carved labels."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select


def _frame(n_side: int = 12, pair: float = 1.55):
    from tests.lj import lj2d_template

    a = lj2d_template(n_side=n_side)
    a.positions[1] = a.positions[0] + np.array([pair, 0.0, 0.0])  # a squeezed pair: the hole
    return a


def _trigger(ctx, frame) -> list[int]:
    from tests.steer.test_selection import _trigger as trigger

    return trigger(ctx, frame, walker=0)


def _label_all(ctx, task_ids) -> None:
    from autopipe.db import Structure, Task, atoms_from_structure
    from autopipe.dft import label
    from autopipe.steer.handlers import dft

    for tid in task_ids:
        with ctx.db.session() as s:
            atoms = atoms_from_structure(s.get(Structure, s.get(Task, tid).structure_id))
        dft.done(ctx, tid, label(atoms, ctx.run.dft))


def _events(ctx, kind):
    from autopipe.db import Event

    with ctx.db.session() as s:
        return [(e.message, dict(e.data)) for e in s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id))]


@pytest.fixture
def budget_ctx(ctx):
    ctx.run.embedding = ctx.run.embedding.model_copy(update={
        "strategy": "budget", "candidates": ["cube"], "recheck_every": 2, "max_error_ratio": 0.5})
    # DFT-like cost that grows with the atom count, so "cheaper than the whole frame" is measured, not noise.
    from autopipe.config.run import OracleLatency

    # Selection must not judge the later holes covered by the first: this test is about the budget.
    ctx.run.otf = ctx.run.otf.model_copy(update={"uncertainty_threshold": 1.01})

    ctx.run.dft = ctx.run.dft.model_copy(update={"latency": OracleLatency(seconds_at_64=0.05)})
    return ctx


def test_calibrate_choose_carve_and_recheck(budget_ctx):
    from autopipe.db import Structure, Task
    from autopipe.steer import budget

    ctx = budget_ctx
    assert budget.plan(ctx).calibrate == ("cube",)
    first = _trigger(ctx, _frame())
    assert len(first) == 2  # the whole frame and one cube cell, both labelled
    with ctx.db.session() as s:
        rows = [s.get(Structure, s.get(Task, t).structure_id) for t in first]
        cell = next(r for r in rows if r.parent_id is not None)
        assert cell.info["calibration_for"] == rows[0].id and cell.energy_weight == 0.0
        assert not np.any(cell.force_weights)  # a measurement, never trained on
    [(msg, data)] = _events(ctx, budget.CALIBRATION)
    assert data["strategies"] == ["cube"]
    # While the calibration is labelled, other triggers are labelled whole.
    assert budget.plan(ctx).strategy == budget.WHOLE and budget.plan(ctx).calibrate == ()
    _label_all(ctx, first)
    [(msg, data)] = _events(ctx, budget.DECISION)
    # LJ with buffer >= rc + min_distance/2: the cube's core forces are exact, far below v1's error.
    [m] = data["measured"]
    assert m["core_rms"] < 1e-6 < m["potential_rms"] and m["cost"] < m["frame_cost"]
    assert data["chosen"] == "cube" and "cube" in msg
    assert budget.plan(ctx).strategy == "cube" and budget.plan(ctx).calibrate == ()
    # The decision and its numbers are in `autopipe status` and in the report.
    from autopipe.report import carving_section
    from autopipe.status import collect_status, render_status

    st = collect_status(ctx.db)
    assert st["carving"][-1]["chosen"] == "cube" and st["dft_seconds"] > 0
    assert "carving    : carving budget: cube" in render_status(st)
    assert "core 0 meV/Å vs potential" in carving_section(st)
    # Carved labels count towards the re-check; calibration cells do not.
    for pair in (1.40, 1.25):  # holes the labels so far do not cover
        tasks = _trigger(ctx, _frame(pair=pair))
        assert tasks
        with ctx.db.session() as s:
            assert all(s.get(Structure, s.get(Task, t).structure_id).parent_id is not None for t in tasks)
        _label_all(ctx, tasks)
    assert budget.plan(ctx).calibrate == ("cube",) and "re-check after 2" in budget.plan(ctx).reason


def test_no_strategy_within_the_budget_means_whole_frames(budget_ctx):
    from autopipe.steer import budget

    ctx = budget_ctx
    # A thin buffer cuts LJ's range: the cube misses the whole frame by more than the absolute bound.
    ctx.run.embedding = ctx.run.embedding.model_copy(update={"buffer": 1.0, "min_distance": 0.5,
                                                             "max_core_force_error": 0.001})
    _label_all(ctx, _trigger(ctx, _frame()))
    [(msg, data)] = _events(ctx, budget.DECISION)
    assert data["chosen"] == budget.WHOLE and "whole frames" in msg and "meV/Å" in msg
    assert data["measured"][0]["core_rms"] > 0.001
    tasks = _trigger(ctx, _frame(pair=1.40))
    from autopipe.db import Structure, Task

    with ctx.db.session() as s:
        assert [s.get(Structure, s.get(Task, t).structure_id).parent_id for t in tasks] == [None]


def test_a_frame_no_bigger_than_the_cells_is_decided_whole_at_once(budget_ctx):
    from autopipe.steer import budget

    ctx = budget_ctx
    tasks = _trigger(ctx, _frame(n_side=4))  # 9.6 x 16.6 Å: a 16 Å cube holds images of the whole frame
    assert len(tasks) == 1  # the whole frame only: a cell as big as the frame is not worth measuring
    [(msg, data)] = _events(ctx, budget.DECISION)
    assert data["chosen"] == budget.WHOLE and "no carve to measure" in msg and "would hold" in msg
    assert budget.plan(ctx).strategy == budget.WHOLE and budget.plan(ctx).calibrate == ()
