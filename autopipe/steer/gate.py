"""The gate before every hot-swap, the held-out labels it scores on, and rollbacks.

* **Held-out slice.** Every ``train.heldout_every``-th successful label of a triggered
  candidate (:func:`heldout_turn`, applied by :func:`mark_heldout` when the label is stored)
  gets ``Structure.heldout = triggered``; the probe's labels use ``HeldOut.probe``. The one
  place that builds training sets (:func:`autopipe.potentials.dataset.build_dataset`) skips
  every held-out structure, whatever its role.
* **Gate.** A retrained version is published ``pending``; :func:`judge` scores it and its
  parent on every held-out label (force RMSE over trusted atoms: a carved cell's masked
  atoms feel its artificial boundary and are left out), and :func:`gate_decision` accepts it
  only if ``new <= parent * (1 + train.gate_tolerance)``. Accepted: ``served``, the walkers
  hot-swap as before. Rejected: kept in the store as ``rejected``, never given to walkers.
* **Rollback.** :func:`rollback` serves an earlier version again and withdraws every served
  version above it; the loop reads it from the database at its next cycle, so the command
  works while the loop runs in another process.

Energies are not scored: carved cells' total energies are boundary artefacts (trained with
weight 0) and each fit may subtract its own fitted reference energies.

Units: forces eV/Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from sqlalchemy import func, select

from autopipe.db import Candidate, CandidateStatus, HeldOut, Label, LabelStatus, Potential, PotentialStatus, Structure

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.db import Database
    from autopipe.potentials.store import PotentialFiles, PotentialStore

GATE_EVENT = "gate"
ROLLBACK_EVENT = "rollback"

#: A held-out label: the structure, its reference forces (eV/Å, (n, 3)) and which atoms are trusted.
HeldOutFrame = tuple["Atoms", np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- held-out slice


def heldout_turn(n_labels: int, every: int) -> bool:
    """Whether the ``n_labels``-th label (1-based) of a triggered candidate is held out: every ``every``-th; 0: none."""
    return every > 0 and n_labels > 0 and n_labels % every == 0


def mark_heldout(db: Database, structure_id: int, every: int) -> bool:
    """Hold out ``structure_id`` if its (just stored, successful) label is the Nth of a triggered candidate.

    Counted over structures that a selected :class:`Candidate` points to (carved cells and
    whole trigger frames) with a successful label; calibration cells and the generated or
    imported data are not candidates, so they never count. True when it was marked."""
    if every <= 0:
        return False
    with db.session() as s:
        ours = select(Candidate.structure_id).where(Candidate.status == CandidateStatus.selected)
        if s.scalar(select(func.count()).select_from(Candidate).where(
                Candidate.structure_id == structure_id, Candidate.status == CandidateStatus.selected)) == 0:
            return False
        labelled = select(Label.structure_id).where(Label.status == LabelStatus.done)
        n = s.scalar(select(func.count()).select_from(Structure).where(
            Structure.id.in_(ours), Structure.id.in_(labelled))) or 0
        if not heldout_turn(int(n), every):
            return False
        row = s.get(Structure, structure_id)
        if row.heldout is None:
            row.heldout = HeldOut.triggered
    return True


def heldout_frames(db: Database, role: HeldOut | None = None) -> list[HeldOutFrame]:
    """Every held-out structure (of ``role``; None: any) with its newest successful label:
    ``[(atoms, forces eV/Å, trusted)]``; ``atoms.info["structure_id"]`` names its row."""
    from autopipe.db import atoms_from_structure

    newest: dict[int, HeldOutFrame] = {}
    held = Structure.heldout.is_not(None) if role is None else Structure.heldout == role
    with db.session() as s:
        q = (select(Label, Structure).join(Structure, Label.structure_id == Structure.id)
             .where(held, Label.status == LabelStatus.done, Label.forces.is_not(None))
             .order_by(Label.id))
        for label, struct in s.execute(q):
            trusted = np.ones(struct.n_atoms, bool)
            trusted[list(struct.force_mask or [])] = False
            forces = np.asarray(label.forces, float).reshape(struct.n_atoms, 3)
            newest[struct.id] = (atoms_from_structure(struct), forces, trusted)
    return list(newest.values())


# ----------------------------------------------------------------------------- scores and the decision


@dataclass(frozen=True)
class HeldOutScore:
    """A potential's force RMSE (eV/Å, per component) over the trusted atoms of the held-out labels."""

    force_rmse: float | None  # None: no trusted atom to score on
    n_atoms: int
    n_structures: int


def evaluate_frames(pot: PotentialFiles,
                    frames: Sequence[HeldOutFrame]) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """``pot``'s gamma ((n_i,)) and force errors ((n_i, 3), eV/Å) on the trusted atoms of each frame with
    one, and the frames' structure ids (``atoms.info["structure_id"]``; a frame without one: -1 - its index)."""
    from autopipe.potentials.uncertainty import evaluate

    gammas, errors, ids = [], [], []
    for k, (atoms, ref, trusted) in enumerate(frames):
        if not trusted.any():
            continue
        res = evaluate(atoms, pot)
        gammas.append(np.asarray(res["gamma"], float)[trusted])
        errors.append((np.asarray(res["forces"], float) - ref)[trusted])
        ids.append(int(atoms.info.get("structure_id", -1 - k)))
    return gammas, errors, ids


