"""MD segments in LAMMPS: monitoring, triggers, physics of the ensembles, checkpoints, hot-swap.

Systems: 108-atom LJ-argon fcc crystals (the 3D potential) and a 32-atom layer (2D). Tests
taking ``route`` run on both routes: the callback route (pyace through fix external) and
the native route (LAMMPS's ML-PACE, which the installer builds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import units
from ase.io import read

from autopipe.md import MDState, initial_state, kinetic_temperature, load_state, run_segment
from tests.md.conftest import fcc, md_config, otf_config, pyace_results

EV_PER_A3_IN_BAR = 1.0 / units.bar  # 1 eV/Å³ = 1.602e6 bar


@pytest.fixture(params=["external", "native"])
def route(request) -> str:
    return request.param


def _trajectory_steps(res) -> list[int]:
    """Steps of the frames in a segment's trajectory (extxyz on the callback route, LAMMPS dump on the native one)."""
    if res.route == "external":
        return [f.info["step"] for f in read(res.trajectory, index=":")]
    lines = res.trajectory.read_text().splitlines()
    return [int(lines[i + 1]) for i, line in enumerate(lines) if line == "ITEM: TIMESTEP"]


def _sheared(repeat: int = 3):
    a = fcc(repeat=repeat)
    a.set_cell(a.cell @ np.array([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [0.1, -0.12, 1.0]]), scale_atoms=True)
    return a


# ----------------------------------------------------------------------------- monitoring


def test_calm_segment_completes_below_threshold(pot, tmp_path, route):
    md = md_config(segment_steps=200)
    res = run_segment(initial_state(fcc(), md), pot, md, otf_config(), workdir=tmp_path, route=route)
    assert res.status == "completed", res.error
    assert (res.start_step, res.end_step, res.final_state.step) == (0, 200, 200)
    assert res.error is None and res.trigger_frame is None and res.trigger_atom is None
    assert res.max_gamma < 5.0
    assert res.gamma_trace[:, 0].tolist() == list(range(0, 201, 10))
    assert res.max_gamma == res.gamma_trace[:, 1].max()
    # the trace against an independent reference: pyace's calculator on the start and end configurations
    start = initial_state(fcc(), md).atoms
    for row, atoms in ((0, start), (-1, res.final_state.atoms)):
        assert res.gamma_trace[row, 1] == pytest.approx(pyace_results(atoms, pot)["gamma"].max(), rel=1e-6)
    assert res.thermo["step"] == list(range(0, 201, 10))
    assert set(res.thermo) >= {"step", "temp", "pe", "ke", "etotal", "press"}
    # LAMMPS's metal units use an older Boltzmann constant than ASE (relative 1.2e-6)
    assert res.thermo["temp"][0] == pytest.approx(50.0, rel=1e-5)
    assert res.potential_version == 1 and res.walltime > 0
    # checkpoint of the final state
    assert res.checkpoint == tmp_path / "checkpoint-00000200.npz"
    ck = load_state(res.checkpoint)
    assert ck.step == 200 and np.array_equal(ck.atoms.positions, res.final_state.atoms.positions)
    assert not list(tmp_path.glob("*.data"))  # LAMMPS's input data is dropped after a success
    # trajectory frames every dump_every steps, with forces (and gamma on checks)
    assert _trajectory_steps(res) == list(range(0, 201, 20))
    if route == "external":  # ASE frame, extxyz
        frames = read(res.trajectory, index=":")
        assert "gamma" in frames[1].arrays and frames[1].arrays["gamma"].max() < 5.0
    else:  # LAMMPS's own dump, per-atom gamma as a column
        assert "f_pace_gamma" in res.trajectory.read_text().splitlines()[8]
    # the final temperature in the result agrees with LAMMPS's thermo
    assert kinetic_temperature(res.final_state.atoms) == pytest.approx(res.thermo["temp"][-1], rel=1e-5)


