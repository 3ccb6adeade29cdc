"""The false-negative probe and the calibration curve (issue 20, item 1; status and report of item 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from autopipe.analysis.calibration import bootstrap_rms, calibration_curve, gamma_edges, overall
from autopipe.config.run import OTFConfig, TrainConfig
from autopipe.db import HeldOut, Label, LabelStatus, Origin, Potential, Structure, Task, TaskKind, TaskState
from autopipe.potentials.dataset import build_dataset
from autopipe.steer.probe import (PROBE_PRIORITY, ShareState, maybe_probe, probe_behind, share_from_counts,
                                  share_state, walker_due, worker_request)
from autopipe.steer.probe_pick import pick_atom, probe_cell, probe_rng
from autopipe.steer.work import CarvedCell
from tests.lj import lj2d_template, lj_label
from tests.potentials.helpers import add_labelled, lj_structures


# ----------------------------------------------------------------------------- picking


def test_the_probe_picks_only_atoms_below_the_threshold():
    gamma = np.array([0.4, 7.0, 2.0, 9.5, 4.99, 5.0, 0.9, 12.0])
    picks = {pick_atom(gamma, 5.0, probe_rng(12345, w, step)) for w in range(4) for step in range(0, 5000, 100)}
    assert picks == {0, 2, 4, 6}  # every atom below 5 is picked sometime, none at or above it
    assert pick_atom(np.array([5.0, 6.0]), 5.0, probe_rng(1, 0, 0)) is None
    # Seeded by the run's seed, the walker and the step: a resume picks the same atom.
    same = [pick_atom(gamma, 5.0, probe_rng(12345, 2, 700)) for _ in range(3)]
    assert len(set(same)) == 1


def test_probe_cell_carves_around_the_picked_atom_and_reports_a_refusal():
    from ase import Atoms

    frame = Atoms("Ar4", positions=np.eye(4, 3) * 3, cell=[10, 10, 10], pbc=True)
    frame.arrays["gamma"] = np.array([8.0, 0.5, 9.0, 9.0])
    seen = []

    def carve(f, center):
        seen.append(center)
        return CarvedCell(center=center, gamma=float(f.arrays["gamma"][center]), atoms=f.copy(), whole_frame=True)

    cell, what = probe_cell(frame, 5.0, probe_rng(1, 0, 10), carve)
    assert seen == [1] and cell.center == 1 and "gamma 0.50" in what
    refused = probe_cell(frame, 5.0, probe_rng(1, 0, 10),
                         lambda f, c: CarvedCell(center=c, gamma=0.5, refused="a close contact in the core"))
    assert refused[0] is None and "close contact" in refused[1]
    frame.arrays["gamma"][:] = 6.0
    assert probe_cell(frame, 5.0, probe_rng(1, 0, 10), carve) == (None, "no atom below the threshold 5")


# ----------------------------------------------------------------------------- share accounting


def test_the_probe_is_behind_or_ahead_of_its_share():
    assert probe_behind(0, 0, 0, 0.05)  # the first probe goes at once
    assert not probe_behind(0, 100, 0, 0.0)  # share 0: no probe
    assert probe_behind(4.0, 100.0, 0.0, 0.05)  # 4 % < 5 %
    assert not probe_behind(5.0, 100.0, 0.0, 0.05)  # at its share
    assert not probe_behind(4.0, 100.0, 2.0, 0.05)  # a queued probe counts: 6/102 > 5 %
    assert not probe_behind(0.0, 10.0, 1.0, 0.05)  # the first one is still queued


def test_share_counts_seconds_or_labels():
    s = share_from_counts(probe_s=30.0, total_s=1000.0, probe_n=2, total_n=40, n_done=2, in_flight=1)
    assert s.unit == "s" and s.spent == pytest.approx(0.03) and s.in_flight_cost == pytest.approx(15.0)
    assert s.behind(0.05) and not s.behind(0.04)  # 45 s of 1015 s: 4.4 %
    n = share_from_counts(probe_s=0.0, total_s=0.0, probe_n=1, total_n=30, n_done=1, in_flight=0)
    assert n.unit == "labels" and n.spent == pytest.approx(1 / 30) and n.behind(0.05) and not n.behind(0.03)


def test_walkers_give_one_probe_per_n_segments():
    assert walker_due([], 0, 5)
    assert not walker_due([3], 7, 5) and walker_due([3], 8, 5)


def test_share_state_reads_the_loop_labels(tmp_path):
    from autopipe.db import Database

    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    add_labelled(db, lj_structures(5, seed=1))  # generated: not the loop's cost
    add_labelled(db, lj_structures(9, seed=2), origin="embedded")
    add_labelled(db, lj_structures(1, seed=3), origin="embedded", heldout=HeldOut.probe)
    with db.session() as s:
        for lab in s.scalars(select(Label)):
            lab.walltime = 10.0
    st = share_state(db)
    assert (st.unit, st.probe, st.total, st.n_labels, st.n_done, st.in_flight) == ("s", 10.0, 100.0, 1, 1, 0)
    assert not st.behind(0.05) and st.behind(0.2)


# ----------------------------------------------------------------------------- through the MD handler's hook


def _state(n_side: int, seed: int = 0):
    from autopipe.md import MDState

    atoms = lj2d_template(n_side=n_side)
    atoms.positions[:, :2] += np.random.default_rng(seed).normal(0, 0.08, size=(len(atoms), 2))
    return MDState(atoms=atoms, step=500)


def _found(ctx, state, walker: int = 0, segment: int = 3, version: int = 1, asked: bool = True):
    """What the MD worker returns for ``state`` at a completed segment's end (:func:`probe_on_worker`,
    gamma by pyace under ``version`` as a worker without LAMMPS's end gamma computes it): the request
    as :func:`worker_request` makes it (``asked``: made whether or not the probe is due)."""
    from autopipe.potentials.uncertainty import gamma
    from autopipe.steer.handlers.embed import carving_settings
    from autopipe.steer.work import WorkerProbe, probe_on_worker

    request = worker_request(ctx, walker=walker, segment=segment, version=version)
    if request is None and asked:
        e, lattice, kpoints, plan, charge = carving_settings(ctx)
        request = WorkerProbe(e, ctx.run.otf.uncertainty_threshold, ctx.run.md.seed, walker, segment, version,
                              e.keep_frames_up_to, lattice, kpoints, plan.strategy, charge)
    if request is None:
        return None
    return probe_on_worker(state, gamma(state.atoms, ctx.store.get(version, verify=False)), request)


def _probe(ctx, walker: int, segment: int, state, version: int = 1):
    return maybe_probe(ctx, walker=walker, segment=segment, segment_id=None, version=version,
                       found=_found(ctx, state, walker, segment, version))


def _probe_rows(db):
    with db.session() as s:
        return [(r.id, r.origin, r.heldout, dict(r.info or {}), r.force_mask)
                for r in s.scalars(select(Structure).where(Structure.heldout.is_not(None)).order_by(Structure.id))]


def test_a_probe_cell_is_held_out_queued_after_triggers_and_never_trained_on(ctx):
    add_labelled(ctx.db, lj_structures(3, seed=1))
    assert worker_request(ctx, walker=0, segment=3, version=1) is not None  # the first probe goes at once
    task_id = _probe(ctx, 0, 3, _state(8))
    assert task_id is not None
    with ctx.db.session() as s:
        task = s.get(Task, task_id)
        cell_id = task.structure_id
        frame_id = s.get(Structure, cell_id).parent_id
        assert (task.kind, task.priority) == (TaskKind.dft, PROBE_PRIORITY)
    queued = ctx.dispatcher.queued("local")
    assert [q.key for q in queued] == [task_id] and queued[0].priority > 10  # after trigger labels (10)
    # Labelled (the frame too, as if it had gone whole), the probe's structures are in no training set.
    with ctx.db.session() as s:
        for sid in (cell_id, frame_id):
            ref = lj_label(_atoms(ctx.db, sid))
            s.add(Label(structure_id=sid, status=LabelStatus.done, code="lj", energy=ref.energy, forces=ref.forces))
    df, _ = build_dataset(ctx.db, TrainConfig())
    assert cell_id not in set(df["structure_id"]) and frame_id not in set(df["structure_id"]) and len(df) == 3
    (f_id, o1, h1, _, _), (c_id, o2, h2, info, mask) = _probe_rows(ctx.db)
    assert (f_id, c_id) == (frame_id, cell_id) and (o1, o2) == (Origin.md_frame, Origin.embedded)
    assert h1 is h2 is HeldOut.probe
    p = info["probe"]
    assert p["version"] == 1 and p["walker"] == 0 and p["segment"] == 3 and p["step"] == 500
    assert p["gamma"] < ctx.run.otf.uncertainty_threshold and p["core_max_gamma"] >= p["gamma"] and mask
    # Ahead of its share now (one probe label, nothing else spent): the next segment is not asked for a
    # probe, and a cell that comes back anyway (asked before the share moved on) is not queued.
    assert worker_request(ctx, walker=1, segment=9, version=1) is None
    assert _probe(ctx, 1, 9, _state(8, 1)) is None


def _atoms(db, sid):
    from autopipe.db import atoms_from_structure

    with db.session() as s:
        return atoms_from_structure(s.get(Structure, sid))


def test_a_small_frame_is_probed_whole_and_the_share_zero_turns_the_probe_off(ctx):
    ctx.run.otf = ctx.run.otf.model_copy(update={"probe_share": 0.0})
    assert worker_request(ctx, walker=0, segment=0, version=1) is None
    assert _probe(ctx, 0, 0, _state(4)) is None
    assert _probe_rows(ctx.db) == []
    ctx.run.otf = ctx.run.otf.model_copy(update={"probe_share": 0.05})
    assert _probe(ctx, 0, 0, _state(4)) is not None
    [(sid, origin, heldout, info, mask)] = _probe_rows(ctx.db)
    assert origin is Origin.md_frame and heldout is HeldOut.probe and info["probe"]["walker"] == 0 and not mask


def test_a_frame_larger_than_the_carve_is_probed_on_the_worker_and_only_its_record_is_stored(ctx):
    """A walker above ``embedding.keep_frames_up_to`` atoms: the probe's frame stays on the MD worker,
    its cell and compact record travel and are stored (issue 22: nothing grows with the walker)."""
    import pickle

    from autopipe.db import atoms_from_structure

    ctx.run.embedding = ctx.run.embedding.model_copy(update={"keep_frames_up_to": 40})
    state = _state(8)
    found = _found(ctx, state, walker=2, segment=5)
    assert found.cell is not None and not found.cell.whole_frame
    rec = found.frame
    assert rec.info["frame_atoms"] == len(state.atoms) and len(rec) < len(state.atoms)
    assert found.cell.center in set(rec.arrays["parent_index"].tolist())
    assert len(pickle.dumps(found)) < len(pickle.dumps(state.atoms))
    task_id = maybe_probe(ctx, walker=2, segment=5, segment_id=None, version=1, found=found)
    assert task_id is not None
    with ctx.db.session() as s:
        cell = s.get(Structure, s.get(Task, task_id).structure_id)
        frame = s.get(Structure, cell.parent_id)
        assert (frame.origin, frame.heldout, cell.heldout) == (Origin.frame_record, HeldOut.probe, HeldOut.probe)
        assert frame.n_atoms == len(rec) and frame.info["frame_atoms"] == len(state.atoms)
        assert s.scalars(select(Structure).where(Structure.origin == Origin.md_frame)).all() == []
        p = cell.info["probe"]
        assert (p["walker"], p["segment"], p["version"], p["step"]) == (2, 5, 1, 500)
        # The cell's atoms point into the frame through the record: the centre is its first atom.
        assert int(atoms_from_structure(cell).arrays["parent_index"][0]) == cell.center_index == found.cell.center
    assert "stayed on the MD worker" in ctx.db.last_event("probe").message


def test_probe_share_out_of_range_is_one_line_at_load(tmp_path):
    from autopipe.config.base import load_model
    from autopipe.errors import ConfigError

    f = tmp_path / "otf.yaml"
    f.write_text("probe_share: 0.6\n")
    with pytest.raises(ConfigError) as err:
        load_model(OTFConfig, f)
    assert str(err.value).count("\n") == 0 and "otf.yaml: probe_share:" in str(err.value)
    f.write_text("probe_share: -0.1\n")
    with pytest.raises(ConfigError, match="probe_share"):
        load_model(OTFConfig, f)
    assert OTFConfig().probe_share == 0.05 and OTFConfig(probe_share=0).probe_share == 0


# ----------------------------------------------------------------------------- the measurement


def _constructed(n_structures: int = 12, per: int = 40, seed: int = 0):
    """Per-atom gamma in [0, 6) and force errors whose spread is 0.02 + 0.03 * gamma eV/Å."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0, 6, size=n_structures * per)
    errors = rng.normal(size=(len(gamma), 3)) * (0.02 + 0.03 * gamma)[:, None]
    return gamma, errors, np.repeat(np.arange(n_structures), per)


