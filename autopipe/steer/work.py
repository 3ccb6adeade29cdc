"""What runs on Parsl workers: thin wrappers over the plain functions of each module.

Each takes only picklable arguments (paths, pydantic configs, ``ase.Atoms``,
``PotentialFiles``), touches no database, and returns a typed result with a status,
so the same function runs in a thread, an HTEX worker, a Slurm job or a Globus
Compute endpoint. Heavy imports happen inside. ``parsl_resource_specification`` is
accepted (and ignored) because Parsl passes per-task priorities only to apps that
declare it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def md_work(checkpoint: str, potential, md_config, otf_config, workdir: str, n_steps: int,
            parsl_resource_specification: dict | None = None):
    """Run one MD segment from a checkpoint file; returns :class:`autopipe.md.SegmentResult`."""
    from autopipe.md import load_state, run_segment

    return run_segment(load_state(checkpoint), potential, md_config, otf_config, workdir=Path(workdir), n_steps=n_steps)


def dft_work(atoms, dft_config, workdir: str, launcher: list[str],
             parsl_resource_specification: dict | None = None):
    """Label one structure; returns :class:`autopipe.dft.LabelResult` (never raises for bad input)."""
    from autopipe.dft import label

    return label(atoms, dft_config, workdir=Path(workdir), launcher=launcher)


@dataclass
class Candidate:
    """A carved sub-cell ready for selection: ``atoms`` carries ``parent_index`` and info."""

    atoms: Any
    center: int  # index of the centre atom in the parent frame
    masked: list[int]
    gamma: float  # gamma of the centre atom in the parent frame
    core_gamma_now: float | None = None  # newest potential's max gamma over unmasked atoms


def embed_work(frame, centers: list[int], embedding_config, newest_potential=None,
               parsl_resource_specification: dict | None = None) -> list[Candidate]:
    """Carve one periodic sub-cell per centre; re-grade its core with ``newest_potential`` if given."""
    import numpy as np

    from autopipe.embedding import extract_periodic_subsystem

    gamma = frame.arrays.get("gamma")
    out = []
    for c in centers:
        sub, masked = extract_periodic_subsystem(
            frame, c, embedding_config.cutoff, embedding_config.buffer, min_distance=embedding_config.min_distance
        )
        cand = Candidate(atoms=sub, center=int(c), masked=[int(i) for i in masked],
                         gamma=float(gamma[c]) if gamma is not None else float("nan"))
        if newest_potential is not None:
            from autopipe.potentials import gamma as grade

            g = grade(sub, newest_potential)
            core = np.setdiff1d(np.arange(len(sub)), masked)
            cand.core_gamma_now = float(g[core].max()) if len(core) else 0.0
        out.append(cand)
    return out


def fit_work(request, parsl_resource_specification: dict | None = None):
    """One training round's fit: dataset from the label snapshot, pacemaker, .yace, .asi
    (:func:`autopipe.potentials.trainer.fit_round`); returns a ``FitOutput``."""
    from autopipe.potentials.trainer import fit_round

    return fit_round(request)
