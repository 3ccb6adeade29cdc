"""Fixtures local to the potentials tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopipe.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    """A fresh SQLite run database."""
    d = Database(f"sqlite:///{tmp_path / 'autopipe.db'}")
    yield d
    d.dispose()
