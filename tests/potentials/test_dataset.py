"""Training set from the database: force masks and embedded-cell energy weights reach pacemaker."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from autopipe.config.run import TrainConfig
from autopipe.db import Label, LabelStatus
from autopipe.potentials.dataset import build_dataset, record_weights, write_dataset
from autopipe.potentials.pacemaker import FITTING_DATA_INFO, run_pacemaker

from tests.potentials.helpers import add_labelled, lj_structures

MASK = [0, 3, 5, 31]


def _db_with_masked_record(db):
    """3 generated structures, 1 embedded sub-cell with a force mask, 1 failed label."""
    add_labelled(db, lj_structures(3, seed=1))
    add_labelled(db, lj_structures(1, seed=2), origin="embedded", force_mask=MASK)
    add_labelled(db, lj_structures(1, seed=3), status="failed")


def test_record_weights():
    w_e, w_f = record_weights(5, embedded=True, force_mask=[1, 4])
    assert w_e == 0.0 and w_f.tolist() == [1, 0, 1, 1, 0]
    w_e, w_f = record_weights(3, embedded=False, force_mask=None)
    assert w_e == 1.0 and w_f.tolist() == [1, 1, 1]
    assert record_weights(3, embedded=True, force_mask=[], embedded_energy_weight=0.5)[0] == 0.5
    with pytest.raises(ValueError, match="out of range"):
        record_weights(3, embedded=True, force_mask=[3])


def test_build_dataset_weights_and_selection(db):
    _db_with_masked_record(db)
    df, info = build_dataset(db, TrainConfig())
    assert len(df) == 4  # the failed label is left out
    assert info.n_embedded == 1 and info.n_masked_atoms == len(MASK)
    emb = df[df["embedded"]].iloc[0]
    assert emb["w_energy"] == 0.0
    assert np.flatnonzero(emb["w_forces"] == 0).tolist() == MASK
    normal = df[~df["embedded"]]
    assert (normal["w_energy"] == 1.0).all()
    assert all((w == 1.0).all() for w in normal["w_forces"])
    assert all(f.shape == (len(a), 3) for f, a in zip(df["forces"], df["ase_atoms"]))
    # LJ has no reference energy: energy_corrected is the raw energy.
    assert np.allclose(df["energy_corrected"], df["energy"])
    # The optional energy weight of embedded cells.
    df2, _ = build_dataset(db, TrainConfig(embedded_energy_weight=0.25))
    assert df2[df2["embedded"]].iloc[0]["w_energy"] == 0.25


def test_build_dataset_label_limit_newest_label_and_reference(db):
    ids = add_labelled(db, lj_structures(3, seed=4))
    df, info = build_dataset(db, TrainConfig(), max_label_id=ids[1])
    assert df["label_id"].tolist() == ids[:2] and info.last_label_id == ids[1]
    # A second done label for structure 1 replaces the first one.
    with db.session() as s:
        first = s.get(Label, ids[0])
        s.add(Label(structure_id=first.structure_id, status=LabelStatus.done, code="lj",
                    energy=first.energy + 1.0, forces=first.forces))
    df, info = build_dataset(db, TrainConfig())
    assert len(df) == 3 and info.last_label_id == ids[-1] + 1
    row = df[df["structure_id"] == first.structure_id].iloc[0]
    assert row["energy"] == pytest.approx(first.energy + 1.0)
    df, _ = build_dataset(db, TrainConfig(), reference_energies={"Ar": -0.5})
    assert np.allclose(df["energy_corrected"], df["energy"] + 0.5 * 32)


def test_only_masked_data_is_an_error(db):
    add_labelled(db, lj_structures(1), origin="embedded", force_mask=[])
    with pytest.raises(ValueError, match="energy weight 0"):
        build_dataset(db, TrainConfig())


@pytest.mark.slow
def test_masked_weights_reach_pacemaker(db, tmp_path):
    """pacemaker's own processed data (fitting_data_info.pckl.gzip) carries our zero weights.

    A dry run (pyace backend: no TensorFlow start-up) goes through pacemaker's data
    loading and weighting and writes the processed dataset, then stops before fitting.
    """
    _db_with_masked_record(db)
    df, _ = build_dataset(db, TrainConfig())
    data = write_dataset(df, tmp_path / "data.pckl.gzip")
    tc = TrainConfig(backend="pyace", number_of_functions_per_element=10, max_iterations=1)
    res = run_pacemaker(tmp_path / "fit", tc, ["Ar"], data, extra_args=["--dry-run"], timeout=300)
    assert res.ok, res.log_tail
    seen = pd.read_pickle(tmp_path / "fit" / FITTING_DATA_INFO, compression="gzip")
    assert len(seen) == 4
    emb = seen[seen["embedded"]].iloc[0]
    normal = seen[~seen["embedded"]]
    # Masked forces and the embedded cell's energy are out of the loss ...
    assert emb["w_energy"] == 0.0
    assert np.flatnonzero(np.asarray(emb["w_forces"]) == 0).tolist() == MASK
    # ... and everything else shares the (renormalised) weight equally.
    assert np.allclose(normal["w_energy"], 1.0 / 3)
    n_weighted = 3 * 32 + (32 - len(MASK))
    unmasked = np.concatenate([np.asarray(w) for w in seen["w_forces"]])
    assert np.allclose(unmasked[unmasked > 0], 1.0 / n_weighted)
    assert np.isclose(unmasked.sum(), 1.0)


def test_per_element_references_of_a_binary(db):
    """Two elements: each structure's energy_corrected subtracts its own composition's references."""
    from autopipe.bulk import substitute

    cells = lj_structures(3, seed=5)
    for k, a in enumerate(cells):
        substitute(a, {"Ar": 0.5 + 0.1 * k, "Ne": 0.5 - 0.1 * k}, seed=k)  # three compositions
    add_labelled(db, cells)
    df, _ = build_dataset(db, TrainConfig(reference_energies={"Ar": -0.5, "Ne": -0.25}))
    n_ar = np.array([a.get_chemical_symbols().count("Ar") for a in df["ase_atoms"]])
    n_ne = np.array([a.get_chemical_symbols().count("Ne") for a in df["ase_atoms"]])
    assert len(set(n_ar.tolist())) == 3  # really three compositions
    assert np.allclose(df["energy_corrected"], df["energy"] + 0.5 * n_ar + 0.25 * n_ne)
