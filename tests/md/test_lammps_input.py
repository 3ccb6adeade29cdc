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


def test_native_route_input():
    lines = render_native_input(spec(yaml="/p/pot.yaml", asi="/p/pot.asi", dump_file="/w/t.lammpstrj",
                                     gamma_file="/w/g.dat"))
    text = "\n".join(lines)
    assert "units metal" in lines and "atom_style atomic" in lines and "boundary p p p" in lines
    assert "pair_style pace/extrapolation" in lines
    assert "pair_coeff * * /p/pot.yaml /p/pot.asi Ar Cu" in lines
    assert "fix pace_gamma all pair 10 pace/extrapolation gamma 1" in lines
    assert "compute ap_max_gamma all reduce max f_pace_gamma" in lines
    assert "variable ap_maxgamma equal c_ap_max_gamma" in lines
    assert "fix ap_halt_gamma all halt 10 v_ap_maxgamma > 5.0 error continue message no" in lines
    assert "read_data /w/seg.data" in lines and "reset_timestep 1200" in lines
    assert "timestep 0.002" in lines  # 2 fs in ps
    assert "external" not in text  # no callback on this route
    assert 'print 10 "${ap_step} ${ap_maxgamma}" file /w/g.dat' in text
    assert any(l.startswith("dump ap_traj all custom 100 /w/t.lammpstrj id element x y z") and l.endswith("f_pace_gamma")
               for l in lines)
    # fix pair must exist before the compute that reduces it, which must exist before fix halt reads it
    order = [next(i for i, l in enumerate(lines) if l.startswith(p))
             for p in ("pair_style", "fix pace_gamma", "compute ap_max_gamma", "fix ap_halt_gamma")]
    assert order == sorted(order)
    assert render_run(spec()) == "run 500"
    with pytest.raises(ValueError):
        render_native_input(spec())  # no potential files


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
    assert len(seeds) == 9 and all(0 < x < 2**31 for x in seeds)


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


def test_native_input_runs_on_this_lammps_with_stand_ins_for_ml_pace(tmp_path):
    """Everything of the native route except ML-PACE's own commands is valid LAMMPS input.

    ``pair_style pace/extrapolation`` becomes ``pair_style zero`` and ``fix pair`` (gamma) a
    per-atom ``fix store/state`` of x, so the compute/variable/fix halt/print/dump chain runs.
    """
    from autopipe.md.box import lammps_box
    from autopipe.md.segment import _new_lammps
    from tests.md.conftest import fcc

    a = fcc(repeat=2)
    box = lammps_box(a.cell, a.pbc, 3)
    data = tmp_path / "seg.data"
    data.write_text(render_data(box, a.positions, np.zeros((len(a), 3)), [1] * len(a), (39.948,), ("Ar",)))
    s = spec(data_file=str(data), elements=("Ar",), masses=(39.948,), start_step=0, n_steps=30, threshold=1e9,
             ensemble="nve",
             thermo_every=10, thermo_file=str(tmp_path / "thermo"), dump_every=10, dump_file=str(tmp_path / "d"),
             gamma_file=str(tmp_path / "g"), yaml="pot.yaml", asi="pot.asi")
    swap = {
        "pair_style pace/extrapolation": "pair_style zero 5.0",
        "pair_coeff * * pot.yaml pot.asi Ar": "pair_coeff * *",
        "fix pace_gamma all pair 10 pace/extrapolation gamma 1": "fix pace_gamma all store/state 10 x",
    }
    lines = render_native_input(s)
    assert set(swap) <= set(lines)
    lmp = _new_lammps()
    try:
        lmp.commands_list([swap.get(line, line) for line in lines])
        lmp.command(render_run(s))
        assert lmp.extract_global("ntimestep") == 30
    finally:
        lmp.close()
    g = np.loadtxt(tmp_path / "g")
    assert g[:, 0].tolist() == [0, 10, 20, 30]
    assert g[-1, 1] == pytest.approx(a.positions[:, 0].max(), abs=1e-6)  # max of the per-atom vector
    frames = read(tmp_path / "d", index=":", format="lammps-dump-text")
    assert len(frames) == 4 and len(frames[0]) == len(a)
    assert np.loadtxt(tmp_path / "thermo")[:, 0].tolist() == [0, 10, 20, 30]
