"""The native route (LAMMPS's own ML-PACE, built by the installer) against the callback route,
under MPI, and with bad input.

Every test runs real LAMMPS on the shared LJ fixture potentials. The installer
(``scripts/build-lammps.sh``) must have built LAMMPS with ML-PACE into the venv: these tests
fail, not skip, when it has not.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from autopipe.md import initial_state, lammps_has_ml_pace, load_state, run_segment
from autopipe.md.native import lmp_executable
from tests.md.conftest import fcc, md_config, otf_config, pyace_results

ROOT = Path(__file__).resolve().parents[2]
TWO_RANKS = ["mpirun", "-np", "2"]


def _both(state, pot, md, otf, tmp_path, **kw):
    """The same segment on the callback route and on the native route."""
    ext = run_segment(state, pot, md, otf, workdir=tmp_path / "external", route="external", **kw)
    nat = run_segment(state, pot, md, otf, workdir=tmp_path / "native", route="native", **kw)
    return ext, nat


def _dump_frames(path):
    frames = read(path, index=":", format="lammps-dump-text")
    for f in frames:
        f.set_atomic_numbers([18] * len(f))
        f.pbc = True
    return frames


def test_the_installer_built_lammps_with_ml_pace():
    import lammps

    assert lammps_has_ml_pace()
    # exactly one lammps distribution and module: the installer's build, its library beside it
    assert [d.version for d in importlib.metadata.distributions() if d.metadata["Name"] == "lammps"] == ["2025.2.4"]
    assert (Path(lammps.__file__).parent / "AUTOPIPE_BUILD").is_file()
    assert (Path(lammps.__file__).parent / "liblammps.so").is_file()
    out = subprocess.run([lmp_executable(), "-h"], capture_output=True, text=True, timeout=60).stdout
    assert "ML-PACE" in out and "pace/extrapolation" in out


def test_step_zero_energy_forces_and_gamma_agree_between_routes(pot, tmp_path):
    a = fcc()
    a.set_cell(a.cell @ np.array([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [0.1, -0.12, 1.0]]), scale_atoms=True)
    a.rattle(0.1, seed=5)
    md = md_config(temperature=100.0, dump_every=10)
    ext, nat = _both(initial_state(a, md), pot, md, otf_config(), tmp_path, n_steps=0, lammps_dump=True)
    assert (ext.status, nat.status) == ("completed", "completed"), (ext.error, nat.error)
    assert nat.route == "native" and ext.route == "external"
    fe, fn = _dump_frames(ext.lammps_dump)[0], _dump_frames(nat.lammps_dump)[0]
    assert np.abs(fn.get_forces() - fe.get_forces()).max() < 1e-5  # eV/Å
    assert abs(nat.thermo["pe"][0] - ext.thermo["pe"][0]) / len(a) < 1e-6  # eV/atom
    assert nat.thermo["press"][0] == pytest.approx(ext.thermo["press"][0], rel=1e-6)
    ref = pyace_results(fn, pot)
    assert np.abs(fn.get_forces() - ref["forces"]).max() < 1e-6
    # gamma is checked at the segment's first step on both routes, and agrees with pyace
    assert nat.gamma_trace[:, 0].tolist() == ext.gamma_trace[:, 0].tolist() == [0]
    assert nat.gamma_trace[0, 1] == pytest.approx(ref["gamma"].max(), rel=1e-8)
    assert ext.gamma_trace[0, 1] == pytest.approx(ref["gamma"].max(), rel=1e-8)


def test_a_collision_triggers_at_the_same_check_step_on_both_routes(pot, tmp_path):
    md = md_config(temperature=10000.0, segment_steps=300, seed=4)
    ext, nat = _both(initial_state(fcc(), md), pot, md, otf_config(), tmp_path)
    assert (ext.status, nat.status) == ("triggered", "triggered"), (ext.error, nat.error)
    assert nat.end_step == ext.end_step and 0 < nat.end_step < 300
    assert nat.gamma_trace[:, 0].tolist() == ext.gamma_trace[:, 0].tolist()
    assert np.allclose(nat.gamma_trace[:, 1], ext.gamma_trace[:, 1], rtol=1e-6)
    g_nat, g_ext = nat.trigger_frame.arrays["gamma"], ext.trigger_frame.arrays["gamma"]
    assert nat.trigger_atom == ext.trigger_atom == int(np.argmax(g_nat))
    assert np.allclose(g_nat, g_ext, rtol=1e-6, atol=1e-8)
    # per-atom gamma from LAMMPS is pyace's on the same frame
    assert np.allclose(pyace_results(nat.trigger_frame, pot)["gamma"], g_nat, rtol=1e-8, atol=1e-8)
    assert np.abs(nat.final_state.atoms.positions - ext.final_state.atoms.positions).max() < 1e-6
    assert nat.final_state.step == nat.end_step and load_state(nat.checkpoint).step == nat.end_step


def test_a_2d_segment_of_the_demo_kind_triggers_at_the_same_check_step(lj2d_potential, tmp_path):
    """The healing demo's system and MD settings (2D LJ liquid, vacuum along z, hot NVE)."""
    from autopipe.config import load_run
    from autopipe.generate import template_atoms
    from tests.md.conftest import Pot

    run = load_run(ROOT / "configs" / "runs" / "lj2d-heal.yaml")
    pot2d = Pot(1, Path(lj2d_potential.yaml), None, Path(lj2d_potential.asi))
    state = initial_state(template_atoms(run.system), run.md)
    # the fixture potential is better than the demo's defective one: a lower threshold makes it trigger
    otf = run.otf.model_copy(update={"uncertainty_threshold": 1.5})
    ext, nat = _both(state, pot2d, run.md, otf, tmp_path)
    assert (ext.status, nat.status) == ("triggered", "triggered"), (ext.error, nat.error)
    assert nat.end_step == ext.end_step and nat.end_step % run.otf.check_frequency == 0
    assert nat.trigger_atom == ext.trigger_atom
    assert np.allclose(nat.trigger_frame.arrays["gamma"], ext.trigger_frame.arrays["gamma"], rtol=1e-6)
    fin = nat.final_state.atoms
    assert tuple(fin.pbc) == (True, True, False) and np.allclose(fin.cell[:], state.atoms.cell[:])
    assert np.all(fin.positions[:, 2] == state.atoms.positions[0, 2])
    assert np.abs(fin.positions - ext.final_state.atoms.positions).max() < 1e-6


