"""The gamma threshold from a force-error target (issue 20, item 2): the pure rule on a calibration set
built so that error grows with gamma, its bounds, and its wiring (event with evidence, restore on resume)."""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.analysis.calibration import calibration_curve, gamma_edges
from autopipe.db import HeldOut
from autopipe.steer.threshold import THRESHOLD_EVENT, choose_threshold, restore_threshold, update_threshold
from tests.lj import lj2d_template
from tests.potentials.helpers import add_labelled

BOUNDS = (2.0, 10.0)


def _bins(n_structures: int = 15, per: int = 60, seed: int = 0) -> list[dict]:
    """The calibration curve of per-atom gamma in [0, 8) whose force errors spread as 0.01 + 0.02 * gamma eV/Å
    (so the RMSE at gamma g is about that: 0.07 eV/Å at gamma 3, 0.13 at gamma 6)."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0, 8, size=n_structures * per)
    errors = rng.normal(size=(len(gamma), 3)) * (0.01 + 0.02 * gamma)[:, None]
    ids = np.repeat(np.arange(n_structures), per)
    return [b.as_dict() for b in calibration_curve(gamma, errors, ids, gamma_edges(5.0))]


def test_a_lower_target_moves_the_threshold_down_a_higher_one_up():
    bins = _bins()
    down = choose_threshold(bins, 0.07, BOUNDS, current=5.0)
    up = choose_threshold(bins, 0.13, BOUNDS, current=5.0)
    assert down.changed and up.changed
    assert down.threshold < 5.0 < up.threshold
    assert down.threshold == pytest.approx(3.0, abs=0.5) and up.threshold == pytest.approx(6.0, abs=0.6)
    # The target the current threshold already meets leaves it alone (no churn on every label).
    assert not choose_threshold(bins, 0.11, BOUNDS, current=5.0).changed


def test_the_bounds_hold():
    bins = _bins()
    low = choose_threshold(bins, 0.001, BOUNDS, current=5.0)  # even gamma ~0.25 is worse: label all it allows
    high = choose_threshold(bins, 10.0, BOUNDS, current=5.0)  # far above the curve: extrapolated, then capped
    assert (low.threshold, high.threshold) == BOUNDS and low.changed and high.changed
    assert "lowest-gamma bin" in low.reason
    for target in np.geomspace(0.001, 10.0, 25):
        assert BOUNDS[0] <= choose_threshold(bins, float(target), BOUNDS, current=5.0).threshold <= BOUNDS[1]
    narrow = (4.0, 4.5)
    assert choose_threshold(bins, 0.07, narrow, current=4.25).threshold == 4.0
    assert choose_threshold(bins, 0.13, narrow, current=4.25).threshold == 4.5


def test_no_move_without_evidence():
    bins = _bins(n_structures=2)  # every bin has fewer than 3 structures
    choice = choose_threshold(bins, 0.07, BOUNDS, current=5.0)
    assert not choice.changed and choice.threshold == 5.0 and "not enough evidence" in choice.reason
    assert not choose_threshold([], 0.07, BOUNDS, current=5.0).changed


def test_the_first_crossing_counts_not_a_lucky_bin_above_it():
    # A dip at higher gamma (a bin of lucky atoms) must not lift the threshold past the bad bin at gamma 2.
    bins = [{"lo": 0.0, "hi": 1.0, "rms": 0.02, "n_structures": 5, "gamma_mean": 0.5},
            {"lo": 1.0, "hi": 3.0, "rms": 0.10, "n_structures": 5, "gamma_mean": 2.0},
            {"lo": 3.0, "hi": 5.0, "rms": 0.03, "n_structures": 5, "gamma_mean": 4.0},
            {"lo": 5.0, "hi": 7.0, "rms": 0.04, "n_structures": 5, "gamma_mean": 6.0}]
    choice = choose_threshold(bins, 0.06, (1.1, 10.0), current=5.0)
    assert choice.threshold == pytest.approx(0.5 + 0.04 / 0.08 * 1.5)


def _frames(n: int, rattle: float, seed: int):
    """``n`` 2D LJ cells with their atoms moved by ``rattle`` Å (more: higher gamma)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        at = lj2d_template(n_side=6)
        at.positions[:, :2] += rng.normal(0, rattle, size=(len(at), 2))
        out.append(at)
    return out


