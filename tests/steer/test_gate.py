"""The gate before a hot-swap, the held-out slice of triggered labels, and rollbacks (issue 20, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from autopipe.config.run import TrainConfig
from autopipe.db import (Candidate, CandidateStatus, Database, Event, HeldOut, Label, LabelStatus, Potential,
                         PotentialStatus, Structure, TaskKind, Walker, WalkerStatus, structure_from_atoms)
from autopipe.layout import RunLayout
from autopipe.potentials import PotentialStore
from autopipe.potentials.dataset import build_dataset
from autopipe.steer.gate import gate_decision, heldout_turn, mark_heldout, rollback
from tests.lj import lj2d_template, lj_label
from tests.potentials.helpers import add_labelled, lj_structures


@pytest.fixture
def db(tmp_path: Path):
    d = Database(f"sqlite:///{tmp_path / 'autopipe.db'}")
    yield d
    d.dispose()


# ----------------------------------------------------------------------------- the decision


def test_gate_accepts_a_version_no_worse_than_its_parent_within_the_tolerance():
    assert gate_decision(0.100, 0.100, 0.05).accepted
    assert gate_decision(0.080, 0.100, 0.0).accepted
    assert gate_decision(0.105, 0.100, 0.05).accepted  # exactly at the limit
    assert "accepted" in gate_decision(0.090, 0.100, 0.05).reason


def test_gate_rejects_a_version_worse_than_its_parent_beyond_the_tolerance():
    d = gate_decision(0.1051, 0.100, 0.05)
    assert not d.accepted and "rejected" in d.reason and "105.1" in d.reason
    assert not gate_decision(0.1001, 0.100, 0.0).accepted
    assert not gate_decision(float("nan"), 0.100, 0.05).accepted  # a broken fit is never better


def test_gate_passes_and_says_so_without_held_out_labels():
    d = gate_decision(None, None, 0.05)
    assert d.accepted and "no held-out labels" in d.reason


def test_bad_gate_settings_are_refused():
    with pytest.raises(ValueError, match="gate_tolerance"):
        TrainConfig(gate_tolerance=-0.1)
    with pytest.raises(ValueError, match="heldout_every"):
        TrainConfig(heldout_every=-1)
    assert TrainConfig().heldout_every == 10 and TrainConfig().gate and TrainConfig().gate_tolerance == 0.05


# ----------------------------------------------------------------------------- held-out slice


def test_every_nth_label_is_held_out():
    assert [n for n in range(1, 31) if heldout_turn(n, 10)] == [10, 20, 30]
    assert not any(heldout_turn(n, 0) for n in range(1, 31))


def _triggered_cells(db: Database, n: int, every: int) -> list[int]:
    """``n`` labelled carved cells of one trigger frame, each a selected candidate, marked as the
    DFT handler marks them; returns their structure ids."""
    with db.session() as s:
        frame = structure_from_atoms(lj_structures(1, seed=9)[0], "md_frame")
        s.add(frame)
        s.flush()
        frame_id = frame.id
    ids = []
    for i, atoms in enumerate(lj_structures(n, seed=10)):
        add_labelled(db, [atoms], origin="embedded", force_mask=[0, 1])
        with db.session() as s:
            sid = s.scalar(select(Structure.id).order_by(Structure.id.desc()).limit(1))
            s.add(Candidate(frame_id=frame_id, center=i, status=CandidateStatus.selected, structure_id=sid))
        mark_heldout(db, sid, every)
        ids.append(sid)
    return ids


def test_every_nth_triggered_label_is_held_out_and_never_trained_on(db):
    add_labelled(db, lj_structures(3, seed=1))  # generated data: never counted, always trained on
    add_labelled(db, lj_structures(1, seed=2), origin="embedded", info={"calibration_for": 1})  # not a candidate
    cells = _triggered_cells(db, 10, every=4)
    with db.session() as s:
        held = {sid: h for sid, h in s.execute(select(Structure.id, Structure.heldout)) if h is not None}
    assert held == {cells[3]: HeldOut.triggered, cells[7]: HeldOut.triggered}
    df, _ = build_dataset(db, TrainConfig())
    assert len(df) == 3 + 1 + 10 - 2
    assert not set(held) & set(df["structure_id"])
    # A probe's label (the other held-out role) is kept out the same way.
    with db.session() as s:
        s.get(Structure, cells[0]).heldout = HeldOut.probe
    df, _ = build_dataset(db, TrainConfig())
    assert cells[0] not in set(df["structure_id"]) and len(df) == 11


def test_no_label_is_held_out_when_the_slice_is_off(db):
    _triggered_cells(db, 6, every=0)
    with db.session() as s:
        assert s.scalar(select(Structure.id).where(Structure.heldout.is_not(None))) is None


# ----------------------------------------------------------------------------- rollback


def _store_with_versions(tmp_path: Path, statuses: dict[int, PotentialStatus | None]) -> tuple[Database, PotentialStore]:
    db = Database.for_workdir(tmp_path)
    store = PotentialStore(db, RunLayout(tmp_path).potentials)
    for v, status in statuses.items():
        f = tmp_path / f"p{v}.yaml"
        f.write_text(f"version {v}\n")
        store.publish({"yaml": f}, name=f"v{v}", version=v, parent_version=v - 1 or None, status=status)
    return db, store


def test_rollback_serves_an_earlier_version_and_withdraws_the_newer(tmp_path):
    db, store = _store_with_versions(tmp_path, {1: None, 2: None, 3: PotentialStatus.rejected, 4: None})
    assert store.latest().version == 4
    assert rollback(db, store, 2) == [4]
    assert store.latest().version == 2 and store.unserved() == {3, 4}
    ev = db.last_event("rollback")
    assert ev.data["version"] == 2 and ev.data["previous_version"] == 4 and "v2" in ev.message
    # Forward again: v4 is served, the rejected v3 stays out.
    assert rollback(db, store, 4) == []
    assert store.latest().version == 4 and store.unserved() == {3}


def test_rollback_refuses_unknown_and_rejected_versions(tmp_path):
    db, store = _store_with_versions(tmp_path, {1: None, 2: PotentialStatus.rejected})
    with pytest.raises(ValueError, match="no potential v7 in this run"):
        rollback(db, store, 7)
    with pytest.raises(ValueError, match="v2 was rejected by the gate"):
        rollback(db, store, 2)
    assert db.last_event("rollback") is None


def test_a_rollback_during_the_gate_keeps_the_judged_version_withdrawn(tmp_path):
    from autopipe.steer.gate import set_status

    db, store = _store_with_versions(tmp_path, {1: None, 2: PotentialStatus.pending})
    with pytest.raises(ValueError, match="v2 has not been judged"):
        rollback(db, store, 2)
    assert rollback(db, store, 1) == [2]
    assert not set_status(db, 2, PotentialStatus.served)  # the gate's verdict arrives after the rollback
    assert store.latest().version == 1 and store.unserved() == {2}


def test_rollback_command(tmp_path):
    from typer.testing import CliRunner

    from autopipe.cli import app

    db, store = _store_with_versions(tmp_path, {1: None, 2: None, 3: PotentialStatus.rejected})
    db.dispose()
    runner = CliRunner()
    out = runner.invoke(app, ["rollback", "--workdir", str(tmp_path), "--to", "1"])
    assert out.exit_code == 0, out.output
    assert "walkers use v1 from their next segment on (withdrawn: v2)" in out.output
    assert store.latest().version == 1
    for bad, words in (("3", "rejected by the gate"), ("9", "no potential v9")):
        out = runner.invoke(app, ["rollback", "--workdir", str(tmp_path), "--to", bad])
        lines = [ln for ln in out.output.splitlines() if ln.strip()]
        assert out.exit_code == 2 and len(lines) == 1 and words in lines[0], out.output
    out = runner.invoke(app, ["rollback", "--workdir", str(tmp_path / "nothing"), "--to", "1"])
    assert out.exit_code == 2 and "no autopipe run here" in out.output


def test_a_walker_waiting_on_a_withdrawn_version_goes_on_with_the_served_one():
    from types import SimpleNamespace

    from autopipe.steer.walkers import wake

    w = SimpleNamespace(status=WalkerStatus.waiting, waiting_for_version=4, step=120, note=None)
    assert not wake(w, 2)  # v2 is older than what it waits to beat
    assert wake(w, 2, unserved={3, 4})
    assert w.status is WalkerStatus.running and "v4 was withdrawn" in w.note and "v2" in w.note


# ----------------------------------------------------------------------------- status and report


def test_status_and_report_show_gate_decisions_and_rollbacks(tmp_path):
    from autopipe.report import gate_section
    from autopipe.status import collect_status, render_status

    db, store = _store_with_versions(tmp_path, {1: None, 2: None, 3: PotentialStatus.rejected})
    db.record_event("gate", "v3 rejected: held-out force RMSE ...", version=3, parent_version=2, force_rmse=0.2104,
                    parent_force_rmse=0.1502, tolerance=0.05, n_atoms=96, n_structures=3, accepted=False)
    db.record_event("gate", "v2 passed without a check: no held-out labels yet", version=2, parent_version=1,
                    force_rmse=None, parent_force_rmse=None, tolerance=0.05, n_atoms=0, accepted=True)
    rollback(db, store, 1)
    st = collect_status(db)
    assert [g["version"] for g in st["gate"]] == [3, 2] and st["rollbacks"][0]["version"] == 1
    text = render_status(st)
    assert "gate       : v3 (parent v2): rejected, held-out force RMSE 210.4 vs 150.2 meV/Å (tolerance 5 %, 96 atoms)" in text
    assert "no held-out labels yet" in text
    assert "rollback   : walkers use v1" in text
    assert "rejected)" in text and "withdrawn)" in text  # the potentials line says which are not served
    page = gate_section(st)
    assert "<b>rejected</b>" in page and "210.4" in page and "150.2" in page and "walkers use v1" in page
    assert gate_section({"gate": [], "rollbacks": []}) == ""


# ----------------------------------------------------------------------------- the gate in the train handler


def _damaged_copy(potential, dest: Path, scale: float) -> dict[str, Path]:
    """The potential's files with every basis coefficient scaled: a real ACE potential that is worse."""
    dest.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(Path(potential.yaml).read_text())
    for block in doc["species"]:
        for fn in block.get("nbody", []):
            fn["c"] = [scale * c for c in fn["c"]]
    (dest / "potential.yaml").write_text(yaml.safe_dump(doc))
    files = {"yaml": dest / "potential.yaml"}
    for role in ("yace", "asi"):
        files[role] = dest / Path(getattr(potential, role)).name
        files[role].write_bytes(Path(getattr(potential, role)).read_bytes())
    return files


