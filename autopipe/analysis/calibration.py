"""The calibration curve of an ACE potential: force error against gamma, with confidence intervals.

Pure functions over arrays (the false-negative probe's labels, :mod:`autopipe.steer.probe`,
feed them). Each probe structure gives, for its trusted atoms, the potential's per-atom
gamma and force error. Atoms of one structure are not independent samples (they share one
configuration, one label, one carving), so every interval here is a **percentile bootstrap
over structures** (a cluster bootstrap): resample the structures with replacement, pool
their atoms, take the force RMSE; the interval is the central ``confidence`` share of those
RMSEs. With fewer than two structures there is no interval (``low``/``high`` are None).

Units: forces eV/Å; the RMSE is per Cartesian component (as pacemaker's and the gate's);
gamma is dimensionless.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: Resamples of the bootstrap: a 95 % percentile interval is stable to about 1 % with this many.
N_BOOT = 2000

#: Gamma bin edges before the run's threshold is added (``gamma_edges``): about 1 and below is
#: inside the training data, the threshold is where the run stops trusting the potential.
BASE_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class ErrorEstimate:
    """A force RMSE (eV/Å, per component) over ``n_atoms`` atoms of ``n_structures`` structures,
    with its bootstrap interval (``low``, ``high``; None with fewer than two structures) at
    ``confidence``; ``rms`` None when there is no atom."""

    rms: float | None
    low: float | None
    high: float | None
    n_atoms: int
    n_structures: int
    confidence: float

    def as_dict(self) -> dict:
        """JSON-able: a non-finite number (a potential giving NaN forces) becomes None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def bootstrap_rms(sq_sums: Sequence[float], counts: Sequence[float], *, confidence: float = 0.95,
                  n_boot: int = N_BOOT, seed: int = 0) -> ErrorEstimate:
    """Force RMSE over structures, each given by the sum of its squared force-component errors
    (``sq_sums``, (eV/Å)²) and its number of components (``counts``, 3 per atom), with a
    percentile bootstrap interval over structures (seeded: the same data give the same interval)."""
    sq = np.asarray(sq_sums, dtype=float)
    n = np.asarray(counts, dtype=float)
    keep = n > 0
    sq, n = sq[keep], n[keep]
    n_atoms = int(round(n.sum() / 3))
    if not len(n):
        return ErrorEstimate(None, None, None, 0, 0, confidence)
    rms = float(math.sqrt(sq.sum() / n.sum()))
    if len(n) < 2:
        return ErrorEstimate(rms, None, None, n_atoms, len(n), confidence)
    idx = np.random.default_rng(seed).integers(0, len(n), size=(n_boot, len(n)))
    boot = np.sqrt(sq[idx].sum(axis=1) / n[idx].sum(axis=1))
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return ErrorEstimate(rms, float(low), float(high), n_atoms, len(n), confidence)


def gamma_edges(threshold: float | None) -> np.ndarray:
    """Bin edges of the calibration curve: :data:`BASE_EDGES`, the threshold, and an open last bin."""
    edges = set(BASE_EDGES) | ({float(threshold)} if threshold else set())
    return np.array(sorted(edges) + [math.inf])


@dataclass(frozen=True)
class CalibrationBin:
    """Atoms whose gamma lies in ``[lo, hi)``, their force error and their mean gamma (where in the
    bin they sit: the threshold rule, :mod:`autopipe.steer.threshold`, interpolates between them)."""

    lo: float
    hi: float
    error: ErrorEstimate
    gamma_mean: float | None = None

    def as_dict(self) -> dict:
        return {"lo": self.lo, "hi": None if math.isinf(self.hi) else self.hi, **self.error.as_dict(),
                "gamma_mean": self.gamma_mean}


def per_structure(errors: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of squared errors and component counts per structure of per-atom force errors
    ``errors`` ((n, 3), eV/Å) whose structures are ``structure`` ((n,) labels)."""
    errors = np.asarray(errors, dtype=float).reshape(-1, 3)
    keys, inverse = np.unique(np.asarray(structure), return_inverse=True)
    sq = np.bincount(inverse, weights=(errors ** 2).sum(axis=1), minlength=len(keys))
    counts = 3.0 * np.bincount(inverse, minlength=len(keys))
    return sq, counts


def overall(errors: np.ndarray, structure: np.ndarray, *, confidence: float = 0.95) -> ErrorEstimate:
    """The force RMSE of per-atom errors ((n, 3), eV/Å) with its bootstrap interval over structures."""
    if not len(np.asarray(structure)):
        return ErrorEstimate(None, None, None, 0, 0, confidence)
    return bootstrap_rms(*per_structure(errors, structure), confidence=confidence)


def calibration_curve(gamma: np.ndarray, errors: np.ndarray, structure: np.ndarray, edges: Sequence[float], *,
                      confidence: float = 0.95) -> list[CalibrationBin]:
    """The calibration curve: per gamma bin ``[edges[i], edges[i+1])``, the force RMSE of the atoms
    in it (per-atom ``gamma`` (n,), force errors ``errors`` (n, 3) eV/Å, ``structure`` (n,) labels
    for the bootstrap over structures). Empty bins are left out."""
    gamma = np.asarray(gamma, dtype=float)
    errors = np.asarray(errors, dtype=float).reshape(-1, 3)
    structure = np.asarray(structure)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (gamma >= lo) & (gamma < hi)
        if inside.any():
            out.append(CalibrationBin(float(lo), float(hi), overall(errors[inside], structure[inside],
                                                                    confidence=confidence),
                                      float(gamma[inside].mean())))
    return out


def upper_bound(errors: np.ndarray, structure: np.ndarray, confidence: float) -> ErrorEstimate:
    """The force RMSE with a **one-sided** upper bound at ``confidence`` (in ``high``; ``low`` is the
    same bootstrap's lower percentile): the RMSE is below ``high`` with probability ``confidence``.
    The ``confidence``-th percentile of the bootstrap is the upper end of its two-sided interval at
    ``2 * confidence - 1``; the returned estimate's ``confidence`` is the one-sided one."""
    est = overall(errors, structure, confidence=2.0 * confidence - 1.0)
    return ErrorEstimate(est.rms, est.low, est.high, est.n_atoms, est.n_structures, confidence)