def test_the_loop_sets_the_threshold_records_its_evidence_and_restores_it(ctx):
    otf = ctx.run.otf
    assert update_threshold(ctx) is None  # no target: the fixed threshold stays, nothing evaluated
    ctx.run.otf = otf.model_copy(update={"target_force_error": 0.01, "threshold_bounds": BOUNDS})  # meV/Å
    # Held-out labels (probe and triggered) of v1: its error on them is far above 0.01 meV/Å.
    add_labelled(ctx.db, _frames(4, 0.08, seed=3), origin="embedded", heldout=HeldOut.probe)
    add_labelled(ctx.db, _frames(4, 0.25, seed=4), origin="embedded", heldout=HeldOut.triggered)
    add_labelled(ctx.db, _frames(3, 0.1, seed=5), origin="embedded")  # trained on: not evidence
    choice = update_threshold(ctx)
    assert choice.changed and ctx.run.otf.uncertainty_threshold == BOUNDS[0]
    ev = ctx.db.last_event(THRESHOLD_EVENT)
    assert (ev.data["old"], ev.data["new"], ev.data["version"]) == (5.0, 2.0, 1)
    assert ev.data["target"] == pytest.approx(1e-5) and ev.data["bounds"] == list(BOUNDS)
    bins = ev.data["bins"]
    assert sum(b["n_atoms"] for b in bins) == 8 * len(lj2d_template(n_side=6))  # every atom of the 8 held out
    assert all({"lo", "rms", "low", "high", "n_structures", "gamma_mean"} <= set(b) for b in bins)
    # A target far above the error: the threshold goes up to its bound, a second event.
    ctx.run.otf.target_force_error = 1e6
    assert update_threshold(ctx).changed and ctx.run.otf.uncertainty_threshold == BOUNDS[1]
    # A resumed run starts from the file's threshold and gets the last one back (the next segments use it).
    ctx.run.otf.uncertainty_threshold = 5.0
    assert restore_threshold(ctx) == BOUNDS[1] and ctx.run.otf.uncertainty_threshold == BOUNDS[1]
    ctx.run.otf.target_force_error = None  # no target: the file's threshold holds
    ctx.run.otf.uncertainty_threshold = 5.0
    assert restore_threshold(ctx) is None and ctx.run.otf.uncertainty_threshold == 5.0


def _run_file(tmp_path, otf: str, train: str = "", stop: str = "") -> str:
    from autopipe.config.run import load_run
    from autopipe.errors import ConfigError
    from tests.lj import lj_run_config

    cfg = lj_run_config("t", tmp_path, dimension=2).model_dump(mode="json", exclude_none=True)
    import yaml

    for key, extra in (("otf", otf), ("train", train), ("stop", stop)):
        if extra:
            cfg.setdefault(key, {}).update(yaml.safe_load(extra))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        load_run(path)
        return "ok"
    except ConfigError as exc:
        return str(exc)


def test_bad_input_is_one_line_at_load(tmp_path):
    ok = _run_file(tmp_path, "{target_force_error: 50}")
    assert ok == "ok"
    msg = _run_file(tmp_path, "{target_force_error: 50, probe_share: 0}", "{heldout_every: 0}")
    assert msg.count("\n") == 0 and "run.yaml: otf.target_force_error: nothing can measure it" in msg
    assert _run_file(tmp_path, "{target_force_error: 50, probe_share: 0}") == "ok"  # held-out triggered labels
    msg = _run_file(tmp_path, "{target_force_error: 50, uncertainty_threshold: 12}")
    assert msg.count("\n") == 0 and "otf.uncertainty_threshold: 12" in msg and "threshold_bounds" in msg
    msg = _run_file(tmp_path, "{threshold_bounds: [3, 2]}")
    assert msg.count("\n") == 0 and "otf.threshold_bounds" in msg
