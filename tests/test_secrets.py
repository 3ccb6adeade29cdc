"""The database password never lands in the work directory: the run marker and the resolved run
file keep the URL without it (mode 600), and the password comes at connect time from PGPASSWORD
or a pgpass file, for the loop (start and resume) and for the commands that read a run."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from ase.build import bulk

from autopipe.config import load_run
from autopipe.db import Database, structure_from_atoms
from autopipe.errors import AutopipeError
from autopipe.layout import RunLayout, write_run_files
from tests.dbutil import PG_URL

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run_config(workdir: Path, database: str):
    run = load_run(ROOT / "configs/runs/lj2d-heal.yaml", workdir=workdir)
    run.database = database
    return run


def files_holding(workdir: Path, secret: str) -> list[Path]:
    """Every file under ``workdir`` whose bytes contain ``secret``."""
    return [p for p in workdir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_run_files_keep_the_url_without_its_password_and_are_private(tmp_path):
    secret = "s3cret-" + secrets.token_hex(4)
    work = tmp_path / "w"
    layout = RunLayout(work)
    # A run started by an older autopipe left both files world-readable with the password in them.
    work.mkdir()
    for path in (layout.marker, layout.resolved_config):
        path.write_text(f'{{"database": "postgresql+psycopg://alice:{secret}@127.0.0.1:5432/runs"}}')
        path.chmod(0o644)
    write_run_files(layout, _run_config(work, f"postgresql+psycopg://alice:{secret}@127.0.0.1:5432/runs"), "local")
    assert files_holding(work, secret) == []
    stored = "postgresql+psycopg://alice@127.0.0.1:5432/runs"
    assert json.loads(layout.marker.read_text())["database"] == stored
    assert json.loads(layout.resolved_config.read_text())["database"] == stored
    for path in (layout.marker, layout.resolved_config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_new_run_file_is_never_readable_by_others_even_for_a_moment(tmp_path, monkeypatch):
    """Created with mode 600 (not written and then chmod'ed): watch every open of the marker."""
    seen = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        if str(path).endswith(("autopipe-run.json", "run.resolved.json")):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", spy)
    write_run_files(RunLayout(tmp_path / "w"), _run_config(tmp_path / "w", "sqlite:///x.db"), "local")
    assert seen and all(m == 0o600 for m in seen), seen


# --------------------------------------------------------------------------- a real password


@pytest.fixture
def password_role():
    """A login role on the test PostgreSQL server that must give its (random) password, and a
    database it owns: yields (URL without the password, password)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("AUTOPIPE_TEST_POSTGRES_URL is not set in CI: run the tests with `make test`")
        pytest.skip("no PostgreSQL test server (run `make test`)")
    role, password = f"autopipe_pw_{uuid.uuid4().hex[:8]}", "pw-" + secrets.token_hex(8)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE autopipe_password_users"))
        c.execute(text(f'CREATE DATABASE "{role}" OWNER {role}'))
    try:
        yield make_url(PG_URL).set(username=role, database=role).render_as_string(hide_password=False), password
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)'))
            c.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def _status(work: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    return subprocess.run([str(BIN / "autopipe"), "status", "--workdir", str(work), "--json"],
                          capture_output=True, text=True, env={**base, **env}, timeout=120)


@pytest.mark.postgres
def test_the_password_comes_from_the_environment_or_a_pgpass_file(password_role, tmp_path, monkeypatch):
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    url, password = password_role
    nowhere = str(tmp_path / "no-pgpass")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", nowhere)
    # The server does ask this role for its password (else the rest would prove nothing).
    with pytest.raises(AutopipeError, match="cannot open database"):
        Database(url)

    # The loop: a run file whose URL has the password (first start) ...
    work = tmp_path / "w"
    with_password = make_url(url).set(password=password).render_as_string(hide_password=False)
    db = Database(with_password)
    with db.session() as s:
        s.add(structure_from_atoms(bulk("Ar", "fcc", a=5.3), "generated"))
    db.dispose()
    write_run_files(RunLayout(work), _run_config(work, with_password), "local")
    assert files_holding(work, password) == []

    # ... and resumed from a run file without it, the password in PGPASSWORD.
    from autopipe.config import load_site
    from autopipe.steer.loop import Steering

    monkeypatch.setenv("PGPASSWORD", password)
    steering = Steering(load_site(ROOT / "configs/local.yaml"), _run_config(work, url))
    with steering.ctx.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM structures")).scalar() == 1
    steering.ctx.db.dispose()
    monkeypatch.delenv("PGPASSWORD")

    # The commands that read the run: the URL of the marker, the password from the environment ...
    out = _status(work, PGPASSWORD=password, PGPASSFILE=nowhere)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["structures"]["total"] == 1
    # ... or from a pgpass file ...
    pgpass = tmp_path / "pgpass"
    u = make_url(url)
    pgpass.write_text(f"{u.host}:{u.port}:{u.database}:{u.username}:{password}\n")
    pgpass.chmod(0o600)
    out = _status(work, PGPASSFILE=str(pgpass))
    assert out.returncode == 0, out.stderr
    # ... and without either, one line that names the database but no password.
    out = _status(work, PGPASSFILE=nowhere)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and u.username in out.stderr and password not in out.stderr

    # Read-only on PostgreSQL too: the server refuses a write through the readers' connection.
    monkeypatch.setenv("PGPASSWORD", password)
    reader = Database.for_run(work)
    with pytest.raises(Exception, match="read-only transaction"):
        with reader.session() as s:
            s.execute(text("CREATE TABLE intruder (id integer)"))
    reader.dispose()
    assert files_holding(work, password) == []
