"""Per-atom extrapolation grade (gamma) of an ACE potential, through pyace.

gamma is the D-optimality grade of each atom's environment against the potential's
active set: about 1 or below inside the training data, growing quickly outside it.
Computing it costs one energy/force evaluation (about 50-70 µs per atom for a small
basis).

Loaded calculators are cached per (yaml, asi) path and file modification time:
loading a potential and its active set takes much longer than evaluating a small cell.
pyace calculators are not thread-safe, so each cached calculator has a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.potentials.store import PotentialFiles

PotentialLike = Union["PotentialFiles", str, Path]

_cache: dict[tuple, tuple[Any, threading.Lock]] = {}
_cache_lock = threading.Lock()
_MAX_CACHED = 16


def resolve_paths(potential: PotentialLike) -> tuple[Path, Path]:
    """(B-basis yaml, active set asi) of a :class:`PotentialFiles` or of a yaml path with the asi alongside."""
    if isinstance(potential, (str, Path)):
        yaml = Path(potential)
        asi = yaml.with_suffix(".asi")
    else:
        yaml, asi = Path(potential.yaml), potential.asi
        if asi is None:
            raise ValueError(f"potential v{potential.version} has no active set (.asi): gamma is undefined")
        asi = Path(asi)
    if not yaml.exists():
        raise FileNotFoundError(f"potential file not found: {yaml}")
    if not asi.exists():
        raise FileNotFoundError(f"active set not found: {asi} (compute it with pace_activeset)")
    return yaml.resolve(), asi.resolve()


def get_calculator(potential: PotentialLike) -> tuple[Any, threading.Lock]:
    """A cached ``PyACECalculator`` with its active set loaded, and the lock guarding it."""
    yaml, asi = resolve_paths(potential)
    key = (str(yaml), str(asi), yaml.stat().st_mtime_ns, asi.stat().st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    from pyace import PyACECalculator  # lazy: pyace pulls in ASE I/O and C++ extensions

    calc = PyACECalculator(str(yaml))
    calc.set_active_set(str(asi))
    entry = (calc, threading.Lock())
    with _cache_lock:
        if len(_cache) >= _MAX_CACHED:
            _cache.pop(next(iter(_cache)))  # oldest first: dicts keep insertion order
        _cache.setdefault(key, entry)
        return _cache[key]


def evaluate(atoms: Atoms, potential: PotentialLike) -> dict[str, np.ndarray | float]:
    """Energy (eV), forces (eV/Å) and per-atom gamma of ``atoms`` (which is not modified)."""
    from autopipe.potentials.periodic import closed_for_ace

    calc, lock = get_calculator(potential)
    a = closed_for_ace(atoms, float(calc.cutoff))  # 2D layers: pyace needs a fully periodic cell
    a = a.copy() if a is atoms else a
    a.calc = None
    with lock:
        calc.reset()  # the cached calculator may hold results of another structure
        a.calc = calc
        energy = float(a.get_potential_energy())
        forces = np.array(a.get_forces())
        g = np.array(calc.results["gamma"], dtype=float)
        a.calc = None
    return {"energy": energy, "forces": forces, "gamma": g}


def gamma(atoms: Atoms, potential: PotentialLike) -> np.ndarray:
    """Per-atom extrapolation grade of ``atoms`` under ``potential`` (dimensionless, shape (n_atoms,))."""
    return evaluate(atoms, potential)["gamma"]  # type: ignore[return-value]


def max_gamma(atoms: Atoms, potential: PotentialLike) -> tuple[float, int]:
    """The largest per-atom gamma and the index of that (most uncertain) atom."""
    g = gamma(atoms, potential)
    i = int(np.argmax(g))
    return float(g[i]), i