def _held_out_layers(db: Database, n: int) -> None:
    """``n`` rattled 32-atom LJ layers with LJ labels, held out, three atoms of each masked."""
    rng = np.random.default_rng(3)
    with db.session() as s:
        for _ in range(n):
            atoms = lj2d_template()
            atoms.positions[:, :2] += rng.normal(0, 0.08, size=(len(atoms), 2))
            st = structure_from_atoms(atoms, "embedded", force_mask=[0, 1, 2], heldout=HeldOut.triggered)
            s.add(st)
            s.flush()
            ref = lj_label(atoms)
            s.add(Label(structure_id=st.id, status=LabelStatus.done, code="lj", energy=ref.energy, forces=ref.forces))


def _finish_round(ctx, files: dict[str, Path]) -> int:
    """A train task for v2 (parent v1) finished with these files; returns the task id."""
    from autopipe.potentials.fitoutput import FitOutput
    from autopipe.potentials.trainer import max_label_id
    from autopipe.steer.handlers import train
    from autopipe.transfer import FileBlob

    parent = ctx.store.latest()
    payload = dict(version=2, name="v2", parent_version=parent.version, parent_yaml=str(parent.yaml),
                   snapshot=max_label_id(ctx.db), iterations=10, workdir=str(ctx.layout.fresh_train_dir(2)))
    with ctx.db.session() as s:
        task = ctx.new_task(TaskKind.train, payload=payload)
        s.add(task)
        s.flush()
        task_id = task.id
    fit = FitOutput(status="done", blobs={r: FileBlob.read(p) for r, p in files.items()}, n_train=5)
    train.done(ctx, task_id, fit)
    return task_id


