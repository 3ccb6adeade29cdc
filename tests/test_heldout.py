"""Honest validation: fresh trajectories the loop never saw, and in-sample evidence labelled as such.

Fast tests cover the pure parts (fresh starts, closest-contact picking, the texts of the
replay and the report); the slow ones run real LAMMPS segments with the shared 2D LJ
potential (``lj2d_potential``) and label with the LJ oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from autopipe.heldout import (
    DEFAULT_SEED_BASE,
    FreshReport,
    FreshScore,
    FreshStart,
    FreshTrajectory,
    closest_contact_frames,
    fresh_initial_state,
    fresh_starts,
    run_seeds,
    unique_frames,
)
from tests.lj import LJ_CUTOFF, LJ_EPSILON, LJ_SIGMA, lj_label, lj_run_config


def _run(tmp_path: Path, dimension: int = 2, **update):
    """The small LJ run of the tests in hot NVE; ``update``: sections to change (merged into them)."""
    from autopipe.config.run import RunConfig

    data = lj_run_config("fresh", tmp_path / "run", dimension=dimension).model_dump(mode="json")
    data["md"].update(ensemble="nve", initial_temperature=1200.0, dump_every=10, thermo_every=10, seed=1001)
    if dimension == 2:
        data["system"]["structure"]["density"] = 0.15
    for key, value in update.items():
        for k, v in value.items():
            if isinstance(v, dict):
                data[key][k].update(v)
            else:
                data[key][k] = v
    return RunConfig.model_validate(data)


def _walker_start(run, i: int = 0):
    """What the loop's walker ``i`` starts from (as autopipe.steer.walkers.ensure_walkers builds it)."""
    from autopipe.generate import template_atoms
    from autopipe.md import initial_state

    return initial_state(template_atoms(run.system), run.md.model_copy(update={"seed": run.md.seed + i}))


# ----------------------------------------------------------------------------- fresh starts


def test_fresh_starts_skip_every_seed_the_run_used(tmp_path):
    run = _run(tmp_path, walkers={"count": 2})
    run.system.structure.seed = 1003
    assert run_seeds(run) == {1001, 1002, 1003}  # walker velocity seeds md.seed + i, the structure's seed
    starts = fresh_starts(run, 3, seed_base=1000)
    assert [s.seed for s in starts] == [1000, 1004, 1005]
    assert all(s.structure_seed == s.seed for s in starts)  # a liquid2d structure has a seed: it is redrawn
    assert fresh_starts(run, 3, seed_base=1000) == starts  # deterministic
    assert fresh_starts(run, 2)[0].seed == DEFAULT_SEED_BASE
    with pytest.raises(ValueError, match="seed base"):
        fresh_starts(run, 1, seed_base=0)


def test_seeds_whose_liquid_cannot_be_placed_are_skipped(tmp_path):
    from autopipe.generate import template_atoms

    run = _run(tmp_path, system={"structure": {"density": 0.17}})  # dense: random placement jams for some seeds
    starts = fresh_starts(run, 3)
    jammed = [s for s in range(starts[0].seed, starts[-1].seed) if s not in {x.seed for x in starts}]
    assert jammed  # seed 1000 jams at this density
    for seed in jammed:
        structure = run.system.structure.model_copy(update={"seed": seed})
        with pytest.raises(ValueError, match="cannot place"):
            template_atoms(run.system.model_copy(update={"structure": structure}))
    for s in starts:
        assert len(fresh_initial_state(run, s).atoms) == 32


def test_a_crystal_without_rattle_keeps_its_structure_and_gets_new_velocities(tmp_path):
    run = _run(tmp_path, dimension=3)  # fcc, no rattle: its seed would change nothing
    start = fresh_starts(run, 1)[0]
    assert start.structure_seed is None
    fresh, own = fresh_initial_state(run, start), _walker_start(run)
    assert np.allclose(fresh.atoms.positions, own.atoms.positions)
    assert not np.allclose(fresh.atoms.get_velocities(), own.atoms.get_velocities())


