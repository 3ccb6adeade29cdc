"""The MgO-vacancy example, reduced to one label and one retrain: a compound with real pw.x.

The run file is examples/mgo-vacancy/run.yaml (the user's potential and data imported, the O
vacancy at 2000 K, carved cells neutralised under the charge policy) with one walker, one
retrain, a 63-atom parent and a smaller carve (a cube, core 1.0 Å, buffer 1.5 Å: 5 Å, about
ten atoms, which pw.x labels in seconds). Most such cubes around an atom of the 63-atom parent hold one Mg or
O too many (formal charge ±2), so the label the run sends is a cell the policy changed.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.db import Candidate, Database, Label, LabelStatus, Origin, Potential, Structure
from tests.campaign_util import ROOT, reduced_run, steer

RUN = ROOT / "examples/mgo-vacancy/run.yaml"
pytestmark = pytest.mark.slow


def _smaller_carve(data: dict) -> None:
    data["embedding"].update(strategy="cube", core_radius=1.0, buffer=1.5, min_distance=1.2)


def test_trigger_neutralised_carve_pwx_label_and_retrain(tmp_path):
    workdir = tmp_path / "run"
    # 63 atoms (seed 3 removes an O here too)
    stdout = steer(reduced_run(RUN, tmp_path, repeat=[2, 2, 2], max_md_steps=300, edit=_smaller_carve), workdir)
    db = Database(f"sqlite:///{workdir / 'autopipe.db'}")
    with db.session() as s:
        new = list(s.scalars(select(Label).where(Label.code != "imported").order_by(Label.id)))
        assert new, stdout[-3000:]
        lab = new[0]
        assert lab.status is LabelStatus.done, lab.error
        cell = s.get(Structure, lab.structure_id)
        info = cell.info or {}
        # A carved cell, not the frame: the 63-atom parent is much bigger than the 5 Å cube.
        assert cell.origin == Origin.embedded and cell.n_atoms < 20 and any(cell.force_mask)
        # The policy's decision is on the row: it removed masked atoms, and the cell pw.x labelled is
        # neutral (Mg +2, O -2) with an even electron count (Mg 2, O 6 valence electrons).
        assert info.get("embedding_charge_policy") == "neutralise", info
        assert info["embedding_charge_decision"].startswith("neutralised: removed"), info
        assert info["embedding_charge_removed"] and info["embedding_formal_charge"] == 0.0
        assert info["embedding_electrons"] % 2 == 0
        assert lab.code == "espresso" and lab.forces.shape == (cell.n_atoms, 3)
        assert np.all(np.isfinite(lab.forces)) and lab.walltime > 0
        assert s.scalars(select(Candidate).where(Candidate.structure_id == cell.id)).first() is not None
        pots = {p.version: p for p in s.scalars(select(Potential))}
        assert pots[2].parent_version == 1 and lab.id <= pots[2].last_label_id