def _gated_round(ctx, potential, dest: Path, scale: float):
    """Three held-out layers, a walker waiting on v1, and v2 = v1 with its coefficients scaled
    through the train handler; returns v2's status, the gate event and the walker."""
    _held_out_layers(ctx.db, 3)
    with ctx.db.session() as s:
        s.add(Walker(index=0, status=WalkerStatus.waiting, step=300, waiting_for_version=1, checkpoint="ck"))
    _finish_round(ctx, _damaged_copy(potential, dest, scale))
    with ctx.db.session() as s:
        status = s.scalars(select(Potential).where(Potential.version == 2)).one().status
        return status, s.scalars(select(Event).where(Event.kind == "gate")).one(), s.scalars(select(Walker)).one()


def test_the_gate_rejects_a_damaged_fit_and_keeps_the_walkers_on_the_parent(ctx, lj2d_potential, tmp_path):
    from autopipe.steer.training import training_due
    from autopipe.steer.view import read_view

    status, gate, w = _gated_round(ctx, lj2d_potential, tmp_path / "damaged", 3.0)
    assert status is PotentialStatus.rejected
    nxt = ctx.db.last_event("gate_next")
    assert ctx.store.latest().version == 1  # kept in the store, never served
    assert gate.data["force_rmse"] > gate.data["parent_force_rmse"] * 1.05 and not gate.data["accepted"]
    assert gate.data["n_atoms"] == 3 * (32 - 3) and gate.data["tolerance"] == 0.05
    assert "retrains from v1" in nxt.message and nxt.data["released_walkers"] == [0]
    # The walker goes on with the parent, and the same data does not start the same round again.
    assert w.status is WalkerStatus.running and "v1" in w.note
    view = read_view(ctx)
    assert view.newest_version == 1 and view.new_labels == 0
    assert training_due(view, ctx.run.train, ctx.run.stop) is None


