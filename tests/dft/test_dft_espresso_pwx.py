"""Real pw.x on Si: parsed energies and forces agree with finite differences of the energy."""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.dft import label
from tests.dft.conftest import needs_pwx, si8, si_config

pytestmark = [needs_pwx, pytest.mark.slow]

# Central difference step (Å). At 14 Ry and conv_thr 1e-10 Ry the analytic and
# finite-difference forces agree to ~5e-4 eV/Å; the tolerance leaves a 20x margin.
STEP = 0.01
TOLERANCE = 0.01  # eV/Å


def _central_difference(atoms, config, atom: int, axis: int) -> float:
    """-dE/dx (eV/Å) of one coordinate by central differences of pw.x energies."""
    energies = []
    for sign in (+1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * STEP
        result = label(moved, config)
        assert result.status == "done", result.error
        energies.append(result.energy)
    return -(energies[0] - energies[1]) / (2 * STEP)


def test_si2_energy_forces_stress_and_finite_difference(si2_run):
    result = si2_run.result
    assert result.code == "espresso" and result.status == "done"
    assert result.energy == pytest.approx(-215.4, abs=1.0)  # eV, 2 Si with pz-vbc at 14 Ry
    assert result.forces.shape == (2, 3)
    assert np.abs(result.forces).max() > 0.1  # rattled: a real test of the forces
    assert np.allclose(result.forces.sum(axis=0), 0.0, atol=1e-3)
    assert result.stress.shape == (6,) and np.all(np.isfinite(result.stress))
    assert result.parameters["kpts"] == [4, 4, 4]  # |b| = 2π·√3/5.43 Å = 2.00 1/Å; 2.00/0.6 = 3.3 -> 4
    assert result.parameters["pseudopotentials"] == {"Si": "Si.pz-vbc.UPF"}
    assert len(result.parameters["pseudo_sha256"]["Si"]) == 64
    [attempt] = result.attempts
    assert attempt["status"] == "done" and attempt["scf_iterations"] >= 1
    fd = _central_difference(si2_run.atoms, si2_run.config, atom=0, axis=0)
    assert fd == pytest.approx(result.forces[0, 0], abs=TOLERANCE)


def test_si8_forces_match_finite_difference():
    atoms, config = si8(), si_config()
    result = label(atoms, config)
    assert result.status == "done", result.error
    assert result.parameters["kpts"] == [2, 2, 2]  # |b| = 2π/5.43 Å = 1.16 1/Å; 1.16/0.6 = 1.9 -> 2
    assert result.forces.shape == (8, 3)
    assert np.allclose(result.forces.sum(axis=0), 0.0, atol=1e-3)
    fd = _central_difference(atoms, config, atom=3, axis=1)
    assert fd == pytest.approx(result.forces[3, 1], abs=TOLERANCE)


def test_unconverged_scf_is_retried_with_more_steps(tmp_path, si2_run):
    config = si_config(electron_maxstep=1)
    result = label(si2_run.atoms, config, workdir=tmp_path)
    assert result.status == "done", result.error
    assert [a["status"] for a in result.attempts] == ["scf_not_converged", "done"]
    assert "convergence NOT achieved" in result.attempts[0]["error"]
    assert result.attempts[1]["changes"] == {"mixing_beta": pytest.approx(0.35), "electron_maxstep": 100}
    assert result.parameters["input_data"]["electrons"]["electron_maxstep"] == 100
    assert result.energy == pytest.approx(si2_run.result.energy, abs=1e-5)
    assert np.allclose(result.forces, si2_run.result.forces, atol=1e-3)
    assert result.walltime == pytest.approx(sum(a["walltime"] for a in result.attempts), abs=0.05)
    assert not (tmp_path / "attempt-2" / "out").exists()  # scratch removed


def test_unconverged_everywhere_fails_with_reason(tmp_path, si2_run):
    # One attempt only: the first failure is final.
    result = label(si2_run.atoms, si_config(electron_maxstep=1, max_attempts=1))
    assert result.status == "failed"
    assert "scf_not_converged" in result.error and "convergence NOT achieved" in result.error
    assert len(result.attempts) == 1


def test_a_resubmitted_label_reads_finished_attempts_instead_of_running_pw_again(tmp_path, si2_run):
    # The first submission retries once (SCF not converged) and finishes; the steering
    # process dies before storing the label. The resubmission must not start pw.x at all.
    config = si_config(electron_maxstep=1)
    first = label(si2_run.atoms, config, workdir=tmp_path)
    assert first.status == "done" and len(first.attempts) == 2
    outputs = {p: p.stat().st_mtime_ns for p in tmp_path.glob("attempt-*/pw.out")}
    no_pw = config.model_copy(update={"command": [str(tmp_path / "pw-must-not-run")]})
    again = label(si2_run.atoms, no_pw, workdir=tmp_path)
    assert again.status == "done" and [a.get("reused") for a in again.attempts] == [True, True]
    assert [a["status"] for a in again.attempts] == ["scf_not_converged", "done"]
    assert again.energy == first.energy and np.array_equal(again.forces, first.forces)
    assert again.walltime > 0  # pw.x's own wall time, read from its output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("attempt-*/pw.out")} == outputs

    # A different input (another structure in the same directory) is computed afresh:
    moved = si2_run.atoms.copy()
    moved.positions[0, 0] += 0.05
    fresh = label(moved, si_config(electron_maxstep=1), workdir=tmp_path)
    assert fresh.status == "done" and not any(a.get("reused") for a in fresh.attempts)
    assert fresh.energy != first.energy


def test_an_interrupted_attempt_is_run_again(tmp_path, si2_run):
    config = si_config()
    first = label(si2_run.atoms, config, workdir=tmp_path)
    out = tmp_path / "attempt-1" / "pw.out"
    out.write_text(out.read_text().split("JOB DONE")[0])  # killed before the end
    again = label(si2_run.atoms, config, workdir=tmp_path)
    assert again.status == "done" and not again.attempts[0].get("reused")
    assert "JOB DONE" in out.read_text()
    assert again.energy == pytest.approx(first.energy, abs=1e-6)
