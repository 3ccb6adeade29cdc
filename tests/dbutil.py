"""Test databases: a fresh SQLite file, or a fresh schema on the test PostgreSQL server.

``make test`` starts PostgreSQL on loopback (scripts/pg-test-server.sh) and exports its
URL as AUTOPIPE_TEST_POSTGRES_URL; without it (``make test-fast``) the PostgreSQL
variants are skipped.
"""

from __future__ import annotations

import os

import pytest

from autopipe.db import Base, Database

PG_URL = os.environ.get("AUTOPIPE_TEST_POSTGRES_URL")
DB_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def fresh_database(kind: str, tmp_path) -> Database:
    if kind == "sqlite":
        return Database(f"sqlite:///{tmp_path / 'test.db'}")
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("AUTOPIPE_TEST_POSTGRES_URL is not set in CI: run the tests with `make test`")
        pytest.skip("no PostgreSQL test server (run `make test`)")
    db = Database(PG_URL, create=False)
    Base.metadata.drop_all(db.engine)
    Base.metadata.create_all(db.engine)
    return db
