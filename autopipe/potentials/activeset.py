"""Active sets from the atoms the potential was actually trained on.

``pace_activeset`` drops atoms whose force error is an outlier (above Q3 + 1.5 IQR).
In an active-learning loop that is exactly wrong: the environment just labelled because
it was extrapolative is the one most likely to be fitted worst after a short retrain,
so it would be left out of the active set, keep its high gamma, and trigger the same
hole again and again. Here the active set is built by MaxVol over every atom with a
non-zero force weight (masked buffer atoms of carved cells are left out: their
environments contain the artificial boundary and were not trained on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

GAMMA_TOLERANCE = 1.01  # MaxVol stops when no candidate improves the volume by more than this
MAXVOL_ITERS = 300


def trusted_rows(frames, weights, species_index: dict[str, int]) -> dict[int, np.ndarray]:
    """Per species type, a boolean mask over pyace's projection rows: True where the atom's force weight > 0.

    pyace stacks projection rows structure by structure, and within one structure the atoms
    of a species type in index order; the mask follows the same order.
    """
    masks: dict[int, list[np.ndarray]] = {st: [] for st in species_index.values()}
    for atoms, w in zip(frames, weights):
        types = np.array([species_index[s] for s in atoms.get_chemical_symbols()])
        w = np.ones(len(atoms)) if w is None else np.asarray(w, dtype=float)
        for st in masks:
            masks[st].append(w[types == st] > 0)
    return {st: np.concatenate(m) if m else np.zeros(0, bool) for st, m in masks.items()}


def compute_trusted_active_set(yaml_path: Path | str, datasets: Sequence[Path | str], out: Path | str | None = None) -> Path:
    """Write ``<yaml>.asi`` (or ``out``): the MaxVol active set over trusted atoms of ``datasets``.

    ``datasets`` are pacemaker DataFrame pickles (``ase_atoms``, optional ``w_forces``);
    cells must already be fully periodic or fully open (see :mod:`autopipe.potentials.periodic`).
    """
    import pandas as pd
    from pyace import ACEBBasisSet, BBasisConfiguration
    from pyace.activelearning import compute_A_active_inverse, compute_active_set, compute_B_projections

    yaml_path = Path(yaml_path)
    out = Path(out) if out else yaml_path.with_suffix(".asi")
    df = pd.concat([pd.read_pickle(d, compression="gzip") for d in datasets], ignore_index=True)
    bbasis = ACEBBasisSet(BBasisConfiguration(str(yaml_path)))
    frames = list(df["ase_atoms"])
    weights = list(df["w_forces"]) if "w_forces" in df.columns else [None] * len(df)
    projections = compute_B_projections(bbasis, frames, is_full=False)
    masks = trusted_rows(frames, weights, dict(bbasis.elements_to_index_map))
    trusted = {st: projections[st][masks[st]] for st in projections}
    for st, rows in trusted.items():
        if len(rows) < rows.shape[1]:
            # MaxVol needs at least as many environments as basis functions per species.
            trusted[st] = projections[st]
    active = compute_active_set(trusted, tol=GAMMA_TOLERANCE, max_iters=MAXVOL_ITERS, verbose=False)
    inverse = compute_A_active_inverse(active)
    names = list(bbasis.elements_name)
    tmp = out.with_suffix(".asi.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{names[st]: v for st, v in inverse.items()})
    tmp.replace(out)
    return out