def test_the_calibration_curve_rises_with_gamma_on_data_built_that_way():
    gamma, errors, ids = _constructed()
    curve = calibration_curve(gamma, errors, ids, gamma_edges(5.0))
    rms = [b.error.rms for b in curve]
    assert [b.lo for b in curve] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]  # empty bins (>= 10) left out
    assert all(a < b for a, b in zip(rms, rms[1:]))
    for b in curve:  # every bin's interval holds its estimate; its width shrinks with more atoms
        assert b.error.low <= b.error.rms <= b.error.high and b.error.n_structures == 12
        mid = 0.02 + 0.03 * (b.lo + min(b.hi, 6.0)) / 2
        assert 0.6 * mid < b.error.rms < 1.4 * mid


def test_bootstrap_interval_over_structures():
    gamma, errors, ids = _constructed()
    est = overall(errors, ids)
    assert est.low < est.rms < est.high and est.n_atoms == len(ids) and est.n_structures == 12
    assert overall(errors, ids) == est  # seeded
    # Structures that differ from each other widen the interval (it resamples structures, not atoms).
    rng = np.random.default_rng(1)
    ids10 = np.repeat(np.arange(10), 40)
    same = overall(rng.normal(size=(400, 3)) * 0.1, ids10)
    scales = np.repeat(np.geomspace(0.03, 0.3, 10), 40)[:, None]
    differ = overall(rng.normal(size=(400, 3)) * scales, ids10)
    assert (differ.high - differ.low) > 3 * (same.high - same.low)
    one = bootstrap_rms([0.03], [3.0])
    assert one.rms == pytest.approx(0.1) and one.low is None and one.high is None
    assert bootstrap_rms([], []).rms is None


