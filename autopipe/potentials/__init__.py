"""Module D: pacemaker training, active sets, extrapolation grades, versioned potentials.

The public names below are resolved lazily (PEP 562) so that ``import autopipe.potentials``
imports neither pandas nor pyace; TensorFlow is never imported in-process at all
(pacemaker runs as a subprocess, or in the long-lived trainer process of
:mod:`autopipe.potentials.warm`).

* :class:`PotentialStore`, :class:`PotentialFiles` — versioned, checksummed potentials
* :func:`build_dataset` — pacemaker's DataFrame from the labelled structures, with force masks
* :func:`should_retrain`, :func:`train_round` — the retraining trigger and the one training round
* :func:`build_initial_potential` — version 1, generated or imported
* :func:`gamma`, :func:`max_gamma` — per-atom extrapolation grade through pyace
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PotentialFiles": "autopipe.potentials.store",
    "PotentialStore": "autopipe.potentials.store",
    "build_dataset": "autopipe.potentials.dataset",
    "DatasetInfo": "autopipe.potentials.dataset",
    "should_retrain": "autopipe.potentials.trainer",
    "train_round": "autopipe.potentials.trainer",
    "TrainOutcome": "autopipe.potentials.trainer",
    "build_initial_potential": "autopipe.potentials.initial",
    "gamma": "autopipe.potentials.uncertainty",
    "max_gamma": "autopipe.potentials.uncertainty",
    "get_calculator": "autopipe.potentials.uncertainty",
    "FitResult": "autopipe.potentials.pacemaker",
    "run_pacemaker": "autopipe.potentials.pacemaker",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from autopipe.potentials.dataset import DatasetInfo, build_dataset
    from autopipe.potentials.initial import build_initial_potential
    from autopipe.potentials.pacemaker import FitResult, run_pacemaker
    from autopipe.potentials.store import PotentialFiles, PotentialStore
    from autopipe.potentials.trainer import TrainOutcome, should_retrain, train_round
    from autopipe.potentials.uncertainty import gamma, get_calculator, max_gamma


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autopipe.potentials' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
