"""A two-element campaign through the real loop: Cu3Ni with ASE's EMT as the labeller.

configs/runs/cuni-heal.yaml run small (one retrain): version 1 is fitted to ordered L1_2 and
random Cu-Ni cells without a vacancy or a pair closer than 2.3 Å; the MD of two walkers is a hot
random alloy with a vacancy. Real LAMMPS, real pacemaker, the steering loop on Parsl threads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from autopipe.db import Database, Label, LabelStatus, Origin, Potential, Segment, SegmentStatus, Structure

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN = ROOT / "configs/runs/cuni-heal.yaml"
CU, NI = 29, 28
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("binary")
    data = yaml.safe_load(RUN.read_text())
    # Small: stop after the first retrain is published (the run file goes on to convergence). The
    # wall-time budget is a safety net only: on a loaded machine the first fit alone can take minutes.
    data["stop"].update(max_md_steps=400, max_trainings=1, max_walltime=1500)
    data["initial_potential"]["structure"]["path"] = str(RUN.parent / data["initial_potential"]["structure"]["path"])
    run_file = base / "cuni-small.yaml"
    run_file.write_text(yaml.safe_dump(data))
    workdir = base / "run"
    out = subprocess.run(
        [str(BIN / "autopipe-steer"), "--site", str(ROOT / "configs/local.yaml"), "--run", str(run_file),
         "--workdir", str(workdir), "--no-live"],
        capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir


def test_both_elements_are_trained_on_and_a_retrain_is_published(binary_run):
    from autopipe.layout import RunLayout
    from autopipe.potentials.imported import validate_potential_file

    db = Database(f"sqlite:///{binary_run / 'autopipe.db'}")
    with db.session() as s:
        trained = s.scalars(select(Structure).join(Label, Label.structure_id == Structure.id).where(
            Label.status == LabelStatus.done, Structure.heldout.is_(None))).all()
        initial = {z for st in trained if st.origin is Origin.generated for z in np.unique(st.numbers)}
        carved = {z for st in trained if st.origin is Origin.embedded for z in np.unique(st.numbers)}
        assert initial == carved == {CU, NI}
        pots = {p.version: p for p in s.scalars(select(Potential))}
        first = s.scalars(select(Segment).where(Segment.status == SegmentStatus.triggered)
                          .order_by(Segment.id)).first()
        assert first is not None and first.potential_version == 1 and first.max_gamma > 4.0
    assert len(pots) >= 2 and pots[2].parent_version == 1
    assert pots[2].n_train > pots[1].n_train
    for p in pots.values():
        validate_potential_file(RunLayout(binary_run).potentials / p.directory / p.files["yaml"], ["Cu", "Ni"])


def test_carved_cells_keep_each_core_atoms_element(binary_run):
    db = Database(f"sqlite:///{binary_run / 'autopipe.db'}")
    with db.session() as s:
        cells = s.scalars(select(Structure).where(Structure.origin == Origin.embedded)).all()
        assert cells
        n_carved = 0
        for cell in cells:
            parent = s.get(Structure, cell.parent_id)
            core = np.setdiff1d(np.arange(cell.n_atoms), cell.force_mask or [])
            assert cell.center_index in cell.parent_index[core]  # the trigger atom (an index in the frame)
            assert np.array_equal(cell.numbers[core], parent.numbers[cell.parent_index[core]])
            n_carved += cell.n_atoms < parent.n_atoms
        assert n_carved >= 1  # a real carve, not the whole frame


def test_the_report_and_the_database_give_gamma_per_element(binary_run):
    from autopipe.analysis.element_gamma import trigger_gamma

    rows = trigger_gamma(Database(f"sqlite:///{binary_run / 'autopipe.db'}"))
    assert rows and all(set(r.per_element) == {"Cu", "Ni"} for r in rows)
    assert max(max(r.per_element.values()) for r in rows if r.version == 1) > 4.0
    subprocess.run([str(BIN / "autopipe"), "report", "--workdir", str(binary_run)], capture_output=True, text=True,
                   check=True)
    page = (binary_run / "report" / "index.html").read_text()
    assert "Extrapolation grade per element at each trigger" in page
    assert page.index("max γ Cu") < page.index("max γ Ni")
