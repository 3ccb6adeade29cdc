"""Extrapolation grade per element: the largest per-atom gamma of each species in a frame.

pacemaker's active sets are per element, so one element can extrapolate while another stays
inside its training data (a vacancy next to Ni but not Cu, close Cu-Cu contacts only). The
trigger frames the loop stores carry per-atom gamma and atomic numbers, so these numbers come
from the database without running anything again. gamma is dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def max_gamma_per_element(numbers: Sequence[int], gamma: Sequence[float]) -> dict[str, float]:
    """``{symbol: largest gamma of that element's atoms}`` for one frame, in the order the
    elements first appear. Raises ``ValueError`` when the two arrays differ in length."""
    from ase.data import chemical_symbols

    z = np.asarray(numbers, dtype=int)
    g = np.asarray(gamma, dtype=float)
    if z.shape != g.shape:
        raise ValueError(f"{len(z)} atomic numbers but {len(g)} gamma values")
    return {chemical_symbols[e]: float(np.max(g[z == e])) for e in dict.fromkeys(z.tolist())}


@dataclass(frozen=True)
class TriggerGamma:
    """One trigger frame's per-element maxima: ``walker`` and ``segment`` numbers, MD ``step``
    (the frame's, when recorded), the potential ``version`` that produced the gamma."""

    structure_id: int
    walker: int | None
    segment: int | None
    step: int | None
    version: int | None
    per_element: dict[str, float]
    #: True for a frame carved on the MD worker (:data:`Origin.frame_record`): only the atoms near
    #: the centres were kept, so an element's maximum is over those atoms (a lower bound).
    partial: bool = False


def trigger_gamma(db) -> list[TriggerGamma]:
    """Per-element maximum gamma of every trigger frame of the run (probe frames left out), oldest
    first: whole frames and the compact records of frames carved on the MD worker (``partial``);
    frames stored without per-atom gamma are skipped."""
    from sqlalchemy import select

    from autopipe.db import Origin, Segment, Structure, Walker
    from autopipe.heldout import not_probe

    out = []
    with db.session() as s:
        rows = s.execute(select(Structure, Segment, Walker.index)
                         .outerjoin(Segment, Structure.segment_id == Segment.id)
                         .outerjoin(Walker, Segment.walker_id == Walker.id)
                         .where(Structure.origin.in_([Origin.md_frame, Origin.frame_record]), not_probe()).order_by(Structure.id)).all()
        for frame, seg, walker in rows:
            if frame.gamma is None or len(frame.gamma) != frame.n_atoms:
                continue
            step = (frame.info or {}).get("step")
            out.append(TriggerGamma(
                structure_id=frame.id, walker=walker,
                segment=None if seg is None else seg.number, step=None if step is None else int(step),
                version=frame.potential_version, per_element=max_gamma_per_element(frame.numbers, frame.gamma),
                partial=frame.origin == Origin.frame_record))
    return out
