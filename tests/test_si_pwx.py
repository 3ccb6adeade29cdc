"""Real DFT: one full loop iteration on bulk silicon with pw.x (trigger, carving budget, labels, retrain,
hot-swap). The carving budget labels the first trigger frame whole and a carved cube of it beside it,
so the carve's accuracy against pw.x on the whole frame is measured by the loop itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.db import Database, Event, Label, LabelStatus, Origin, Potential, Segment, Structure

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def test_one_iteration_with_pwx_measures_a_carve_and_publishes_a_new_version(tmp_path):
    workdir = tmp_path / "si"
    out = subprocess.run(
        [str(BIN / "autopipe-steer"), "--site", str(ROOT / "configs/local.yaml"),
         "--run", str(ROOT / "configs/runs/si-pwx.yaml"), "--workdir", str(workdir), "--no-live"],
        capture_output=True, text=True, timeout=2400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    db = Database(f"sqlite:///{workdir / 'autopipe.db'}")
    with db.session() as s:
        sub = s.scalars(select(Structure).where(Structure.origin == Origin.embedded, Structure.selected.is_(True))
                        .order_by(Structure.id)).first()
        assert sub is not None, out.stdout[-3000:]
        label = s.scalars(select(Label).where(Label.structure_id == sub.id)).one()
        assert label.status is LabelStatus.done, label.error
        assert label.code == "espresso"
        assert label.parameters["input_data"]["system"]["ecutwfc"] == 12.0  # the exact parameters are recorded
        assert label.parameters["pseudopotentials"] == {"Si": "Si.pz-vbc.UPF"}
        assert label.forces.shape == (sub.n_atoms, 3) and label.stress.shape == (6,)
        assert -120 < label.energy / sub.n_atoms < -90  # eV/atom: Si with the pz-vbc pseudopotential
        assert sub.force_mask and len(sub.force_mask) < sub.n_atoms
        pots = {p.version: p for p in s.scalars(select(Potential))}
        assert pots[2].parent_version == 1 and pots[2].last_label_id >= label.id
        # hot-swap: a segment ran with the new version after the label
        assert s.scalars(select(Segment).where(Segment.potential_version == 2)).first() is not None
        core = np.setdiff1d(np.arange(sub.n_atoms), sub.force_mask)
        core_in_parent, core_forces = np.asarray(sub.parent_index)[core], label.forces[core]
        # The carving budget: the frame itself was labelled whole (a training label), the cube beside it
        # as a measurement (zero weight), and the decision recorded with its numbers.
        assert sub.info["calibration_for"] == sub.parent_id and sub.energy_weight == 0.0
        whole = s.scalars(select(Label).where(Label.structure_id == sub.parent_id)).one()
        assert whole.status is LabelStatus.done and whole.forces.shape == (64, 3)
        decision = s.scalars(select(Event).where(Event.kind == "carve_budget")).one()
        [measured] = decision.data["measured"]
        assert measured["strategy"] == "cube" and measured["cost"] < measured["frame_cost"]
        assert decision.data["chosen"] in ("cube", "whole")
    db.dispose()
    # Accuracy: the carved cell's core forces against pw.x on the whole 64-atom frame it was carved
    # from, same parameters (both at the Gamma point), as the budget measured them.
    # Measured with the 10 Å cube on two trigger frames: errors 0.15-0.72 eV/Å on the 5 core atoms
    # (|F| 0.6-1.8 eV/Å), RMS 0.37 and 0.41 of the RMS force: the cube's seams are close and pw.x is
    # not short-ranged. A wrong atom map would give about 1.4 times the RMS force (uncorrelated
    # forces), a lost sign 2, no forces 1.
    reference = np.asarray(whole.forces)[core_in_parent]
    error = np.linalg.norm(core_forces - reference, axis=1)
    assert error.max() < 1.2, error  # eV/Å
    assert np.sqrt(np.mean(error**2)) < 0.6 * np.sqrt(np.mean(np.sum(reference**2, axis=1))), error
    rms = float(np.sqrt(np.mean(error**2)))
    assert abs(rms - measured["core_rms"]) < 1e-9  # the budget measured what this test measures
