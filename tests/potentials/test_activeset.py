"""Active sets count every trusted atom, however badly fitted, and never masked ones."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from autopipe.potentials.activeset import trusted_rows


def test_rows_follow_pyace_order_per_species_and_skip_masked_atoms():
    a = Atoms("HOHO", positions=np.zeros((4, 3)))
    b = Atoms("OHH", positions=np.zeros((3, 3)))
    masks = trusted_rows([a, b], [np.array([1, 0, 0, 1.0]), None], {"H": 0, "O": 1})
    # H rows: a[0], a[2], b[1], b[2]; O rows: a[1], a[3], b[0]
    assert masks[0].tolist() == [True, False, True, True]
    assert masks[1].tolist() == [False, True, True]


def test_auto_reference_energies_recover_per_element_offsets():
    from autopipe.potentials.dataset import fit_reference_energies

    rows = []
    for formula, n in (("H2O", 1), ("H4O2", 1), ("HO", 1), ("H6O", 1)):
        a = Atoms(formula)
        e = sum({"H": -13.6, "O": -432.0}[s] for s in a.get_chemical_symbols()) + 0.1 * n
        rows.append({"ase_atoms": a, "energy": e, "w_energy": 1.0})
    rows.append({"ase_atoms": Atoms("O8"), "energy": 999.0, "w_energy": 0.0})  # a carved cell: ignored
    refs = fit_reference_energies(rows)
    assert refs["H"] == pytest.approx(-13.6, abs=0.1) and refs["O"] == pytest.approx(-432.0, abs=0.2)