def test_hot_swap_from_a_checkpoint_continues_on_the_new_potential(pot, pot_v2, tmp_path):
    md = md_config(temperature=60.0, segment_steps=50)
    otf = otf_config(uncertainty_threshold=1e3)
    s1 = run_segment(initial_state(fcc(), md), pot, md, otf, workdir=tmp_path, route="native")
    resumed = load_state(s1.checkpoint)
    s2n = run_segment(resumed, pot_v2, md, otf, workdir=tmp_path / "n", route="native")
    s2e = run_segment(resumed, pot_v2, md, otf, workdir=tmp_path / "e", route="external")
    assert (s1.status, s2n.status, s2e.status) == ("completed",) * 3
    assert s2n.start_step == 50 and s2n.potential_version == 2
    assert s2n.thermo["ke"][0] == pytest.approx(s1.thermo["ke"][-1], rel=1e-12)
    assert s2n.thermo["pe"][0] == pytest.approx(pyace_results(resumed.atoms, pot_v2)["energy"], abs=1e-8)
    # the two routes continue identically (NVE, 50 steps)
    assert np.allclose(s2n.thermo["etotal"], s2e.thermo["etotal"], rtol=0, atol=1e-7)
    assert np.abs(s2n.final_state.atoms.positions - s2e.final_state.atoms.positions).max() < 1e-8


# ----------------------------------------------------------------------------- MPI


def test_two_mpi_ranks_match_one_rank(pot, tmp_path):
    a = fcc(repeat=4)  # 256 atoms
    md = md_config(temperature=300.0, segment_steps=100, thermo_every=10)
    state = initial_state(a, md)
    one = run_segment(state, pot, md, otf_config(uncertainty_threshold=50.0), workdir=tmp_path / "1",
                      route="native")
    two = run_segment(state, pot, md, otf_config(uncertainty_threshold=50.0), workdir=tmp_path / "2",
                      launcher=TWO_RANKS)
    assert (one.status, two.status) == ("completed", "completed"), (one.error, two.error)
    assert (one.n_ranks, two.n_ranks) == (1, 2) and two.route == "native"
    assert one.thermo["step"] == two.thermo["step"] == list(range(0, 101, 10))
    # the same trajectory to round-off (summation order differs between decompositions)
    assert np.abs(np.array(one.thermo["etotal"]) - np.array(two.thermo["etotal"])).max() / len(a) < 1e-10
    assert np.abs(np.array(one.thermo["pe"]) - np.array(two.thermo["pe"])).max() / len(a) < 1e-10
    assert np.abs(one.final_state.atoms.positions - two.final_state.atoms.positions).max() < 1e-8
    assert np.allclose(one.gamma_trace, two.gamma_trace, rtol=1e-9)
    # a collision triggers at the same check step
    hot = md_config(temperature=10000.0, segment_steps=300, seed=4)
    hs = initial_state(fcc(), hot)
    t1 = run_segment(hs, pot, hot, otf_config(), workdir=tmp_path / "t1", route="native")
    t2 = run_segment(hs, pot, hot, otf_config(), workdir=tmp_path / "t2", launcher=TWO_RANKS)
    assert (t1.status, t2.status) == ("triggered", "triggered"), (t1.error, t2.error)
    assert t1.end_step == t2.end_step and t1.trigger_atom == t2.trigger_atom
    assert np.allclose(t1.trigger_frame.arrays["gamma"], t2.trigger_frame.arrays["gamma"], rtol=1e-8)


