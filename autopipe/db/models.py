"""SQLAlchemy 2.0 models: the whole state of a run.

Structures, DFT labels, potentials, MD walkers and segments, tasks and events. The
steering loop commits a row's final state only after the files it names exist, so a
process killed at any moment leaves a database it can resume from.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import numpy as np
from sqlalchemy import JSON, DateTime, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from autopipe.db.types import NDArray


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[int]: JSON, np.ndarray: NDArray}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native ENUM type) so new members need no migration.
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Origin(str, enum.Enum):
    """Where a structure came from."""

    generated = "generated"  # module A: initial dataset
    initial = "initial"  # a walker's starting structure
    md_frame = "md_frame"  # a frame of an MD segment (e.g. the trigger frame)
    # The compact record of a trigger frame carved on the MD worker (the frame stayed there): the
    # atoms within core_radius of its centres, parent_index their indices in the frame (info: frame_atoms).
    frame_record = "frame_record"
    embedded = "embedded"  # a periodic sub-cell carved from an MD frame
    external = "external"  # given by the user (not a training row)
    imported = "imported"  # a row of the user's pacemaker training data (initial_potential.training_data)


class LabelStatus(str, enum.Enum):
    done = "done"
    failed = "failed"  # ran but did not give a usable result
    refused = "refused"  # never ran: the structure cannot be computed


class SegmentStatus(str, enum.Enum):
    pending = "pending"
    running = "running"
    completed = "completed"  # ran all its steps below the threshold
    triggered = "triggered"  # stopped on high gamma
    failed = "failed"  # lost atoms, NaN, LAMMPS error


class WalkerStatus(str, enum.Enum):
    running = "running"
    waiting = "waiting"  # for a potential newer than the one that triggered
    finished = "finished"


class TaskState(str, enum.Enum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


class HeldOut(str, enum.Enum):
    """Why a labelled structure is kept out of every training set (``Structure.heldout``).

    Held-out labels measure a potential on data it never saw: the gate before a hot-swap
    (:mod:`autopipe.steer.gate`) scores a new version and its parent on all of them.
    """

    triggered = "triggered"  # every Nth label of a triggered candidate (train.heldout_every)
    probe = "probe"  # a configuration the potential called safe, labelled to measure its error


class PotentialStatus(str, enum.Enum):
    """Whether walkers may use a published version (``Potential.status``; NULL reads as ``served``)."""

    served = "served"  # published to walkers (the newest served intact version is the one they use)
    pending = "pending"  # published, waiting for the gate's decision (a crash here leaves it unserved)
    rejected = "rejected"  # worse than its parent on the held-out labels: kept, never given to walkers
    withdrawn = "withdrawn"  # taken off the walkers by ``autopipe rollback`` (may be rolled back to again)


class TaskKind(str, enum.Enum):
    md = "md"
    dft = "dft"
    train = "train"
    embed = "embed"


class Structure(Base):
    """An atomic configuration: positions (Å), cell (Å), pbc, per-atom metadata."""

    __tablename__ = "structures"

    id: Mapped[int] = mapped_column(primary_key=True)
    origin: Mapped[Origin] = mapped_column(_enum(Origin), index=True)
    numbers: Mapped[np.ndarray]
    positions: Mapped[np.ndarray]
    cell: Mapped[np.ndarray]
    pbc: Mapped[list[int]] = mapped_column(JSON)
    n_atoms: Mapped[int] = mapped_column(Integer)
    # Embedded sub-cells: the frame they were carved from and its centre atom.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("structures.id"), index=True)
    center_index: Mapped[int | None] = mapped_column(Integer)
    parent_index: Mapped[np.ndarray | None]  # each atom's index in the parent frame
    gamma: Mapped[np.ndarray | None]  # per-atom extrapolation grade, where known
    max_gamma: Mapped[float | None] = mapped_column(Float)
    force_mask: Mapped[list[int] | None] = mapped_column(JSON)  # indices whose forces are not trained on
    # Training weights relative to an ordinary structure's 1 (None: the default for its origin).
    # Imported pacemaker data carry their own; force_mask still zeroes on top of force_weights.
    energy_weight: Mapped[float | None] = mapped_column(Float)
    force_weights: Mapped[np.ndarray | None]  # (n_atoms,), >= 0
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"), index=True)
    potential_version: Mapped[int | None] = mapped_column(Integer)  # potential that produced gamma
    selected: Mapped[bool | None] = mapped_column(default=None)  # None: not yet judged by selection
    selection_note: Mapped[str | None] = mapped_column(Text)
    # Not None: a held-out label's structure, never trained on (see HeldOut).
    heldout: Mapped[HeldOut | None] = mapped_column(_enum(HeldOut), index=True, default=None)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    labels: Mapped[list["Label"]] = relationship(back_populates="structure")


class Label(Base):
    """A DFT (or oracle) result for a structure: energy (eV), forces (eV/Å), stress (eV/Å³)."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id"), index=True)
    status: Mapped[LabelStatus] = mapped_column(_enum(LabelStatus), index=True)
    code: Mapped[str] = mapped_column(String(32))
    energy: Mapped[float | None] = mapped_column(Float)
    forces: Mapped[np.ndarray | None]
    stress: Mapped[np.ndarray | None]  # Voigt order xx yy zz yz xz xy, eV/Å³; 3D-periodic cells only
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    walltime: Mapped[float] = mapped_column(Float, default=0.0)  # s, all attempts
    attempts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # one entry per attempt
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    structure: Mapped[Structure] = relationship(back_populates="labels")


