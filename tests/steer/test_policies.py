"""The stopping rules one by one, and the training policy, over hand-made run views."""

from __future__ import annotations

import pytest

from autopipe.config.run import StopConfig, TrainConfig
from autopipe.db import WalkerStatus
from autopipe.steer import stopping
from autopipe.steer.training import training_due
from autopipe.steer.view import RunView, WalkerView

RUN = WalkerView(WalkerStatus.running, 100, 0)
WAIT2 = WalkerView(WalkerStatus.waiting, 100, 0, waiting_for_version=2)
DONE = WalkerView(WalkerStatus.finished, 1000, 5)


def view(**kw) -> RunView:
    return RunView(**{"newest_version": 2, "walkers": (RUN,), **kw})


# ----------------------------------------------------------------------------- stopping rules, one by one

def test_out_of_time():
    stop = StopConfig(max_walltime=60)
    assert stopping.out_of_time(view(elapsed=59.9), stop) is None
    assert "wall-time budget of 60 s" in stopping.out_of_time(view(elapsed=60), stop)
    assert stopping.out_of_time(view(elapsed=1e9), StopConfig()) is None


def test_work_that_cannot_run_stops_the_run_before_the_other_rules():
    why = "Slurm refused the job of executor 'cpu': Batch job submission failed: Invalid account"
    assert stopping.work_cannot_run(view(), StopConfig()) is None
    assert stopping.stop_reason(view(cannot_run=why, train_failures=9), StopConfig()) == why


def test_training_keeps_failing():
    assert stopping.training_keeps_failing(view(train_failures=2), StopConfig()) is None
    assert "failed 3 times in a row" in stopping.training_keeps_failing(view(train_failures=3), StopConfig())


def test_dft_budget_waits_for_a_running_fit():
    stop = StopConfig(max_dft_calls=4)
    assert stopping.dft_budget_used(view(dft_calls=3), stop) is None
    assert stopping.dft_budget_used(view(dft_calls=4, active={"train": 1}), stop) is None
    assert "DFT budget of 4" in stopping.dft_budget_used(view(dft_calls=4, active={"md": 1}), stop)


def test_dft_seconds_budget():
    stop = StopConfig(max_dft_seconds=2700)
    assert stopping.dft_budget_used(view(dft_seconds=2699.0), stop) is None
    assert stopping.dft_budget_used(view(dft_seconds=2800.0, active={"train": 1}), stop) is None
    assert "DFT budget of 2700 s used (2800 s" in stopping.dft_budget_used(view(dft_seconds=2800.0), stop)


def test_the_labels_a_spent_budget_bought_are_trained_on_before_the_stop():
    stop = StopConfig(max_dft_seconds=1200)
    spent = view(dft_seconds=2082.0, new_labels=1, fit_owed=True, walkers=(RUN,))
    assert stopping.dft_budget_used(spent, stop) is None  # a fit is owed: not yet
    train = TrainConfig(min_new_labels=4)
    assert "DFT budget is spent: training on the 1 label" in training_due(spent, train, stop)
    assert training_due(view(dft_seconds=2082.0, new_labels=1, active={"dft": 1}), train, stop) is None
    assert training_due(view(dft_seconds=100.0, new_labels=1), train, stop) is None  # budget left: wait for 4
    assert "DFT budget of 1200 s used" in stopping.dft_budget_used(view(dft_seconds=2082.0), stop)


def test_no_initial_potential_only_when_it_is_impossible_and_nothing_runs():
    none = dict(newest_version=None, walkers=())
    stop = StopConfig()
    for state in (None, "labelling", "ready"):
        assert stopping.no_initial_potential(view(**none, first_potential=state, idle=True), stop) is None
    reason = "none of the 12 generated structures could be labelled"
    assert stopping.no_initial_potential(view(**none, first_potential=reason, idle=False), stop) is None
    assert stopping.no_initial_potential(view(**none, first_potential=reason, idle=True), stop).endswith(reason)


