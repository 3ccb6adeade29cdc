"""`autopipe status`, `report` and `replay` only read a run's database: they never create tables
or add columns to it, and a missing or foreign database, or a broken run marker, is one line."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ase.build import bulk

from autopipe.config import load_run
from autopipe.db import Database
from autopipe.db import structure_from_atoms
from autopipe.layout import RUN_MARKER, RunLayout, write_run_files

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "autopipe"), *args], capture_output=True, text=True, timeout=300)


def _one_line_error(out: subprocess.CompletedProcess, *expected: str) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def make_run(workdir: Path, *, older: bool = False) -> Path:
    """A run's work directory as the loop leaves it: marker, resolved run file and a database with a
    structure in it; ``older``: the database as an older autopipe left it (two columns it lacks).
    Returns the database file."""
    run = load_run(ROOT / "configs/runs/lj2d-heal.yaml", workdir=workdir)
    write_run_files(RunLayout(workdir), run, "local")
    db = Database(run.database_url())
    with db.session() as s:
        s.add(structure_from_atoms(bulk("Ar", "fcc", a=5.3), "generated"))
    db.dispose()
    path = RunLayout(workdir).database_file
    if older:
        con = sqlite3.connect(path)
        for col in ("energy_weight", "force_weights"):
            con.execute(f"ALTER TABLE structures DROP COLUMN {col}")
        con.commit()
        con.close()
    return path


def snapshot(db_file: Path) -> tuple[str, list]:
    """The database file's bytes (sha256) and its schema, read without writing."""
    digest = hashlib.sha256(db_file.read_bytes()).hexdigest()
    con = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    schema = sorted(con.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    con.close()
    return digest, schema


def test_status_and_report_leave_the_database_as_they_found_it(tmp_path):
    db_file = make_run(tmp_path / "w")
    before = snapshot(db_file)
    st = _cli("status", "--workdir", str(tmp_path / "w"), "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["structures"]["total"] == 1
    rep = _cli("report", "--workdir", str(tmp_path / "w"))
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "w" / "report" / "index.html").is_file()
    assert snapshot(db_file) == before


@pytest.mark.parametrize("command", [["status"], ["report"], ["replay", "--fresh-seeds", "0"]])
def test_a_database_of_an_older_autopipe_is_not_migrated_by_reading_it(tmp_path, command):
    """The columns it lacks are added when the run is resumed (autopipe-steer), never by a reader."""
    db_file = make_run(tmp_path / "w", older=True)
    before = snapshot(db_file)
    out = _cli(*command, "--workdir", str(tmp_path / "w"))
    _one_line_error(out, "older autopipe", "structures.energy_weight")
    assert snapshot(db_file) == before


@pytest.mark.parametrize("command", [["status"], ["report"], ["replay", "--fresh-seeds", "0"]])
def test_a_missing_database_is_one_line_and_is_not_created(tmp_path, command):
    db_file = make_run(tmp_path / "w")
    db_file.unlink()
    _one_line_error(_cli(*command, "--workdir", str(tmp_path / "w")), str(db_file), "no database")
    assert not db_file.exists()


def test_a_foreign_database_is_one_line_and_is_left_alone(tmp_path):
    db_file = make_run(tmp_path / "w")
    db_file.unlink()
    con = sqlite3.connect(db_file)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, title TEXT)")
    con.commit()
    con.close()
    before = snapshot(db_file)
    for command in (["status"], ["report"]):
        _one_line_error(_cli(*command, "--workdir", str(tmp_path / "w")), "not an autopipe database")
        assert snapshot(db_file) == before
    db_file.write_text("these are my notes, not a database\n" * 100)
    _one_line_error(_cli("status", "--workdir", str(tmp_path / "w")), "not an autopipe database")
    assert db_file.read_text().startswith("these are my notes")


@pytest.mark.parametrize("content", ["{not json", "{}", "[1, 2]", '{"database": 7}'])
def test_a_malformed_run_marker_is_one_line_naming_it(tmp_path, content):
    make_run(tmp_path / "w")
    (tmp_path / "w" / RUN_MARKER).write_text(content)
    _one_line_error(_cli("status", "--workdir", str(tmp_path / "w")), str(tmp_path / "w" / RUN_MARKER))


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_database_error_while_reading_is_one_line(tmp_path, monkeypatch, command):
    """The server going away mid-read (its message runs over several lines) is one line, unless --debug."""
    from sqlalchemy.exc import OperationalError
    from typer.testing import CliRunner

    import autopipe.report
    import autopipe.status
    from autopipe.cli import app

    def gone(*_a, **_kw):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly\n"
                                                          "\tThis probably means the server terminated abnormally"))

    monkeypatch.setattr(autopipe.status, "collect_status", gone)
    monkeypatch.setattr(autopipe.report, "build_report", gone)
    make_run(tmp_path / "w")
    out = CliRunner().invoke(app, [command, "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2, out.output
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: reading the run database failed: "), out.output
    assert "server closed the connection unexpectedly" in lines[0]
    debug = CliRunner().invoke(app, [command, "--workdir", str(tmp_path / "w"), "--debug"])
    assert isinstance(debug.exception, OperationalError)
