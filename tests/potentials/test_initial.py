"""Version 1: generated + labelled + trained, restartable; or imported from a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

import autopipe.potentials.pacemaker as pm
import autopipe.potentials.trainer as trainer
from autopipe.config.run import RunConfig
from autopipe.db import Database, Label, LabelStatus, Origin, Structure
from autopipe.errors import AutopipeError
from autopipe.potentials import PotentialStore, build_initial_potential, max_gamma
from autopipe.potentials.activeset import GAMMA_TOLERANCE
from tests.lj import fixture_train_dir, lj3d_template, lj_label, lj_run_config
from autopipe.potentials.trainer import TrainOutcome, max_label_id

from tests.aceutil import pyace_gamma
from tests.potentials.helpers import copy_cached_run


def _counts(db: Database) -> tuple[int, int, int]:
    with db.session() as s:
        n_gen = s.scalar(select(func.count(Structure.id)).where(Structure.origin == Origin.generated))
        n_done = s.scalar(select(func.count(Label.id)).where(Label.status == LabelStatus.done))
        n_failed = s.scalar(select(func.count(Label.id)).where(Label.status == LabelStatus.failed))
    return n_gen, n_done, n_failed


@pytest.mark.slow
def test_fixture_run_contents_and_idempotence(lj_potential, tmp_path, monkeypatch):
    run = copy_cached_run(lj_potential, tmp_path / "run")
    db = Database(f"sqlite:///{run / 'autopipe.db'}")
    store = PotentialStore(db, run / "potentials")
    assert _counts(db) == (32, 32, 0)
    v1 = store.latest()
    assert (v1.version, v1.name, v1.parent_version, v1.last_label_id, v1.n_train) == (1, "lj3d", None, 32, 32)

    def no_training(*a, **k):
        raise AssertionError("version 1 exists: nothing may be trained")

    monkeypatch.setattr(pm, "run_pacemaker", no_training)
    again = build_initial_potential(db, store, lj_run_config("lj3d", run), lj_label)
    assert again == v1 and _counts(db) == (32, 32, 0)
    db.dispose()


def _fake_train(published: list):
    def fake(db, store, run_config, layout=None, *, name, version, fresh, **kw):
        published.append((name, version, max_label_id(db), fresh))
        return TrainOutcome(status="failed", error="stop here", log_tail="tail")

    return fake


def test_generate_label_and_restart(db, tmp_path, monkeypatch):
    cfg = lj_run_config("lj_defective", tmp_path, generate={"n_structures": 8, "min_distance": 2.1, "seed": 3})
    store = PotentialStore(db, tmp_path / "potentials")
    calls: list[int] = []

    def flaky_label(atoms):
        calls.append(len(atoms))
        if len(calls) == 3:
            raise RuntimeError("SCF did not converge")
        return lj_label(atoms)

    trained: list = []
    monkeypatch.setattr(trainer, "train_round", _fake_train(trained))
    with pytest.raises(AutopipeError, match="stop here"):
        build_initial_potential(db, store, cfg, flaky_label, template=lj3d_template())
    assert len(calls) == 8 and _counts(db) == (8, 7, 1)
    assert trained == [("lj_defective", 1, 8, True)]
    with db.session() as s:
        err = s.scalars(select(Label.error).where(Label.status == LabelStatus.failed)).one()
        assert "SCF" in err
        # min_distance: the defective potential never sees a close contact.
        from autopipe.db import atoms_from_structure
        from autopipe.generate import min_pair_distance

        assert min(min_pair_distance(atoms_from_structure(r)) for r in s.scalars(select(Structure))) >= 2.1

    # A restart reuses the stored structures and labels instead of generating new ones.
    calls.clear()
    with pytest.raises(AutopipeError):
        build_initial_potential(db, store, cfg, flaky_label, template=lj3d_template())
    assert calls == [] and _counts(db) == (8, 7, 1)


def test_label_results_are_stored_with_their_code_and_parameters(db, tmp_path, monkeypatch):
    from autopipe.dft import LabelResult

    def label(atoms):
        ref = lj_label(atoms)
        return LabelResult(status="done", code="lj", energy=ref.energy, forces=ref.forces, stress=ref.stress,
                           walltime=0.1, parameters={"sigma": 2.0})

    cfg = lj_run_config("x", tmp_path, generate={"n_structures": 4})
    monkeypatch.setattr(trainer, "train_round", _fake_train([]))
    with pytest.raises(AutopipeError):
        build_initial_potential(db, PotentialStore(db, tmp_path / "p"), cfg, label, template=lj3d_template())
    with db.session() as s:
        labels = list(s.scalars(select(Label)))
        assert len(labels) == 4 and all(lb.code == "lj" and lb.parameters == {"sigma": 2.0} for lb in labels)
        assert labels[0].stress.shape == (6,)


def _file_config(tmp_path: Path, **initial) -> RunConfig:
    cfg = lj_run_config("imported", tmp_path)
    data = cfg.model_dump(mode="json")
    data["initial_potential"] = {"kind": "file", **{k: str(v) for k, v in initial.items()}}
    data["train"]["retrain"] = "training_data" in initial  # without its data a potential cannot be retrained
    return RunConfig.model_validate(data)


@pytest.mark.slow
def test_import_from_file_computes_the_active_set(lj_potential, db, tmp_path):
    training_data = fixture_train_dir(lj_potential) / pm.FITTING_DATA_INFO
    cfg = _file_config(tmp_path, path=lj_potential.yaml, training_data=training_data)
    store = PotentialStore(db, tmp_path / "potentials")
    v1 = build_initial_potential(db, store, cfg)
    assert v1.version == 1 and v1.name == "potential" and v1.n_train == 29
    assert v1.asi.exists() and v1.yace.exists()
    # What makes it a MaxVol active set of this data, graded by pyace's own calculator: every training
    # atom has gamma <= the MaxVol tolerance, the selected ones exactly 1; a squeezed crystal is far out.
    training = [pyace_gamma(a, v1).max() for a in pd.read_pickle(training_data, compression="gzip")["ase_atoms"]]
    assert max(training) == pytest.approx(1.0, abs=GAMMA_TOLERANCE - 1 + 1e-6)
    assert pyace_gamma(lj3d_template(a=2.7), v1).max() > 5.0
    assert build_initial_potential(db, store, cfg) == v1  # idempotent


def test_import_from_file_with_asi_and_without_anything(lj_potential, db, tmp_path):
    store = PotentialStore(db, tmp_path / "potentials")
    with pytest.raises(AutopipeError, match="training_data"):
        build_initial_potential(db, store, _file_config(tmp_path, path=lj_potential.yaml))
    with pytest.raises(AutopipeError, match="not found"):
        build_initial_potential(db, store, _file_config(tmp_path, path=tmp_path / "nope.yaml", asi=lj_potential.asi))
    v1 = build_initial_potential(db, store, _file_config(tmp_path, path=lj_potential.yaml, asi=lj_potential.asi))
    assert v1.asi.read_bytes() == lj_potential.asi.read_bytes()
    assert np.isfinite(max_gamma(lj3d_template(), v1)[0])
