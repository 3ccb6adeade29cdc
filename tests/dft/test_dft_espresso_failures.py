"""Failure paths of pw.x labels, with stand-in executables at the run boundary.

A stand-in is a small Python script passed as ``command``; it runs in the attempt
directory with ``-in pw.in`` exactly like pw.x. Tests marked with ``si2_run`` replay
the output of one real pw.x run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from autopipe.dft import label
from autopipe.dft.process import _GRACE
from autopipe.errors import AutopipeError
from tests.dft.conftest import PSEUDO_DIR, si_config, stand_in

pytestmark = pytest.mark.skipif(not PSEUDO_DIR.is_dir(), reason="no system pseudopotentials")


def _alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie waiting for init to reap it counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ----------------------------------------------------------------------------- crashes and timeouts


def test_crash_is_retried_then_failed_with_every_attempt_recorded(tmp_path):
    command = stand_in(
        tmp_path,
        "crash",
        """
        print("     Program PWSCF v.6.7 starts on ...")
        sys.stderr.write("boom: segmentation fault\\n")
        sys.exit(1)
        """,
    )
    result = label(bulk("Si", "diamond", a=5.43), si_config(command=command, max_attempts=3), workdir=tmp_path / "w")
    assert result.status == "failed"
    assert [a["status"] for a in result.attempts] == ["crashed"] * 3
    assert [a["attempt"] for a in result.attempts] == [1, 2, 3]
    assert all(a["returncode"] == 1 and a["changes"] == {} for a in result.attempts)
    assert "boom: segmentation fault" in result.attempts[0]["error"]
    assert "3 attempt(s) failed" in result.error and "crashed" in result.error
    assert result.energy is None and result.forces is None
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["attempt-1", "attempt-2", "attempt-3"]


def test_pwx_error_box_becomes_the_reason(tmp_path):
    command = stand_in(
        tmp_path,
        "errbox",
        """
        print(" %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%")
        print("     Error in routine readpp (1):")
        print("     file Si.UPF not found")
        print(" %%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%")
        sys.exit(1)
        """,
    )
    result = label(bulk("Si", "diamond", a=5.43), si_config(command=command, max_attempts=1))
    assert result.status == "failed" and len(result.attempts) == 1
    assert "Error in routine readpp (1): file Si.UPF not found" in result.error


def test_exit_zero_without_job_done_is_a_crash(tmp_path):
    command = stand_in(tmp_path, "truncated", 'print("     Program PWSCF v.6.7 starts on ...")\n')
    result = label(bulk("Si", "diamond", a=5.43), si_config(command=command, max_attempts=2))
    assert result.status == "failed"
    assert [a["status"] for a in result.attempts] == ["crashed", "crashed"]
    assert "no JOB DONE" in result.error


def test_timeout_kills_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"
    command = stand_in(
        tmp_path,
        "hang",
        f"""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops it
        child = subprocess.Popen(["sleep", "300"])
        with open({str(pids)!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}\\n")
        time.sleep(300)
        """,
    )
    start = time.monotonic()
    result = label(bulk("Si", "diamond", a=5.43), si_config(command=command, timeout=0.5, max_attempts=2))
    elapsed = time.monotonic() - start
    assert result.status == "failed"
    assert [a["status"] for a in result.attempts] == ["timeout", "timeout"]
    assert all(a["returncode"] is None for a in result.attempts)
    assert "timeout" in result.error
    assert elapsed < 2 * (0.5 + _GRACE) + 5
    started = [int(p) for line in pids.read_text().split("\n") if line for p in line.split()]
    assert len(started) == 4  # two attempts, each a leader and a child
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in started if _alive(p)]


def test_scf_failures_walk_the_recovery_ladder(tmp_path):
    command = stand_in(
        tmp_path,
        "noscf",
        """
        print("     convergence NOT achieved after   5 iterations: stopping")
        print("   JOB DONE.")
        sys.exit(2)
        """,
    )
    workdir = tmp_path / "w"
    result = label(bulk("Si", "diamond", a=5.43), si_config(command=command, max_attempts=4, mixing_beta=0.6), workdir=workdir)
    assert result.status == "failed"
    assert [a["status"] for a in result.attempts] == ["scf_not_converged"] * 4
    changes = [a["changes"] for a in result.attempts]
    assert changes[0] == {}
    assert changes[1] == {"mixing_beta": pytest.approx(0.3), "electron_maxstep": 200}
    assert changes[2] == {"mixing_beta": pytest.approx(0.3), "electron_maxstep": 200, "diagonalization": "cg"}
    assert changes[3] == {"mixing_beta": pytest.approx(0.15), "electron_maxstep": 400, "diagonalization": "cg"}
    assert result.attempts[1]["reason"] == "attempt 1: scf_not_converged"
    # What the record says is what pw.x was given.
    text = (workdir / "attempt-3" / "pw.in").read_text()
    assert "diagonalization  = 'cg'" in text and "electron_maxstep = 200" in text and "mixing_beta      = 0.3" in text
    assert result.parameters["input_data"]["electrons"]["mixing_beta"] == pytest.approx(0.15)


def test_missing_executable_is_a_configuration_error(tmp_path):
    with pytest.raises(AutopipeError, match="cannot start"):
        label(bulk("Si", "diamond", a=5.43), si_config(command=[str(tmp_path / "no-such-pw.x")]))


# ----------------------------------------------------------------------------- replaying a real run


def _replay_after_crashes(tmp_path, output: Path, crashes: int) -> list[str]:
    counter = tmp_path / "calls"
    return stand_in(
        tmp_path,
        "flaky",
        f"""
        counter = pathlib.Path({str(counter)!r})
        calls = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(calls))
        if calls <= {crashes}:
            sys.exit(139)
        sys.stdout.write(pathlib.Path({str(output)!r}).read_text())
        """,
    )


def test_crash_then_success_returns_the_good_attempt(tmp_path, si2_run):
    command = _replay_after_crashes(tmp_path, si2_run.output, crashes=1)
    result = label(si2_run.atoms, si_config(command=command), workdir=tmp_path / "w")
    assert result.status == "done" and result.error is None
    assert [a["status"] for a in result.attempts] == ["crashed", "done"]
    assert result.attempts[1]["reason"] == "attempt 1: crashed"
    assert result.energy == pytest.approx(si2_run.result.energy)
    assert np.allclose(result.forces, si2_run.result.forces)
    assert result.walltime >= sum(a["walltime"] for a in result.attempts) - 0.01


def test_stress_only_for_3d_periodic_cells(tmp_path, si2_run):
    assert si2_run.result.stress is not None and si2_run.result.stress.shape == (6,)
    slab = si2_run.atoms.copy()
    slab.pbc = [True, True, False]
    command = _replay_after_crashes(tmp_path, si2_run.output, crashes=0)
    result = label(slab, si_config(command=command))
    assert result.status == "done" and result.stress is None


def test_masked_structure_keeps_forces_on_every_atom(tmp_path, si2_run):
    masked = si2_run.atoms.copy()
    masked.info["force_mask"] = [1]
    command = _replay_after_crashes(tmp_path, si2_run.output, crashes=0)
    result = label(masked, si_config(command=command))
    assert result.status == "done" and result.forces.shape == (2, 3)
    assert np.all(np.abs(result.forces[1]) > 0)  # the masked atom's force is there
    assert masked.info["force_mask"] == [1]


# ----------------------------------------------------------------------------- refusals


def _never_run(tmp_path) -> tuple[list[str], Path]:
    marker = tmp_path / "ran"
    command = stand_in(tmp_path, "never", f"pathlib.Path({str(marker)!r}).write_text('ran')\nsys.exit(1)\n")
    return command, marker


def _assert_refused(result, marker: Path, *words: str) -> None:
    assert result.status == "refused"
    assert result.attempts == [] and result.walltime == 0.0
    assert result.energy is None and result.forces is None
    for word in words:
        assert word in result.error
    assert not marker.exists(), "pw.x was started for a refused structure"


def test_refuses_element_without_pseudopotential(tmp_path):
    command, marker = _never_run(tmp_path)
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.symbols[1] = "Ar"  # no Ar UPF ships with QE's data package
    result = label(atoms, si_config(command=command), workdir=tmp_path / "w")
    _assert_refused(result, marker, "no pseudopotential for Ar")
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_refuses_overlapping_atoms_including_periodic_images(tmp_path):
    command, marker = _never_run(tmp_path)
    close = bulk("Si", "diamond", a=5.43)
    close.positions[1] = close.positions[0] + [0.2, 0.1, 0.0]
    _assert_refused(label(close, si_config(command=command, min_distance=0.5)), marker, "atoms 0 and 1", "min_distance")
    across = Atoms("Si2", positions=[[0.1, 2, 2], [5.3, 2, 2]], cell=[5.5, 5.5, 5.5], pbc=True)
    _assert_refused(label(across, si_config(command=command, min_distance=0.5)), marker, "0.300 Å", "periodic images")


def test_refuses_empty_and_flat_structures(tmp_path):
    command, marker = _never_run(tmp_path)
    _assert_refused(label(Atoms(cell=[5, 5, 5], pbc=True), si_config(command=command)), marker, "no atoms")
    flat = Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]], cell=[4.6, 4.6, 0.0], pbc=[True, True, False])
    _assert_refused(label(flat, si_config(command=command)), marker, "vacuum")
