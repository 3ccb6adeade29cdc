"""Active sets count every trusted atom, however badly fitted, and never masked ones."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from autopipe.potentials.activeset import trusted_rows


def test_rows_follow_pyace_order_per_species_and_skip_masked_atoms():
    a = Atoms("HOHO", positions=np.zeros((4, 3)))
    b = Atoms("OHH", positions=np.zeros((3, 3)))
    masks = trusted_rows([a, b], [np.array([1, 0, 0, 1.0]), None], {"H": 0, "O": 1})
    # H rows: a[0], a[2], b[1], b[2]; O rows: a[1], a[3], b[0]
    assert masks[0].tolist() == [True, False, True, True]
    assert masks[1].tolist() == [False, True, True]
