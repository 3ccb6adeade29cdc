"""The false-negative probe: labels of configurations the potential calls safe (issue 20, item 1).

gamma says how novel an environment is, not how wrong the forces are. The probe measures
the second where the MD goes: at a small share of the loop's DFT cost (``otf.probe_share``),
after a segment that did **not** trigger, it takes the walker's configuration at the
segment's end with its per-atom gamma under the version that ran, picks an atom at random among
those below the threshold (seeded by the MD seed, the walker and the step: a resumed run
picks the same atom), carves a cell around it with the run's strategy and rules
(:mod:`autopipe.steer.probe_pick`, :func:`autopipe.steer.work.carve_one`: the whole frame where trigger frames would go whole)
and queues it for DFT after the trigger labels (:data:`PROBE_PRIORITY`). The pick and the carve
happen on the MD worker, where the frame is (:func:`autopipe.steer.work.probe_on_worker`; the
segment is asked for one when it is submitted, :func:`worker_request`): gamma comes from LAMMPS at
the segment's last step, the steering process evaluates nothing, and a frame larger than
``embedding.keep_frames_up_to`` atoms stays there (its compact record is stored, as for triggers). Every probe
structure is ``HeldOut.probe``: never trained on, not a new label for a retrain, scored by
the gate (:mod:`autopipe.steer.gate`).

* **Share.** Cost is label wall time (s) of the loop's labels (those ``stop.max_dft_seconds``
  counts: not the generated or imported data), or label counts while no label has a wall
  time. The probe is behind when its cost, queued probes included (at the mean cost of a
  label), is below ``probe_share`` of the total; its first label goes at once (a run whose
  potential never triggers still gets measured). A walker gives at most one probe per
  ``otf.probe_every`` of its segments.
* **Scores.** Per published version, the force RMSE over the trusted atoms of all the probe's
  labels (the same labels for every version, whichever version ran when each was taken: its
  ``info["probe"]["version"]`` says), with a bootstrap interval over probe structures, overall and per gamma bin (the
  calibration curve, :mod:`autopipe.analysis.calibration`; gamma from that version on the
  labelled cell). :func:`rescore` computes them (pyace) after each publish and each probe
  label and records them in a ``probe_scores`` event, which ``autopipe status`` and the
  report read without evaluating anything.

Units: forces eV/Å, wall times s, gamma dimensionless.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from sqlalchemy import func, select

from autopipe.analysis.calibration import calibration_curve, gamma_edges, overall, upper_bound
from autopipe.db import HeldOut, Label, LabelStatus, Origin, Structure, Task, TaskKind, TaskState
from autopipe.steer.queue import PRIORITY

if TYPE_CHECKING:
    from autopipe.db import Database
    from autopipe.potentials.store import PotentialStore
    from autopipe.steer.context import Context
    from autopipe.steer.gate import HeldOutFrame
    from autopipe.steer.work import ProbeFound, WorkerProbe

log = logging.getLogger(__name__)

PROBE_EVENT = "probe"
SHARE_KEY = "probe.share_state"
SCORES_EVENT = "probe_scores"

#: Probe labels run after every trigger label queued on the same executor (lower runs first),
#: before fits and MD segments.
PROBE_PRIORITY = PRIORITY["dft"] + 5


# ----------------------------------------------------------------------------- pure rules


def probe_behind(probe: float, total: float, in_flight: float, share: float) -> bool:
    """Whether the probe should label one more: its cost ``probe`` plus the cost of its queued
    labels ``in_flight`` is below ``share`` of the loop's total (``total`` + ``in_flight``; one
    unit throughout: s or labels). With nothing spent or queued the first probe goes at once."""
    if share <= 0:
        return False
    if probe + in_flight <= 0:
        return True
    return probe + in_flight < share * (total + in_flight)


def walker_due(probed_segments: Sequence[int], segment: int, every: int) -> bool:
    """At most one probe per ``every`` segments of a walker (``probed_segments``: its probed ones)."""
    return not probed_segments or segment - max(probed_segments) >= every


@dataclass(frozen=True)
class ShareState:
    """The probe's spending: ``probe`` and ``total`` cost in ``unit`` (``"s"`` or ``"labels"``),
    its labels (done or failed) and queued probe labels."""

    probe: float
    total: float
    unit: str
    n_labels: int
    n_done: int
    in_flight: int
    in_flight_cost: float

    @property
    def spent(self) -> float | None:
        """The probe's share of the loop's DFT cost so far (None before any)."""
        return self.probe / self.total if self.total > 0 else None

    def behind(self, share: float) -> bool:
        return probe_behind(self.probe, self.total, self.in_flight_cost, share)


def share_from_counts(probe_s: float, total_s: float, probe_n: int, total_n: int, n_done: int,
                      in_flight: int) -> ShareState:
    """:class:`ShareState` from the loop's label seconds and counts (probe's and all); queued
    probes cost the mean probe label, else the mean label, else one label."""
    if total_s > 0:
        mean = probe_s / probe_n if probe_n and probe_s > 0 else total_s / max(total_n, 1)
        return ShareState(probe_s, total_s, "s", probe_n, n_done, in_flight, in_flight * mean)
    return ShareState(float(probe_n), float(total_n), "labels", probe_n, n_done, in_flight, float(in_flight))


# ----------------------------------------------------------------------------- spending, asking and queuing


def share_state(db: Database) -> ShareState:
    """The probe's spending read from the database (cheap: a few counts and sums)."""
    loop = Structure.origin.not_in([Origin.generated, Origin.imported])
    with db.session() as s:
        total_n, total_s = s.execute(select(func.count(), func.sum(Label.walltime)).select_from(Label)
                                     .join(Structure).where(loop)).one()
        probe = Structure.heldout == HeldOut.probe
        probe_n, probe_s = s.execute(select(func.count(), func.sum(Label.walltime)).select_from(Label)
                                     .join(Structure).where(probe)).one()
        n_done = s.scalar(select(func.count()).select_from(Label).join(Structure).where(
            probe, Label.status == LabelStatus.done))
        in_flight = s.scalar(select(func.count()).select_from(Task).join(Structure, Task.structure_id == Structure.id)
                             .where(Task.kind == TaskKind.dft, probe,
                                    Task.state.in_([TaskState.pending, TaskState.running])))
    return share_from_counts(float(probe_s or 0.0), float(total_s or 0.0), int(probe_n or 0), int(total_n or 0),
                             int(n_done or 0), int(in_flight or 0))