def test_hot_start_triggers_mid_run_with_a_consistent_trigger_frame(pot, tmp_path, route):
    md = md_config(temperature=10000.0, segment_steps=300, seed=4)
    otf = otf_config(uncertainty_threshold=5.0, check_frequency=10)
    res = run_segment(initial_state(fcc(), md), pot, md, otf, workdir=tmp_path, route=route)
    assert res.status == "triggered", res.error
    assert 0 < res.end_step < 300 and res.end_step % 10 == 0
    assert res.final_state.step == res.end_step
    frame = res.trigger_frame
    g = frame.arrays["gamma"]
    assert len(g) == len(frame) == 108
    assert g.max() > 5.0 and res.max_gamma == pytest.approx(g.max())
    assert res.trigger_atom == int(np.argmax(g))
    assert res.gamma_trace[-1].tolist() == [res.end_step, pytest.approx(g.max())]
    assert np.all(res.gamma_trace[:-1, 1] <= 5.0)  # it stopped at the first check above the threshold
    frac = frame.get_scaled_positions(wrap=False)
    assert np.all(frac >= -1e-6) and np.all(frac < 1.0)  # wrapped into the cell
    # the independent reference: pyace's calculator on the trigger frame
    ref = pyace_results(frame, pot)
    assert np.allclose(ref["gamma"], g, rtol=1e-8, atol=1e-8)
    # the trigger frame is the final state's configuration (modulo wrapping)
    wrapped = res.final_state.atoms.copy()
    wrapped.wrap()
    assert np.allclose(wrapped.positions, frame.positions, atol=1e-8)
    assert res.checkpoint == tmp_path / f"checkpoint-{res.end_step:08d}.npz"


def test_compressed_start_triggers_at_the_start(pot, tmp_path, route):
    a = fcc()
    a.set_cell(a.cell * 0.85, scale_atoms=True)
    md = md_config()
    state = MDState(initial_state(a, md).atoms, step=1234)  # a start that is not a multiple of check_frequency
    res = run_segment(state, pot, md, otf_config(), workdir=tmp_path, route=route)
    assert res.status == "triggered"
    assert res.end_step == res.start_step == 1234
    assert res.final_state is state  # nothing of the run is kept
    assert res.trigger_frame.arrays["gamma"].max() > 5.0
    assert res.gamma_trace[:, 0].tolist() == [1234]
    assert np.allclose(pyace_results(res.trigger_frame, pot)["gamma"], res.trigger_frame.arrays["gamma"])


# ----------------------------------------------------------------------------- physics


def test_nve_conserves_energy(pot, tmp_path, route):
    md = md_config(temperature=300.0, timestep=1.0, segment_steps=400, thermo_every=5)
    res = run_segment(initial_state(fcc(), md), pot, md, otf_config(uncertainty_threshold=50.0), workdir=tmp_path,
                      route=route)
    assert res.status == "completed", res.error
    e = np.array(res.thermo["etotal"])
    ke = np.array(res.thermo["ke"])
    assert len(e) == 81
    assert ke.std() > 0.1  # energy does flow between kinetic and potential...
    # ...while the total stays within 2e-5 eV/atom (measured: 4e-6 eV/atom at 1 fs, 300 K)
    assert np.abs(e - e[0]).max() / 108 < 2e-5


def test_lammps_applies_exactly_pyace_forces_and_energy(pot, tmp_path, route):
    """LAMMPS's own dump (total force per atom, LAMMPS frame) against pyace on the same frame."""
    a = _sheared()
    md = md_config(temperature=100.0, segment_steps=60, dump_every=20, thermo_every=20)
    res = run_segment(initial_state(a, md), pot, md, otf_config(), workdir=tmp_path, lammps_dump=True, route=route)
    assert res.status == "completed", res.error
    frames = read(res.lammps_dump, index=":", format="lammps-dump-text")
    assert len(frames) == 4
    pe = dict(zip(res.thermo["step"], res.thermo["pe"]))
    for step, f in zip((0, 20, 40, 60), frames):
        f.set_atomic_numbers([18] * len(f))
        f.pbc = True
        ref = pyace_results(f, pot)
        assert np.abs(f.get_forces() - ref["forces"]).max() < 1e-6
        assert pe[step] == pytest.approx(ref["energy"], abs=1e-8)


