"""Active sets count every trusted atom, however badly fitted, and never masked ones (unless a
species has too few trusted ones, which is recorded)."""

from __future__ import annotations

from pathlib import Path

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


def test_a_species_short_of_trusted_rows_admits_its_masked_rows_and_says_so():
    from autopipe.potentials.activeset import ActiveSetFile, describe_fallback, select_rows

    rng = np.random.default_rng(0)
    projections = {0: rng.normal(size=(6, 3)), 1: rng.normal(size=(5, 3))}
    masks = {0: np.array([1, 1, 1, 0, 1, 0], bool), 1: np.array([0, 1, 0, 1, 0], bool)}
    rows, fallback = select_rows(projections, masks)
    assert np.array_equal(rows[0], projections[0][masks[0]])  # enough trusted rows: masked ones stay out
    assert np.array_equal(rows[1], projections[1])  # 2 trusted rows for 3 functions: all 5 rows
    assert fallback == {1: {"trusted": 2, "masked": 3, "functions": 3}}
    result = ActiveSetFile(Path("p.asi"), {"O": fallback[1]})
    assert result.metrics() == {"active_set_fallback": {"O": {"trusted": 2, "masked": 3, "functions": 3}}}
    assert ActiveSetFile(Path("p.asi")).metrics() == {}
    assert "O: 2 trusted environments for 3 basis functions, 3 masked ones admitted" in describe_fallback(
        {"O": fallback[1]})


def test_publishing_a_fallback_active_set_records_an_event(db, tmp_path):
    from sqlalchemy import select

    from autopipe.db import Event
    from autopipe.potentials.store import PotentialStore

    files = {}
    for role in ("yaml", "yace", "asi"):
        files[role] = tmp_path / f"p.{role}"
        files[role].write_text(role)
    store = PotentialStore(db, tmp_path / "potentials")
    store.publish(files, name="ok")
    store.publish(files, name="short", metrics={"active_set_fallback": {"Ar": {"trusted": 3, "masked": 9,
                                                                               "functions": 5}}})
    with db.session() as s:
        events = [(e.kind, e.data) for e in s.scalars(select(Event).where(Event.kind == "active_set_fallback"))]
    assert events == [("active_set_fallback",
                       {"version": 2, "species": {"Ar": {"trusted": 3, "masked": 9, "functions": 5}}})]


@pytest.mark.slow
def test_trained_potential_with_too_few_trusted_atoms_reports_the_fallback(lj_potential, tmp_path):
    import shutil

    import pandas as pd

    from autopipe.potentials import pacemaker as pm
    from tests.lj import fixture_train_dir

    df = pd.read_pickle(fixture_train_dir(lj_potential) / pm.FITTING_DATA_INFO, compression="gzip")
    yaml = shutil.copyfile(lj_potential.yaml, tmp_path / "potential.yaml")
    full = pm.compute_active_set(yaml, [fixture_train_dir(lj_potential) / pm.FITTING_DATA_INFO])
    assert full.fallback == {} and full.path == tmp_path / "potential.asi" and full.path.exists()

    n_atoms = int(df["ase_atoms"].map(len).sum())
    weights = [np.zeros(len(a)) for a in df["ase_atoms"]]
    weights[0][:3] = 1.0  # three trusted atoms, every other one masked (a buffer)
    df["w_forces"] = weights
    df.to_pickle(tmp_path / "masked.pckl.gzip", compression="gzip")
    short = pm.compute_active_set(yaml, [tmp_path / "masked.pckl.gzip"])
    counts = short.fallback["Ar"]
    assert counts["trusted"] == 3 and counts["masked"] == n_atoms - 3 and counts["functions"] > 3
    assert short.metrics()["active_set_fallback"] == {"Ar": counts}
