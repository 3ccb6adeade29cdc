"""The retraining trigger and a real retrain that continues from its parent."""

from __future__ import annotations

from pathlib import Path

import pytest

import autopipe.potentials.pacemaker as pm
import autopipe.potentials.warm as warm
from autopipe.db import Database
from autopipe.potentials import PotentialStore, should_retrain, train_round
from autopipe.potentials.pacemaker import FitResult
from tests.lj import lj_recipe, lj_run_config
from autopipe.potentials.trainer import max_label_id, new_label_count

from tests.potentials.helpers import add_labelled, copy_cached_run, lj_structures


def _fake_files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for role in ("yaml", "yace", "asi"):
        p = tmp_path / f"fake.{role}"
        p.write_text(role)
        out[role] = p
    return out


def test_should_retrain_counts_successful_labels_after_the_latest_potential(db, tmp_path):
    cfg = lj_run_config("t", tmp_path, train={"min_new_labels": 3})
    store = PotentialStore(db, tmp_path / "potentials")
    ids = add_labelled(db, lj_structures(4))
    assert should_retrain(db, cfg.train)  # no potential yet: every label is new
    store.publish(_fake_files(tmp_path), name="v1", last_label_id=ids[-1])
    assert not should_retrain(db, cfg.train) and new_label_count(db) == 0
    add_labelled(db, lj_structures(2, seed=1))
    add_labelled(db, lj_structures(3, seed=2), status="failed")  # failures never count
    assert new_label_count(db) == 2 and not should_retrain(db, cfg.train)
    add_labelled(db, lj_structures(1, seed=3), origin="embedded", force_mask=[0])
    assert new_label_count(db) == 3 and should_retrain(db, cfg.train)


def test_failed_fit_publishes_nothing(db, tmp_path, monkeypatch):
    cfg = lj_run_config("t", tmp_path, train={"warm_trainer": False})  # the fake replaces the pacemaker program
    store = PotentialStore(db, tmp_path / "potentials")
    add_labelled(db, lj_structures(3))

    def failing(workdir, *a, **k):
        return FitResult(status="failed", workdir=Path(workdir), error="pacemaker exited with code 1",
                         log_tail="Traceback ...\nValueError: boom")

    monkeypatch.setattr(pm, "run_pacemaker", failing)
    out = train_round(db, store, cfg)
    assert out.status == "failed" and "code 1" in out.error and "boom" in out.log_tail
    assert store.latest() is None and store.versions() == []
    assert should_retrain(db, cfg.train.model_copy(update={"min_new_labels": 3}))


@pytest.mark.slow
def test_retrain_continues_from_parent_and_snapshots_labels(lj_potential, tmp_path, monkeypatch):
    run = copy_cached_run(lj_potential, tmp_path / "run")
    db = Database(f"sqlite:///{run / 'autopipe.db'}")
    store = PotentialStore(db, run / "potentials")
    parent = store.latest()
    assert parent.version == 1 and parent.last_label_id == 32

    recipe = lj_recipe(3)
    cfg = lj_run_config("ljrun", run, train={**recipe["train"], "retrain_iterations": 8, "min_new_labels": 4})
    assert not should_retrain(db, cfg.train)
    new_ids = add_labelled(db, lj_structures(3, seed=21))
    new_ids += add_labelled(db, lj_structures(1, seed=22), origin="embedded", force_mask=list(range(8)))
    assert should_retrain(db, cfg.train)
    snapshot = max_label_id(db)

    real_run = warm.warm_fit_and_export  # the default route (TrainConfig.warm_trainer)
    late: list[int] = []

    def run_and_label_meanwhile(*args, **kwargs):
        # A DFT result arrives while pacemaker is running.
        late.extend(add_labelled(db, lj_structures(1, seed=23)))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(warm, "warm_fit_and_export", run_and_label_meanwhile)
    out = train_round(db, store, cfg)
    assert out.ok, f"{out.error}\n{out.log_tail}"

    new = store.latest()
    assert new.version == 2 and new.parent_version == 1 and new.name == "ljrun_v2"
    # Started from the parent: pacemaker got -p <parent yaml> ...
    assert out.argv[out.argv.index("-p") + 1] == str(parent.yaml)
    # ... and its first loss is the parent's final loss (slightly changed by the 4 new cells),
    # nowhere near the loss of a fresh fit.
    assert new.metrics["initial_loss"] == pytest.approx(parent.metrics["final_loss"], rel=0.5)
    assert new.metrics["initial_loss"] < 0.1 * parent.metrics["initial_loss"]
    assert new.metrics["continued_from"] == 1
    # Exactly the labels up to the snapshot were trained on; the late one waits for the next round.
    assert new.last_label_id == snapshot and late[0] > snapshot
    assert new.n_train == 36 and new.metrics["n_masked_atoms"] == 8
    assert new_label_count(db) == 1
    assert new.yace.exists() and new.asi.exists()
    db.dispose()


@pytest.mark.parametrize("continue_from_parent", [True, False])
def test_retrain_passes_parent_and_iterations_to_pacemaker(db, tmp_path, monkeypatch, continue_from_parent):
    cfg = lj_run_config("t", tmp_path, train={"max_iterations": 50, "retrain_iterations": 7, "warm_trainer": False,
                                               "continue_from_parent": continue_from_parent})
    store = PotentialStore(db, tmp_path / "potentials")
    ids = add_labelled(db, lj_structures(2))
    parent = store.publish(_fake_files(tmp_path), name="v1", last_label_id=ids[0])
    seen = {}

    def record(workdir, train_config, elements, dataset, *, initial_potential=None, iterations=None, **kw):
        seen.update(initial_potential=initial_potential, iterations=iterations, elements=list(elements))
        return FitResult(status="failed", workdir=Path(workdir), error="stop")

    monkeypatch.setattr(pm, "run_pacemaker", record)
    out = train_round(db, store, cfg)
    assert out.status == "failed" and out.parent_version == 1 and out.last_label_id == ids[-1]
    if continue_from_parent:
        assert seen == {"initial_potential": parent.yaml, "iterations": 7, "elements": ["Ar"]}
    else:
        assert seen == {"initial_potential": None, "iterations": 50, "elements": ["Ar"]}
