"""The accuracy stop rule (issue 20, item 5): converged when the probe's force error is below the target at
the stated confidence and no walker triggered for N segments; and status/report show what it reads."""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.analysis.calibration import overall, upper_bound
from autopipe.config.run import AccuracyStop, StopConfig
from autopipe.db import HeldOut, WalkerStatus
from autopipe.steer import stopping
from autopipe.steer.view import ProbeError, RunView, WalkerView

QUIET = WalkerView(WalkerStatus.running, 800, 3)
NOISY = WalkerView(WalkerStatus.running, 800, 2)
STOP = StopConfig(accuracy=AccuracyStop(force_error=100.0, quiet_segments=3, min_labels=5))


def view(probe: ProbeError | None, walkers=(QUIET, QUIET), newest: int = 2) -> RunView:
    return RunView(newest_version=newest, walkers=walkers, probe_error=probe)


def test_the_rule_fires_only_on_a_measured_bound_below_target_and_quiet_walkers():
    good = ProbeError(version=2, rms=0.06, upper=0.09, confidence=0.95, n_structures=8)
    assert stopping.accurate(view(None), STOP) is None  # the probe has no label yet
    msg = stopping.accurate(view(good), STOP)
    assert msg.startswith("converged: v2's force error on 8 probe structures is 60.0 meV/Å, below 100 at 95 %")
    assert stopping.stop_reason(view(good), STOP) == msg
    assert stopping.accurate(view(good, walkers=(QUIET, NOISY)), STOP) is None  # a walker triggered lately
    assert stopping.accurate(view(ProbeError(2, 0.06, 0.11, 0.95, 8)), STOP) is None  # mean below, bound above
    assert stopping.accurate(view(ProbeError(2, 0.06, 0.09, 0.95, 4)), STOP) is None  # too few probe labels
    assert stopping.accurate(view(ProbeError(2, 0.06, None, 0.95, 8)), STOP) is None  # no interval
    assert stopping.accurate(view(ProbeError(2, 0.06, 0.09, 0.9, 8)), STOP) is None  # bound at another confidence
    assert stopping.accurate(view(good, newest=3), STOP) is None  # the served version is not scored yet
    assert stopping.accurate(view(good), StopConfig()) is None  # rule off
    assert stopping.accurate(view(good, walkers=()), STOP) is None


def test_the_upper_bound_is_one_sided_at_the_stated_confidence():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(10), 30)
    errors = rng.normal(size=(300, 3)) * np.repeat(np.geomspace(0.03, 0.3, 10), 30)[:, None]
    up95, up80 = upper_bound(errors, ids, 0.95), upper_bound(errors, ids, 0.8)
    assert up95.high == overall(errors, ids, confidence=0.9).high and up95.confidence == 0.95
    assert up95.rms < up80.high < up95.high < overall(errors, ids).high  # the 97.5 % end of a 95 % interval


def _walkers(db, quiet: int, n: int = 2):
    from autopipe.db import Walker

    with db.session() as s:
        for i in range(n):
            s.add(Walker(index=i, step=400, checkpoint="ck", segments_since_trigger=quiet))


def test_on_a_run_database_not_before_the_probe_has_labels_then_once_the_bound_is_below(ctx):
    from autopipe.steer.probe import rescore
    from autopipe.steer.view import read_view
    from tests.potentials.helpers import add_labelled
    from tests.steer.test_threshold import _frames

    ctx.run.stop = StopConfig(accuracy=AccuracyStop(force_error=500.0, quiet_segments=3, min_labels=5))
    _walkers(ctx.db, quiet=4)
    v = read_view(ctx)
    assert v.newest_version == 1 and v.probe_error is None
    assert stopping.stop_reason(v, ctx.run.stop) is None  # quiet walkers, but nothing measured: go on
    add_labelled(ctx.db, _frames(6, 0.08, seed=7), origin="embedded", heldout=HeldOut.probe)
    data = rescore(ctx)
    [v1] = data["versions"]
    assert v1["upper_confidence"] == 0.95 and v1["rms"] < v1["upper"] < 0.5
    v = read_view(ctx)
    assert v.probe_error == ProbeError(1, v1["rms"], v1["upper"], 0.95, 6)
    assert stopping.stop_reason(v, ctx.run.stop).startswith("converged: v1's force error on 6 probe structures")
    # A target below the measured bound: the run goes on.
    tight = StopConfig(accuracy=AccuracyStop(force_error=v1["upper"] * 1000 * 0.99, min_labels=5))
    assert stopping.stop_reason(v, tight) is None


def test_bad_input_probe_share_zero_with_the_accuracy_rule(tmp_path):
    from tests.steer.test_threshold import _run_file

    assert _run_file(tmp_path, "{probe_share: 0.05}", stop="{accuracy: {force_error: 80}}") == "ok"
    msg = _run_file(tmp_path, "{probe_share: 0}", stop="{accuracy: {force_error: 80}}")
    assert msg.count("\n") == 0 and "run.yaml: stop.accuracy: the accuracy rule needs the probe's labels" in msg
    msg = _run_file(tmp_path, "{probe_share: 0.05}", stop="{accuracy: {}}")
    assert msg.count("\n") == 0 and "stop.accuracy.force_error: required" in msg
    assert _run_file(tmp_path, "{target_force_error: 80}", stop="{accuracy: {}}") == "ok"  # the otf target


def test_status_and_report_show_threshold_basis_gate_and_error_per_version(tmp_path):
    from autopipe.report import changes_section
    from autopipe.status import collect_status, render_status
    from autopipe.steer.gate import GATE_EVENT
    from autopipe.steer.threshold import THRESHOLD_EVENT
    from tests.steer.test_probe import _stored_scores

    db, versions = _stored_scores(tmp_path)
    assert "threshold  :" not in render_status(collect_status(db)) and changes_section(collect_status(db)) == ""
    bins = [{"lo": 0.0, "hi": 0.5, "rms": 0.03, "n_structures": 6}, {"lo": 5.0, "hi": None, "rms": 0.2,
                                                                       "n_structures": 3}]
    db.record_event(THRESHOLD_EVENT, "gamma 5 -> 3.2", old=5.0, new=3.2, version=2, target=0.08,
                    bounds=[2.0, 10.0], bins=bins, reason="the error reaches the target 80 meV/Å between ...")
    db.record_event("basis", "v3 fits with 80 functions per element (was 40): held-out error flat over 3 rounds")
    db.record_event(GATE_EVENT, "v2 accepted", version=2, parent_version=1, force_rmse=0.1, parent_force_rmse=0.2,
                    tolerance=0.05, n_atoms=100, accepted=True)
    st = collect_status(db)
    text = render_status(st)
    assert "threshold  : gamma 5 -> 3.2 (v2, target 80 meV/Å): the error reaches the target" in text
    assert "basis      : v3 fits with 80 functions per element (was 40)" in text
    assert "gate       : v2 (parent v1): accepted, held-out force RMSE 100.0 vs 200.0 meV/Å" in text
    assert f"probe error: v1 {versions[0]['rms'] * 1000:.1f} meV/Å (95 % interval" in text
    page = changes_section(st)
    assert "gamma 5 -&gt; 3.2" in page and "γ ≥ 5: 200.0 (3 str.)" in page and "80 functions per element" in page
