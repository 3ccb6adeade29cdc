"""What runs on Parsl workers: thin wrappers over the plain functions of each module.

Each takes only picklable arguments (paths, pydantic configs, ``ase.Atoms``,
``PotentialFiles``), touches no database, and returns a typed result with a status,
so the same function runs in a thread, an HTEX worker, a Slurm job or a Globus
Compute endpoint. Heavy imports happen inside. ``parsl_resource_specification`` is
accepted (and ignored) because Parsl passes per-task priorities only to apps that
declare it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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


@dataclass
class FitOutput:
    """A finished pacemaker fit, not yet published: files by role, metrics, status."""

    status: str  # "done" | "failed"
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    walltime: float = 0.0
    argv: list[str] = field(default_factory=list)
    error: str | None = None
    log_tail: str = ""


def fit_work(dataset_file: str, train_config, elements: list[str], workdir: str, parent_yaml: str | None,
             iterations: int, parsl_resource_specification: dict | None = None) -> FitOutput:
    """Fit with pacemaker (continuing from ``parent_yaml`` if given), export .yace, compute .asi."""
    import shutil

    from autopipe.potentials.pacemaker import FITTING_DATA_INFO, LOG_FILE, compute_active_set, export_yace, run_pacemaker

    t0 = time.perf_counter()
    work = Path(workdir)
    fit = run_pacemaker(work, train_config, elements, Path(dataset_file),
                        initial_potential=Path(parent_yaml) if parent_yaml else None, iterations=iterations)
    out = FitOutput(status="failed", metrics=dict(fit.metrics), argv=list(fit.argv))
    if not fit.ok:
        out.error, out.log_tail = fit.error, fit.log_tail
    else:
        try:
            pot_yaml = work / "potential.yaml"
            shutil.copyfile(fit.potential, pot_yaml)
            yace = export_yace(pot_yaml)
            asi = compute_active_set(pot_yaml, [work / FITTING_DATA_INFO])
            out.files = {"yaml": str(pot_yaml), "yace": str(yace), "asi": str(asi),
                         "input": str(work / "input.yaml"), "log": str(work / LOG_FILE)}
            out.metrics["fit_walltime"] = fit.walltime
            out.status = "done"
        except Exception as exc:  # an unusable export or active set means an unusable potential
            out.error = f"{type(exc).__name__}: {exc}"
    out.walltime = time.perf_counter() - t0
    return out
