"""Shared analysis: force errors of a potential against the run's labeller, and the frames
they are measured on. The report and ``autopipe replay`` both use it; it imports neither.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from autopipe.db import Database, Origin, Structure


def trigger_frames(db: Database, dft_config: dict[str, Any] | None):
    """The run's trigger frames with forces from the labelling code: ``[(atoms, forces eV/Å)]``.

    Only for analytic oracles, which are cheap; pw.x runs return ``None``. These are
    in-sample frames: the environments around their trigger atoms were carved and trained on.
    """
    if not dft_config or dft_config.get("code") == "espresso":
        return None
    from autopipe.db import atoms_from_structure
    from autopipe.dft import label

    with db.session() as s:
        frames = [atoms_from_structure(r) for r in s.scalars(
            select(Structure).where(Structure.origin == Origin.md_frame).order_by(Structure.id))]
    out = []
    for a in frames:
        res = label(a, dft_config)
        if res.ok:
            out.append((a, res.forces))
    return out


def force_rmse(potential, frames) -> float:
    """Force RMSE (eV/Å, per component) of a potential (``PotentialFiles``) on ``[(atoms, forces)]``."""
    from autopipe.potentials.uncertainty import evaluate

    err = [(evaluate(atoms, potential)["forces"] - ref).ravel() for atoms, ref in frames]
    return float(np.sqrt(np.mean(np.concatenate(err) ** 2))) if err else float("nan")
