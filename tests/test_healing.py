"""The acceptance test: the loop heals a defective 2D Lennard-Jones potential.

Real LAMMPS, real pacemaker, the real steering loop on Parsl threads; only the DFT is the
analytic LJ oracle, as the specification's integration test asks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.db import (
    Database,
    Event,
    Label,
    LabelStatus,
    Origin,
    Potential,
    Segment,
    SegmentStatus,
    Structure,
    Task,
    TaskKind,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def healed_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("heal") / "run"
    out = subprocess.run(
        [str(BIN / "autopipe-steer"), "--site", str(ROOT / "configs/local.yaml"),
         "--run", str(ROOT / "configs/runs/lj2d-heal.yaml"), "--workdir", str(workdir), "--no-live"],
        capture_output=True, text=True, timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir, out.stdout


def test_the_loop_detects_embeds_labels_retrains_and_publishes(healed_run):
    workdir, stdout = healed_run
    db = Database(f"sqlite:///{workdir / 'autopipe.db'}")
    threshold = 5.0
    with db.session() as s:
        # 1. gamma crossed the threshold during a segment
        triggered = s.scalars(select(Segment).where(Segment.status == SegmentStatus.triggered)
                              .order_by(Segment.id)).all()
        assert triggered and triggered[0].max_gamma > threshold
        assert triggered[0].potential_version == 1
        # 2. the trigger frame was embedded; the sub-cell carries a force mask and reached the DFT queue
        frame = s.scalars(select(Structure).where(Structure.origin == Origin.md_frame,
                                                  Structure.segment_id == triggered[0].id)).one()
        assert frame.max_gamma > threshold and len(frame.gamma) == frame.n_atoms
        sub = s.scalars(select(Structure).where(Structure.parent_id == frame.id)).first()
        assert sub.origin is Origin.embedded and sub.selected
        assert sub.force_mask and 0 not in sub.force_mask  # the centre atom is trained on
        assert sub.n_atoms < frame.n_atoms
        dft = s.scalars(select(Task).where(Task.kind == TaskKind.dft, Task.structure_id == sub.id)).one()
        # 3. the oracle's label was stored, for every atom (masked ones too)
        label = s.scalars(select(Label).where(Label.structure_id == sub.id)).one()
        assert label.status is LabelStatus.done and label.code == "lj"
        assert label.forces.shape == (sub.n_atoms, 3)
        # 4. training started by itself after the label
        assert s.scalars(select(Event).where(Event.kind == "train", Event.created_at >= label.created_at)).first()
        assert dft.finished_at <= s.scalars(select(Potential).where(Potential.version == 2)).one().created_at
        # 5. a new version with the defective one as its ancestor
        pots = {p.version: p for p in s.scalars(select(Potential))}
        assert pots[1].name == "lj_defective" and pots[1].parent_version is None
        assert pots[2].name == "lj_healed_v2" and pots[2].parent_version == 1
        newest = max(pots)
        v = newest
        while pots[v].parent_version is not None:
            v = pots[v].parent_version
        assert v == 1
        stop = s.scalars(select(Event).where(Event.kind == "stop")).one()
    assert stop.message.startswith("converged"), stop.message


def test_the_healed_potential_survives_the_same_collisions(healed_run, capsys):
    from autopipe.replay import compare, describe

    workdir, _ = healed_run
    defective, healed = compare(workdir)
    with capsys.disabled():
        print("\n  " + describe(defective, 5.0) + "\n  " + describe(healed, 5.0))
    assert defective.version == 1 and healed.version > 1
    assert defective.status == "triggered" and defective.max_gamma > 5.0
    # The proof: from the same start, through the collisions the walker met before the loop
    # stopped as converged (at step `reached`), no trigger and bounded energy. Past `reached` the
    # replay is MD the loop never vouched for (it stops on convergence before max_md_steps); the
    # fresh-seed test below is the evidence for new ground.
    db = Database(f"sqlite:///{workdir / 'autopipe.db'}")
    with db.session() as s:
        first_walker = min(s.scalars(select(Segment.walker_id)))
        reached = max(s.scalars(select(Segment.end_step).where(Segment.walker_id == first_walker,
                                                               Segment.status == SegmentStatus.completed)))
    assert healed.steps >= reached > 0
    if healed.status == "completed":
        assert healed.steps == healed.planned_steps and healed.max_gamma <= 5.0
    assert healed.energy_drift_per_atom < 0.01  # eV/atom over up to 2 ps
    # Force error on the collision frames, against the oracle: far below the defective one.
    assert np.isfinite(healed.collision_force_rmse)
    assert healed.collision_force_rmse < 0.3 * defective.collision_force_rmse


def test_the_healed_potential_also_does_better_from_a_start_the_loop_never_saw(healed_run, capsys):
    """Held-out evidence, one fresh seed (about 15 s): the replay above is in-sample."""
    from autopipe.replay import compare_fresh

    workdir, _ = healed_run
    fresh = compare_fresh(workdir, n_seeds=1)
    with capsys.disabled():
        print("\n  " + "\n  ".join(fresh.describe()))
    defective, healed = fresh.scores
    assert healed.version > defective.version == 1
    # The defective potential trips within a few dozen steps of any hot start (its close contacts are
    # unknown to it); the healed one runs far longer from the same start.
    assert defective.triggers == 1 and defective.mean_steps < 100 < healed.mean_steps
    # On the closest contacts of these two trajectories, labelled by the oracle: at least 2x better
    # (3x on average over 4 seeds when this was written, 6x in-sample).
    assert healed.n_frames >= 3 and healed.force_rmse < 0.5 * defective.force_rmse


def test_report_and_status_rebuild_from_the_database(healed_run):
    import json

    workdir, _ = healed_run
    out = subprocess.run([str(BIN / "autopipe"), "report", "--workdir", str(workdir)],
                         capture_output=True, text=True, check=True)
    page = (workdir / "report" / "index.html").read_text()
    for png in ("gamma.png", "learning.png", "subcell.png"):
        assert (workdir / "report" / png).stat().st_size > 10_000
        assert png in page
    assert "report written" in out.stdout
    st = json.loads(subprocess.run([str(BIN / "autopipe"), "status", "--workdir", str(workdir), "--json"],
                                   capture_output=True, text=True, check=True).stdout)
    assert st["triggers"] >= 1 and len(st["potentials"]) >= 2
    assert st["potentials"][1]["parent_version"] == 1
    # Rewind to the last good check: at most one check interval (5 steps) of MD lost per trigger.
    lost = st["discarded_steps_per_trigger"]
    assert len(lost) == st["triggers"] and 0 <= max(lost) <= 5, lost
    assert st["candidates"]["selected"] >= st["triggers"] - 1
