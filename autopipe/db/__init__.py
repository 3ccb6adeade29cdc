"""The run database: SQLAlchemy 2.0 models and sessions."""

from autopipe.db.atoms import atoms_from_structure, structure_from_atoms
from autopipe.db.models import (
    Base,
    Candidate,
    CandidateStatus,
    Event,
    HeldOut,
    Label,
    LabelStatus,
    Origin,
    Potential,
    PotentialStatus,
    Segment,
    SegmentStatus,
    Structure,
    Task,
    TaskKind,
    TaskState,
    Walker,
    WalkerStatus,
)
from autopipe.db.session import Database

__all__ = [
    "Base", "Candidate", "CandidateStatus", "Database", "Event", "HeldOut", "Label", "LabelStatus", "Origin", "Potential", "PotentialStatus", "Segment", "SegmentStatus",
    "Structure", "Task", "TaskKind", "TaskState", "Walker", "WalkerStatus", "atoms_from_structure",
    "structure_from_atoms",
]