def test_the_gate_accepts_a_fit_as_good_as_its_parent_and_the_walkers_hot_swap(ctx, lj2d_potential, tmp_path):
    from autopipe.steer.walkers import wake

    status, gate, w = _gated_round(ctx, lj2d_potential, tmp_path / "same", 1.0)
    assert status is PotentialStatus.served
    assert gate.data["accepted"] and gate.data["n_atoms"] == 87
    assert ctx.store.latest().version == 2
    assert w.status is WalkerStatus.waiting and wake(w, ctx.store.latest().version)  # the existing hot-swap path


def test_with_nothing_held_out_the_gate_passes_and_says_so(ctx, lj2d_potential, tmp_path):
    _finish_round(ctx, _damaged_copy(lj2d_potential, tmp_path / "damaged", 3.0))
    assert ctx.store.latest().version == 2
    ev = ctx.db.last_event("gate")
    assert ev.data["accepted"] and "no held-out labels yet" in ev.message


def test_too_few_held_out_structures_cannot_reject_a_version(ctx, lj2d_potential, tmp_path):
    """One or two held-out cells are too little evidence to keep a fit from the walkers (a 6-atom
    probe cell rejected a demo fit and stalled the run): the version passes, the event saying why
    with both scores; from train.gate_min_heldout (3) structures on the same damage rejects it."""
    assert ctx.run.train.gate_min_heldout == 3
    _held_out_layers(ctx.db, 2)
    _finish_round(ctx, _damaged_copy(lj2d_potential, tmp_path / "damaged", 3.0))
    ev = ctx.db.last_event("gate")
    assert ev.data["accepted"] and ctx.store.latest().version == 2
    assert "2 held-out structure(s), fewer than the 3" in ev.message and "rejected: held-out force RMSE" in ev.message
    assert ev.data["force_rmse"] > 1.05 * ev.data["parent_force_rmse"]  # the damage is there, the evidence thin


def test_held_out_labels_do_not_count_as_new_labels_to_train_on(ctx):
    from autopipe.steer.view import read_view

    _held_out_layers(ctx.db, 2)  # labels newer than v1's snapshot, but none can be trained on
    assert read_view(ctx).new_labels == 0 and not read_view(ctx).fit_owed
    add_labelled(ctx.db, [lj2d_template()], origin="embedded")
    assert read_view(ctx).new_labels == 1


