"""Buffer evidence: core forces of carved cells converge at rc for a pair potential, later for many-body ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from autopipe.analysis.buffer_scan import buffer_warnings, format_table, plot_scan, scan_buffers
from autopipe.config.run import ASECalculatorConfig, EmbeddingConfig, EMTOracleConfig, LJOracleConfig
from autopipe.dft import label
from tests.lj import LJ_CUTOFF, LJ_EPSILON, LJ_SIGMA, lj_run_config

CORE = 2.0  # Å
MIN_DISTANCE = 0.5  # Å


def _frame(symbol: str, a: float, repeat: int, seed: int):
    atoms = bulk(symbol, "fcc", a=a, cubic=True).repeat(repeat)
    atoms.rattle(0.15, seed=seed)
    return atoms


def _core_vs_parent(frame, cfg, center, buffer):
    """Largest |F_sub - F_parent| over the core atoms of the sub-cell with ``buffer`` (eV/Å)."""
    from autopipe.embedding import extract_periodic_subsystem

    forces = label(frame, cfg).forces
    sub, masked = extract_periodic_subsystem(frame, center, CORE, buffer, min_distance=MIN_DISTANCE)
    res = label(sub, cfg)
    core = np.setdiff1d(np.arange(len(sub)), masked)
    return float(np.max(np.linalg.norm(res.forces[core] - forces[sub.arrays["parent_index"][core]], axis=1)))


def test_pair_potential_core_forces_are_exact_from_buffer_rc(tmp_path):
    """LJ (pair, smooth cutoff rc = 5 Å): exact from buffer rc + min_distance/2, wrong below rc."""
    cfg = LJOracleConfig(code="lj", sigma=LJ_SIGMA, epsilon=LJ_EPSILON, cutoff=LJ_CUTOFF)
    frame = _frame("Ar", 3.4, 3, seed=1)
    buffers = [1.0, 2.0, 3.0, 4.0, 5.5, 6.5, 8.0]
    seen = []
    scan = scan_buffers(frame, 13, CORE, buffers, lambda a: label(a, cfg), min_distance=MIN_DISTANCE, code="lj",
                        potential_cutoff=LJ_CUTOFF, progress=seen.append)
    assert [p.buffer for p in seen] == buffers and all(p.status == "done" for p in scan.points)
    change = {p.buffer: p.max_force_change for p in scan.points}
    assert all(change[b] < 1e-10 for b in (5.5, 6.5, 8.0)), change
    assert all(change[b] > 1e-3 for b in (1.0, 2.0, 3.0)), change
    assert change[4.0] > 1e-6, change  # small: ASE's smooth LJ switches off between 3.3 and 5 Å
    assert [p.n_core for p in scan.points] == [scan.points[0].n_core] * len(buffers)  # the same core throughout
    assert scan.points[-1].n_atoms > scan.points[0].n_atoms
    assert _core_vs_parent(frame, cfg, 13, 5.5) < 1e-10  # exact against the parent, too
    whole = scan_buffers(frame, 13, CORE, [2.0, 5.5], lambda a: label(a, cfg), min_distance=MIN_DISTANCE,
                         against_frame=True)
    assert whole.frame_point.n_atoms == len(frame) and "whole frame" in format_table(whole)
    assert whole.points[0].max_force_change > 1e-2 and whole.points[1].max_force_change < 1e-10
    print(format_table(scan))
    png = plot_scan(scan, tmp_path / "lj.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # the fixture potential is trained on a cold cache
def test_many_body_core_forces_need_more_than_rc(lj_potential, tmp_path):
    """ACE as the labeller (the LJ fixture potential, cutoff rc = 5 Å, pyace through the ``ase`` code):
    a buffer of rc + min_distance/2, exact for a pair potential, leaves core forces tens of meV/Å
    off; rc + 2 Å still about 1 meV/Å; exact from 2*rc."""
    cfg = ASECalculatorConfig(code="ase", calculator="pyace:PyACECalculator",
                              kwargs={"basis_set": str(lj_potential.yaml)})
    frame = _frame("Ar", 3.4, 3, seed=1)
    rc = 5.0
    buffers = [2.0, rc + MIN_DISTANCE / 2, 7.0, 2 * rc + MIN_DISTANCE / 2, 11.5]
    scan = scan_buffers(frame, 13, CORE, buffers, lambda a: label(a, cfg), min_distance=MIN_DISTANCE, code="ace",
                        potential_cutoff=rc)
    print(format_table(scan))
    change = {p.buffer: p.max_force_change for p in scan.points}
    assert change[rc + MIN_DISTANCE / 2] > 1e-2, change
    assert change[7.0] > 1e-4, change
    assert change[2 * rc + MIN_DISTANCE / 2] < 1e-10, change
    assert _core_vs_parent(frame, cfg, 13, 2 * rc + MIN_DISTANCE / 2) < 1e-10
    assert _core_vs_parent(frame, cfg, 13, rc + MIN_DISTANCE / 2) > 1e-2
    plot_scan(scan, tmp_path / "ace.png")


def test_check_warns_when_the_buffer_is_below_the_cutoff(tmp_path):
    narrow = lj_run_config("x", tmp_path)
    narrow.embedding = EmbeddingConfig(core_radius=4.0, buffer=2.0)
    [msg] = buffer_warnings(narrow)
    assert msg.startswith("warning:") and "below the potential's cutoff 5 Å + min_distance/2" in msg
    assert "2*rc + min_distance/2 = 10.25 Å" in msg
    # buffer = rc is not exact even for a pair potential (test_pair_potential_core_forces_are_exact_from_buffer_rc:
    # exactness needs rc + min_distance/2), so check warns ...
    at_rc = lj_run_config("x", tmp_path)
    at_rc.embedding = EmbeddingConfig(core_radius=4.0, buffer=5.0, min_distance=MIN_DISTANCE)
    [msg] = buffer_warnings(at_rc)
    assert msg.startswith("warning:") and "(5.25 Å)" in msg
    # ... and is quiet from rc + min_distance/2 for the LJ oracle, a pair potential.
    exact = lj_run_config("x", tmp_path)
    exact.embedding = EmbeddingConfig(core_radius=4.0, buffer=5.0 + MIN_DISTANCE / 2, min_distance=MIN_DISTANCE)
    assert buffer_warnings(exact) == []
    emt = exact.model_copy(update={"dft": EMTOracleConfig(code="emt")})
    [msg] = buffer_warnings(emt)  # many-body: up to 2*rc + min_distance/2
    assert msg.startswith("note:") and "10.25 Å" in msg
    emt.embedding = EmbeddingConfig(core_radius=4.0, buffer=10.0 + MIN_DISTANCE / 2, min_distance=MIN_DISTANCE)
    assert buffer_warnings(emt) == []
    narrow.embedding = EmbeddingConfig(core_radius=4.0, buffer=2.0, whole_frame="always")  # nothing is carved
    [msg] = buffer_warnings(narrow)
    assert msg.startswith("note:") and "not used" in msg


def test_cli_scans_a_structure_file(tmp_path):
    frame = _frame("Ar", 3.4, 3, seed=3)
    frame.arrays["gamma"] = np.linspace(1.0, 2.0, len(frame))
    frame.write(tmp_path / "frame.extxyz")
    run = tmp_path / "run.yaml"
    import yaml

    data = lj_run_config("scan", tmp_path).model_dump(mode="json")
    run.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "autopipe"), "buffer-scan", "--structure", str(tmp_path / "frame.extxyz"),
         "--run", str(run), "--buffers", "2,5.5,7", "--out", str(tmp_path / "scan.png"), "--against-frame"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"centre atom {len(frame) - 1}" in out.stdout  # the largest gamma
    assert "plot written" in out.stdout and (tmp_path / "scan.png").exists()
    assert "core forces against the whole frame (108 atoms)" in out.stdout
    bad = subprocess.run([str(Path(sys.executable).parent / "autopipe"), "buffer-scan"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "give --workdir" in bad.stderr