def test_pressure_includes_the_ace_virial(pot, tmp_path, route):
    a = _sheared()
    a.rattle(0.05, seed=3)
    md = md_config(temperature=0.0)
    res = run_segment(MDState(a, 0), pot, md, otf_config(), workdir=tmp_path, n_steps=0, route=route)
    assert res.status == "completed", res.error
    stress = pyace_results(a, pot)["stress"]
    expected = -np.trace(stress) / 3 * EV_PER_A3_IN_BAR  # no kinetic part at 0 K
    # LAMMPS's eV/Å³ -> bar factor differs from ASE's in the 8th digit
    assert res.thermo["press"][0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("ensemble", ["nvt-langevin", "nvt-nose-hoover"])
def test_thermostats_reach_roughly_the_target(pot, tmp_path, ensemble, route):
    md = md_config(ensemble=ensemble, temperature=150.0, initial_temperature=20.0, thermostat_damping=50.0,
                   segment_steps=500)
    res = run_segment(initial_state(fcc(), md), pot, md, otf_config(uncertainty_threshold=50.0), workdir=tmp_path,
                      route=route)
    assert res.status == "completed", res.error
    t = np.array(res.thermo["temp"])
    late = t[len(t) // 2:].mean()
    assert 100.0 < late < 200.0, (ensemble, late)


def test_npt_changes_the_volume_towards_the_target_pressure(pot, tmp_path, route):
    a = fcc()  # at a = 3.4 Å the crystal is under strong tension (about -100 kbar)
    md = md_config(ensemble="npt", temperature=50.0, pressure=0.0, barostat_damping=200.0, segment_steps=300)
    res = run_segment(initial_state(a, md), pot, md, otf_config(uncertainty_threshold=1e3), workdir=tmp_path,
                      route=route)
    assert res.status == "completed", res.error
    vol = np.array(res.thermo["vol"])
    assert vol[0] == pytest.approx(a.get_volume())
    assert vol[-1] < 0.97 * vol[0]  # it shrinks
    assert abs(res.thermo["press"][-1]) < abs(res.thermo["press"][0])
    assert res.final_state.atoms.get_volume() == pytest.approx(vol[-1], rel=1e-9)
    # a cubic cell stays cubic under iso coupling
    c = res.final_state.atoms.cell[:]
    assert np.allclose(c, np.eye(3) * c[0, 0], atol=1e-9)


def test_2d_layer_stays_in_the_plane(pot, tmp_path, route):
    """Geometry, not physics: the 3D potential drives a layer (gamma is not the point here)."""
    from tests.lj import lj2d_template

    layer = lj2d_template()
    layer.positions[:, 2] = 3.0  # the layer may sit at any z
    md = md_config(dimension=2, ensemble="nvt-langevin", temperature=100.0, segment_steps=200)
    state = initial_state(layer, md)
    res = run_segment(state, pot, md, otf_config(uncertainty_threshold=1e6), workdir=tmp_path, route=route)
    assert res.status == "completed", res.error
    fin = res.final_state.atoms
    assert np.all(fin.positions[:, 2] == 3.0)
    assert np.all(fin.get_velocities()[:, 2] == 0.0)
    assert np.abs(fin.positions[:, :2] - state.atoms.positions[:, :2]).max() > 0.05  # it did move in the plane
    assert tuple(fin.pbc) == (True, True, False)
    assert np.allclose(fin.cell[:], layer.cell[:])
    frames = read(res.trajectory, index=":", format="extxyz" if route == "external" else "lammps-dump-text")
    z = 3.0 if route == "external" else 0.0  # the ASE frame, or LAMMPS's (the layer at z = 0)
    for f in frames:
        assert np.all(np.abs(f.positions[:, 2] - z) < 1e-12)
        assert np.all(np.abs(f.get_forces()[:, 2]) < 1e-12)


# ----------------------------------------------------------------------------- boxes, checkpoints, hot-swap


@pytest.mark.parametrize("left_handed", [False, True])
def test_triclinic_box_round_trips_and_segments_resume_exactly(pot, tmp_path, left_handed, route):
    """One 80-step segment equals two 40-step segments resumed from the checkpoint file."""
    a = _sheared()
    if left_handed:
        a.set_cell(a.cell[[1, 0, 2]], scale_atoms=False)
    md = md_config(temperature=80.0, segment_steps=80)
    state = initial_state(a, md)
    one = run_segment(state, pot, md, otf_config(), workdir=tmp_path / "one", route=route)
    first = run_segment(state, pot, md, otf_config(), workdir=tmp_path / "two", n_steps=40, route=route)
    second = run_segment(load_state(first.checkpoint), pot, md, otf_config(), workdir=tmp_path / "two", n_steps=40,
                         route=route)
    assert (one.status, first.status, second.status) == ("completed",) * 3
    assert second.start_step == first.end_step == 40 and second.end_step == 80
    f1, f2 = one.final_state.atoms, second.final_state.atoms
    assert np.allclose(f1.cell[:], a.cell[:], atol=1e-12)  # the box comes back in the ASE frame
    assert np.allclose(f2.cell[:], a.cell[:], atol=1e-12)
    assert np.abs(f1.positions - f2.positions).max() < 1e-9
    assert np.abs(f1.get_velocities() - f2.get_velocities()).max() < 1e-9
    # positions are continuous (unwrapped), although LAMMPS wrapped atoms across the box faces
    assert np.abs(f1.positions - state.atoms.positions).max() < 1.0
    assert second.thermo["etotal"][0] == pytest.approx(first.thermo["etotal"][-1], abs=1e-9)


def test_hot_swap_between_segments_keeps_the_walker_state(pot, pot_v2, tmp_path):
    md = md_config(temperature=60.0, segment_steps=50)
    otf = otf_config(uncertainty_threshold=1e3)
    s1 = run_segment(initial_state(fcc(), md), pot, md, otf, workdir=tmp_path, route="external")
    resumed = load_state(s1.checkpoint)  # what a walker does between segments
    s2 = run_segment(resumed, pot_v2, md, otf, workdir=tmp_path, route="external")
    assert (s1.status, s2.status) == ("completed", "completed")
    assert (s1.potential_version, s2.potential_version) == (1, 2)
    assert s2.start_step == s1.end_step == 50 and s2.end_step == 100
    # velocities and positions carried over: same kinetic energy, same configuration
    assert s2.thermo["ke"][0] == pytest.approx(s1.thermo["ke"][-1], rel=1e-12)
    assert s2.thermo["step"][0] == 50
    # the potential did change: the energy of the very same configuration differs, as pyace says
    assert abs(s2.thermo["pe"][0] - s1.thermo["pe"][-1]) > 0.1
    assert s2.thermo["pe"][0] == pytest.approx(pyace_results(resumed.atoms, pot_v2)["energy"], abs=1e-8)
    assert read(s2.trajectory, index=0).info["potential_version"] == 2
    assert s2.trajectory != s1.trajectory


# ----------------------------------------------------------------------------- failures are results


def _assert_failed(res, state, tmp_path, match: str):
    assert res.status == "failed"
    assert res.error and match in res.error, res.error
    assert res.final_state is state and res.end_step == res.start_step
    assert res.checkpoint is None
    assert not list(tmp_path.glob("checkpoint-*.npz"))
    assert len(list(tmp_path.glob("seg-*.data"))) == 1  # kept to debug the failure


def test_absurd_timestep_fails_cleanly(pot, tmp_path):
    md = md_config(temperature=300.0, timestep=200.0, segment_steps=100)
    state = initial_state(fcc(), md)
    res = run_segment(state, pot, md, otf_config(check_frequency=1000), workdir=tmp_path, route="external")
    _assert_failed(res, state, tmp_path, "step")


def test_exploding_forces_fail(pot, tmp_path, route):
    from autopipe.md import BlowUpLimits

    md = md_config(segment_steps=50)
    state = initial_state(fcc(), md)
    res = run_segment(state, pot, md, otf_config(), workdir=tmp_path, limits=BlowUpLimits(max_force=1e-3), route=route)
    _assert_failed(res, state, tmp_path, "exceeds")


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_errors_inside_the_callback_fail_the_segment(pot, tmp_path, monkeypatch, mode):
    from autopipe.md.ace import AceEvaluator

    real = AceEvaluator.evaluate
    calls = {"n": 0}

    def broken(self, *args, **kw):
        calls["n"] += 1
        r = real(self, *args, **kw)
        if calls["n"] == 7:
            if mode == "raise":
                raise RuntimeError("pyace exploded")
            r.forces[3, 1] = math.nan
        return r

    monkeypatch.setattr(AceEvaluator, "evaluate", broken)
    md = md_config(segment_steps=50)
    state = initial_state(fcc(), md)
    res = run_segment(state, pot, md, otf_config(), workdir=tmp_path, route="external")
    _assert_failed(res, state, tmp_path, "pyace exploded" if mode == "raise" else "non-finite")
    assert "step 6" in res.error  # stopped right at the failing step
    monkeypatch.undo()
    # the process is fine afterwards
    again = run_segment(state, pot, md, otf_config(), workdir=tmp_path / "again", n_steps=10, route="external")
    assert again.status == "completed"


def test_lammps_errors_are_failed_results(pot, tmp_path, route):
    md = md_config(ensemble="nvt-nose-hoover", temperature=0.0)  # LAMMPS rejects a 0 K Nose-Hoover target
    state = initial_state(fcc(), md)
    res = run_segment(state, pot, md, otf_config(), workdir=tmp_path, route=route)
    _assert_failed(res, state, tmp_path, "LAMMPS error")


def test_invalid_inputs_raise(pot, tmp_path):
    md = md_config()
    a = fcc()
    a.pbc = (True, True, False)
    with pytest.raises(ValueError):
        run_segment(initial_state(a, md), pot, md, otf_config(), workdir=tmp_path)
    from ase.build import bulk

    with pytest.raises(ValueError, match="does not cover"):
        run_segment(initial_state(bulk("Cu", "fcc", a=3.6, cubic=True), md), pot, md, otf_config(), workdir=tmp_path,
                    route="external")


def test_unwrapped_positions_far_outside_the_cell_keep_their_offsets(pot, tmp_path, route):
    """A walker's positions are unwrapped: LAMMPS wraps them inside, the result unwraps them again."""
    md = md_config(temperature=80.0, segment_steps=30)
    state = initial_state(fcc(), md)
    shifted = state.atoms.copy()
    offsets = np.zeros((len(shifted), 3), dtype=int)
    offsets[::3] = [3, -2, 5]
    offsets[1::7] = [-4, 0, 1]
    shifted.positions += offsets @ shifted.cell[:]
    a = run_segment(state, pot, md, otf_config(), workdir=tmp_path / "a", route=route)
    b = run_segment(MDState(shifted, 0), pot, md, otf_config(), workdir=tmp_path / "b", route=route)
    assert a.status == b.status == "completed"
    moved = b.final_state.atoms.positions - offsets @ shifted.cell[:]
    assert np.abs(moved - a.final_state.atoms.positions).max() < 1e-9
    assert np.abs(b.final_state.atoms.get_velocities() - a.final_state.atoms.get_velocities()).max() < 1e-9


def test_one_lammps_type_per_element_with_its_mass():
    from ase import Atoms

    from autopipe.md.segment import _types

    a = Atoms("CuArCuH", positions=np.zeros((4, 3)))
    elements, masses, types = _types(a)
    assert elements == ["Cu", "Ar", "H"]
    assert masses == pytest.approx([63.546, 39.948, 1.008])
    assert types.tolist() == [1, 2, 1, 3]
    m = a.get_masses()
    m[2] = 70.0
    a.set_masses(m)
    with pytest.raises(ValueError, match="different masses"):
        _types(a)