def test_an_alloy_with_a_vacancy_gets_new_species_and_a_new_vacancy_site_without_rattle(tmp_path):
    from autopipe.config.run import RunConfig

    data = _run(tmp_path, dimension=3).model_dump(mode="json")
    data["system"] = {"elements": ["Cu", "Ni"], "structure": {
        "kind": "bulk", "crystal": "fcc", "a": 3.56, "repeat": [3, 3, 3], "composition": {"Cu": 0.75, "Ni": 0.25},
        "vacancies": 1, "seed": 5}}
    run = RunConfig.model_validate(data)
    start = fresh_starts(run, 1)[0]
    assert start.structure_seed == start.seed and 5 in run_seeds(run)
    fresh, own = fresh_initial_state(run, start), _walker_start(run)
    assert len(fresh.atoms) == len(own.atoms) == 107
    assert list(fresh.atoms.symbols) != list(own.atoms.symbols)  # the seed draws the species and the vacancy


def test_fresh_initial_states_differ_from_the_walkers_and_repeat_for_the_same_start(tmp_path):
    run = _run(tmp_path, walkers={"count": 2})
    own = [_walker_start(run, i) for i in range(2)]
    starts = fresh_starts(run, 2)
    for start in starts:
        a = fresh_initial_state(run, start)
        for w in own:  # new positions (new liquid2d seed) and new velocities
            assert not np.allclose(a.atoms.positions, w.atoms.positions)
            assert not np.allclose(a.atoms.get_velocities(), w.atoms.get_velocities())
        again = fresh_initial_state(run, start)  # what the second potential starts from
        assert np.array_equal(a.atoms.positions, again.atoms.positions)
        assert np.array_equal(a.atoms.get_momenta(), again.atoms.get_momenta())
    a, b = (fresh_initial_state(run, s) for s in starts)
    assert not np.allclose(a.atoms.positions, b.atoms.positions)


# ----------------------------------------------------------------------------- frames


def _pair(d: float, step: int, shift: float = 0.0) -> Atoms:
    """Two atoms ``d`` Å apart in a 10 Å periodic box (across the boundary when ``shift`` puts them there)."""
    a = Atoms("Ar2", positions=[[0.5 + shift, 5, 5], [0.5 + shift + d, 5, 5]], cell=[10, 10, 10], pbc=True)
    a.wrap()
    a.info["step"] = step
    return a


def test_closest_contact_frames_are_the_k_smallest_pair_distances_under_periodic_images():
    frames = [_pair(3.0, 0), _pair(1.5, 10, shift=-1.2), _pair(2.5, 20), _pair(1.8, 30), _pair(2.0, 40)]
    assert frames[1].positions[0, 0] > 9  # the closest pair straddles the periodic boundary
    picked = closest_contact_frames(frames, 3)
    assert [a.info["step"] for a in picked] == [10, 30, 40]
    assert [round(a.info["min_distance"], 6) for a in picked] == [1.5, 1.8, 2.0]
    assert "min_distance" not in frames[1].info  # the input frames are left alone
    assert len(closest_contact_frames(frames, 10)) == 5 and closest_contact_frames(frames, 0) == []


def test_unique_frames_drops_the_shared_first_frame_of_two_runs():
    a, b = _pair(2.0, 0), _pair(2.0, 0)
    b.positions += 1e-6  # the same frame written at a lower precision
    assert len(unique_frames([a, b, _pair(2.1, 10), _pair(2.0, 10, shift=0.1)])) == 3


# ----------------------------------------------------------------------------- texts


def _report(tmp_path) -> FreshReport:
    starts = [FreshStart(1000, 1000), FreshStart(1001, 1001)]
    trajs = [FreshTrajectory(version=v, seed=s.seed, structure_seed=s.seed, status=st, steps=n, planned_steps=200,
                             max_gamma=g, energy_drift_per_atom=1e-5, walltime=1.0,
                             trigger_step=n if st == "triggered" else None,
                             trigger_gamma=g if st == "triggered" else None,
                             gamma_trace=[[0, 1.0], [n, g]])
             for v, st, n, g in ((1, "triggered", 10, 7.5), (4, "completed", 200, 2.0)) for s in starts]
    frames = [{"source_version": 4, "seed": 1000, "step": 50, "min_distance": 1.7, "errors": {1: 0.4, 4: 0.05}}]
    scores = [FreshScore(version=1, name="bad", trajectories=2, triggers=2, failures=0, mean_steps=10, max_drift=1e-5,
                         force_rmse=0.4, n_frames=1),
              FreshScore(version=4, name="good", trajectories=2, triggers=0, failures=0, mean_steps=200,
                         max_drift=1e-5, force_rmse=0.05, n_frames=1)]
    return FreshReport(n_steps=200, threshold=5.0, labeller="lj", frames_per_trajectory=3, starts=starts,
                       trajectories=trajs, frames=frames, scores=scores)


