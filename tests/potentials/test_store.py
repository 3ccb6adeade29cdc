"""Versioned store: atomic publish, checksums, lookup."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from autopipe.db import Database, Potential
from autopipe.potentials.store import PotentialFiles, PotentialStore


def _files(tmp_path: Path, tag: str) -> dict[str, Path]:
    src = tmp_path / f"src-{tag}"
    src.mkdir()
    out = {}
    for role, name in (("yaml", "p.yaml"), ("yace", "p.yace"), ("asi", "p.asi"), ("log", "pacemaker.log")):
        (src / name).write_text(f"{role} of {tag}\n")
        out[role] = src / name
    return out


@pytest.fixture
def store(db, tmp_path) -> PotentialStore:
    return PotentialStore(db, tmp_path / "potentials")


def _visible_dirs(store: PotentialStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if not p.name.startswith("."))


def test_publish_and_lookup(store, tmp_path):
    assert store.latest() is None and store.next_version() == 1
    p1 = store.publish(_files(tmp_path, "a"), name="lj_defective", n_train=10, last_label_id=10,
                       metrics={"train_forces_rmse": 0.1})
    p2 = store.publish(_files(tmp_path, "b"), name="lj_v2", parent_version=1, n_train=14, last_label_id=17)
    assert isinstance(p1, PotentialFiles)
    assert (p1.version, p2.version, p2.parent_version) == (1, 2, 1)
    assert store.latest() == p2 and store.get(1) == p1
    assert p1.metrics == {"train_forces_rmse": 0.1}
    assert p2.directory == store.root / "v0002" and p2.directory.is_absolute()
    assert p2.yaml.read_text() == "yaml of b\n" and p2.asi.name == "potential.asi" and p2.yace.exists()
    assert (p2.directory / "pacemaker.log").exists() and (p2.directory / "manifest.json").exists()
    assert p2.last_label_id == 17 and p2.n_train == 14
    with store.db.session() as s:
        row = s.query(Potential).filter_by(version=2).one()
        assert row.directory == "v0002"  # relative: the run directory may move
        assert set(row.checksums) == {"yaml", "yace", "asi", "log"}
    with pytest.raises(KeyError):
        store.get(3)
    with pytest.raises(FileExistsError):
        store.publish(_files(tmp_path, "c"), name="dup", version=2)
    assert _visible_dirs(store) == ["v0001", "v0002"]


def test_store_survives_moving_the_run_directory(db, tmp_path):
    store = PotentialStore(db, tmp_path / "run" / "potentials")
    store.publish(_files(tmp_path, "a"), name="x")
    db.dispose()
    os.rename(tmp_path / "run", tmp_path / "moved")
    moved = PotentialStore(Database(f"sqlite:///{tmp_path / 'autopipe.db'}"), tmp_path / "moved" / "potentials")
    assert moved.latest().yaml == tmp_path / "moved" / "potentials" / "v0001" / "potential.yaml"


def test_publish_interrupted_at_rename_leaves_previous_version(store, tmp_path, monkeypatch):
    p1 = store.publish(_files(tmp_path, "a"), name="one")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr("autopipe.potentials.store.os.replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        store.publish(_files(tmp_path, "b"), name="two", parent_version=1)
    monkeypatch.undo()
    assert store.latest() == p1
    assert _visible_dirs(store) == ["v0001"]
    assert not any(store.root.glob(".staging-*"))  # the staging directory was cleaned up


def test_publish_interrupted_at_db_insert_leaves_previous_version(store, tmp_path, monkeypatch):
    p1 = store.publish(_files(tmp_path, "a"), name="one")
    seen_during_publish = []

    from sqlalchemy.orm import Session

    real_add = Session.add

    def failing_add(self, obj, *a, **k):
        if isinstance(obj, Potential):
            # The files are in place under v0002 by now, but without a row readers must not see them.
            assert (store.root / "v0002" / "potential.yaml").exists()
            seen_during_publish.append(PotentialStore(store.db, store.root).latest())
            raise RuntimeError("database is locked")
        return real_add(self, obj, *a, **k)

    monkeypatch.setattr(Session, "add", failing_add)
    with pytest.raises(RuntimeError, match="locked"):
        store.publish(_files(tmp_path, "b"), name="two", parent_version=1)
    monkeypatch.undo()
    assert seen_during_publish == [p1]
    assert store.latest() == p1
    assert _visible_dirs(store) == ["v0001"]  # the renamed directory was taken away again


def test_orphan_directory_is_ignored_and_its_number_not_reused(store, tmp_path):
    store.publish(_files(tmp_path, "a"), name="one")
    (store.root / "v0002").mkdir()  # a crash between rename and insert
    (store.root / "v0002" / "potential.yaml").write_text("half")
    assert store.latest().version == 1
    assert store.next_version() == 3
    assert store.publish(_files(tmp_path, "b"), name="three").version == 3


def test_corrupted_latest_is_skipped(store, tmp_path, caplog):
    p1 = store.publish(_files(tmp_path, "a"), name="one")
    p2 = store.publish(_files(tmp_path, "b"), name="two", parent_version=1)
    assert store.latest() == p2
    p2.asi.write_text("garbage\n")
    with caplog.at_level(logging.WARNING):
        assert store.latest() == p1
    assert "v2" in caplog.text and "asi" in caplog.text
    with pytest.raises(ValueError, match="corrupted"):
        store.get(2)
    assert store.get(2, verify=False).version == 2
    p1.yaml.unlink()  # a missing file counts as corrupted too
    assert store.latest() is None


def test_checksums_are_cached_by_mtime_and_size(store, tmp_path, monkeypatch):
    store.publish(_files(tmp_path, "a"), name="one")
    store.latest()
    calls = []
    import autopipe.potentials.store as mod

    real = mod.sha256
    monkeypatch.setattr(mod, "sha256", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    for _ in range(5):
        store.latest()
    assert calls == []  # unchanged files are not re-hashed
    p = store.latest().yaml
    p.write_text("changed!!\n")
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert store.latest() is None
    assert len(calls) == 1


def test_a_missing_log_does_not_retire_a_potential(store, tmp_path):
    p1 = store.publish(_files(tmp_path, "a"), name="one")
    (p1.directory / "pacemaker.log").unlink()
    assert store.latest() == p1
