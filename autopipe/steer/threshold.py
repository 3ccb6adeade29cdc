"""The gamma threshold from a force-error target (issue 20, item 2).

gamma is a novelty score, not an error bar: which gamma is "too uncertain" depends on the
potential and the system. With ``otf.target_force_error`` (meV/Å) the run says what error it
accepts, and the loop reads the threshold off the **calibration curve** of the version the
walkers use: force RMSE per gamma bin over the trusted atoms of every held-out label (the
probe's, mostly low gamma, and the held-out slice of triggered labels, around and above the
threshold; :func:`autopipe.steer.gate.heldout_frames`).

* **Choice** (:func:`choose_threshold`, pure). Bins with at least ``min_structures`` probe or
  held-out structures, each placed at the mean gamma of its atoms. The threshold is where the
  error **first** reaches the target going up in gamma (a lucky bin above a bad one does not
  lift it), linearly interpolated between bins; past the last bin, extrapolated along the last two bins' slope (to the upper
  bound if flat). Already the lowest-gamma bin above the target: the lower bound (label as much
  as the bounds allow). Fewer than two usable bins: no change. Always within
  ``otf.threshold_bounds``; a move smaller than :data:`MIN_CHANGE` of the current threshold is
  not made (no churn on every label).
* **Wiring** (:func:`update_threshold`). After each probe label, each held-out triggered label
  and each publish. The threshold in force is ``ctx.run.otf.uncertainty_threshold``: the run
  file's value is the starting threshold, the rule overwrites it in memory, and every consumer
  (the next MD segments, the probe's picker, the selection of trigger candidates) reads it
  there. Each change is a ``threshold`` event holding its evidence (bins, errors, counts,
  target, bounds, version); :func:`restore_threshold` puts the last one back when a run resumes.
  Segments already queued keep the threshold they were sent with.

Units: forces and target in the events eV/Å (the run file's target is meV/Å); gamma dimensionless.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from autopipe.steer.context import Context

log = logging.getLogger(__name__)

THRESHOLD_EVENT = "threshold"

#: Structures a gamma bin needs before its error counts (atoms of one structure are not independent).
MIN_STRUCTURES = 3
#: Relative move below which the threshold is left alone.
MIN_CHANGE = 0.05


@dataclass(frozen=True)
class ThresholdChoice:
    """The rule's answer: ``threshold`` (the current one when unchanged), whether it ``changed``,
    why, and the (gamma, error eV/Å) points it read."""

    threshold: float
    changed: bool
    reason: str
    points: list[tuple[float, float]] = field(default_factory=list)


def _points(bins: Sequence[dict[str, Any]], min_structures: int) -> list[tuple[float, float]]:
    """(gamma, error eV/Å) of the usable bins, sorted by gamma."""
    pts = []
    for b in bins:
        if b.get("rms") is None or not math.isfinite(b["rms"]) or b.get("n_structures", 0) < min_structures:
            continue
        x = b.get("gamma_mean")
        if x is None:
            x = b["lo"] if b.get("hi") is None else 0.5 * (b["lo"] + b["hi"])
        pts.append((float(x), float(b["rms"])))
    return sorted(pts)


def choose_threshold(bins: Sequence[dict[str, Any]], target: float, bounds: tuple[float, float], current: float, *,
                     min_structures: int = MIN_STRUCTURES, min_change: float = MIN_CHANGE) -> ThresholdChoice:
    """The gamma threshold at which the calibration curve ``bins`` (dicts with ``lo``, ``hi``,
    ``rms`` eV/Å, ``n_structures``, ``gamma_mean``: :meth:`CalibrationBin.as_dict`) reaches
    ``target`` (eV/Å), within ``bounds``; ``current`` is the threshold in force."""
    lo_b, hi_b = bounds
    pts = _points(bins, min_structures)
    if len(pts) < 2:
        return ThresholdChoice(current, False, f"not enough evidence: {len(pts)} gamma bin(s) with at least "
                                               f"{min_structures} structures", pts)
    x = np.array([p[0] for p in pts])
    e = np.array([p[1] for p in pts])
    if e[0] >= target:
        new, why = lo_b, (f"the lowest-gamma bin (gamma {x[0]:.2f}) already has {e[0] * 1000:.1f} meV/Å >= "
                          f"the target {target * 1000:.3g} meV/Å: lowest threshold allowed")
    elif (e >= target).any():
        i = int(np.argmax(e >= target))
        new = x[i - 1] + (target - e[i - 1]) * (x[i] - x[i - 1]) / (e[i] - e[i - 1])
        why = (f"the error reaches the target {target * 1000:.3g} meV/Å between gamma {x[i - 1]:.2f} "
               f"({e[i - 1] * 1000:.1f}) and {x[i]:.2f} ({e[i] * 1000:.1f})")
    else:
        slope = (e[-1] - e[-2]) / (x[-1] - x[-2]) if x[-1] > x[-2] else 0.0
        new = x[-1] + (target - e[-1]) / slope if slope > 0 else hi_b
        why = (f"every bin is below the target {target * 1000:.3g} meV/Å (at gamma {x[-1]:.2f}: {e[-1] * 1000:.1f}); "
               + ("extrapolated along the last two bins" if slope > 0 else "flat: highest threshold allowed"))
    new = float(min(max(new, lo_b), hi_b))
    if abs(new - current) < min_change * current:
        return ThresholdChoice(current, False, f"kept {current:g} (rule: {new:.2f}): {why}", pts)
    return ThresholdChoice(round(new, 3), True, why, pts)


# ----------------------------------------------------------------------------- wiring


def served_version(ctx: Context) -> int | None:
    """The newest version walkers may use (gate-rejected and withdrawn ones are not)."""
    from sqlalchemy import func, or_, select

    from autopipe.db import Potential, PotentialStatus

    with ctx.db.session() as s:
        return s.scalar(select(func.max(Potential.version)).where(or_(
            Potential.status.is_(None), Potential.status == PotentialStatus.served)))


def measured_bins(ctx: Context, version: int) -> list[dict[str, Any]]:
    """The calibration curve of ``version`` over every held-out label (probe and triggered), as dicts."""
    from autopipe.analysis.calibration import calibration_curve, gamma_edges
    from autopipe.steer.gate import evaluate_frames, heldout_frames

    frames = heldout_frames(ctx.db)
    if not frames:
        return []
    gammas, errors, ids = evaluate_frames(ctx.store.get(version, verify=False), frames)
    if not gammas:
        return []
    otf = ctx.run.otf
    edges = sorted(set(gamma_edges(otf.uncertainty_threshold)[:-1]) | set(otf.threshold_bounds)) + [math.inf]
    g = np.concatenate(gammas)
    e = np.concatenate(errors)
    sid = np.concatenate([np.full(len(x), i) for x, i in zip(gammas, ids)])
    return [b.as_dict() for b in calibration_curve(g, e, sid, edges)]


def update_threshold(ctx: Context) -> ThresholdChoice | None:
    """Apply the target rule once (a no-op without ``otf.target_force_error``); a change is set in
    ``ctx.run.otf`` and recorded as a ``threshold`` event. Never raises: the run goes on with the
    threshold it has."""
    otf = ctx.run.otf
    if otf.target_force_error is None:
        return None
    try:
        version = served_version(ctx)
        if version is None:
            return None
        bins = measured_bins(ctx, version)
        target = otf.target_force_error / 1000.0
        old = float(otf.uncertainty_threshold)
        choice = choose_threshold(bins, target, tuple(otf.threshold_bounds), old)
        if choice.changed:
            otf.uncertainty_threshold = choice.threshold
            ctx.db.record_event(THRESHOLD_EVENT, f"gamma threshold {old:g} -> {choice.threshold:g} (v{version}): "
                                f"{choice.reason}", old=old, new=choice.threshold, version=version, target=target,
                                bounds=list(otf.threshold_bounds), bins=bins, points=choice.points,
                                reason=choice.reason)
            ctx.progress.log(f"threshold: gamma {old:g} -> {choice.threshold:g} ({choice.reason})")
        return choice
    except Exception as exc:  # a measurement: it must never stop the loop
        log.warning("updating the threshold failed: %s", exc, exc_info=True)
        ctx.progress.log(f"threshold not updated: {type(exc).__name__}: {exc}")
        return None


def restore_threshold(ctx: Context) -> float | None:
    """On (re)start: the threshold the rule last set, back in ``ctx.run.otf``; None when it never set one
    (or the run has no target: then the run file's threshold holds)."""
    if ctx.run.otf.target_force_error is None:
        return None
    ev = ctx.db.last_event(THRESHOLD_EVENT)
    if ev is None or (ev.data or {}).get("new") is None:
        return None
    lo, hi = ctx.run.otf.threshold_bounds
    ctx.run.otf.uncertainty_threshold = float(min(max(ev.data["new"], lo), hi))  # bounds may have changed
    return ctx.run.otf.uncertainty_threshold


def threshold_history(db) -> list[dict[str, Any]]:
    """Every change of the threshold, oldest first: old, new, version, target (eV/Å), reason, at, and the bins."""
    from sqlalchemy import select

    from autopipe.db import Event

    with db.session() as s:
        return [{**(e.data or {}), "message": e.message, "at": e.created_at.isoformat(timespec="seconds")}
                for e in s.scalars(select(Event).where(Event.kind == THRESHOLD_EVENT).order_by(Event.id))]
