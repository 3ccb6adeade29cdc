"""Package-level promises: light imports, CLI behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_autopipe_does_not_pull_tensorflow_or_lammps():
    code = (
        "import sys, autopipe, autopipe.config, autopipe.db, autopipe.cli, autopipe.status\n"
        "heavy = [m for m in ('tensorflow', 'lammps', 'pyace', 'parsl') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _run(*args, **kw):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, **kw)


def test_steer_help_and_check_prints_plan(tmp_path):
    assert "--site" in _run("autopipe-steer", "--help").stdout
    out = _run("autopipe-steer", "--site", str(ROOT / "configs/local.yaml"),
               "--run", str(ROOT / "configs/runs/lj2d-heal.yaml"), "--workdir", str(tmp_path / "w"), "--check")
    assert out.returncode == 0, out.stderr
    assert "run 'lj_healed' on site 'local'" in out.stdout
    assert str(tmp_path / "w") in out.stdout
    assert "configuration OK" in out.stdout


def test_steer_bad_file_is_one_line_error_without_traceback(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text((ROOT / "configs/runs/lj2d-heal.yaml").read_text().replace("timestep: 1.0", "timestep: slow"))
    out = _run("autopipe-steer", "--site", str(ROOT / "configs/local.yaml"), "--run", str(bad))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {bad}: md.timestep: Input should be a valid number, unable to parse string as a number"]
    dbg = _run("autopipe-steer", "--site", str(ROOT / "configs/local.yaml"), "--run", str(bad), "--debug")
    assert "Traceback" in dbg.stderr


def test_check_validates_all_shipped_sites():
    for site in ("local", "local-htex", "perlmutter", "globus", "slurm-local"):
        out = _run("autopipe", "check", "--site", str(ROOT / f"configs/{site}.yaml"))
        assert out.returncode == 0, out.stderr


def test_status_json_on_an_empty_run(tmp_path):
    from autopipe.db import Database

    Database.for_workdir(tmp_path)
    out = _run("autopipe", "status", "--workdir", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    for key in ("structures", "labels", "potentials", "segments", "triggers", "tasks", "stopped_because"):
        assert key in st
    missing = _run("autopipe", "status", "--workdir", str(tmp_path / "nothing"))
    assert missing.returncode != 0 and "no autopipe run here" in missing.stderr
