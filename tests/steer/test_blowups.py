"""A segment that blows up between two gamma checks becomes data, never a stall (real LAMMPS,
pacemaker and the loop on threads; the LJ oracle labels)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from autopipe.config import load_run, load_site
from autopipe.db import Candidate, CandidateStatus, Database, Event, Label, LabelStatus, Structure
from autopipe.md import lammps_has_ml_pace
from autopipe.steer.loop import run_loop
from tests.steer.test_loop import ROOT, short_run

pytestmark = pytest.mark.slow


def test_a_blow_up_between_checks_is_labelled_and_a_limit_below_physics_stops_the_run(tmp_path):
    # 4 eV/Å is below the forces of this 2500 K liquid: the first segment "blows up" at step 28,
    # between the checks at 25 and 50, with gamma below the threshold all the way (confidently wrong).
    run = load_run(short_run(tmp_path, md={"max_force": 4.0}, otf={"check_frequency": 25},
                             stop={"max_md_steps": 300, "max_trainings": 3}))
    outcome = run_loop(load_site(ROOT / "configs/local.yaml"), run, live=False)
    db = Database(run.database_url())
    with db.session() as s:
        trigger = s.scalars(select(Event).where(Event.kind == "trigger").order_by(Event.id)).first()
        assert "blew up at step 28" in trigger.message and "confidently wrong" in trigger.message
        # The frame where forces ran away (callback route), or the last one LAMMPS wrote before it stopped.
        assert trigger.data["step"] == (27 if lammps_has_ml_pace() else 28) and trigger.data["rewind_step"] == 25
        frame = s.get(Structure, trigger.data["structure_id"])
        assert frame.info["label_anyway"]
        cand = s.scalars(select(Candidate).where(Candidate.frame_id == frame.id)).one()
        assert cand.status is CandidateStatus.selected  # labelled although its gamma is low
        label = s.scalars(select(Label).where(Label.structure_id == cand.structure_id)).one()
        assert label.status is LabelStatus.done
    # The label shows forces above the limit: retraining cannot help, and the run says why it stops.
    assert outcome.stopped_because.startswith("md.max_force (4 eV/Å) is below the forces the labeller gives")
    assert "stalled" not in outcome.stopped_because
