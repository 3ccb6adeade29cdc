"""pyace's own ASE calculator as the tests' independent reference (not autopipe's evaluation route)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def per_atom_energies(yaml_file: Path | str, structures) -> np.ndarray:
    """Energy per atom (eV/atom) of each structure under the B-basis potential ``yaml_file``."""
    from pyace import PyACECalculator

    calc = PyACECalculator(str(yaml_file))
    out = []
    for a in structures:
        a = a.copy()
        a.calc = calc
        out.append(a.get_potential_energy() / len(a))
    return np.array(out)


def pyace_gamma(atoms, potential) -> np.ndarray:
    """Per-atom extrapolation grade of ``atoms`` under ``potential`` (``.yaml`` and ``.asi``)."""
    from pyace import PyACECalculator

    calc = PyACECalculator(str(potential.yaml))
    calc.set_active_set(str(potential.asi))
    a = atoms.copy()
    a.calc = calc
    a.get_potential_energy()
    return np.asarray(calc.results["gamma"])
