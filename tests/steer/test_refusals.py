"""A carve that cannot be made is a recorded refusal: the next centre, the whole frame, or the
walker goes on (and is retired after its failure budget); never a retry storm or a stall."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.config.run import EmbeddingConfig
from autopipe.steer.work import embed_work
from tests.lj import lj2d_template

EMB = EmbeddingConfig(core_radius=3.0, buffer=5.0, min_distance=0.8)  # box 16 Å


def _layer(n_side=8):
    a = lj2d_template(n_side=n_side)  # 19.2 x 33.3 Å: larger than the box
    a.arrays["gamma"] = np.ones(len(a))
    return a


def test_a_centre_whose_core_holds_a_close_contact_is_refused_and_the_next_one_is_carved():
    a = _layer()
    a.positions[1] = a.positions[0] + [0.5, 0.0, 0.0]  # closer than min_distance, inside atom 0's core
    far = int(np.argmax(np.linalg.norm(a.positions - a.positions[0], axis=1) > 10.0))
    a.arrays["gamma"][[0, 1, far]] = [9.0, 8.0, 7.0]
    out = embed_work(a, EMB, threshold=5.0, max_extractions=1)
    assert [(c.center, c.refused is not None) for c in out] == [(0, True), (1, True), (far, False)]
    assert "closer than min_distance" in out[0].refused
    assert out[2].atoms is not None and not out[2].whole_frame and 0 not in out[2].masked


def test_a_frame_no_bigger_than_the_box_is_labelled_whole():
    a = _layer(n_side=4)  # 9.6 x 16.6 Å = 160 Å² < (16 Å)²: the box would hold images of its atoms
    a.arrays["gamma"][3] = 9.0
    [c] = embed_work(a, EMB, threshold=5.0, max_extractions=2)
    assert c.whole_frame and c.center == 3 and len(c.atoms) == len(a) and not c.masked
    assert "gamma" not in c.atoms.arrays  # the label is of the frame, not of its grades
    always = EMB.model_copy(update={"whole_frame": "always"})
    [c] = embed_work(_layer(), always, threshold=5.0, max_extractions=2)
    assert c.whole_frame and len(c.atoms) == len(_layer())


def test_refusals_are_bounded():
    a = _layer()
    a.positions[:, 0] *= 0.02  # every atom in a contact with its neighbours
    a.arrays["gamma"][:] = 9.0
    out = embed_work(a, EMB, threshold=5.0, max_extractions=1)
    assert len(out) == 8 and all(c.refused for c in out)


@pytest.mark.slow
def test_a_walker_whose_frame_cannot_be_carved_goes_on_and_is_retired_after_its_budget(ctx):
    from autopipe.db import Candidate, CandidateStatus, Event, Walker, WalkerStatus
    from tests.steer.test_selection import _trigger

    with ctx.db.session() as s:
        s.add(Walker(index=0, status=WalkerStatus.waiting, step=100, checkpoint="ck", waiting_for_version=1))
    a = lj2d_template(n_side=8)
    a.positions[1] = a.positions[0] + [0.3, 0.0, 0.0]  # no trusted core can hold this pair
    ctx.run.embedding = ctx.run.embedding.model_copy(update={"min_distance": 0.8})
    ctx.run.otf = ctx.run.otf.model_copy(update={"uncertainty_threshold": 1e6})  # only the top atom is a centre
    for attempt in (1, 2, 3):
        assert _trigger(ctx, a.copy(), walker=0) == []  # nothing to label
        with ctx.db.session() as s:
            w = s.scalars(select(Walker)).one()
            assert w.failures == attempt and "no sub-cell could be carved" in w.error
            expected = WalkerStatus.finished if attempt == ctx.run.faults.segment_failures else WalkerStatus.running
            assert w.status is expected, w.note
    with ctx.db.session() as s:
        assert "retired after 3" in s.scalars(select(Walker)).one().note
        assert {c.status for c in s.scalars(select(Candidate))} == {CandidateStatus.refused}
        assert len(list(s.scalars(select(Event).where(Event.kind == "carve_refused")))) == 3


def test_whole_frame_when_the_cell_holds_about_as_many_atoms_as_the_frame():
    """Atom counts, not volumes: a 10 x 10 x 60 Å parent has more volume than an 18 Å cube (5,832 Å³),
    yet the cube, wrapping the 10 Å axes, holds about as many atoms as the parent (issue 23)."""
    from ase import Atoms

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(24), indexing="ij"), -1).reshape(-1, 3)
    long = Atoms("Ar" * len(grid), positions=(grid + 0.5) * 2.5 + rng.normal(0, 0.05, grid.shape),
                 cell=[10.0, 10.0, 60.0], pbc=True)
    long.arrays["gamma"] = np.ones(len(long))
    long.arrays["gamma"][5] = 9.0
    cube = EmbeddingConfig(core_radius=3.0, buffer=6.0, min_distance=0.5)  # 18 Å box
    [c] = embed_work(long, cube, threshold=5.0, max_extractions=1)
    assert c.whole_frame and len(c.atoms) == len(long) and "would hold" in c.note
    # The same frame carved with a box that holds fewer atoms than the threshold fraction is carved.
    small = EmbeddingConfig(core_radius=2.0, buffer=3.0, min_distance=0.5)  # 10 Å box: ~1/6 of the atoms
    [c] = embed_work(long, small, threshold=5.0, max_extractions=1)
    assert not c.whole_frame and len(c.atoms) < 0.75 * len(long)
    strict = small.model_copy(update={"whole_frame_fraction": 0.1})
    [c] = embed_work(long, strict, threshold=5.0, max_extractions=1)
    assert c.whole_frame


def test_commensurate_carving_in_the_embed_step():
    from ase.build import bulk

    from autopipe.carving.lattice import ReferenceLattice

    unit = bulk("Cu", "fcc", a=3.61, cubic=True)
    parent = unit.repeat((5, 5, 5))
    parent.arrays["gamma"] = np.ones(len(parent))
    parent.arrays["gamma"][17] = 9.0
    emb = EmbeddingConfig(core_radius=2.6, buffer=2.0, strategy="commensurate", kpoints="fold")
    [c] = embed_work(parent, emb, threshold=5.0, max_extractions=1, lattice=ReferenceLattice.from_atoms(unit),
                     kpoint_settings=(0.6, 9.5))
    assert not c.whole_frame and len(c.atoms) == 4 * 3**3  # 3x3x3 conventional cells of 10.83 Å
    assert c.atoms.info["embedding_strategy"] == "commensurate"
    assert c.atoms.info["embedding_kpts"] == [5, 5, 5] and c.atoms.info["embedding_kpoint_rule"] == "fold"
    # A frame smaller than the commensurate cell is labelled whole, with the reason.
    small = unit.repeat((2, 2, 2))
    small.arrays["gamma"] = np.full(len(small), 9.0)
    [c] = embed_work(small, emb, threshold=5.0, max_extractions=1, lattice=ReferenceLattice.from_atoms(unit))
    assert c.whole_frame and "whole frame" in c.note