# ----------------------------------------------------------------------------- status and report


def _stored_scores(tmp_path: Path):
    """A database with v1 and v2 and a probe_scores event as the loop records it (v3 no longer exists)."""
    from autopipe.db import Database
    from autopipe.steer.probe import SCORES_EVENT, version_scores

    db = Database(f"sqlite:///{tmp_path / 'autopipe.db'}")
    with db.session() as s:
        for v in (1, 2):
            s.add(Potential(version=v, name=f"v{v}", directory=".", files={}, checksums={}))
    gamma, errors, ids = _constructed()
    groups = [np.flatnonzero(ids == i) for i in range(12)]
    versions = []
    for v, scale in ((1, 2.0), (2, 1.0), (3, 0.5)):
        sc = version_scores([gamma[g] for g in groups], [scale * errors[g] for g in groups], list(range(12)), 5.0)
        versions.append({"version": v, "status": "served", **sc})
    add_labelled(db, lj_structures(1, seed=2), origin="embedded", heldout=HeldOut.probe)
    db.record_event(SCORES_EVENT, "12 probe label(s)", versions=versions, n_labels=12, threshold=5.0,
                    share={"probe": 30.0, "total": 600.0, "unit": "s", "spent": 0.05, "n_labels": 12, "n_done": 12,
                           "in_flight": 1})
    return db, versions