def score(potential: PotentialFiles, frames: Sequence[HeldOutFrame]) -> HeldOutScore:
    """Force RMSE of ``potential`` over the trusted atoms of ``frames``."""
    _, errors, _ = evaluate_frames(potential, frames)
    n_atoms = sum(len(e) for e in errors)
    if not n_atoms:
        return HeldOutScore(None, 0, len(frames))
    return HeldOutScore(float(np.sqrt(np.mean(np.concatenate(errors) ** 2))), n_atoms, len(frames))


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str


def gate_decision(new: float | None, parent: float | None, tolerance: float) -> GateDecision:
    """Accept when ``new <= parent * (1 + tolerance)`` (force RMSEs, eV/Å); with nothing held out
    (either score ``None``) the gate cannot judge and passes, saying so."""
    if new is None or parent is None:
        return GateDecision(True, "passed without a check: no held-out labels yet")
    limit = parent * (1.0 + tolerance)
    if math.isfinite(new) and new <= limit:
        return GateDecision(True, f"accepted: held-out force RMSE {new * 1000:.1f} meV/Å <= {limit * 1000:.1f} "
                                  f"(parent {parent * 1000:.1f} x {1 + tolerance:g})")
    return GateDecision(False, f"rejected: held-out force RMSE {new * 1000:.1f} meV/Å > {limit * 1000:.1f} "
                               f"(parent {parent * 1000:.1f} x {1 + tolerance:g})")


def judge(db: Database, store: PotentialStore, version: int, *, tolerance: float,
          min_structures: int = 1) -> tuple[GateDecision, dict]:
    """Score ``version`` and its parent on the held-out labels, set its status, record a ``gate`` event.

    With fewer than ``min_structures`` held-out structures (``train.gate_min_heldout``) the version
    passes, the event saying so with both scores: too little evidence to keep it from the walkers.

    Returns the decision and the event's data (version, parent_version, scores eV/Å,
    tolerance, n_atoms, n_structures, accepted)."""
    new = store.get(version, verify=False)
    frames = heldout_frames(db)
    parent = None
    if new.parent_version is not None and new.parent_version in store.versions():
        parent = store.get(new.parent_version, verify=False)
    s_new = score(new, frames) if frames and parent is not None else HeldOutScore(None, 0, len(frames))
    s_parent = score(parent, frames) if s_new.force_rmse is not None else HeldOutScore(None, 0, len(frames))
    decision = gate_decision(s_new.force_rmse, s_parent.force_rmse, tolerance)
    if not decision.accepted and s_new.n_structures < min_structures:
        decision = GateDecision(True, f"passed without a check: {s_new.n_structures} held-out structure(s), fewer "
                                      f"than the {min_structures} the gate needs (train.gate_min_heldout); "
                                      + decision.reason)
    if parent is None:
        decision = GateDecision(True, "passed without a check: no parent to compare with")
    set_status(db, version, PotentialStatus.served if decision.accepted else PotentialStatus.rejected)
    data = dict(version=version, parent_version=new.parent_version, force_rmse=s_new.force_rmse,
                parent_force_rmse=s_parent.force_rmse, tolerance=tolerance, n_atoms=s_new.n_atoms,
                n_structures=s_new.n_structures, accepted=decision.accepted)
    db.record_event(GATE_EVENT, f"v{version} {decision.reason}", **data)
    return decision, data


def set_status(db: Database, version: int, status: PotentialStatus) -> bool:
    """The gate's verdict on a ``pending`` version; a version a rollback withdrew meanwhile stays
    withdrawn. True when the status was set."""
    with db.session() as s:
        row = s.scalars(select(Potential).where(Potential.version == version)).one()
        if row.status is not PotentialStatus.pending:
            return False
        row.status = status
        return True


# ----------------------------------------------------------------------------- rollback


def rollback(db: Database, store: PotentialStore, version: int) -> list[int]:
    """Serve ``version`` again and withdraw every served (or pending) version above it; returns the withdrawn.

    Refuses (``ValueError``, one line) a version that was never published, one the gate
    rejected, and one whose files are missing or corrupted. Recorded as a ``rollback`` event;
    the loop hands it to walkers from their next segment on (:func:`autopipe.steer.walkers.start_segments`)."""
    from autopipe.potentials.store import is_served

    with db.session() as s:
        rows = {p.version: p for p in s.scalars(select(Potential))}
        row = rows.get(version)
        if row is None:
            known = ", ".join(f"v{v}" for v in sorted(rows)) or "none"
            raise ValueError(f"no potential v{version} in this run (published: {known})")
        if row.status is PotentialStatus.rejected:
            raise ValueError(f"v{version} was rejected by the gate (worse than its parent on held-out labels); "
                             "roll back to a served version")
        if row.status is PotentialStatus.pending:
            raise ValueError(f"v{version} has not been judged by the gate yet; roll back to a served version")
        if bad := store.verify(row):
            raise ValueError(f"v{version}: {', '.join(bad)} missing or corrupted (checksum mismatch)")
        current = max((v for v, p in rows.items() if is_served(p.status)), default=None)
        withdrawn = sorted(v for v, p in rows.items() if v > version and (
            is_served(p.status) or p.status is PotentialStatus.pending))
        row.status = PotentialStatus.served
        for v in withdrawn:
            rows[v].status = PotentialStatus.withdrawn
    off = f"; withdrawn: {', '.join(f'v{v}' for v in withdrawn)}" if withdrawn else ""
    db.record_event(ROLLBACK_EVENT, f"walkers use v{version} from their next segment on (was v{current}){off}",
                    version=version, previous_version=current, withdrawn=withdrawn)
    return withdrawn