def test_walkers_finished_tells_retired_from_done():
    stop = StopConfig(max_md_steps=1000)
    assert stopping.walkers_finished(view(walkers=(DONE, RUN)), stop) is None
    assert stopping.walkers_finished(view(walkers=()), stop) is None
    assert "reached 1000 MD steps" in stopping.walkers_finished(view(walkers=(DONE, DONE)), stop)
    retired = WalkerView(WalkerStatus.finished, 300, 0)
    assert "retired" in stopping.walkers_finished(view(walkers=(DONE, retired)), stop)


def test_converged_needs_every_walker_quiet():
    stop = StopConfig(converged_segments=4)
    quiet = WalkerView(WalkerStatus.running, 800, 4)
    assert stopping.converged(view(walkers=(quiet, WalkerView(WalkerStatus.running, 800, 3))), stop) is None
    assert "4 consecutive segments" in stopping.converged(view(walkers=(quiet, quiet)), stop)
    assert stopping.converged(view(walkers=(quiet,)), StopConfig()) is None  # rule off


def test_training_budget_used_when_walkers_wait_and_nothing_else_runs():
    stop = StopConfig(max_trainings=2)
    waiting = dict(walkers=(WAIT2,), newest_version=2)
    assert stopping.training_budget_used(view(**waiting, retrains=1), stop) is None
    assert stopping.training_budget_used(view(**waiting, retrains=2, active={"dft": 1}), stop) is None
    assert stopping.training_budget_used(view(walkers=(RUN,), retrains=2), stop) is None
    assert "training budget of 2" in stopping.training_budget_used(view(**waiting, retrains=2), stop)


def test_stalled_when_waiting_walkers_cannot_get_new_labels():
    stop = StopConfig()
    waiting = dict(walkers=(WAIT2,), newest_version=2, idle=True)
    assert stopping.stalled(view(**waiting, new_labels=1), stop) is None
    assert stopping.stalled(view(**waiting, active={"embed": 1}), stop) is None
    assert stopping.stalled(view(**{**waiting, "idle": False}), stop) is None
    assert stopping.stalled(view(**waiting), stop).startswith("stalled")


def test_rules_are_tried_in_order():
    v = view(elapsed=100, train_failures=5, walkers=(DONE,))
    assert stopping.stop_reason(v, StopConfig(max_walltime=10)).startswith("wall-time")
    assert stopping.stop_reason(v, StopConfig()).startswith("training failed")
    assert stopping.stop_reason(view(), StopConfig()) is None


# ----------------------------------------------------------------------------- training policy

@pytest.fixture
def cfg():
    return TrainConfig(min_new_labels=3), StopConfig(max_trainings=2)


def test_version_one_trains_once_its_dataset_is_labelled(cfg):
    first = dict(newest_version=None, walkers=())
    assert training_due(view(**first, first_potential="labelling"), *cfg) is None
    assert training_due(view(**first, first_potential="ready"), *cfg) == "the initial dataset is labelled"
    assert training_due(view(**first, first_potential="ready", active={"train": 1}), *cfg) is None


def test_retrain_after_enough_new_labels_within_budget(cfg):
    assert training_due(view(new_labels=2), *cfg) is None
    assert training_due(view(new_labels=3), *cfg) == "3 new label(s)"
    assert training_due(view(new_labels=3, active={"train": 1}), *cfg) is None  # one fit at a time
    assert training_due(view(new_labels=9, retrains=2), *cfg) is None  # budget used


def test_stall_rule_trains_on_fewer_labels_when_every_walker_waits(cfg):
    waiting = dict(walkers=(WAIT2,), new_labels=1)
    assert training_due(view(**waiting), *cfg).startswith("every walker waits")
    assert training_due(view(**waiting, active={"dft": 1}), *cfg) is None  # more labels are coming
    assert training_due(view(walkers=(WAIT2, RUN), new_labels=1), *cfg) is None
    assert training_due(view(walkers=(WAIT2,), new_labels=0), *cfg) is None
