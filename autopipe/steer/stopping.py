"""The stopping rules: each a small named function of a :class:`~autopipe.steer.view.RunView`
and the run's ``stop`` settings that returns the message to stop with, or ``None``.

They are tried in the order of :data:`RULES`; the first message wins. Budgets come first
(they hold whatever the walkers do), with work that can never run (a Slurm refusal, a task
above its size bound), then what the walkers say (done, retired,
accurate by the probe's measure, converged), then the rules for a run that can no longer
move (training budget used, stalled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from autopipe.db import WalkerStatus

if TYPE_CHECKING:
    from autopipe.config.run import StopConfig
    from autopipe.steer.view import RunView

Rule = Callable[["RunView", "StopConfig"], "str | None"]


def out_of_time(v: RunView, stop: StopConfig) -> str | None:
    if stop.max_walltime is not None and v.elapsed >= stop.max_walltime:
        return f"wall-time budget of {stop.max_walltime:g} s used"
    return None


def training_keeps_failing(v: RunView, stop: StopConfig) -> str | None:
    if v.train_failures >= stop.max_train_failures:
        return f"training failed {v.train_failures} times in a row (see events and train/*/pacemaker.log)"
    return None


def blowup_limit_below_physics(v: RunView, stop: StopConfig) -> str | None:
    return v.limit_problem


def work_cannot_run(v: RunView, stop: StopConfig) -> str | None:
    # Slurm refused an executor's blocks, or a task's arguments or result exceed its bound:
    # waiting would be forever.
    return v.cannot_run


def dft_budget_spent(v: RunView, stop: StopConfig) -> bool:
    """The DFT budget (calls or seconds) is used up."""
    return ((stop.max_dft_calls is not None and v.dft_calls >= stop.max_dft_calls)
            or (stop.max_dft_seconds is not None and v.dft_seconds >= stop.max_dft_seconds))


def dft_budget_used(v: RunView, stop: StopConfig) -> str | None:
    # The labels the budget bought are trained on first (a fit running or owed): the potential they
    # make is what the budget was spent for.
    if not dft_budget_spent(v, stop) or v.busy("train") or v.fit_owed:
        return None
    if stop.max_dft_calls is not None and v.dft_calls >= stop.max_dft_calls:
        return f"DFT budget of {stop.max_dft_calls} calls used"
    return f"DFT budget of {stop.max_dft_seconds:g} s used ({v.dft_seconds:.0f} s of DFT wall time)"


def no_initial_potential(v: RunView, stop: StopConfig) -> str | None:
    fp = v.first_potential
    if v.newest_version is None and fp not in (None, "labelling", "ready") and v.idle:
        return f"no initial potential: {fp}"
    return None


def walkers_finished(v: RunView, stop: StopConfig) -> str | None:
    if not v.walkers or any(w.status is not WalkerStatus.finished for w in v.walkers):
        return None
    if any(w.step < stop.max_md_steps for w in v.walkers):
        return "every walker was retired after repeated failed segments"
    return f"every walker reached {stop.max_md_steps} MD steps"


def converged(v: RunView, stop: StopConfig) -> str | None:
    n = stop.converged_segments
    if n and v.walkers and all(w.segments_since_trigger >= n for w in v.walkers):
        return f"converged: {n} consecutive segments without a trigger on every walker"
    return None


def accurate(v: RunView, stop: StopConfig) -> str | None:
    """``stop.accuracy``: the probe's force error of the served version is below the target at the stated
    confidence (its one-sided bootstrap upper bound, over at least ``min_labels`` probe structures) and
    no walker triggered for ``quiet_segments`` segments. Never before the probe has scored that version."""
    acc = stop.accuracy
    p = v.probe_error
    if acc is None or acc.force_error is None or not v.walkers or p is None or p.version != v.newest_version:
        return None
    if p.upper is None or p.confidence != acc.confidence or p.n_structures < acc.min_labels:
        return None
    n = acc.quiet_segments
    if p.upper * 1000.0 >= acc.force_error or not all(w.segments_since_trigger >= n for w in v.walkers):
        return None
    return (f"converged: v{p.version}'s force error on {p.n_structures} probe structures is {p.rms * 1000:.1f} meV/Å, "
            f"below {acc.force_error:g} at {100 * acc.confidence:g} % confidence (upper bound {p.upper * 1000:.1f}), "
            f"and no walker triggered for {n} segments")


def training_budget_used(v: RunView, stop: StopConfig) -> str | None:
    if (stop.max_trainings is not None and v.retrains >= stop.max_trainings and v.all_waiting
            and not v.busy("dft", "embed", "train")):
        return f"training budget of {stop.max_trainings} retrains used; walkers wait for a better potential"
    return None


def stalled(v: RunView, stop: StopConfig) -> str | None:
    if v.all_waiting and not v.busy("dft", "embed", "train") and v.new_labels == 0 and v.idle:
        return "stalled: walkers wait for a new potential but no new labels could be made"
    return None


RULES: tuple[Rule, ...] = (
    out_of_time, work_cannot_run, training_keeps_failing, blowup_limit_below_physics, dft_budget_used,
    no_initial_potential, walkers_finished, accurate, converged, training_budget_used, stalled,
)


def stop_reason(v: RunView, stop: StopConfig) -> str | None:
    """The first rule's message, or ``None`` to go on."""
    for rule in RULES:
        if (msg := rule(v, stop)) is not None:
            return msg
    return None
