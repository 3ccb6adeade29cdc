"""A basis that grows with the data (issue 20, item 4).

A fit whose errors stop falling while the data keeps growing is limited by its basis, not by
its labels: the next round enlarges ``number_of_functions_per_element``.

* **The rule** (:func:`basis_decision`, pure): over the last ``train.basis_growth.rounds``
  rounds fitted at the current size, the training force RMSE and the held-out force RMSE
  each fell by less than ``flat`` (relative to the first of those rounds) while the
  training structures grew by at least ``min_label_growth`` (relative). Then the size
  becomes ``ceil(size * factor)`` (at least one more), never past ``ceiling``, and never
  again once a version's basis file holds fewer functions than asked (``ranks``/``lmax`` offer
  no more: the default ``[6, 4, 3]``/``[0, 3, 2]`` offers 120 for one element). Held-out
  errors come from the probe (every version scored on the same labels) when it scored every
  round of the window, else from the gate (each version scored when it was judged), else
  the rule waits: two sources are never mixed in one comparison.
* **The route** (:func:`autopipe.potentials.pacemaker.prepare_input`): a grown round gives
  pacemaker the parent as ``-ip`` (``potential::initial_potential``) with the larger
  ``number_of_functions_per_element``. pacemaker then fits in its ladder scheme with a single
  step: the parent's functions keep their coefficients, the new ones start at zero, so the
  first loss is the parent's (measured: 40 -> 60 functions on the LJ fixture, first loss
  0.01147 = the parent's final loss, against 1.787 for a fresh 60-function fit). A round that
  does not grow continues with ``-p`` as before (the parent's basis, whatever the config says).
* **The record**: every growth is a ``basis`` event with the evidence (the window's versions,
  training and held-out errors, label counts, old and new size); every version's size is in
  its metrics as ``basis_functions`` (per element).

Units: forces eV/Å; sizes are functions per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from autopipe.config.run import BasisGrowth, TrainConfig
    from autopipe.db import Database

BASIS_EVENT = "basis"
#: The key of a version's basis size (functions per element) in ``Potential.metrics``.
SIZE_KEY = "basis_functions"
#: True in ``Potential.metrics`` when the basis file holds fewer functions than asked for.
SATURATED_KEY = "basis_saturated"


@dataclass(frozen=True)
class RoundRecord:
    """One published version as the rule sees it (force RMSEs in eV/Å; None: not measured)."""

    version: int
    n_functions: int  # per element
    n_train: int  # structures trained on
    train_rmse: float | None
    probe_rmse: float | None = None  # on the probe's labels (the same labels for every version)
    gate_rmse: float | None = None  # on the held-out labels when the gate judged it
    saturated: bool = False  # its basis file has fewer functions than asked: ranks/lmax offer no more


@dataclass(frozen=True)
class BasisDecision:
    grow: bool
    size: int  # current functions per element
    new_size: int  # = size unless grow
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def grown_size(size: int, growth: BasisGrowth) -> int:
    """``ceil(size * factor)``, at least ``size + 1``, at most ``ceiling``."""
    return min(growth.ceiling, max(size + 1, math.ceil(size * growth.factor - 1e-9)))


def _fall(values: Sequence[float]) -> float:
    """Relative fall from the first value to the last (negative: it rose)."""
    return (values[0] - values[-1]) / values[0] if values[0] > 0 else 0.0


def basis_decision(history: Sequence[RoundRecord], size: int, growth: BasisGrowth) -> BasisDecision:
    """Whether the next round grows the basis from ``size`` (see the module docstring).

    ``history``: the published versions in order (any status: a rejected fit is evidence too)."""
    def no(reason: str, **evidence: Any) -> BasisDecision:
        return BasisDecision(False, size, size, reason, evidence)

    if not growth.enabled:
        return no("basis growth is off")
    if size >= growth.ceiling:
        return no(f"at the ceiling ({growth.ceiling} functions per element)")
    window = [r for r in history if r.n_functions == size][-growth.rounds:]
    if window and window[-1].saturated:
        return no(f"v{window[-1].version} has every function train.ranks and train.lmax offer (fewer than "
                  f"{size} per element): raise those to grow further")
    if len(window) < growth.rounds:
        return no(f"{len(window)} of {growth.rounds} rounds at {size} functions per element so far")
    versions = [r.version for r in window]
    if any(r.train_rmse is None for r in window):
        return no("a round of the window has no training error", versions=versions)
    source = next((k for k in ("probe_rmse", "gate_rmse") if all(getattr(r, k) is not None for r in window)), None)
    if source is None:
        return no("no held-out error measured on every round of the window", versions=versions)
    train = [float(r.train_rmse) for r in window]
    heldout = [float(getattr(r, source)) for r in window]
    labels = [r.n_train for r in window]
    evidence = dict(versions=versions, train_rmse=train, heldout_rmse=heldout, heldout_source=source.split("_")[0],
                    n_train=labels, flat=growth.flat, min_label_growth=growth.min_label_growth)
    label_growth = (labels[-1] - labels[0]) / labels[0] if labels[0] > 0 else 0.0
    falls = {"training": _fall(train), "held-out": _fall(heldout)}
    evidence.update(label_growth=label_growth, train_fall=falls["training"], heldout_fall=falls["held-out"])
    span = f"v{versions[0]}-v{versions[-1]}"
    if label_growth < growth.min_label_growth:
        return no(f"training structures grew {label_growth:.0%} over {span} (< {growth.min_label_growth:.0%}): "
                  "not enough new data to judge the basis", **evidence)
    for name, fall in falls.items():
        if fall >= growth.flat:
            return no(f"the {name} force error still falls ({fall:.0%} over {span})", **evidence)
    new = grown_size(size, growth)
    evidence.update(old_size=size, new_size=new, ceiling=growth.ceiling)
    return BasisDecision(True, size, new, (
        f"basis-limited over {span}: training force RMSE {train[0] * 1000:.1f} -> {train[-1] * 1000:.1f} meV/Å, "
        f"held-out ({evidence['heldout_source']}) {heldout[0] * 1000:.1f} -> {heldout[-1] * 1000:.1f} meV/Å, "
        f"training structures {labels[0]} -> {labels[-1]}: {size} -> {new} functions per element"), evidence)


# ----------------------------------------------------------------------------- the run's history


def version_size(metrics: dict[str, Any] | None, tc: TrainConfig) -> int:
    """A version's basis size (functions per element): its recorded ``basis_functions``, else the
    configured starting size (versions fitted before sizes were recorded, imported potentials)."""
    value = (metrics or {}).get(SIZE_KEY)
    return int(value) if isinstance(value, (int, float)) and value > 0 else int(tc.number_of_functions_per_element)


def history(db: Database, tc: TrainConfig) -> list[RoundRecord]:
    """Every published version as a :class:`RoundRecord`: size and training error from its
    metrics, held-out errors from the newest ``probe_scores`` event and from its ``gate`` event."""
    from sqlalchemy import select

    from autopipe.db import Event, Potential

    with db.session() as s:
        rows = [(p.version, dict(p.metrics or {}), int(p.n_train or 0))
                for p in s.scalars(select(Potential).order_by(Potential.version))]
        # Event kinds written by autopipe.steer.gate and autopipe.steer.probe (not imported: potentials
        # does not depend on the steering package).
        gate = {int(e.data["version"]): e.data.get("force_rmse")
                for e in s.scalars(select(Event).where(Event.kind == "gate").order_by(Event.id))
                if isinstance(e.data, dict) and e.data.get("version") is not None}
        newest = s.scalars(select(Event).where(Event.kind == "probe_scores").order_by(Event.id.desc()).limit(1)).first()
        probe_rows = (newest.data or {}).get("versions", []) if newest is not None else []
    probe = {int(v["version"]): v.get("rms") for v in probe_rows if isinstance(v, dict) and "version" in v}
    return [RoundRecord(version=v, n_functions=version_size(m, tc), n_train=n,
                        train_rmse=_number(m.get("train_forces_rmse")), probe_rmse=_number(probe.get(v)),
                        gate_rmse=_number(gate.get(v)), saturated=bool(m.get(SATURATED_KEY)))
            for v, m, n in rows]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def next_size(db: Database, tc: TrainConfig, parent_metrics: dict[str, Any] | None) -> BasisDecision:
    """The basis of the next round, continuing from a parent with ``parent_metrics``."""
    return basis_decision(history(db, tc), version_size(parent_metrics, tc), tc.basis_growth)


def record(db: Database, decision: BasisDecision, version: int, parent_version: int | None) -> None:
    """A ``basis`` event for a growth (the evidence in its data); nothing when the basis stays."""
    if decision.grow:
        db.record_event(BASIS_EVENT, f"v{version}: {decision.reason}", version=version,
                        parent_version=parent_version, **decision.evidence)