def _lmp_processes_running(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(d.name))
    return pids


def test_a_hung_mpi_run_is_killed_at_the_timeout(pot, tmp_path):
    md = md_config(segment_steps=10**7, thermo_every=10**6, dump_every=10**6)
    state = initial_state(fcc(), md)
    t0 = time.perf_counter()
    res = run_segment(state, pot, md, otf_config(uncertainty_threshold=1e3), workdir=tmp_path, launcher=TWO_RANKS,
                      timeout=3.0)
    assert time.perf_counter() - t0 < 30
    assert res.status == "failed" and "did not finish within 3 s" in res.error, res.error
    assert res.final_state is state and res.checkpoint is None
    assert _lmp_processes_running(str(tmp_path)) == []  # launcher and ranks are gone


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("launcher", [None, TWO_RANKS], ids=["one-rank", "mpi"])
def test_elements_the_potential_lacks_fail_with_lammps_own_error(pot, tmp_path, launcher):
    from ase.build import bulk

    md = md_config()
    state = initial_state(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), md)
    res = run_segment(state, pot, md, otf_config(), workdir=tmp_path, route="native", launcher=launcher)
    assert res.status == "failed" and res.final_state is state
    assert res.error.startswith("LAMMPS error: ERROR") and "Cu" in res.error, res.error
    assert len(list(tmp_path.glob("seg-*.data"))) == 1  # kept to debug the failure


@pytest.mark.parametrize("route", ["external", "native"])
def test_a_missing_active_set_file_is_a_failed_result(pot, tmp_path, route):
    md = md_config()
    state = initial_state(fcc(), md)
    res = run_segment(state, replace(pot, asi=tmp_path / "nowhere.asi"), md, otf_config(), workdir=tmp_path,
                      route=route)
    assert res.status == "failed" and res.final_state is state
    assert "file not found" in res.error and "nowhere.asi" in res.error, res.error


def test_a_corrupt_active_set_fails_with_the_exception_lammps_did_not_catch(pot, tmp_path):
    """The ACE library throws a C++ exception LAMMPS does not catch: it ends lmp, not this process."""
    bad = tmp_path / "bad.asi"
    bad.write_bytes(b"not an npz file")
    md = md_config()
    state = initial_state(fcc(), md)
    res = run_segment(state, replace(pot, asi=bad), md, otf_config(), workdir=tmp_path, route="native")
    assert res.status == "failed" and res.error.startswith("LAMMPS error: Exception:"), res.error


@pytest.mark.parametrize("launcher", [None, TWO_RANKS], ids=["one-rank", "mpi"])
def test_a_blow_up_mid_run_is_a_failed_result(pot, tmp_path, launcher):
    from autopipe.md import BlowUpLimits

    md = md_config(temperature=300.0, segment_steps=200)
    state = initial_state(fcc(), md)
    res = run_segment(state, pot, md, otf_config(uncertainty_threshold=1e9), workdir=tmp_path, route="native",
                      launcher=launcher, limits=BlowUpLimits(max_force=1e-3))
    assert res.status == "failed" and res.final_state is state and res.failure == "blowup", res.error
    # stopped at the first step (forces are bounded every step, as on the callback route), with LAMMPS's own line
    assert res.error.startswith("step 1: force") and "blown up" in res.error, res.error
    assert "ERROR: Fix halt condition for fix-id ap_halt_force met on step 1" in res.error
    assert res.failed_step == 1
    assert res.checkpoint is None and not list(tmp_path.glob("checkpoint-*.npz"))


