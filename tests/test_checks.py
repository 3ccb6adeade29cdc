"""The rules of ``autopipe check`` (autopipe/config/checks.py), one by one, and the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autopipe.config import load_run, load_site
from autopipe.config.checks import (
    blocks_can_start,
    dft_attempts_fit_walltime,
    filesystem_type,
    globus_endpoints_not_contacted,
    slurm_accepts_blocks,
    sqlite_on_shared_filesystem,
    training_fits_walltime,
    walkers_run_beside_training,
)
from autopipe.config.run import RunConfig
from autopipe.config.site import SiteConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _site(name: str, **changes_by_label) -> SiteConfig:
    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    for ex in data["executors"]:
        ex.update(changes_by_label.get(ex["label"], {}))
    return SiteConfig.model_validate(data)


def _si_run(**dft_changes) -> RunConfig:
    run = load_run(ROOT / "configs" / "runs" / "si-pwx.yaml")
    return run.model_copy(update={"dft": run.dft.model_copy(update=dft_changes)})


@pytest.mark.parametrize("text, seconds", [("02:00:00", 7200), ("00:01:30", 90), ("48:00:10", 172810)])
def test_walltime_seconds(text, seconds):
    assert _site("perlmutter", cpu={"walltime": text}).executor_for("dft").walltime_seconds() == seconds


def test_dft_attempts_must_fit_the_dft_block():
    defaults = dict(timeout=3600.0, max_attempts=3)  # the EspressoConfig defaults
    # The old Perlmutter file (2 h CPU blocks) with the default DFT settings: 3 x 3600 s > 7200 s.
    [err] = dft_attempts_fit_walltime(_site("perlmutter", cpu={"walltime": "02:00:00"}), _si_run(**defaults))
    assert err.level == "error"
    assert "dft.timeout (3600 s) x 3 attempts = 10800 s exceeds the walltime of executor 'cpu' (02:00:00 = 7200 s)" in err.message
    # The shipped files pass, with the defaults and with si-pwx's own settings.
    assert dft_attempts_fit_walltime(_site("perlmutter"), _si_run(**defaults)) == []
    assert dft_attempts_fit_walltime(_site("perlmutter"), _si_run()) == []
    [never] = dft_attempts_fit_walltime(_site("perlmutter", cpu={"walltime": "00:30:00"}), _si_run(**defaults))
    assert "no label can ever finish in a block" in never.message
    # No batch walltime on local executors; analytic oracles are not timed.
    assert dft_attempts_fit_walltime(_site("local"), _si_run(timeout=1e6)) == []
    lj = load_run(ROOT / "configs" / "runs" / "lj2d-heal.yaml")
    assert dft_attempts_fit_walltime(_site("perlmutter", cpu={"walltime": "00:01:00"}), lj) == []


def test_training_must_fit_the_training_block():
    run = _si_run()
    assert training_fits_walltime(_site("perlmutter"), run) == []
    [err] = training_fits_walltime(_site("perlmutter", gpu={"walltime": "00:30:00"}), run)
    assert err.level == "error" and "train.timeout (3600 s)" in err.message and "'gpu'" in err.message


def _walkers(n: int) -> RunConfig:
    run = load_run(ROOT / "configs" / "runs" / "lj2d-heal.yaml")
    return run.model_copy(update={"walkers": run.walkers.model_copy(update={"count": n})})


def test_walkers_need_room_beside_a_fit():
    # The shipped threads site trains on its own thread: two walkers keep running during a fit.
    assert walkers_run_beside_training(_site("local"), _walkers(2)) == []
    [warn] = walkers_run_beside_training(_site("local"), _walkers(3))
    assert warn.level == "warning" and "room for 2 task(s) but the run has 3 walkers: walkers take turns" in warn.message
    # One executor for everything with 2 threads (the old local.yaml): a fit takes a walker's slot.
    one = SiteConfig.model_validate({"name": "one", "executors": [
        {"label": "all", "kind": "threads", "roles": ["md", "dft", "train"], "max_workers": 2}]})
    assert walkers_run_beside_training(one, _walkers(1)) == []
    [warn] = walkers_run_beside_training(one, _walkers(2))
    assert "while a fit runs, only 1 of the 2 walker(s) can run" in warn.message
    # capacity counts, not only workers
    roomy = SiteConfig.model_validate({"name": "one", "executors": [
        {"label": "all", "kind": "threads", "roles": ["md", "dft", "train"], "max_workers": 2, "capacity": 3}]})
    assert walkers_run_beside_training(roomy, _walkers(2)) == []
    # Perlmutter: 8 GPU workers for MD and training.
    assert walkers_run_beside_training(_site("perlmutter"), _walkers(7)) == []
    assert "only 7 of the 8 walker(s)" in walkers_run_beside_training(_site("perlmutter"), _walkers(8))[0].message


def test_blocks_that_can_never_start():
    assert blocks_can_start(_site("perlmutter")) == []
    found = blocks_can_start(_site("perlmutter", gpu={"min_blocks": 3, "max_blocks": 2, "workers_per_node": 8}))
    assert [f.level for f in found] == ["error", "warning"]
    assert "executor 'gpu': min_blocks (3) exceeds max_blocks (2)" in found[0].message
    assert "workers_per_node (8) exceeds gpus_per_node (4)" in found[1].message


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
gpfs-cfs /global/cfs gpfs rw 0 0
10.0.0.1@o2ib:/scratch /pscratch lustre rw,flock 0 0
server:/export /home/my\\040docs nfs4 rw 0 0
tmpfs /pscratch/tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    "path, fstype",
    [
        ("/pscratch/sd/u/user/run/autopipe.db", "lustre"),
        ("/pscratch/tmp/x.db", "tmpfs"),  # the longest mount point wins
        ("/global/cfs/cdirs/m0000/a.db", "gpfs"),
        ("/home/my docs/a.db", "nfs4"),  # octal escapes in /proc/mounts
        ("/home/other/a.db", "ext4"),
        ("/pscratchy/a.db", "ext4"),  # a prefix of the name is not a parent
    ],
)
def test_filesystem_type_from_mounts(path, fstype):
    assert filesystem_type(Path(path), MOUNTS) == fstype


def test_filesystem_type_of_a_real_directory(tmp_path):
    assert filesystem_type(tmp_path, Path("/proc/mounts").read_text())


def test_sqlite_on_a_parallel_file_system_warns_and_recommends_postgresql():
    run = _si_run().model_copy(update={"workdir": Path("/pscratch/sd/u/user/si")})
    [warn] = sqlite_on_shared_filesystem(run, read_mounts=lambda: MOUNTS)
    assert warn.level == "warning"
    assert "/pscratch/sd/u/user/si/autopipe.db is on a lustre file system" in warn.message
    assert "PostgreSQL" in warn.message
    local = run.model_copy(update={"workdir": Path("/home/other/si")})
    assert sqlite_on_shared_filesystem(local, read_mounts=lambda: MOUNTS) == []
    pg = run.model_copy(update={"database": "postgresql+psycopg://u@db.example/autopipe"})
    assert sqlite_on_shared_filesystem(pg, read_mounts=lambda: MOUNTS) == []


def test_globus_site_is_reported_as_not_contacted():
    found = globus_endpoints_not_contacted(_site("globus"))
    assert [f.level for f in found] == ["note", "note"]
    assert all("was not contacted" in f.message for f in found)
    assert globus_endpoints_not_contacted(_site("perlmutter")) == []


def test_slurm_rule_says_when_slurm_does_not_answer(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo here, as on a laptop
    [note] = slurm_accepts_blocks(_site("perlmutter"), built={})
    assert note.level == "note" and "Slurm does not answer here" in note.message
    assert slurm_accepts_blocks(_site("local"), built={}) == []


def _check(*args):
    return subprocess.run([str(BIN / "autopipe"), "check", *args], capture_output=True, text=True)


def test_check_command_rejects_a_pair_whose_labels_outlast_the_block(tmp_path):
    site = tmp_path / "site.yaml"
    data = yaml.safe_load((ROOT / "configs" / "perlmutter.yaml").read_text())
    data["executors"][1]["walltime"] = "00:15:00"
    site.write_text(yaml.safe_dump(data))
    out = _check("--site", str(site), "--run", str(ROOT / "configs" / "runs" / "si-pwx.yaml"))
    assert out.returncode == 2
    assert "error: dft.timeout (600 s) x 2 attempts = 1200 s exceeds the walltime of executor 'cpu'" in out.stderr
    assert "Traceback" not in out.stderr and "OK" not in out.stdout


def test_check_command_refuses_a_missing_structure_file(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "runs" / "si-pwx.yaml").read_text())
    data["system"]["structure"] = {"kind": "file", "path": "start.extxyz"}
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(data))
    out = _check("--run", str(run))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {run}: system.structure.path: {tmp_path / 'start.extxyz'} does not exist"
    assert "OK" not in out.stdout


def test_check_command_validates_a_globus_site_offline():
    out = _check("--site", str(ROOT / "configs" / "globus.yaml"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("was not contacted") == 2
    assert "configs/globus.yaml: OK (2 executor(s))" in out.stdout
