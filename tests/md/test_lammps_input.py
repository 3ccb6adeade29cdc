"""Rendering of LAMMPS inputs: both routes, unit-tested without running LAMMPS."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.io import read

from autopipe.md.box import lammps_box
from autopipe.md.lammps_input import (
    SegmentInput,
    langevin_seed,
    render_data,
    render_external_input,
    lammps_command,
    render_native_input,
    render_run,
)


def spec(**kw) -> SegmentInput:
    base = dict(
        data_file="/w/seg.data", dimension=3, elements=("Ar", "Cu"), masses=(39.948, 63.546),
        ensemble="nvt-langevin", temperature=300.0, pressure=1.0, timestep=2.0, thermostat_damping=100.0,
        barostat_damping=1000.0, seed=5, start_step=1200, n_steps=500, check_frequency=10, threshold=5.0,
        thermo_every=50, thermo_file="/w/seg.thermo", dump_every=100,
    )
    base.update(kw)
    return SegmentInput(**base)


def _native_spec(**kw) -> SegmentInput:
    files = dict(yaml="/p/pot.yaml", asi="/p/pot.asi", dump_file="/w/t.lammpstrj", gamma_file="/w/g.dat",
                 start_trigger_file="/w/start.dump", final_file="/w/final.dump", box_file="/w/box")
    files.update(kw)
    return spec(**files)


def _index(lines, prefix) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_native_route_input():
    lines = render_native_input(_native_spec())
    text = "\n".join(lines)
    assert "units metal" in lines and "atom_style atomic" in lines and "boundary p p p" in lines
    assert "atom_modify map array" in lines  # LAMMPS sorts atoms spatially on this route
    assert "pair_style pace/extrapolation" in lines
    assert "pair_coeff * * /p/pot.yaml /p/pot.asi Ar Cu" in lines
    assert "fix pace_gamma all pair 10 pace/extrapolation gamma 1" in lines
    assert "compute ap_max_gamma all reduce max f_pace_gamma" in lines
    assert "variable ap_maxgamma equal c_ap_max_gamma" in lines
    assert "fix ap_halt_gamma all halt 10 v_ap_maxgamma > 5.0 error continue message no" in lines
    assert "read_data /w/seg.data" in lines and "reset_timestep 1200" in lines
    assert "timestep 0.002" in lines  # 2 fs in ps
    assert "external" not in text  # no callback on this route
    assert 'print 10 "${ap_step} ${ap_maxgamma}" append /w/g.dat' in text
    assert any(l.startswith("dump ap_traj all custom 100 /w/t.lammpstrj id element x y z")
               and l.endswith("f_pace_gamma") for l in lines)
    # the gamma of a run's first step goes unchecked by fix halt: a run of 0 steps checks it first,
    # before the thermostat exists (no noise drawn), and a trigger there leaves 0 steps to run
    start = _index(lines, "fix ap_gamma_start all pair 1 pace/extrapolation gamma 1")
    assert lines[start + 3] == "run 0 post no"
    assert 'print "$(step) $(c_ap_max_gamma_start:%.17g)" file /w/g.dat screen no' in lines
    check = _index(lines, 'if "$(c_ap_max_gamma_start) > 5.0" then "write_dump all custom /w/start.dump')
    assert lines[check].endswith('"variable ap_nsteps equal 0"')
    assert start < check < _index(lines, "fix ap_thermostat") < lines.index("run ${ap_nsteps}")
    # the final state at full precision, after a run of 0 steps made everything current
    end = lines.index("run ${ap_nsteps}")
    assert lines[end + 1:end + 5] == ["undump ap_traj", "unfix ap_thermo", "unfix ap_gamma_trace",
                                      "fix ap_gamma_end all pair 1 pace/extrapolation gamma 1"]
    assert lines[end + 5] == "run 0 post no"
    assert lines[-1] == ("write_dump all custom /w/final.dump id type x y z vx vy vz ix iy iz f_ap_gamma_end "
                         "modify sort id format float %.17g")
    assert any(l.startswith('print "$(step) $(xlo:%.17g)') and l.endswith("file /w/box screen no") for l in lines)
    # fix pair must exist before the compute that reduces it, which must exist before fix halt reads it
    order = [_index(lines, p) for p in ("pair_style", "fix pace_gamma", "compute ap_max_gamma", "fix ap_halt_gamma")]
    assert order == sorted(order)
    # LAMMPS cannot evaluate gamma off the check steps: not in thermo, not in off-grid dump frames
    assert "thermo_style custom step temp pe ke etotal press vol" in lines
    dump = next(l for l in render_native_input(_native_spec(dump_every=15)) if l.startswith("dump ap_traj"))
    assert "f_pace_gamma" not in dump
    assert render_run(spec()) == "run 500"
    with pytest.raises(ValueError, match="yaml"):
        render_native_input(spec())  # no potential files
    with pytest.raises(ValueError, match="final_file"):
        render_native_input(_native_spec(final_file=None))


def test_native_route_blow_up_bounds():
    lines = render_native_input(_native_spec(max_force=100.0, max_energy_change=2.0))
    assert "fix ap_halt_force all halt 1 v_ap_fmax > 100.0 error hard message yes" in lines  # every step
    assert "fix ap_halt_energy all halt 10 v_ap_de > 2.0 error hard message yes" in lines
    assert "variable ap_pe0 equal $(pe:%.17g)" in lines  # the reference: the first step's energy
    assert not any("ap_halt_force" in l for l in render_native_input(_native_spec()))


def test_lammps_command():
    assert lammps_command("/v/bin/lmp", "s.in", "s.log") == ["/v/bin/lmp", "-in", "s.in", "-log", "s.log", "-nocite"]
    assert lammps_command("lmp", "s.in", "s.log", ["srun", "-n", "4"], ["-sf", "kk"]) == [
        "srun", "-n", "4", "lmp", "-sf", "kk", "-in", "s.in", "-log", "s.log", "-nocite"]


def test_external_route_input():
    lines = render_external_input(spec())
    assert "fix ext all external pf/callback 1 1" in lines
    assert "fix_modify ext energy yes virial yes" in lines
    assert "variable ap_maxgamma equal f_ext[1]" in lines
    assert "fix ap_halt_gamma all halt 10 v_ap_maxgamma > 5.0 error continue message no" in lines
    assert "fix ap_halt_stop all halt 1 v_ap_stop > 0.5 error continue message no" in lines
    assert not any(l.startswith("pair_style") for l in lines)


@pytest.mark.parametrize(
    "ensemble, expected",
    [
        ("nve", ["fix ap_integrate all nve"]),
        ("nvt-langevin", ["fix ap_integrate all nve", f"fix ap_thermostat all langevin 300.0 300.0 0.1 {langevin_seed(5, 1200)} zero yes"]),
        ("nvt-nose-hoover", ["fix ap_integrate all nvt temp 300.0 300.0 0.1"]),
        ("npt", ["fix ap_integrate all npt temp 300.0 300.0 0.1 iso 1.0 1.0 1.0"]),
    ],
)
def test_ensembles(ensemble, expected):
    lines = render_external_input(spec(ensemble=ensemble))
    fixes = [l for l in lines if l.startswith(("fix ap_integrate", "fix ap_thermostat"))]
    assert fixes == expected


def test_2d_input_ends_with_enforce2d():
    lines = render_external_input(spec(dimension=2))
    assert "dimension 2" in lines
    assert lines[-1] == "fix ap_2d all enforce2d"
    assert "fix ap_2d all enforce2d" not in render_external_input(spec())


def test_langevin_seed_is_positive_and_differs_between_segments():
    seeds = {langevin_seed(s, start) for s in (1, 7, 2**31) for start in (0, 500, 10**12)}
    assert len(seeds) == 9 and all(0 < x <= 900_000_000 for x in seeds)  # LAMMPS's RanMars limit
    # md.seed 1099 and the default 12345 used to give seeds LAMMPS refused at step 0.
    assert all(0 < langevin_seed(s, 0) <= 900_000_000 for s in (1099, 12345, 10**9))


def test_data_file_round_trip_through_ase_reader(tmp_path):
    cell = np.array([[6.0, 0, 0], [1.5, 5.0, 0], [0.5, -1.0, 7.0]])
    box = lammps_box(cell, True, 3)
    rng = np.random.default_rng(3)
    pos = box.to_lammps_positions(rng.uniform(0, 1, (5, 3)) @ cell)
    vel = rng.normal(0, 0.01, (5, 3))  # Å/fs
    text = render_data(box, pos, vel, [1, 2, 1, 1, 2], (39.948, 63.546), ("Ar", "Cu"))
    assert "xy xz yz" in text.splitlines()[8]
    p = tmp_path / "x.data"
    p.write_text(text)
    a = read(p, format="lammps-data", atom_style="atomic", units="metal", Z_of_type={1: 18, 2: 29})
    assert a.get_chemical_symbols() == ["Ar", "Cu", "Ar", "Ar", "Cu"]
    assert np.allclose(a.positions, pos, atol=1e-12)
    assert np.allclose(a.get_velocities() * units.fs, vel, rtol=1e-10, atol=1e-14)
    assert np.allclose(a.cell[:], box.matrix, atol=1e-12)
