"""Per-element extrapolation grade: from the trigger frames' per-atom gamma into the report."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from autopipe.analysis.element_gamma import max_gamma_per_element, trigger_gamma
from autopipe.db import Database, HeldOut, Origin, Segment, Walker, structure_from_atoms


def test_each_element_gets_the_largest_gamma_of_its_own_atoms():
    z = [29, 28, 29, 28, 29]
    g = [1.0, 7.5, 2.5, 0.5, 2.0]
    assert max_gamma_per_element(z, g) == {"Cu": 2.5, "Ni": 7.5}
    with pytest.raises(ValueError, match="5 atomic numbers but 4 gamma"):
        max_gamma_per_element(z, g[:4])


def _frame(gamma_ni: float, gamma_cu: float):
    atoms = bulk("Cu", "fcc", a=3.56, cubic=True)
    atoms.symbols = ["Ni", "Cu", "Cu", "Cu"]
    atoms.arrays["gamma"] = np.array([gamma_ni, gamma_cu, 0.1, 0.2])
    return atoms


def _segment(s, walker: int, number: int, version: int, start_step: int) -> int:
    """A walker and one of its segments in session ``s``; the segment's id."""
    w = Walker(index=walker)
    s.add(w)
    s.flush()
    seg = Segment(walker_id=w.id, number=number, potential_version=version, start_step=start_step)
    s.add(seg)
    s.flush()
    return seg.id


def test_trigger_frames_give_rows_per_walker_and_the_report_shows_both_elements(tmp_path):
    from autopipe.report import element_gamma_section

    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    with db.session() as s:
        seg = _segment(s, walker=1, number=3, version=2, start_step=100)
        s.add(structure_from_atoms(_frame(6.0, 1.5), Origin.md_frame, segment_id=seg, potential_version=2,
                                   info={"step": 140}))
        # A probe frame is an MD frame that did not trigger: not a row of the table.
        s.add(structure_from_atoms(_frame(9.0, 9.0), Origin.md_frame, segment_id=seg, heldout=HeldOut.probe))
        s.commit()
    rows = trigger_gamma(db)
    assert len(rows) == 1
    r = rows[0]
    assert (r.walker, r.segment, r.step, r.version) == (1, 3, 140, 2)
    assert r.per_element == {"Ni": 6.0, "Cu": 1.5}
    page = element_gamma_section(db, threshold=5.0, elements=["Cu", "Ni"])
    assert page.index("max γ Cu") < page.index("max γ Ni")  # the run's order of elements
    assert "<td>1.50</td><td><b>6.00</b></td>" in page  # Ni above the threshold, in bold
    assert "Ni: largest over all triggers 6.00, the frame's largest in 1 of 1" in page
    assert "9.00" not in page


def test_no_trigger_frame_no_section(tmp_path):
    from autopipe.report import element_gamma_section

    assert element_gamma_section(Database(f"sqlite:///{tmp_path / 'a.db'}"), 5.0) == ""


def test_a_frame_carved_on_the_md_worker_gives_a_partial_row(tmp_path):
    """A large trigger frame is stored only as its compact record (the atoms near the centres):
    its row is in the table, marked partial, with the maxima over the kept atoms."""
    from autopipe.carving.record import frame_record
    from autopipe.report import element_gamma_section

    frame = _frame(6.0, 1.5).repeat((3, 3, 3))  # the Ni at index 0 is the most uncertain atom
    frame.info["step"] = 220
    rec = frame_record(frame, [0], radius=2.6, threshold=5.0)
    assert len(rec) < len(frame)
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    with db.session() as s:
        seg = _segment(s, walker=0, number=1, version=1, start_step=200)
        s.add(structure_from_atoms(rec, Origin.frame_record, segment_id=seg, potential_version=1,
                                   info=dict(rec.info)))
        s.commit()
    rows = trigger_gamma(db)
    assert len(rows) == 1 and rows[0].partial and rows[0].step == 220
    assert rows[0].per_element["Ni"] == 6.0
    assert "v1*" in element_gamma_section(db, threshold=5.0, elements=["Cu", "Ni"])