def test_after_a_rejection_the_next_round_continues_from_the_parent_with_the_full_iterations(ctx, lj2d_potential,
                                                                                            tmp_path):
    from autopipe.potentials.trainer import plan_round

    ctx.run.train = ctx.run.train.model_copy(update={"retrain_iterations": 7, "max_iterations": 20})
    assert plan_round(ctx.db, ctx.store, ctx.run, ctx.layout).iterations == 7  # an ordinary continuation
    _held_out_layers(ctx.db, 3)
    _finish_round(ctx, _damaged_copy(lj2d_potential, tmp_path / "damaged", 3.0))
    nxt = ctx.db.last_event("gate_next")
    assert "retrains from v1 (20 iterations)" in nxt.message
    request = plan_round(ctx.db, ctx.store, ctx.run, ctx.layout)
    assert (request.version, request.parent_version, request.iterations) == (3, 1, 20)
    assert request.parent_yaml == str(ctx.store.get(1).yaml)


@pytest.mark.slow
def test_a_real_fit_trained_without_forces_is_rejected_and_rollback_restores_the_parent(lj2d_potential, tmp_path):
    """Issue 20's test: a pacemaker fit with its force weight at 0 (kappa 0, fresh) against the
    fixture's v1 on held-out LJ layers. Needs pacemaker (slow)."""
    from autopipe.potentials.trainer import fit_round, plan_round, publish_round, training_set
    from autopipe.steer.gate import judge
    from tests.lj import lj_recipe, lj_run_config
    from tests.potentials.helpers import copy_cached_run

    run = copy_cached_run(lj2d_potential, tmp_path / "run")
    db = Database(f"sqlite:///{run / 'autopipe.db'}")
    store = PotentialStore(db, run / "potentials")
    assert store.latest().version == 1
    _held_out_layers(db, 4)
    cfg = lj_run_config("gate", run, dimension=2,
                        train={**lj_recipe(2)["train"], "kappa": 0.0, "max_iterations": 40})
    request = plan_round(db, store, cfg, RunLayout(run), fresh=True)  # parent v1, but no continuation
    assert request.parent_version == 1 and request.parent_yaml is None
    fit = fit_round(request, training_set(db, request), workdir=request.workdir)
    assert fit.ok, fit.error
    publish_round(store, request, fit, status=PotentialStatus.pending)
    decision, data = judge(db, store, request.version, tolerance=0.05)
    assert not decision.accepted, data
    assert data["force_rmse"] > 1.05 * data["parent_force_rmse"] and data["n_atoms"] == 4 * 29
    assert store.latest().version == 1 and request.version in store.unserved()
    with pytest.raises(ValueError, match="rejected by the gate"):
        rollback(db, store, request.version)


def test_replay_compares_the_first_with_the_version_walkers_use_not_a_rejected_one(tmp_path):
    from autopipe.replay import _versions

    db, store = _store_with_versions(tmp_path, {1: None, 2: None, 3: PotentialStatus.rejected})
    assert _versions(store, None, None, tmp_path) == [1, 2]
    assert _versions(store, None, 3, tmp_path) == [1, 3]  # asked for by name: still possible


def test_a_version_the_gate_cannot_score_is_rejected_and_the_walkers_go_on(ctx, lj2d_potential, tmp_path):
    files = _damaged_copy(lj2d_potential, tmp_path / "broken", 1.0)
    files["yaml"].write_text("species: [not an ACE potential]\n")
    _held_out_layers(ctx.db, 1)
    with ctx.db.session() as s:
        s.add(Walker(index=0, status=WalkerStatus.waiting, step=300, waiting_for_version=1, checkpoint="ck"))
    _finish_round(ctx, files)
    assert ctx.store.latest().version == 1 and ctx.store.unserved() == {2}
    assert "scoring it failed" in ctx.db.last_event("gate").message
    assert ctx.db.last_event("gate_next").data["released_walkers"] == [0]
