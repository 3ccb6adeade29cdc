"""Active sets from the atoms the potential was actually trained on.

``pace_activeset`` drops atoms whose force error is an outlier (above Q3 + 1.5 IQR).
In an active-learning loop that is exactly wrong: the environment just labelled because
it was extrapolative is the one most likely to be fitted worst after a short retrain,
so it would be left out of the active set, keep its high gamma, and trigger the same
hole again and again. Here the active set is built by MaxVol over every atom with a
non-zero force weight (masked buffer atoms of carved cells are left out: their
environments contain the artificial boundary and were not trained on).

MaxVol needs at least as many environments of a species as that species has basis functions.
When the trusted ones are fewer, the masked ones of that species are admitted too (MaxVol then
runs over all of them): an active set that partly leans on boundary-corrupted environments
still grades extrapolation, none at all would stop the run. This is recorded, never silent:
:attr:`ActiveSetFile.fallback` names the species, the potential's metrics carry it under
:data:`FALLBACK_METRIC` and publishing it records an ``active_set_fallback`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

GAMMA_TOLERANCE = 1.01  # MaxVol stops when no candidate improves the volume by more than this
MAXVOL_ITERS = 300
FALLBACK_METRIC = "active_set_fallback"  # potential metrics key: element -> row counts (see ActiveSetFile)


@dataclass(frozen=True)
class ActiveSetFile:
    """A written active set and what it had to admit.

    ``fallback``: element -> ``{"trusted": n, "masked": m, "functions": k}`` for each species
    whose ``n`` trusted environments were fewer than its ``k`` basis functions, so that its
    ``m`` masked (buffer) environments entered MaxVol too. Empty when every species had enough.
    """

    path: Path
    fallback: dict[str, dict[str, int]] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """What the potential's metrics should carry: ``{FALLBACK_METRIC: fallback}``, or nothing."""
        return {FALLBACK_METRIC: {el: dict(c) for el, c in self.fallback.items()}} if self.fallback else {}


def describe_fallback(fallback: dict[str, dict[str, int]]) -> str:
    """One line for logs and events: which species' active sets lean on masked environments."""
    parts = [f"{el}: {c['trusted']} trusted environments for {c['functions']} basis functions, "
             f"{c['masked']} masked ones admitted" for el, c in sorted(fallback.items())]
    return "active set admits masked buffer atoms (" + "; ".join(parts) + ")"


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


def select_rows(
    projections: dict[int, np.ndarray], masks: dict[int, np.ndarray]
) -> tuple[dict[int, np.ndarray], dict[int, dict[str, int]]]:
    """Per species type, the projection rows MaxVol may choose from, and the fallback species.

    The trusted rows (``masks``) if they are at least as many as the basis functions (columns);
    otherwise every row of that species, and the species type enters the second dict with its
    row counts (``trusted``, ``masked``, ``functions``).
    """
    rows: dict[int, np.ndarray] = {}
    fallback: dict[int, dict[str, int]] = {}
    for st, proj in projections.items():
        trusted = proj[masks[st]]
        if len(trusted) >= proj.shape[1]:
            rows[st] = trusted
        else:
            rows[st] = proj
            fallback[st] = {"trusted": len(trusted), "masked": len(proj) - len(trusted), "functions": proj.shape[1]}
    return rows, fallback


def compute_trusted_active_set(
    yaml_path: Path | str, datasets: Sequence[Path | str], out: Path | str | None = None
) -> ActiveSetFile:
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
    rows, fallback = select_rows(projections, masks)
    active = compute_active_set(rows, tol=GAMMA_TOLERANCE, max_iters=MAXVOL_ITERS, verbose=False)
    inverse = compute_A_active_inverse(active)
    names = list(bbasis.elements_name)
    tmp = out.with_suffix(".asi.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{names[st]: v for st, v in inverse.items()})
    tmp.replace(out)
    return ActiveSetFile(out, {names[st]: counts for st, counts in fallback.items()})