def test_status_prints_the_stored_probe_numbers(tmp_path):
    from autopipe.status import collect_status, render_status

    db, versions = _stored_scores(tmp_path)
    st = collect_status(db)
    assert [v["version"] for v in st["probe"]["versions"]] == [1, 2]  # only versions that exist
    text = render_status(st)
    v1 = versions[0]
    assert "probe      : 1 label(s) (0 queued), 100.0 % of the loop's DFT labels" in text  # no seconds known
    assert (f"probe error: v1 {v1['rms'] * 1000:.1f} meV/Å (95 % interval {v1['low'] * 1000:.1f}-"
            f"{v1['high'] * 1000:.1f}, 12 structure(s), 480 atoms)") in text
    assert "v3" not in text.split("probe error:")[1]
    empty = collect_status(type(db)(f"sqlite:///{tmp_path / 'empty.db'}"))
    assert "probe error" not in render_status(empty)


def test_report_shows_the_calibration_curve(tmp_path):
    from autopipe.report import calibration_section
    from autopipe.status import collect_status

    db, versions = _stored_scores(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    page = calibration_section(collect_status(db), out)
    assert (out / "calibration.png").is_file() and 'src="calibration.png"' in page
    first_bin = versions[1]["curve"][0]
    assert f"{first_bin['rms'] * 1000:.1f}" in page and "0–0.5" in page and "v2" in page and "v3" not in page
    assert calibration_section({"probe": None}, out) == ""


# ----------------------------------------------------------------------------- through the loop (not run here)


@pytest.mark.slow
def test_the_loop_probes_quiet_segments_and_scores_every_version(tmp_path, lj2d_potential):
    """End to end on the local site (LAMMPS, a pacemaker retrain): quiet segments are probed within
    the share, the probe's labels never reach a fit, and status reads their scores. Slow: not run
    by the helper that wrote it."""
    from autopipe.status import collect_status, render_status
    from tests.steer.test_loop import finish, from_fixture, steer

    run = from_fixture(tmp_path, lj2d_potential, otf={"uncertainty_threshold": 20.0, "max_extractions": 1,
                                                      "probe_share": 0.3, "probe_every": 1},
                       stop={"max_md_steps": 600, "max_trainings": 1, "max_walltime": 600})
    finish(steer("local", run))
    from autopipe.db import Database

    db = Database(f"sqlite:///{tmp_path / 'work' / 'autopipe.db'}")
    with db.session() as s:
        probes = list(s.scalars(select(Structure).join(Label, Label.structure_id == Structure.id).where(
            Structure.heldout == HeldOut.probe, Label.status == LabelStatus.done)))
        assert probes and all((p.info or {}).get("probe", {}).get("gamma", 99) < 20.0 for p in probes)
        n_train = {p.version: p.n_train for p in s.scalars(select(Potential))}
    df, _ = build_dataset(db, TrainConfig())
    assert not {p.id for p in probes} & set(df["structure_id"])
    assert max(n_train.values()) <= len(df)
    st = collect_status(db)
    assert st["probe"]["versions"] and "probe error: v1" in render_status(st)


# ----------------------------------------------------------------------------- probe frames are not trigger frames


def _trigger_and_probe_frames(db):
    """A probe frame (md_frame, HeldOut.probe), then a trigger frame (md_frame), and a probe cell
    labelled after a carving-budget decision; returns (trigger id, probe frame id)."""
    from autopipe.db import structure_from_atoms

    frames = lj_structures(2, seed=4)
    frames[1].arrays["gamma"] = np.linspace(0.5, 30.0, len(frames[1]))
    with db.session() as s:
        # The probe frame comes first in the table: "the first md_frame" must still be the trigger.
        rows = [structure_from_atoms(frames[0], Origin.md_frame, heldout=HeldOut.probe),
                structure_from_atoms(frames[1], Origin.md_frame)]
        s.add_all(rows)
        s.flush()
        ids = (rows[1].id, rows[0].id)
    db.record_event("carve_budget", "chose cube", chosen="cube")
    add_labelled(db, lj_structures(1, seed=5), origin="embedded", heldout=HeldOut.probe, info={"probe": {}})
    return ids


def test_probe_frames_are_not_the_reports_trigger_frames_nor_carved_labels_of_the_budget(tmp_path):
    from types import SimpleNamespace

    from autopipe.db import Database, Event
    from autopipe.analysis.buffer_scan import trigger_frame
    from autopipe.heldout import trigger_frames
    from autopipe.steer.budget import _carved_labels_since

    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    trig, probe_frame = _trigger_and_probe_frames(db)
    frames = trigger_frames(db, {"code": "lj", "epsilon": 0.1, "sigma": 2.0, "cutoff": 5.0})
    assert [a.info["structure_id"] for a, _ in frames] == [trig]
    with db.session() as s:
        decision = s.scalar(select(Event.id).where(Event.kind == "carve_budget"))
    assert _carved_labels_since(SimpleNamespace(db=db), decision) == 0  # a probe's cell is not a carved label
    frame, center, sid = trigger_frame(db)  # the buffer scan's default frame
    assert sid == trig and center == len(frame) - 1


def test_rescore_stores_each_versions_probe_error_as_the_gate_measures_it(ctx):
    from autopipe.steer.gate import heldout_frames, score
    from autopipe.steer.probe import SCORES_EVENT, rescore

    assert rescore(ctx) is None and ctx.db.last_event(SCORES_EVENT) is None  # no probe label yet
    add_labelled(ctx.db, lj_structures(4, seed=1), origin="embedded")  # trigger labels: 400 s of DFT
    with ctx.db.session() as s:
        for lab in s.scalars(select(Label)):
            lab.walltime = 100.0
    for seed in range(3):
        task_id = _probe(ctx, seed, 0, _state(8, seed))
        with ctx.db.session() as s:
            sid = s.get(Task, task_id).structure_id
            s.get(Task, task_id).state = TaskState.done
        ref = lj_label(_atoms(ctx.db, sid))
        with ctx.db.session() as s:
            s.add(Label(structure_id=sid, status=LabelStatus.done, code="lj", energy=ref.energy, forces=ref.forces,
                        walltime=1.0))
    data = rescore(ctx)
    [v1] = data["versions"]
    gate = score(ctx.store.get(1), heldout_frames(ctx.db))
    assert data["n_labels"] == 3 and v1["version"] == 1 and v1["n_structures"] == 3
    assert v1["rms"] == pytest.approx(gate.force_rmse) and v1["n_atoms"] == gate.n_atoms
    assert v1["low"] <= v1["rms"] <= v1["high"]
    assert sum(b["n_atoms"] for b in v1["curve"]) == v1["n_atoms"] and v1["curve"][0]["lo"] == 0.0
    assert ctx.db.last_event(SCORES_EVENT).data["versions"][0]["rms"] == v1["rms"]


def test_the_md_handler_probes_a_completed_segment_not_a_triggered_one(ctx):
    from autopipe.db import Segment, SegmentStatus, Walker
    from autopipe.md import SegmentResult
    from autopipe.steer.handlers import md

    def finished(index: int, status: str) -> int:
        state = _state(8, index)
        def added(s, row):
            s.add(row)
            s.flush()  # its id, for the next row
            return row

        with ctx.db.session() as s:
            w = added(s, Walker(index=index, step=0, checkpoint="ck"))
            seg = added(s, Segment(walker_id=w.id, number=0, potential_version=1, start_step=0))
            task_id = added(s, ctx.new_task(TaskKind.md, segment_id=seg.id, payload={"n_steps": 500})).id
        frame = state.atoms.copy()
        frame.arrays["gamma"] = np.full(len(frame), 30.0)
        md.done(ctx, task_id, SegmentResult(status=status, final_state=state, start_step=0, end_step=500,
                                            max_gamma=0.8 if status == "completed" else 30.0,
                                            gamma_trace=np.array([[500, 0.8]]),
                                            trigger_frame=frame if status == "triggered" else None,
                                            probe=_found(ctx, state, index, 0)))  # even if one came back
        with ctx.db.session() as s:
            return s.scalars(select(Segment).where(Segment.walker_id == w.id)).one().status

    assert finished(0, "triggered") is SegmentStatus.triggered
    assert _probe_rows(ctx.db) == []
    assert finished(1, "completed") is SegmentStatus.completed
    rows = _probe_rows(ctx.db)
    assert rows and rows[-1][3]["probe"]["walker"] == 1 and rows[-1][3]["probe"]["step"] == 500
    with ctx.db.session() as s:
        probe_tasks = list(s.scalars(select(Task).where(Task.priority == PROBE_PRIORITY)))
    assert [t.structure_id for t in probe_tasks] == [rows[-1][0]]
