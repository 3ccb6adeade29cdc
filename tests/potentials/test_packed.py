"""The training set packed for the worker rebuilds exactly the DataFrame the database gives."""

from __future__ import annotations

import numpy as np
import pandas as pd

from autopipe.config.run import TrainConfig
from autopipe.potentials.dataset import build_dataset
from autopipe.potentials.packed import pack
from tests.potentials.helpers import add_labelled, lj_structures


def test_pack_round_trip_is_exact_with_masks_weights_and_ids(db):
    add_labelled(db, lj_structures(3, seed=1))
    add_labelled(db, lj_structures(2, seed=2), origin="embedded", force_mask=[0, 3, 31])
    df, info = build_dataset(db, TrainConfig(embedded_energy_weight=0.25))
    packed = pack(df)
    assert (packed.n_structures, packed.n_atoms, packed.n_embedded, packed.n_masked_atoms, packed.last_label_id) == (
        info.n_structures, info.n_atoms, info.n_embedded, info.n_masked_atoms, info.last_label_id)
    back = packed.frame()
    assert list(back.columns) == list(df.columns)
    for col in ("energy", "energy_corrected", "w_energy", "structure_id", "label_id", "embedded"):
        pd.testing.assert_series_equal(back[col], df[col], check_dtype=False)
    for a, b in zip(back["ase_atoms"], df["ase_atoms"]):
        assert a == b  # numbers, positions, cell, pbc: bit for bit
    for col in ("forces", "w_forces"):
        assert all(np.array_equal(x, y) for x, y in zip(back[col], df[col]))
    # About 58 bytes per atom before compression (the module's stated size), less after.
    assert packed.nbytes < 60 * info.n_atoms + 2000