def _probed_segments(db: Database, walker: int) -> list[int]:
    with db.session() as s:
        infos = s.scalars(select(Structure.info).where(Structure.heldout == HeldOut.probe))
        return [int(i["probe"]["segment"]) for i in infos
                if (i or {}).get("probe") and i["probe"].get("walker") == walker]


def _budget_left(ctx: Context, share: ShareState) -> bool:
    """Whether the DFT budget (``stop.max_dft_calls``/``max_dft_seconds``) has room for one more label."""
    stop = ctx.run.stop
    if stop.max_dft_seconds is not None and share.unit == "s" and share.total >= stop.max_dft_seconds:
        return False
    if stop.max_dft_calls is None:
        return True
    with ctx.db.session() as s:
        labels = s.scalar(select(func.count()).select_from(Label).join(Structure).where(
            Structure.origin.not_in([Origin.generated, Origin.imported])))
        queued = s.scalar(select(func.count()).select_from(Task).where(
            Task.kind == TaskKind.dft, Task.state.in_([TaskState.pending, TaskState.running])))
    return (labels or 0) + (queued or 0) < stop.max_dft_calls


def worker_request(ctx: Context, *, walker: int, segment: int, version: int) -> WorkerProbe | None:
    """What the MD worker needs to carve a probe cell at the end of segment ``segment`` of ``walker``
    (run by ``version``) should it complete, or None when no probe is wanted from it: the probe is
    off, ahead of its share, or the walker gave one fewer than ``otf.probe_every`` segments ago.
    Read when the segment is submitted; :func:`maybe_probe` decides again when it comes back."""
    from autopipe.steer.handlers.embed import carving_settings
    from autopipe.steer.work import WorkerProbe

    otf = ctx.run.otf
    if otf.probe_share <= 0:
        return None
    share = ctx.cached_per_cycle(SHARE_KEY, lambda: share_state(ctx.db))
    if not (share.behind(otf.probe_share) and walker_due(_probed_segments(ctx.db, walker), segment, otf.probe_every)):
        return None
    e, lattice, kpoints, plan, charge = carving_settings(ctx)
    return WorkerProbe(e, otf.uncertainty_threshold, ctx.run.md.seed, walker, segment, version, e.keep_frames_up_to,
                       lattice, kpoints, plan.strategy, charge)