class Potential(Base):
    """A published potential version; the row appears only once its files are in place."""

    __tablename__ = "potentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    name: Mapped[str] = mapped_column(String(128))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    directory: Mapped[str] = mapped_column(Text)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)  # role ("yaml", "yace", "asi") -> file name
    checksums: Mapped[dict[str, Any]] = mapped_column(JSON)  # role -> sha256
    n_train: Mapped[int] = mapped_column(Integer, default=0)  # structures in the training set
    last_label_id: Mapped[int] = mapped_column(Integer, default=0)  # newest label the fit saw
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    walltime: Mapped[float] = mapped_column(Float, default=0.0)  # s
    # NULL (rows of older runs) reads as served; see PotentialStatus.
    status: Mapped[PotentialStatus | None] = mapped_column(_enum(PotentialStatus), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Walker(Base):
    """One MD trajectory, run segment after segment."""

    __tablename__ = "walkers"

    id: Mapped[int] = mapped_column(primary_key=True)
    index: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[WalkerStatus] = mapped_column(_enum(WalkerStatus), default=WalkerStatus.running)
    step: Mapped[int] = mapped_column(Integer, default=0)  # MD step of the last good checkpoint
    checkpoint: Mapped[str | None] = mapped_column(Text)  # path of the last good checkpoint
    waiting_for_version: Mapped[int | None] = mapped_column(Integer)  # needs a potential newer than this
    segments_since_trigger: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed segments
    error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)  # why it waits or why it stopped, in words


class Segment(Base):
    """One MD segment of a walker."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("walker_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    walker_id: Mapped[int] = mapped_column(ForeignKey("walkers.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 0, 1, 2, ... within the walker
    potential_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[SegmentStatus] = mapped_column(_enum(SegmentStatus), default=SegmentStatus.pending, index=True)
    start_step: Mapped[int] = mapped_column(Integer)
    end_step: Mapped[int | None] = mapped_column(Integer)
    max_gamma: Mapped[float | None] = mapped_column(Float)
    start_checkpoint: Mapped[str | None] = mapped_column(Text)
    end_checkpoint: Mapped[str | None] = mapped_column(Text)
    trajectory: Mapped[str | None] = mapped_column(Text)
    gamma_trace: Mapped[np.ndarray | None]  # (n_checks, 2): step, max gamma
    thermo: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    walltime: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    rewind_step: Mapped[int | None] = mapped_column(Integer)  # triggered: where the walker resumes
    note: Mapped[str | None] = mapped_column(Text)  # how a trigger was found (e.g. a probed blow-up)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class CandidateStatus(str, enum.Enum):
    selected = "selected"  # sent to DFT
    covered = "covered"  # adds nothing: the active set (with cells already chosen) covers it
    refused = "refused"  # no sub-cell could be carved (reason says why)


class Candidate(Base):
    """One centre of a trigger frame considered for a DFT label, and what became of it."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("structures.id"), index=True)
    center: Mapped[int] = mapped_column(Integer)  # atom index in the frame
    gamma: Mapped[float | None] = mapped_column(Float)  # the centre's gamma in the frame
    status: Mapped[CandidateStatus] = mapped_column(_enum(CandidateStatus), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)  # max gamma of its trusted atoms against the extended active set
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structures.id"))  # the carved cell (or the whole frame)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    """A unit of work given to Parsl; the database mirrors its life."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind), index=True)
    executor: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=100)  # lower runs first
    state: Mapped[TaskState] = mapped_column(_enum(TaskState), default=TaskState.pending, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("structures.id"))
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Event(Base):
    """A timestamped record of something the run did (trigger, publish, stop, ...)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
