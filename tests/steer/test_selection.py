"""D-optimal selection before DFT: the linear algebra alone, then with a real potential and the
embed handler (no Parsl: the handler's tasks are only queued)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autopipe.steer.selection import extend, grade, select_d_optimal

M = 6  # basis functions of the toy species


@pytest.fixture
def toy():
    """An active set spanning the first 6 unit directions scaled to 1 (A = I): gamma = max |b|."""
    return {0: np.eye(M)}


def rows(*vectors):
    return {0: np.array(vectors, dtype=float)}


def test_grade_is_the_largest_projection_coefficient(toy):
    assert grade(rows([0.5, -3.0, 0, 0, 0, 0]), toy) == 3.0
    assert grade({0: np.zeros((0, M))}, toy) == 0.0


def test_extend_swaps_only_rows_that_grow_the_volume():
    active = {0: np.eye(M)}
    assert extend(active, rows([0.5, 0, 0, 0, 0, 0])) == 0  # inside: nothing to learn
    det0 = abs(np.linalg.det(active[0]))
    assert extend(active, rows([4.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0])) == 2
    assert abs(np.linalg.det(active[0])) == pytest.approx(12 * det0)
    assert grade(rows([4.0, 0, 0, 0, 0, 0]), {0: np.linalg.inv(active[0])}) == pytest.approx(1.0)


def test_equivalent_candidates_buy_one_label_and_different_ones_each_their_own(toy):
    hole = [0, 0, 9.0, 0, 0, 0]
    other = [0, 0, 0, 0, 8.0, 0]
    d = select_d_optimal(toy, [], [rows(hole), rows(hole), rows(other), rows([0.3] * M)], threshold=5.0)
    assert [x.keep for x in d] == [True, False, True, False]
    assert d[0].score == pytest.approx(9.0) and d[1].score == pytest.approx(1.0)
    assert d[1].reason.startswith("covered") and d[3].reason.startswith("covered")


def test_cells_on_their_way_cover_candidates_but_failed_ones_do_not(toy):
    hole = rows([0, 0, 9.0, 0, 0, 0])
    assert not select_d_optimal(toy, [hole], [hole], threshold=5.0)[0].keep  # queued or freshly labelled
    assert select_d_optimal(toy, [], [hole], threshold=5.0)[0].keep  # its DFT failed: not on its way


def test_the_most_informative_candidate_is_taken_first():
    active = {0: np.eye(2)}
    near = rows([6.0, 0.1])
    far = rows([8.0, 0.0])  # covers `near` almost entirely once in the set
    d = select_d_optimal(active, [], [near, far], threshold=5.0)
    assert [x.keep for x in d] == [False, True]


# ----------------------------------------------------------------------------- with pyace and the handler


def _frame(shift=(0.0, 0.0)):
    """A 2D LJ layer (large enough to carve from) with one squeezed pair: the hole."""
    from tests.lj import lj2d_template

    a = lj2d_template(n_side=8)
    a.positions[1] = a.positions[0] + np.array([1.55, 0.0, 0.0])
    a.positions[:, :2] += shift
    a.wrap()
    return a


def _trigger(ctx, frame, walker: int) -> list[int]:
    """Store a trigger frame (with gamma), carve it and run the embed handler; returns the pending DFT task ids."""
    from autopipe.db import Origin, Task, TaskKind, TaskState, structure_from_atoms
    from autopipe.potentials import gamma
    from autopipe.steer.handlers import embed
    from autopipe.steer.work import embed_work

    frame.arrays["gamma"] = gamma(frame, ctx.store.latest())
    with ctx.db.session() as s:
        row = structure_from_atoms(frame, Origin.md_frame, potential_version=1, info={"walker": walker})
        s.add(row)
        s.flush()
        task = ctx.new_task(TaskKind.embed, structure_id=row.id, payload={"version": 1})
        s.add(task)
        s.flush()
        tid = task.id
    with ctx.db.session() as s:
        task = s.get(Task, tid)
        s.expunge(task)
    embed.done(ctx, tid, embed_work(*embed.args(ctx, task)))  # the handler's own arguments, as the loop sends them
    with ctx.db.session() as s:
        from sqlalchemy import select

        return list(s.scalars(select(Task.id).where(Task.kind == TaskKind.dft, Task.state == TaskState.pending)))


@pytest.mark.slow
def test_two_walkers_on_equivalent_holes_send_one_dft_job_and_a_failed_one_is_sent_again(ctx):
    from sqlalchemy import select

    from autopipe.db import Candidate, CandidateStatus, Label, LabelStatus, Task, TaskState

    frame = _frame()
    from autopipe.potentials import max_gamma

    g, _ = max_gamma(frame, ctx.store.latest())
    assert g > 2 * ctx.run.otf.uncertainty_threshold  # the squeezed pair is far outside the training data
    first = _trigger(ctx, frame, walker=0)
    assert len(first) == 1
    second = _trigger(ctx, _frame(shift=(3.3, 1.7)), walker=1)  # the same hole elsewhere in the box
    assert second == first  # no new DFT job
    with ctx.db.session() as s:
        statuses = [c.status for c in s.scalars(select(Candidate).order_by(Candidate.id))]
        assert statuses == [CandidateStatus.selected, CandidateStatus.covered]
        # The first cell's DFT fails: its environment is no longer on its way to training.
        t = s.get(Task, first[0])
        t.state = TaskState.done
        s.add(Label(structure_id=t.structure_id, status=LabelStatus.failed, code="lj", error="SCF"))
    third = _trigger(ctx, _frame(shift=(-2.1, 4.0)), walker=1)
    assert len(third) == 1 and third[0] != first[0]


def test_a_trigger_on_a_cell_the_newest_version_already_knows_is_labelled_anyway(ctx):
    """Otherwise the walker waits for a retrain no label will bring, and the run stalls (MgO did)."""
    from types import SimpleNamespace

    from autopipe.steer.handlers import embed
    from tests.lj import lj2d_template

    known = SimpleNamespace(atoms=lj2d_template(), masked=[0, 1])  # a training-like liquid: low core gamma
    newest = ctx.store.latest().version
    [covered] = embed.decide(ctx, [known])  # no trigger version: plain selection
    assert not covered.keep and covered.score <= ctx.run.otf.uncertainty_threshold, covered
    [older] = embed.decide(ctx, [known], trigger_version=newest - 1)  # a newer version may cure it: wait
    assert not older.keep
    [forced] = embed.decide(ctx, [known], trigger_version=newest)
    assert forced.keep and forced.reason.startswith(f"selected anyway: v{newest} triggered here")
    assert forced.score == pytest.approx(covered.score)


def test_a_known_cell_is_not_forced_while_other_cells_are_on_their_way_to_a_retrain(ctx):
    """Then a retrain is coming and the walker will try again with it: no duplicate label."""
    from types import SimpleNamespace

    from autopipe.db import Origin, Task, TaskKind, structure_from_atoms
    from autopipe.steer.handlers import embed
    from tests.lj import lj2d_template

    known = SimpleNamespace(atoms=lj2d_template(), masked=[0, 1])
    with ctx.db.session() as s:  # a cell queued for DFT
        row = structure_from_atoms(_frame(), Origin.embedded, selected=True)
        s.add(row)
        s.flush()
        s.add(Task(kind=TaskKind.dft, executor="local", structure_id=row.id))
    [d] = embed.decide(ctx, [known], trigger_version=ctx.store.latest().version)
    assert not d.keep and d.reason.startswith("covered")