def test_fresh_report_text_and_json_round_trip(tmp_path):
    rep = _report(tmp_path)
    text = "\n".join(rep.describe())
    assert "held-out" in text and "fresh" in text and "8.0x" in text
    assert "v1 seed 1000: triggered at step 10 (gamma 7.5)" in text
    back = FreshReport.from_json(json.loads(json.dumps(rep.to_json())))
    assert back == rep


def test_replay_and_report_say_in_sample_and_fresh(tmp_path):
    from autopipe.db import Database
    from autopipe.layout import RunLayout
    from autopipe.replay import ReplayResult, describe
    from autopipe.report import build_report

    r = ReplayResult(version=1, name="bad", status="triggered", steps=10, planned_steps=200, max_gamma=7.0,
                     energy_drift_per_atom=0.0, walltime=1.0, collision_force_rmse=0.3)
    assert "(in-sample)" in describe(r, 5.0)
    layout = RunLayout(tmp_path)
    layout.replay_summary.write_text(json.dumps([r.__dict__]))
    layout.fresh_summary.write_text(json.dumps(_report(tmp_path).to_json()))
    db = Database(f"sqlite:///{tmp_path / 'autopipe.db'}")
    page = build_report(db, tmp_path).read_text()
    assert "In-sample replay" in page and "Fresh trajectories (held-out)" in page
    assert "trigger frames (in-sample)" in page and "held-out collision" not in page
    assert "<b>8.0x</b>" in page and (layout.report / "fresh.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- with real MD (slow)


def _publish_two(run, lj2d_potential, tmp_path):
    """A run directory with the shared 2D potential as v1 and a different one (coefficients x1.1) as v2."""
    from pyace.basis import BBasisConfiguration

    from autopipe.db import Database
    from autopipe.layout import RunLayout, write_run_files
    from autopipe.potentials import PotentialStore

    layout = RunLayout(run.workdir)
    write_run_files(layout, run, "local")
    store = PotentialStore(Database(run.database_url()), layout.potentials)
    store.publish({"yaml": lj2d_potential.yaml, "asi": lj2d_potential.asi}, name="plain")
    cfg = BBasisConfiguration(str(lj2d_potential.yaml))
    cfg.set_all_coeffs(np.array(cfg.get_all_coeffs()) * 1.1)
    cfg.save(str(tmp_path / "scaled.yaml"))
    store.publish({"yaml": tmp_path / "scaled.yaml", "asi": lj2d_potential.asi}, name="scaled", parent_version=1)
    return layout, store


@pytest.mark.slow
def test_compare_fresh_runs_both_potentials_from_the_same_new_starts_and_scores_them_against_the_labeller(
        tmp_path, lj2d_potential):
    from ase.io import read

    from autopipe.potentials.uncertainty import evaluate
    from autopipe.replay import compare_fresh, read_fresh
    from autopipe.heldout import read_frames

    # The shared potential learnt a rattled lattice: a random liquid starts near gamma 12.
    run = _run(tmp_path, stop={"max_md_steps": 100}, otf={"uncertainty_threshold": 25.0})
    layout, _ = _publish_two(run, lj2d_potential, tmp_path)
    lines: list[str] = []
    rep = compare_fresh(run.workdir, n_seeds=2, frames_per_trajectory=2, progress=lines.append)
    assert len(lines) == 5 and lines[0].startswith("fresh 1/4: v1 seed 1000")  # 4 runs, then the labelling
    assert [s.seed for s in rep.starts] == [1000, 1002]  # 1001 is the run's own velocity seed
    assert [(t.version, t.seed) for t in rep.trajectories] == [(1, 1000), (2, 1000), (1, 1002), (2, 1002)]

    own = _walker_start(run)
    for seed in (1000, 1002):
        (a0, a1), (b0, b1) = [read_frames(t.trajectory, own.atoms, 2)[:2] for t in rep.trajectories if t.seed == seed]
        # Both potentials start from the same fresh state, which is not the run's own start ...
        assert a0.info["step"] == b0.info["step"] == 0 and a1.info["step"] == b1.info["step"] == 10
        assert np.array_equal(a0.positions, b0.positions)
        assert not np.allclose(np.sort(a0.positions[:, 0]), np.sort(own.atoms.positions[:, 0]))
        # ... with the same velocities: 10 fs later the atoms have moved alike (forces differ by 10 %).
        moved, apart = _displacement(a0, a1), _displacement(a1, b1)
        assert moved > 0.05 and apart < 0.1 * moved
    for t in rep.trajectories:
        assert t.status in ("completed", "triggered") and t.planned_steps == 100
        if t.status == "triggered":
            assert t.trigger_step == t.steps and t.trigger_gamma > run.otf.uncertainty_threshold
        else:
            assert t.steps == 100 and t.trigger_step is None and t.max_gamma <= run.otf.uncertainty_threshold
        assert np.isfinite(t.energy_drift_per_atom) and t.energy_drift_per_atom < 1e-3

    # The close-contact frames, labelled by the run's labeller (the LJ oracle here).
    labelled = read(layout.fresh_frames, index=":")
    assert len(labelled) == len(rep.frames) >= 4
    d = [f["min_distance"] for f in rep.frames]
    assert d == sorted(d)
    for atoms, f in zip(labelled, rep.frames):
        ref = lj_label(atoms, LJ_SIGMA, LJ_EPSILON, LJ_CUTOFF).forces
        assert np.allclose(atoms.arrays["ref_forces"], ref, atol=1e-8)
        for v in (1, 2):
            pot = _store_get(layout, v)
            rmse = np.sqrt(np.mean((evaluate(atoms, pot)["forces"] - ref) ** 2))
            # The scores come from a separate evaluation; agree to rounding, not bit for bit.
            assert f["errors"][v] == pytest.approx(rmse, rel=1e-6)
    assert rep.scores[0].n_frames == rep.scores[1].n_frames == len(labelled)
    assert rep.scores[0].force_rmse != rep.scores[1].force_rmse
    assert read_fresh(run.workdir) == FreshReport.from_json(json.loads(layout.fresh_summary.read_text()))
    # The report's learning curve scores every version on the same fresh frames.
    from autopipe.db import Database
    from autopipe.report import learning_curve

    rows = learning_curve(Database(run.database_url()), run.workdir, run.dft.model_dump())
    assert [r["fresh"] for r in rows] == pytest.approx([s.force_rmse for s in rep.scores], rel=1e-6)


def _displacement(a: Atoms, b: Atoms) -> float:
    """Largest minimum-image displacement of an atom between two frames of one periodic layer (Å)."""
    from ase.geometry import find_mic

    _, lengths = find_mic(b.positions - a.positions, a.cell, a.pbc)
    return float(lengths.max())


def _store_get(layout, version):
    from autopipe.db import Database
    from autopipe.potentials import PotentialStore

    return PotentialStore(Database(f"sqlite:///{layout.database_file}"), layout.potentials).get(version)


@pytest.mark.slow
def test_a_trigger_ends_a_fresh_trajectory_and_its_frame_is_a_candidate(tmp_path, lj2d_potential):
    from autopipe.potentials.uncertainty import gamma
    from autopipe.heldout import run_fresh, segment_frames

    run = _run(tmp_path)
    layout, store = _publish_two(run, lj2d_potential, tmp_path)
    start = fresh_starts(run, 1)[0]
    state = fresh_initial_state(run, start)
    # A threshold a little above the first frame's gamma: the hot liquid crosses it later on.
    g0 = float(gamma(state.atoms, store.get(1)).max())
    run.otf.uncertainty_threshold = g0 + 1.0
    traj, res = run_fresh(state, store.get(1), run, tmp_path / "t", start, n_steps=1000)
    assert traj.status == "triggered" and traj.trigger_gamma > run.otf.uncertainty_threshold
    assert 0 < traj.trigger_step == traj.steps < 1000 and traj.trigger_step % run.otf.check_frequency == 0
    # LAMMPS prints gamma in the trace and reports it at the halt separately: equal to rounding.
    assert traj.max_gamma == pytest.approx(traj.trigger_gamma, rel=1e-12)
    assert traj.gamma_trace[-1][0] == traj.trigger_step
    assert traj.gamma_trace[-1][1] == pytest.approx(traj.trigger_gamma, rel=1e-12)
    frames = segment_frames(res, state.atoms, 2)
    assert frames[-1].info["step"] == traj.trigger_step
    assert [a.info["step"] for a in frames[:-1]] == list(range(0, traj.trigger_step + 1, 10))


@pytest.mark.slow
def test_lammps_dump_frames_match_the_extxyz_frames_of_the_same_segment(tmp_path, lj2d_potential):
    """The native route writes LAMMPS dumps: read back (oblique 2D cell: a tilted LAMMPS box) they
    give the same structures as the callback route's extxyz."""
    from autopipe.md import initial_state, run_segment
    from autopipe.heldout import min_pair_distance, read_frames, read_lammps_dump
    from tests.lj import lj2d_template

    layer = lj2d_template()
    cell = layer.cell.array.copy()
    cell[1, 0] += 2.0  # oblique in-plane cell
    layer.set_cell(cell, scale_atoms=True)
    run = _run(tmp_path)
    state = initial_state(layer, run.md)
    res = run_segment(state, lj2d_potential, run.md, run.otf, workdir=tmp_path / "seg", n_steps=40, lammps_dump=True)
    assert res.status == "completed"
    xyz = read_frames(res.trajectory, state.atoms, 2)
    dump = read_lammps_dump(res.lammps_dump, state.atoms, 2)
    assert [a.info["step"] for a in dump] == [a.info["step"] for a in xyz] == [0, 10, 20, 30, 40]
    for a, b in zip(xyz, dump):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        assert np.allclose(a.cell.array, b.cell.array, atol=1e-8)
        assert min_pair_distance(a) == pytest.approx(min_pair_distance(b), abs=1e-6)
        # Positions agree up to one rigid shift (the LAMMPS box corner is not restored).
        shift = b.positions[0] - a.positions[0]
        diff = b.positions - a.positions - shift
        frac = np.linalg.solve(a.cell.array.T, diff.T).T
        frac[:, :2] -= np.round(frac[:, :2])
        assert np.allclose(frac @ a.cell.array, 0, atol=1e-5)


def test_pwx_labels_only_the_closest_frames_and_oracles_label_all():
    from autopipe.heldout import frames_to_label

    frames = [_pair(d, i) for i, d in enumerate((2.4, 1.6, 2.0, 1.8))]
    assert [a.info["step"] for a in frames_to_label(frames, "espresso", 2)] == [1, 3]
    assert [a.info["step"] for a in frames_to_label(frames, "lj", 2)] == [1, 3, 2, 0]
    assert frames_to_label(frames, "espresso", 0) == []


@pytest.mark.slow
def test_fresh_frames_are_labelled_by_pwx_in_their_own_directories_with_the_sites_launcher(tmp_path):
    from tests.dft.conftest import HAVE_PWX, si2, si_config

    if not HAVE_PWX:
        pytest.skip("pw.x or Si.pz-vbc.UPF not installed")
    from autopipe.dft import label
    from autopipe.heldout import label_frames

    frames = [si2(seed=3), si2(seed=4)]
    # A launcher as a site's dft_launcher would be (srun ...): it leaves a mark, then starts pw.x.
    launcher = ["sh", "-c", 'touch launched && exec "$@"', "launcher"]
    labelled = label_frames(frames, si_config(), workdir=lambda i: tmp_path / f"f{i:03d}", launcher=launcher)
    assert [a for a, _ in labelled] == frames
    for i, (atoms, forces) in enumerate(labelled):
        attempt = tmp_path / f"f{i:03d}" / "attempt-1"
        assert "ATOMIC_POSITIONS" in (attempt / "pw.in").read_text() and (attempt / "launched").is_file()
        direct = label(atoms, si_config())
        assert np.allclose(forces, direct.forces, atol=1e-4) and np.abs(forces).max() > 0.01
