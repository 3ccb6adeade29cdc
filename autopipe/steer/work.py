"""What runs on Parsl workers: thin wrappers over the plain functions of each module.

Each takes only picklable arguments (paths, pydantic configs, ``ase.Atoms``,
``PotentialFiles``), touches no database, and returns a typed result with a status,
so the same function runs in a thread, an HTEX worker, a Slurm job or a Globus
Compute endpoint. Heavy imports happen inside. ``parsl_resource_specification`` is
accepted (and ignored) because Parsl passes per-task priorities only to apps that
declare it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def md_work(checkpoint: str, potential, md_config, otf_config, workdir: str, n_steps: int,
            launcher: list[str] | None = None, lammps_args: list[str] | None = None,
            parsl_resource_specification: dict | None = None):
    """Run one walker segment from a checkpoint file (blow-ups probed into triggers, the rewind
    state found): :func:`autopipe.md.run_walker_segment`; returns a ``SegmentResult``.
    ``launcher``/``lammps_args``: the MD executor's MPI launcher and LAMMPS switches (native route)."""
    from autopipe.md import BlowUpLimits, load_state, run_walker_segment

    limits = BlowUpLimits(max_force=md_config.max_force, max_energy_change=md_config.max_energy_change)
    return run_walker_segment(load_state(checkpoint), potential, md_config, otf_config, workdir=Path(workdir),
                              n_steps=n_steps, limits=limits, launcher=launcher or None,
                              lammps_args=lammps_args or None)


def dft_work(atoms, dft_config, workdir: str, launcher: list[str],
             parsl_resource_specification: dict | None = None):
    """Label one structure; returns :class:`autopipe.dft.LabelResult` (never raises for bad input)."""
    from autopipe.dft import label

    return label(atoms, dft_config, workdir=Path(workdir), launcher=launcher)


@dataclass
class Candidate:
    """One centre of a trigger frame: the cell carved around it, or why none could be.

    ``atoms`` carries ``parent_index`` and the embedding info; ``whole_frame``: ``atoms`` is
    the trigger frame itself (nothing masked).
    """

    center: int  # index of the centre atom in the parent frame
    gamma: float  # its gamma in the parent frame
    atoms: Any = None
    masked: list[int] = field(default_factory=list)
    refused: str | None = None
    whole_frame: bool = False


#: Centres tried per trigger frame whose carving is refused before giving up on the frame.
MAX_REFUSED = 8


def embed_work(frame, embedding_config, threshold: float, max_extractions: int,
               parsl_resource_specification: dict | None = None) -> list[Candidate]:
    """Carve up to ``max_extractions`` periodic sub-cells around the frame's most uncertain
    atoms (centres at least one box apart). A centre whose cell cannot be made (a close
    contact in its core, ...) is recorded as refused and the next one is tried. A frame
    no bigger than the box is labelled whole instead (cheaper and exact), as is every
    frame with ``embedding.whole_frame: always``.
    """
    import numpy as np

    from autopipe.embedding import extract_periodic_subsystem, select_centers, smaller_than_box

    e = embedding_config
    gamma = np.asarray(frame.arrays["gamma"], dtype=float)
    side = 2 * (e.cutoff + e.buffer)
    top = int(np.argmax(gamma))
    if e.whole_frame == "always" or smaller_than_box(frame, side):
        whole = frame.copy()
        for key in ("gamma",):
            whole.arrays.pop(key, None)
        return [Candidate(center=top, gamma=float(gamma[top]), atoms=whole, whole_frame=True)]
    order = select_centers(frame, gamma, threshold, len(frame), 0.0)  # every atom above it, most uncertain first
    out: list[Candidate] = []
    chosen: list[int] = []
    refused = 0
    for c in order:
        if len(chosen) >= max_extractions or refused >= MAX_REFUSED:
            break
        if chosen and np.min(frame.get_distances(c, chosen, mic=True)) < side:
            continue
        try:
            sub, masked = extract_periodic_subsystem(frame, c, e.cutoff, e.buffer, min_distance=e.min_distance)
        except ValueError as exc:
            out.append(Candidate(center=int(c), gamma=float(gamma[c]), refused=str(exc)))
            refused += 1
            continue
        chosen.append(int(c))
        out.append(Candidate(center=int(c), gamma=float(gamma[c]), atoms=sub, masked=[int(i) for i in masked]))
    return out


def fit_work(request, parsl_resource_specification: dict | None = None):
    """One training round's fit: dataset from the label snapshot, pacemaker, .yace, .asi
    (:func:`autopipe.potentials.trainer.fit_round`); returns a ``FitOutput``."""
    from autopipe.potentials.trainer import fit_round

    return fit_round(request)
