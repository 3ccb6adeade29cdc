"""The compact record of a trigger frame that stays on the MD worker.

A frame of 10^6 atoms is about 40 MB (positions, numbers, per-atom gamma); the cells carved
from it are a few hundred atoms each. The worker keeps the frame and sends back this record:
the box, the step, and the atoms within ``radius`` of each centre tried (their positions,
numbers, gamma and index in the frame). That is what lineage needs (a carved cell's
``parent_index`` points into the frame, the record says where those atoms were) and what a
reader of the run needs to judge a centre (its neighbourhood and how uncertain it was).
Its size is bounded by the number of centres and the radius, not by the frame.

Pure geometry: no files, no database. Units: Å.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

__all__ = ["frame_record"]


def frame_record(frame: Atoms, centres: Sequence[int], radius: float, threshold: float) -> Atoms:
    """The atoms of ``frame`` within ``radius`` Å (minimum image) of any of ``centres``, in the
    frame's cell, with arrays ``parent_index`` (index in the frame) and ``gamma`` (when the frame
    has it), and ``info``: ``frame_atoms`` (atoms in the whole frame), ``step``, ``centres``,
    ``record_radius`` (Å), ``frame_max_gamma`` and ``above_threshold`` (atoms of the frame above
    ``threshold``). The most uncertain atom of the frame is always kept."""
    gamma = np.asarray(frame.arrays["gamma"], dtype=float) if "gamma" in frame.arrays else None
    keep = set(int(c) for c in centres)
    if gamma is not None and len(frame):
        keep.add(int(np.argmax(gamma)))
    idx = np.zeros(len(frame), dtype=bool)
    for c in sorted(keep):
        idx |= frame.get_distances(c, np.arange(len(frame)), mic=True) <= radius
    chosen = np.flatnonzero(idx)
    rec = Atoms(numbers=frame.numbers[chosen], positions=frame.positions[chosen], cell=frame.cell, pbc=frame.pbc)
    rec.arrays["parent_index"] = chosen.astype(np.int64)
    if gamma is not None:
        rec.arrays["gamma"] = gamma[chosen]
        rec.info["frame_max_gamma"] = float(gamma.max()) if len(gamma) else float("nan")
        rec.info["above_threshold"] = int(np.sum(gamma > threshold))
    rec.info.update(frame_atoms=len(frame), centres=sorted(int(c) for c in centres), record_radius=float(radius))
    if "step" in frame.info:
        rec.info["step"] = int(frame.info["step"])
    return rec
