"""The carving budget in the loop (``embedding.strategy: budget``): measure, choose, re-check.

A carved label is worth its DFT when its core-force error is well below the error of the
potential it corrects (:mod:`autopipe.carving.budget`). The loop measures both on its own
trigger frames:

1. **calibrate**: the next trigger frame is labelled whole (an exact label, trained on), and
   the cells each candidate strategy carves around its most uncertain atom are labelled too,
   as measurements only (zero training weight: an unvetted carve must not teach the
   potential its error). Meanwhile other trigger frames are labelled whole.
2. **decide**: when those labels are in, the carve error of each candidate (core rms against
   the whole frame) and the newest potential's error on the same atoms go to
   :func:`autopipe.carving.budget.choose`: the cheapest candidate within
   ``embedding.max_error_ratio`` (or ``embedding.max_core_force_error``) is used from then on,
   or whole frames when none fits. The decision and its numbers are an event
   (``carve_budget``), shown by ``autopipe status`` and the report.
3. **re-check**: after ``embedding.recheck_every`` carved labels, calibrate again: the
   potential improves, so a carve that was good enough against v1 may not be against v5.

State lives in the events (``carve_calibration``: the frame and cells being measured;
``carve_budget``: the decision), so a restarted loop continues where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from autopipe.db import Event, HeldOut, Label, LabelStatus, Origin, Structure

if TYPE_CHECKING:
    from autopipe.steer.context import Context

CALIBRATION, DECISION = "carve_calibration", "carve_budget"
#: The plan's strategy for "label the whole frame".
WHOLE = "whole"


@dataclass(frozen=True)
class Plan:
    """What the embed step does with the next trigger frame: carve with ``strategy`` (``whole``:
    label the frame whole), and with ``calibrate`` also carve these candidates as measurements."""

    strategy: str
    calibrate: tuple[str, ...] = ()
    reason: str = ""


def candidates(ctx: Context) -> tuple[str, ...]:
    """The strategies the budget weighs: ``embedding.candidates``, else commensurate (when the run
    has a reference lattice) and cube."""
    e = ctx.run.embedding
    if e.candidates:
        return tuple(e.candidates)
    from autopipe.carving.reference import reference_lattice

    return ("commensurate", "cube") if reference_lattice(ctx.run) is not None else ("cube",)


def _last(ctx: Context, kind: str) -> Event | None:
    with ctx.db.session() as s:
        ev = s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id.desc()).limit(1)).first()
        if ev is not None:
            s.expunge(ev)
        return ev


def plan(ctx: Context) -> Plan:
    """The plan for the next trigger frame (see the module's docstring)."""
    e = ctx.run.embedding
    if e.strategy != "budget":
        return Plan(e.strategy)
    calibration, decision = _last(ctx, CALIBRATION), _last(ctx, DECISION)
    if calibration is not None and (decision is None or decision.id < calibration.id):
        return Plan(WHOLE, reason="a calibration is being labelled")
    if decision is None:
        return Plan(WHOLE, candidates(ctx), "first trigger frame: calibrating the carving budget")
    chosen = decision.data.get("chosen") or WHOLE
    from autopipe.carving.budget import recheck_due

    if e.recheck_every and recheck_due(_carved_labels_since(ctx, decision.id), e.recheck_every):
        return Plan(WHOLE, candidates(ctx), f"re-check after {e.recheck_every} carved labels")
    return Plan(chosen, reason=decision.message)


def _carved_labels_since(ctx: Context, event_id: int) -> int:
    """Carved cells labelled for training since the event (calibration cells are not counted)."""
    with ctx.db.session() as s:
        created = s.get(Event, event_id).created_at
        rows = s.scalars(select(Structure.info).join(Label, Label.structure_id == Structure.id).where(
            Structure.origin == Origin.embedded, Label.status == LabelStatus.done, Label.created_at >= created,
            Structure.heldout.is_distinct_from(HeldOut.probe)))  # the probe's cells are measurements
        return sum(1 for info in rows if not (info or {}).get("calibration_for"))


def record_calibration(ctx: Context, frame_id: int, cell_ids: list[int], strategies: list[str], reason: str) -> None:
    """The frame and the cells being measured; :func:`maybe_decide` waits for their labels."""
    ctx.db.record_event(CALIBRATION, f"calibrating the carving budget on frame {frame_id} ({reason}): "
                                     f"{', '.join(strategies)} against the whole frame",
                        frame=frame_id, cells=cell_ids, strategies=strategies)


def nothing_to_measure(ctx: Context, reasons: list[str]) -> None:
    """No candidate could carve a cell worth measuring (a frame no bigger than the cells): whole
    frames, decided now so the next trigger frame does not try again until the re-check."""
    message = f"carving budget: no carve to measure ({'; '.join(reasons) or 'no candidate'}): whole frames"
    ctx.db.record_event(DECISION, message, chosen=WHOLE, measured=[], potential_version=ctx.store.latest().version)
    ctx.progress.log(message)


def maybe_decide(ctx: Context) -> str | None:
    """When the pending calibration's labels are all in, choose and record; returns the decision's
    message (None while waiting, or with no calibration pending)."""
    calibration, decision = _last(ctx, CALIBRATION), _last(ctx, DECISION)
    if calibration is None or (decision is not None and decision.id > calibration.id):
        return None
    ids = [calibration.data["frame"], *calibration.data["cells"]]
    with ctx.db.session() as s:
        labels = {}
        for sid in ids:
            label = s.scalars(select(Label).where(Label.structure_id == sid).order_by(Label.id.desc()).limit(1)).first()
            if label is None:
                return None  # still being labelled
            labels[sid] = (label.status, None if label.forces is None else np.asarray(label.forces, dtype=float),
                           float(label.walltime or 0.0))
        cells = {sid: s.get(Structure, sid) for sid in calibration.data["cells"]}
        cell_info = {sid: (list(c.force_mask or []), np.asarray(c.parent_index), int(c.n_atoms), dict(c.info or {}))
                     for sid, c in cells.items()}
        from autopipe.db import atoms_from_structure

        frame = atoms_from_structure(s.get(Structure, calibration.data["frame"]))
    measured, note = measure(ctx, frame, labels, calibration.data["frame"], cell_info)
    from autopipe.carving.budget import choose

    e = ctx.run.embedding
    if note:
        choice_reason, chosen = f"{note}: whole frames", None
    else:
        choice = choose(measured, e.max_error_ratio, e.max_core_force_error)
        choice_reason, chosen = choice.reason, (None if choice.chosen is None else choice.chosen.strategy)
    ctx.db.record_event(DECISION, f"carving budget: {choice_reason}", chosen=chosen or WHOLE,
                        measured=[m.__dict__ for m in measured], potential_version=ctx.store.latest().version)
    ctx.progress.log(f"carving budget: {choice_reason}")
    return choice_reason


def measure(ctx: Context, frame, labels: dict, frame_id: int, cells: dict) -> tuple[list, str]:
    """(measurements, note): each calibration cell's core rms error against the whole frame, the
    newest potential's error on the same atoms, and their DFT seconds; ``note`` says why nothing
    could be measured (the whole frame's label failed)."""
    from autopipe.carving.budget import Measured
    from autopipe.potentials.uncertainty import evaluate

    status, f_frame, frame_seconds = labels[frame_id]
    if status != LabelStatus.done or f_frame is None:
        return [], f"the calibration frame {frame_id} could not be labelled ({status.value})"
    f_pot = np.asarray(evaluate(frame, ctx.store.latest())["forces"])
    e = ctx.run.embedding
    out = []
    for sid, (mask, parent_index, n_atoms, info) in cells.items():
        c_status, f_cell, seconds = labels[sid]
        if c_status != LabelStatus.done or f_cell is None:
            continue  # a carve DFT cannot label is no candidate
        core = np.setdiff1d(np.arange(n_atoms), mask)
        atoms = parent_index[core]
        rms = lambda d: float(math.sqrt(np.mean(np.sum(d**2, axis=1))))  # noqa: E731
        out.append(Measured(strategy=str(info.get("embedding_strategy")), buffer=float(e.buffer), kpoints=e.kpoints,
                            core_rms=rms(f_cell[core] - f_frame[atoms]), potential_rms=rms(f_pot[atoms] - f_frame[atoms]),
                            cost=seconds, frame_cost=frame_seconds, n_atoms=n_atoms))
    return out, ""


def weights_for_measurement(n_atoms: int) -> dict:
    """Structure fields that keep a calibration cell out of training: zero energy and force weights."""
    return {"energy_weight": 0.0, "force_weights": np.zeros(n_atoms)}