def maybe_probe(ctx: Context, *, walker: int, segment: int, segment_id: int | None, version: int,
                found: ProbeFound | None) -> int | None:
    """After a segment that did not trigger: queue the probe cell its MD worker carved (``found``,
    see :func:`autopipe.steer.work.probe_on_worker`) when the probe is still behind its share and
    the DFT budget has room; returns the DFT task's id (already pushed), or None. Never raises: a
    probe that cannot be stored is logged and skipped (the run does not depend on it)."""
    otf = ctx.run.otf
    if found is None or otf.probe_share <= 0:
        return None
    try:
        if found.cell is None:
            ctx.progress.log(f"probe: nothing to label after walker {walker} segment {segment}: {found.what}")
            return None
        # Read once per loop pass, not per segment (16 ms at 64 walkers: benchmarks/scale.py); a
        # probe queued in this pass makes the next segment read it again.
        share = ctx.cached_per_cycle(SHARE_KEY, lambda: share_state(ctx.db))
        if not (share.behind(otf.probe_share) and _budget_left(ctx, share)):
            return None
        ctx.forget(SHARE_KEY)
        return _queue_probe(ctx, segment_id, version, found)
    except Exception as exc:  # a measurement: it must never stop the loop
        log.warning("probe after walker %d segment %d skipped: %s", walker, segment, exc, exc_info=True)
        ctx.progress.log(f"probe skipped (walker {walker} segment {segment}): {type(exc).__name__}: {exc}")
        return None


def _queue_probe(ctx: Context, segment_id: int | None, version: int, found: ProbeFound) -> int:
    """Store the probe's frame (whole, or its compact record), its cell and a DFT task; push the task."""
    from autopipe.db import structure_from_atoms

    cell, info, frame = found.cell, found.info, found.frame
    compact = not cell.whole_frame and "record_radius" in frame.info
    with ctx.db.session() as s:
        frame_info = {"walker": info["walker"], "step": found.step,
                      **({k: v for k, v in frame.info.items() if k != "step"} if compact else {}),
                      **({"probe": info} if cell.whole_frame else {})}
        row = structure_from_atoms(frame, Origin.frame_record if compact else Origin.md_frame, segment_id=segment_id,
                                   potential_version=version, heldout=HeldOut.probe, info=frame_info)
        s.add(row)
        s.flush()
        sid = row.id
        if not cell.whole_frame:
            sub = structure_from_atoms(
                cell.atoms, Origin.embedded, parent_id=sid, center_index=cell.center, force_mask=cell.masked,
                potential_version=version, heldout=HeldOut.probe, selection_note="false-negative probe",
                info={**{k: v for k, v in cell.atoms.info.items() if k.startswith("embedding_")}, "probe": info})
            s.add(sub)
            s.flush()
            sid = sub.id
        task = ctx.new_task(TaskKind.dft, structure_id=sid)
        task.priority = PROBE_PRIORITY
        s.add(task)
        s.flush()
        task_id = task.id
    msg = (f"walker {info['walker']} step {found.step} (v{version}): {found.what}, "
           + ("the whole frame" if cell.whole_frame else f"a {len(cell.atoms)}-atom cell") + " to DFT"
           + (f" (the frame's {frame.info['frame_atoms']} atoms stayed on the MD worker)" if compact else ""))
    ctx.db.record_event(PROBE_EVENT, msg, structure_id=sid, **info)
    ctx.progress.log(f"probe: {msg}")
    ctx.push(task_id)
    return task_id


# ----------------------------------------------------------------------------- scores


def probe_frames(db: Database) -> list[HeldOutFrame]:
    """Every probe structure with its newest successful label: ``[(atoms, forces eV/Å, trusted)]``
    (:func:`autopipe.steer.gate.heldout_frames` of the probe's role)."""
    from autopipe.steer.gate import heldout_frames

    return heldout_frames(db, HeldOut.probe)