def test_a_blow_up_under_a_barostat_keeps_the_box_lammps_dumped(pot, tmp_path):
    """NPT moves the box during the segment: the blow-up's last frame (labelled next) must carry the
    box LAMMPS had at that step, which ASE's own dump reader gives, not the segment's start box."""
    from autopipe.md import BlowUpLimits

    a = fcc()  # at a = 3.4 Å the crystal is under strong tension: the barostat shrinks it
    # A slow barostat (1 ps): the halt must come after the first dump (every 10 steps). With 0.2 ps
    # one machine's fit of the LJ potential lost 14 % of the volume in 10 steps and halted at step 10
    # with only the start dumped.
    md = md_config(ensemble="npt", temperature=50.0, pressure=0.0, barostat_damping=1000.0, segment_steps=300,
                   dump_every=10)
    otf = otf_config(uncertainty_threshold=1e9)
    state = initial_state(a, md)
    calm = run_segment(state, pot, md, otf, workdir=tmp_path / "calm", route="native")
    assert calm.status == "completed", calm.error
    vol, pe = np.array(calm.thermo["vol"]), np.array(calm.thermo["pe"])
    shrunk = int(np.argmax(vol < 0.98 * vol[0]))  # the first record 2 % below the start volume
    assert shrunk > 0
    bound = abs(pe[shrunk] - pe[0]) / len(a)  # an energy bound the same dynamics crosses only there
    res = run_segment(state, pot, md, otf, workdir=tmp_path / "halted", route="native",
                      limits=BlowUpLimits(max_energy_change=bound))
    assert res.status == "failed" and res.failure == "blowup", res.error
    frame = res.last_frame
    assert frame is not None and 0 < frame.info["step"] <= res.failed_step, (res.failed_step, res.error)
    dumped = {f.info["timestep"]: f for f in read(res.lammps_dump, index=":", format="lammps-dump-text")}
    assert np.allclose(frame.cell[:], dumped[frame.info["step"]].cell[:], atol=1e-9)  # the cube stays a cube
    assert frame.get_volume() < 0.985 * a.get_volume()


def test_the_process_is_fine_after_a_lammps_error(pot, tmp_path):
    md = md_config(ensemble="nvt-nose-hoover", temperature=0.0)  # LAMMPS rejects a 0 K Nose-Hoover target
    state = initial_state(fcc(), md)
    res = run_segment(state, pot, md, otf_config(), workdir=tmp_path, route="native")
    assert res.status == "failed" and res.error.startswith("LAMMPS error: ERROR"), res.error
    ok = run_segment(state, pot, md_config(), otf_config(), workdir=tmp_path / "again", n_steps=10, route="native")
    assert ok.status == "completed", ok.error


def test_rendered_gpu_command_of_the_perlmutter_site():
    """The command MD runs on Perlmutter's GPU nodes (KOKKOS); it cannot run here."""
    from autopipe.config import load_site
    from autopipe.md.lammps_input import lammps_command

    md = load_site(ROOT / "configs" / "perlmutter.yaml").executor_for("md")
    cmd = lammps_command("lmp", "seg.in", "seg.log", md.md_launcher, md.md_lammps_args)
    assert cmd == [
        "srun", "--overlap", "-n", "1", "-c", "16",
        "lmp", "-k", "on", "g", "1", "-sf", "kk", "-pk", "kokkos", "newton", "on", "neigh", "half",
        "-in", "seg.in", "-log", "seg.log", "-nocite",
    ]


def test_native_files_are_absolute_for_a_relative_workdir(tmp_path, monkeypatch):
    """lmp runs in the segment's directory: `make demo`'s relative demo-run once made it fail to open its log."""
    from autopipe.md.native import NativeFiles

    monkeypatch.chdir(tmp_path)
    files = NativeFiles.at(Path("demo-run/walker"), "seg-0")
    assert files.input.is_absolute() and files.log == tmp_path / "demo-run" / "walker" / "seg-0.log"


@pytest.mark.parametrize("route", ["native", "external"])
def test_a_completed_segment_gives_its_end_gamma_as_pyace_computes_it(pot, tmp_path, route):
    """The false-negative probe picks its atom from the segment's end gamma on the MD worker: it must
    be the gamma of the final state under the version that ran (LAMMPS's, not a stale check's)."""
    a = fcc()
    a.rattle(0.05, seed=3)
    md = md_config(temperature=60.0)
    res = run_segment(initial_state(a, md), pot, md, otf_config(uncertainty_threshold=50.0), workdir=tmp_path,
                      n_steps=40, route=route)
    assert res.status == "completed" and res.end_step == 40
    ref = pyace_results(res.final_state.atoms, pot)["gamma"]
    assert res.end_gamma.shape == (len(a),) and ref.max() > 0
    np.testing.assert_allclose(res.end_gamma, ref, rtol=1e-6, atol=1e-8)
    # Not a check step at the end (callback route): no end gamma rather than an older one.
    if route == "external":
        odd = run_segment(initial_state(a, md), pot, md, otf_config(uncertainty_threshold=50.0),
                          workdir=tmp_path / "odd", n_steps=35, route=route)
        assert odd.status == "completed" and odd.end_gamma is None
