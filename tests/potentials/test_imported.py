"""Importing a user's pacemaker dataset: validation, one all-or-nothing insert, weights and one energy reference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from autopipe.config.run import RunConfig
from autopipe.db import Label, Origin, Structure
from autopipe.errors import AutopipeError
from autopipe.potentials.dataset import build_dataset, write_dataset
from autopipe.potentials.imported import (
    IMPORTED_CODE,
    check_training_data,
    import_training_data,
    read_training_data,
    validate_potential_file,
)
from tests.aceutil import per_atom_energies
from tests.lj import fixture_train_dir, lj_label, lj_run_config

from tests.potentials.helpers import add_labelled, lj_structures

E_REF = -2.5  # eV/atom: a non-zero per-element reference, as a DFT user's isolated-atom energy would be


def _user_frame(n: int = 4, seed: int = 0, *, weights: bool = True) -> pd.DataFrame:
    """A pacemaker dataset as a user has it: total ``energy``, ``energy_corrected`` = energy - n*E_REF."""
    rows = []
    for k, atoms in enumerate(lj_structures(n, seed=seed)):
        ref = lj_label(atoms)
        e, f = ref.energy, ref.forces
        row = {"ase_atoms": atoms, "energy": e + E_REF * len(atoms), "energy_corrected": e, "forces": f}
        if weights:
            wf = np.linspace(0.0, 2.0, len(atoms))  # non-binary, one atom switched off
            row.update(w_energy=0.5 + k, w_forces=wf)
        rows.append(row)
    return pd.DataFrame(rows)


def _write(df, path: Path) -> Path:
    df.to_pickle(path, compression="gzip", protocol=4)
    return path


def _config(tmp_path: Path, training_data: Path | None, *, refs=None, potential: Path | None = None,
            retrain: bool = True) -> RunConfig:
    data = lj_run_config("imported", tmp_path).model_dump(mode="json")
    data["initial_potential"] = {"kind": "file", "path": str(potential or tmp_path / "potential.yaml")}
    if training_data is not None:
        data["initial_potential"]["training_data"] = str(training_data)
    data["train"]["reference_energies"] = refs
    data["train"]["retrain"] = retrain
    return RunConfig.model_validate(data)


def _counts(db) -> tuple[int, int]:
    with db.session() as s:
        return (int(s.scalar(select(func.count(Structure.id)))), int(s.scalar(select(func.count(Label.id)))))


def test_good_dataset_imports_with_weights_and_energies_intact(db, tmp_path):
    df = _user_frame()
    cfg = _config(tmp_path, _write(df, tmp_path / "train.pckl.gzip"))
    summary = import_training_data(db, cfg)
    assert summary.n_structures == 4 and not summary.already_imported
    assert summary.reference_energies == pytest.approx({"Ar": E_REF}, abs=1e-9)
    with db.session() as s:
        rows = list(s.scalars(select(Structure).order_by(Structure.id)))
        labels = list(s.scalars(select(Label).order_by(Label.id)))
    assert {r.origin for r in rows} == {Origin.imported} and {lb.code for lb in labels} == {IMPORTED_CODE}
    assert [lb.id for lb in labels] == list(range(summary.first_label_id, summary.last_label_id + 1))
    for r, lb, (_, want) in zip(rows, labels, df.iterrows()):
        np.testing.assert_allclose(r.positions, want["ase_atoms"].positions)
        np.testing.assert_array_equal(lb.forces, want["forces"])
        assert lb.energy == pytest.approx(want["energy"], abs=1e-9)  # total energy, as given
    # Weights keep their ratios (rescaled to mean 1 so they weigh like new labels).
    w_e = np.array([r.energy_weight for r in rows])
    np.testing.assert_allclose(w_e / w_e.sum(), df["w_energy"] / df["w_energy"].sum())
    assert w_e.mean() == pytest.approx(1.0)
    w_f = np.concatenate([r.force_weights for r in rows])
    want_f = np.concatenate(df["w_forces"].to_list())
    np.testing.assert_allclose(w_f / w_f.sum(), want_f / want_f.sum())
    assert labels[0].parameters["weight_scales"]["w_energy"] == pytest.approx(4 / df["w_energy"].sum())

    # A new total-energy label, like a DFT one, lands in the imported reference.
    new = lj_structures(1, seed=9)[0]
    add_labelled(db, [new], origin="embedded", force_mask=[0, 1])
    with db.session() as s:
        s.scalars(select(Label).order_by(Label.id.desc())).first().energy += E_REF * len(new)
    for setting in (None, "auto"):  # 'auto' would refit the references and shift the imported zero
        train = cfg.train.model_copy(update={"reference_energies": setting, "embedded_energy_weight": 1.0})
        out, info = build_dataset(db, train)
        imported = out[out["label_id"] <= summary.last_label_id]
        np.testing.assert_allclose(imported["energy_corrected"], df["energy_corrected"], atol=1e-9)
        np.testing.assert_allclose(out["energy_corrected"].iloc[-1], lj_label(new).energy, atol=1e-9)
        # pacemaker sees the file's weights (force_mask still zeroes on an embedded cell).
        np.testing.assert_allclose(imported["w_energy"], w_e)
        np.testing.assert_allclose(np.concatenate(imported["w_forces"].to_list()), w_f)
        assert out["w_forces"].iloc[-1][:2].tolist() == [0.0, 0.0] and out["w_forces"].iloc[-1][2] == 1.0
    # References that contradict the imported ones are refused, not silently mixed.
    with pytest.raises(ValueError, match="contradict"):
        build_dataset(db, cfg.train, reference_energies={"Ar": 0.0})


def test_import_is_idempotent_and_refuses_a_second_file(db, tmp_path):
    cfg = _config(tmp_path, _write(_user_frame(), tmp_path / "a.pckl.gzip"))
    first = import_training_data(db, cfg)
    again = import_training_data(db, cfg)
    assert again.already_imported and again.last_label_id == first.last_label_id and _counts(db) == (4, 4)
    other = _config(tmp_path, _write(_user_frame(seed=5), tmp_path / "b.pckl.gzip"))
    with pytest.raises(AutopipeError, match="different file"):
        import_training_data(db, other)
    assert _counts(db) == (4, 4)


def test_only_energy_corrected_uses_the_configured_references(db, tmp_path):
    df = _user_frame(weights=False).drop(columns=["energy"])
    path = _write(df, tmp_path / "c.pckl.gzip")
    with pytest.raises(AutopipeError, match=r"only energy_corrected.*train\.reference_energies"):
        check_training_data(_config(tmp_path, path))
    cfg = _config(tmp_path, path, refs={"Ar": E_REF})
    import_training_data(db, cfg)
    out, _ = build_dataset(db, cfg.train)
    np.testing.assert_allclose(out["energy_corrected"], df["energy_corrected"], atol=1e-9)
    assert (out["w_energy"] == 1.0).all()  # no weights in the file: the defaults


def test_a_reference_energy_column_completes_the_other_energy(db, tmp_path):
    df = _user_frame(weights=False)
    df["reference_energy"] = df["energy"] - df["energy_corrected"]
    ds = read_training_data(_write(df.drop(columns=["energy"]), tmp_path / "r.pckl.gzip"), ["Ar"])
    assert ds.reference_energies == pytest.approx({"Ar": E_REF})
    np.testing.assert_allclose([r.energy for r in ds.rows], df["energy"], atol=1e-9)
    df.loc[2, "reference_energy"] += 0.1
    with pytest.raises(AutopipeError, match="row 2: energy - energy_corrected"):
        read_training_data(_write(df, tmp_path / "s.pckl.gzip"), ["Ar"])


def _mutate(case: str, df: pd.DataFrame):
    """Return a broken version of ``df`` (or another object) for ``case``."""
    df = df.copy()
    if case == "text":
        return None
    if case == "dict":
        return {"ase_atoms": list(df["ase_atoms"])}
    if case == "empty":
        return df.iloc[:0]
    if case == "no_forces":
        return df.drop(columns=["forces"])
    if case == "forces_none":
        df.at[3, "forces"] = None
    elif case == "forces_nan":
        f = df.at[3, "forces"].copy()
        f[5, 1] = np.nan
        df.at[3, "forces"] = f
    elif case == "forces_shape":
        df.at[3, "forces"] = df.at[3, "forces"][:-1]
    elif case == "element":
        a = df.at[3, "ase_atoms"].copy()
        a.symbols[0] = "Cu"
        df.at[3, "ase_atoms"] = a
    elif case == "not_atoms":
        df.at[3, "ase_atoms"] = "Ar32"
    elif case == "energy_nan":
        df.at[3, "energy"] = np.nan
        df.at[3, "energy_corrected"] = np.nan
    elif case == "no_energy":
        return df.drop(columns=["energy", "energy_corrected"])
    elif case == "w_forces_length":
        df.at[3, "w_forces"] = np.ones(5)
    elif case == "w_energy_negative":
        df.at[3, "w_energy"] = -1.0
    elif case == "reference_not_per_element":
        df.at[3, "energy"] = df.at[3, "energy"] + 0.7  # one structure in another reference
    return df


BAD = {
    "text": "not a pacemaker dataset",
    "dict": "not a pandas DataFrame",
    "empty": "no rows",
    "no_forces": "lacks forces",
    "forces_none": "row 3 lacks forces",
    "forces_nan": "row 3: forces contain NaN",
    "forces_shape": r"row 3: forces have shape \(31, 3\), expected \(32, 3\)",
    "element": "row 3 has element.* Cu",
    "not_atoms": "row 3: ase_atoms is a str",
    "energy_nan": "row 3: energy and energy_corrected are both missing",
    "no_energy": "neither 'energy' nor 'energy_corrected'",
    "w_forces_length": "row 3: w_forces has 5 values, expected 32",
    "w_energy_negative": "row 3: w_energy must be",
    "reference_not_per_element": "not a sum of per-element reference energies",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dataset_is_refused_in_one_line_and_writes_nothing(case, db, tmp_path):
    path = tmp_path / f"{case}.pckl.gzip"
    broken = _mutate(case, _user_frame())
    if broken is None:
        path.write_text("energy forces\n1 2\n")
    else:
        pd.to_pickle(broken, path, compression="gzip")
    with pytest.raises(AutopipeError) as err:
        import_training_data(db, _config(tmp_path, path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert re.search(BAD[case], msg), msg
    assert _counts(db) == (0, 0)


def test_configured_references_must_agree_with_the_data(tmp_path):
    path = _write(_user_frame(), tmp_path / "d.pckl.gzip")
    with pytest.raises(AutopipeError, match=r"imply a reference of -2\.500000 eV/atom for Ar"):
        check_training_data(_config(tmp_path, path, refs={"Ar": -1.0}))
    assert check_training_data(_config(tmp_path, path, refs={"Ar": E_REF})).reference_energies == pytest.approx(
        {"Ar": E_REF})


def test_pacemakers_own_fitting_data_info_imports(lj_potential, tmp_path):
    info = fixture_train_dir(lj_potential) / "fitting_data_info.pckl.gzip"
    ds = read_training_data(info, ["Ar"])
    assert len(ds.rows) == 29 and ds.reference_energies == pytest.approx({"Ar": 0.0})
    # pacemaker normalised the weights to sum 1; imported they weigh like new labels again.
    assert np.mean([r.energy_weight for r in ds.rows]) == pytest.approx(1.0)


def test_training_data_is_required_unless_retraining_is_off(tmp_path):
    with pytest.raises(ValidationError, match="retraining needs the data"):
        _config(tmp_path, None)
    assert _config(tmp_path, None, retrain=False).train.retrain is False


def test_potential_file_validation(lj_potential, tmp_path):
    info = validate_potential_file(lj_potential.yaml, ["Ar"])
    assert info.elements == ["Ar"] and info.cutoff == pytest.approx(5.0)
    truncated = tmp_path / "truncated.yaml"
    truncated.write_text(Path(lj_potential.yaml).read_text()[:3000])
    text = tmp_path / "notes.yaml"
    text.write_text("my potential, fitted last week\n")
    for bad, pattern in ((truncated, "not a pacemaker B-basis potential"),
                         (text, "not a pacemaker B-basis potential"),
                         (lj_potential.yace, "not a pacemaker B-basis potential"),
                         (tmp_path / "missing.yaml", "file not found")):
        with pytest.raises(AutopipeError, match=pattern) as err:
            validate_potential_file(bad, ["Ar"])
        assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(AutopipeError, match="the run also has Si"):
        validate_potential_file(lj_potential.yaml, ["Ar", "Si"])


@pytest.mark.slow
def test_retrain_on_imported_and_new_total_energy_labels_keeps_the_imported_energy_scale(lj_potential, db, tmp_path):
    """The user's potential (the LJ fixture) was fitted on ``energy_corrected``; their file also has
    total energies with a -2.5 eV/atom reference. Retrained on it plus three new total-energy
    labels, the potential must predict the same energies on the imported structures.

    Tolerances: the mean per-atom energy may move by at most 5 meV/atom and the error against
    the imported ``energy_corrected`` may grow by at most half (the imported fit has ~9 meV/atom
    RMSE, ~33 meV/atom at worst, hence 30 meV/atom for any single structure). Measured: mean shift
    1e-6 eV/atom, RMSE 9.0 -> 9.3 meV/atom, largest change 14 meV/atom. A reference mix-up (new
    labels left as totals, or 'auto' re-fitting the references) moves the energy zero by hundreds
    of meV/atom."""
    from autopipe.potentials.pacemaker import run_pacemaker

    src = pd.read_pickle(fixture_train_dir(lj_potential) / "fitting_data_info.pckl.gzip",
                         compression="gzip")
    n = src["ase_atoms"].map(len)
    user = pd.DataFrame({"ase_atoms": src["ase_atoms"], "forces": src["forces"],
                         "energy_corrected": src["energy_corrected"], "energy": src["energy_corrected"] + E_REF * n})
    cfg = _config(tmp_path, _write(user, tmp_path / "user.pckl.gzip"), potential=Path(lj_potential.yaml))
    import_training_data(db, cfg)
    new = lj_structures(3, seed=21, rattle=0.2)
    add_labelled(db, new)
    with db.session() as s:  # the new labels are total energies, as DFT gives
        for lab in s.scalars(select(Label).where(Label.code == "lj")):
            lab.energy += E_REF * 32
    train = cfg.train.model_copy(update={"reference_energies": "auto", "max_iterations": 25})
    df, info = build_dataset(db, train)
    assert info.n_structures == 32
    fit = run_pacemaker(tmp_path / "fit", train, ["Ar"], write_dataset(df, tmp_path / "ds.pckl.gzip"),
                        initial_potential=lj_potential.yaml)
    assert fit.ok, fit.log_tail

    before = per_atom_energies(lj_potential.yaml, user["ase_atoms"])
    after = per_atom_energies(fit.potential, user["ase_atoms"])
    ref = user["energy_corrected"].to_numpy() / n.to_numpy()
    rmse_before = np.sqrt(np.mean((before - ref) ** 2))  # the imported fit's own error: ~9 meV/atom
    rmse_after = np.sqrt(np.mean((after - ref) ** 2))
    assert abs(np.mean(after - before)) < 0.005, np.mean(after - before)
    assert rmse_after < max(1.5 * rmse_before, 0.005), (rmse_before, rmse_after)
    assert np.max(np.abs(after - before)) < 0.03


def test_a_dataset_without_one_of_the_run_elements_is_refused_in_one_line(tmp_path):
    """A two-element run whose training data hold no Ne: pacemaker would fit Ne's embedding on
    nothing, so the file is refused at load time, naming the file and the missing element."""
    frame = _user_frame(weights=False).drop(columns=["energy_corrected"])  # raw totals: no reference to derive
    path = _write(frame, tmp_path / "d.pckl.gzip")
    with pytest.raises(AutopipeError) as err:
        read_training_data(path, ["Ar", "Ne"])
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "no Ne" in msg, msg
    assert len(read_training_data(path, ["Ar"]).rows) == 4  # the same file in a one-element run is fine