def version_scores(gammas: Sequence[np.ndarray], errors: Sequence[np.ndarray], structure_ids: Sequence[int],
                   threshold: float | None, confidence: float = 0.95,
                   upper_confidence: float | None = None) -> dict[str, Any]:
    """One version's probe measurement from its per-structure trusted-atom gammas ((n_i,)) and force
    errors ((n_i, 3), eV/Å): the overall force RMSE with its interval and the calibration curve; with
    ``upper_confidence``, also ``upper``: the one-sided upper bound at that confidence (eV/Å, None
    with fewer than two structures; the accuracy stop rule reads it)."""
    extra = {"upper": None, "upper_confidence": upper_confidence} if upper_confidence is not None else {}
    if not len(gammas):
        return {**overall(np.zeros((0, 3)), np.zeros(0), confidence=confidence).as_dict(), "curve": [], **extra}
    g = np.concatenate([np.asarray(x, float).ravel() for x in gammas])
    e = np.concatenate([np.asarray(x, float).reshape(-1, 3) for x in errors])
    ids = np.concatenate([np.full(len(np.asarray(x).ravel()), i) for x, i in zip(gammas, structure_ids)])
    curve = calibration_curve(g, e, ids, gamma_edges(threshold), confidence=confidence)
    if upper_confidence is not None:
        extra["upper"] = upper_bound(e, ids, upper_confidence).as_dict()["high"]
    return {**overall(e, ids, confidence=confidence).as_dict(), "curve": [b.as_dict() for b in curve], **extra}


def score_versions(store: PotentialStore, frames: Sequence[HeldOutFrame], threshold: float | None,
                   upper_confidence: float | None = None) -> list[dict]:
    """Per published version (not one still being gated; corrupted ones are left out): its
    :func:`version_scores` on ``frames`` (pyace evaluates every frame with every version)."""
    from autopipe.db import PotentialStatus
    from autopipe.steer.gate import evaluate_frames

    out = []
    with store.db.session() as s:
        from autopipe.db import Potential

        rows = [(p.version, p.status) for p in s.scalars(select(Potential).order_by(Potential.version))]
    for version, status in rows:
        if status is PotentialStatus.pending:
            continue
        try:
            pot = store.get(version)
        except (KeyError, ValueError):
            continue
        gammas, errors, ids = evaluate_frames(pot, frames)
        out.append({"version": version, "status": status.value if status is not None else "served",
                    **version_scores(gammas, errors, ids, threshold, upper_confidence=upper_confidence)})
    return out


def rescore(ctx: Context) -> dict[str, Any] | None:
    """Score every version on the probe's labels and record a ``probe_scores`` event (status and the
    report print it); None (and nothing recorded) before the probe has a label. Then the threshold
    rule (:func:`autopipe.steer.threshold.update_threshold`; a no-op without a target). Never raises."""
    from autopipe.steer.threshold import update_threshold

    try:
        return _rescore(ctx)
    finally:
        update_threshold(ctx)


def _rescore(ctx: Context) -> dict[str, Any] | None:
    try:
        frames = probe_frames(ctx.db)
        if not frames:
            return None
        thr = ctx.run.otf.uncertainty_threshold
        acc = ctx.run.stop.accuracy
        versions = score_versions(ctx.store, frames, thr, upper_confidence=acc.confidence if acc else None)
        share = share_state(ctx.db)
        data = {"versions": versions, "n_labels": len(frames), "threshold": thr,
                "edges": [float(x) for x in gamma_edges(thr)[:-1]], "share": {**asdict(share), "spent": share.spent}}
        best = [v for v in versions if v["rms"] is not None]
        last = best[-1] if best else None
        msg = (f"{len(frames)} probe label(s)" + (f"; v{last['version']} force RMSE {last['rms'] * 1000:.1f} meV/Å"
                                                  if last else ""))
        ctx.db.record_event(SCORES_EVENT, msg, **data)
        return data
    except Exception as exc:  # a measurement: it must never stop the loop
        log.warning("scoring the probe's labels failed: %s", exc, exc_info=True)
        ctx.progress.log(f"probe scores not updated: {type(exc).__name__}: {exc}")
        return None


def is_probe(db: Database, structure_id: int) -> bool:
    with db.session() as s:
        row = s.get(Structure, structure_id)
        return row is not None and row.heldout is HeldOut.probe
