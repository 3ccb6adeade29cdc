"""A walker's segment: rewind to the last good check, blow-ups probed into triggers.

The scenario: the 108-atom LJ crystal started at 10,000 K melts at once; along this
trajectory (seed 4) the largest per-atom gamma passes 2.7 at step 8, 3.9 at step 9 and
5.1 at step 10, and the largest force reaches 20.05 eV/Å at step 9 (the first above 19.5).
"""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.md import BlowUpLimits, initial_state, run_segment, run_walker_segment
from autopipe.md.walk import last_good_check
from tests.md.conftest import fcc, md_config, otf_config, pyace_results

HOT = dict(temperature=10000.0, segment_steps=30, seed=4)
TIGHT = BlowUpLimits(max_force=19.5)  # eV/Å: "blows up" at step 9


@pytest.fixture(params=["external", "native"])
def route(request) -> str:
    return request.param


def test_a_trigger_resumes_from_the_last_check_below_the_threshold(pot, tmp_path, route):
    md, otf = md_config(**HOT), otf_config(uncertainty_threshold=5.0, check_frequency=5)
    start = initial_state(fcc(), md)
    res = run_walker_segment(start, pot, md, otf, workdir=tmp_path, route=route)
    assert res.status == "triggered" and res.end_step == 10 and res.note is None
    assert res.rewind_state.step == 5 == last_good_check(res, 5.0)
    assert res.end_step - res.rewind_state.step <= otf.check_frequency  # at most one check interval lost
    # The rewind state is the trajectory's own state at step 5, velocities included.
    ref = run_segment(start, pot, md, otf, workdir=tmp_path / "ref", n_steps=5, route=route).final_state
    assert np.array_equal(res.rewind_state.atoms.positions, ref.atoms.positions)
    assert np.array_equal(res.rewind_state.atoms.get_momenta(), ref.atoms.get_momenta())


def test_a_trigger_at_the_first_check_resumes_at_the_start(pot, tmp_path, route):
    md, otf = md_config(**HOT), otf_config(uncertainty_threshold=5.0, check_frequency=10)
    start = initial_state(fcc(), md)
    res = run_walker_segment(start, pot, md, otf, workdir=tmp_path, route=route)
    assert res.status == "triggered" and res.end_step == 10
    assert res.rewind_state is start  # nothing between the start and the trigger was checked
    assert not (tmp_path / "rewind").exists()  # and nothing was re-run


def test_a_blow_up_between_checks_is_found_again_as_the_first_gamma_crossing(pot, tmp_path, route):
    md, otf = md_config(**HOT), otf_config(uncertainty_threshold=2.5, check_frequency=20)
    start = initial_state(fcc(), md)
    plain = run_segment(start, pot, md, otf, workdir=tmp_path / "plain", limits=TIGHT, route=route)
    assert plain.status == "failed" and plain.failure == "blowup" and plain.failed_step == 9
    res = run_walker_segment(start, pot, md, otf, workdir=tmp_path / "walk", limits=TIGHT, route=route)
    assert res.status == "triggered" and res.end_step == 8 and not res.label_anyway
    assert "blew up at step 9 between two checks" in res.note and "first at step 8" in res.note
    g = res.trigger_frame.arrays["gamma"]
    assert g.max() > 2.5 and res.trigger_atom == int(np.argmax(g))
    assert np.allclose(pyace_results(res.trigger_frame, pot)["gamma"], g, rtol=1e-8, atol=1e-8)
    assert res.rewind_state.step == 7  # the probe checked every step


def test_a_confidently_wrong_blow_up_labels_the_frame_where_it_blew_up(pot, tmp_path, route):
    md, otf = md_config(**HOT), otf_config(uncertainty_threshold=5.0, check_frequency=20)
    start = initial_state(fcc(), md)
    res = run_walker_segment(start, pot, md, otf, workdir=tmp_path, limits=TIGHT, route=route)
    # The frame where forces ran away (callback route), or the last one LAMMPS wrote before it stopped (native).
    step = 9 if route == "external" else 8
    assert res.status == "triggered" and res.end_step == step and res.error is None and res.label_anyway
    assert "confidently wrong" in res.note and "blew up at step 9" in res.note
    g = res.trigger_frame.arrays["gamma"]
    assert g.max() < 5.0 and res.trigger_atom == int(np.argmax(g))
    assert res.trigger_frame.info["step"] == step
    assert np.allclose(pyace_results(res.trigger_frame, pot)["gamma"], g, rtol=1e-8, atol=1e-8)
    assert res.rewind_state is start  # the only check below the threshold before it is the start


def test_errors_that_are_not_blow_ups_stay_failures(pot, tmp_path, monkeypatch):
    # A broken evaluator or a LAMMPS input error is not physics: nothing is re-run.
    import autopipe.md.walk as walk
    from autopipe.md import SegmentResult

    md, start = md_config(**HOT), initial_state(fcc(), md_config(**HOT))
    calls = []
    failed = SegmentResult(status="failed", final_state=start, start_step=0, end_step=0, max_gamma=float("nan"),
                           gamma_trace=np.zeros((0, 2)), error="LAMMPS error: Unknown pair style", failure="error")
    monkeypatch.setattr(walk, "run_segment", lambda *a, **k: calls.append(k) or failed)
    assert run_walker_segment(start, pot, md, otf_config(), workdir=tmp_path) is failed
    assert len(calls) == 1


@pytest.mark.parametrize("trace, end, expected", [
    ([(0, 1.0), (5, 2.0), (10, 9.0)], 10, 5),
    ([(0, 9.0)], 0, 0),
    ([(100, 1.0), (110, 1.2), (120, 1.1), (130, 7.0)], 130, 120),
])
def test_last_good_check(trace, end, expected):
    from autopipe.md import SegmentResult

    res = SegmentResult(status="triggered", final_state=None, start_step=trace[0][0], end_step=end, max_gamma=9.0,
                        gamma_trace=np.array(trace, dtype=float))
    assert last_good_check(res, 5.0) == expected
