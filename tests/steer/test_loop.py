"""The whole loop on real Parsl executors with the LJ oracle: kill/resume, HTEX, Globus route."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from autopipe.db import Database, Label, Origin, Potential, Segment, Structure, Task, TaskKind, TaskState

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def short_run(tmp_path: Path, **overrides) -> Path:
    """A small 2D LJ run: 12 bootstrap structures, short fits, 2 segments of 100 steps."""
    run = {
        "name": "short",
        "workdir": str(tmp_path / "work"),
        "system": {"elements": ["Ar"],
                   "structure": {"kind": "liquid2d", "n_atoms": 48, "density": 0.15, "min_distance": 2.0, "seed": 3}},
        "initial_potential": {"kind": "generate", "name": "short_v1", "n_structures": 12, "rattle": 0.15,
                              "strain": 0.05, "min_distance": 1.95, "seed": 7},
        "md": {"ensemble": "nve", "initial_temperature": 2500.0, "segment_steps": 100, "dimension": 2,
               "dump_every": 10, "thermo_every": 10, "seed": 11},
        "otf": {"uncertainty_threshold": 3.0, "check_frequency": 5, "max_extractions": 2},
        # A 16 Å box holds ~80 % of this 48-atom layer: carved anyway, since these tests are about carving.
        "embedding": {"core_radius": 3.0, "buffer": 5.0, "min_distance": 1.0, "whole_frame_fraction": 0.95},
        "dft": {"code": "lj", "epsilon": 0.1, "sigma": 2.0, "cutoff": 5.0},
        "train": {"min_new_labels": 2, "cutoff": 5.0, "number_of_functions_per_element": 20,
                  "max_iterations": 25, "retrain_iterations": 10},
        "stop": {"max_md_steps": 200, "max_trainings": 1, "max_walltime": 600},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(run.get(key), dict) and key not in ("dft", "initial_potential"):
            run[key].update(value)
        else:
            run[key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def from_fixture(tmp_path: Path, potential, **overrides) -> Path:
    """:func:`short_run` starting from the cached 2D LJ fixture potential and its training data
    (imported: no initial labels, no first fit). Its gamma on this liquid starts near 11 and
    crosses 20 within the first segment, so the run retrains once and hot-swaps."""
    from tests.lj import fixture_train_dir, lj_recipe

    train = {k: lj_recipe(2)["train"][k] for k in ("number_of_functions_per_element", "ranks", "lmax")}
    return short_run(tmp_path, **{
        "initial_potential": {"kind": "file", "path": str(potential.yaml), "asi": str(potential.asi),
                              "training_data": str(fixture_train_dir(potential) / "dataset.pckl.gzip")},
        "otf": {"uncertainty_threshold": 20.0, "max_extractions": 1},
        "train": {**train, "min_new_labels": 1, "retrain_iterations": 10},
        **overrides})


def steer(site: str, run: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # workers import tests.slow_calculator
    return subprocess.Popen([str(BIN / "autopipe-steer"), "--site", str(ROOT / "configs" / f"{site}.yaml"),
                             "--run", str(run), "--no-live"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def labels_per_structure(db: Database) -> dict[int, int]:
    with db.session() as s:
        return dict(s.execute(select(Label.structure_id, func.count()).group_by(Label.structure_id)).all())


def test_kill_after_first_label_then_resume_loses_nothing_and_computes_nothing_twice(tmp_path):
    run = short_run(tmp_path, dft={"code": "ase", "calculator": "tests.slow_calculator:SlowLennardJones",
                                   "kwargs": {"delay": 0.4, "sigma": 2.0, "epsilon": 0.1, "rc": 5.0, "smooth": True}})
    db_path = tmp_path / "work" / "autopipe.db"
    proc = steer("local", run)
    deadline = time.time() + 300
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                with Database(f"sqlite:///{db_path}", create=False).session() as s:
                    n = s.scalar(select(func.count()).select_from(Label))
                    running = s.scalar(select(func.count()).select_from(Task).where(
                        Task.state == TaskState.running, Task.structure_id.not_in(select(Label.structure_id))))
            except Exception:
                n = running = 0  # tables not created yet
            if n and running:  # after the first label, while more DFT is in flight
                break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"the loop ended early:\n{proc.stdout.read()[-3000:]}")
    assert n >= 1, "no label was stored before the deadline"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = Database(f"sqlite:///{db_path}")
    before = labels_per_structure(db)
    with db.session() as s:
        # Running with no label yet: the work a killed process really left undone.
        left_running = set(s.scalars(select(Task.id).where(
            Task.state == TaskState.running, Task.structure_id.not_in(select(Label.structure_id)))))
        n_generated = s.scalar(select(func.count()).select_from(Structure).where(Structure.origin == Origin.generated))
    assert 1 <= sum(before.values()) < n_generated, "kill came too late to test resumption"
    assert left_running  # a killed process leaves running tasks behind

    out = finish(steer("local", run))
    assert "stopped:" in out
    after = labels_per_structure(db)
    assert all(c == 1 for c in after.values()), "a structure was labelled twice"
    for sid in before:
        assert sid in after  # nothing lost
    with db.session() as s:
        gen_ids = set(s.scalars(select(Structure.id).where(Structure.origin == Origin.generated)))
        assert gen_ids <= set(after)  # every bootstrap structure got its single label
        stale = s.scalar(select(func.count()).select_from(Task).where(Task.state.in_([TaskState.running])))
        assert stale == 0
        resumed = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(left_running)))}
        assert all(t.attempts >= 2 and t.state == TaskState.done for t in resumed.values()), \
            "tasks left running by the killed process were not resubmitted"
        assert s.scalar(select(func.count()).select_from(Potential)) >= 1
    status = subprocess.run([str(BIN / "autopipe"), "status", "--workdir", str(tmp_path / "work"), "--json"],
                            capture_output=True, text=True, check=True)
    st = json.loads(status.stdout)
    assert st["stopped_because"] and st["labels"]["done"] == sum(after.values())


def test_loop_runs_on_local_htex_with_triggers_dft_and_a_retrain(tmp_path):
    run = short_run(tmp_path)
    out = finish(steer("local-htex", run))
    db = Database(f"sqlite:///{tmp_path / 'work' / 'autopipe.db'}")
    with db.session() as s:
        executors = dict(s.execute(select(Task.kind, Task.executor).distinct()).all())
        assert executors[TaskKind.md] == "gpu" and executors[TaskKind.dft] == "cpu"
        assert executors.get(TaskKind.train) == "gpu"
        segs = list(s.scalars(select(Segment)))
        assert segs and all(seg.status.value in ("completed", "triggered") for seg in segs), out[-3000:]
        versions = list(s.scalars(select(Potential.version).order_by(Potential.version)))
        assert versions[0] == 1
    assert "stopped:" in out


def test_loop_heals_on_globus_endpoints_that_cannot_see_the_work_directory(tmp_path, lj2d_potential):
    """Every MD, DFT and training task goes through the Globus Compute SDK's own serialisation to
    an endpoint process in a mount namespace of its own, where the run's work directory (its
    database included) is an empty read-only directory and the endpoint's scratch is private:
    an app that read or wrote a path of the steering side would fail. The loop still heals."""
    from autopipe.config import load_run
    from autopipe.config.site import SiteConfig
    from autopipe.steer.loop import run_loop
    from tests.globus_standin import make_endpoint_standin

    work = tmp_path / "work"
    work.mkdir()
    run = load_run(from_fixture(tmp_path, lj2d_potential))
    site_data = yaml.safe_load((ROOT / "configs" / "globus.yaml").read_text())
    scratch = {}
    for ex in site_data["executors"]:
        ex.update(scratch=str(tmp_path / f"scratch-{ex['label']}"), dft_launcher=[])
        scratch[ex["endpoint_id"]] = ex["scratch"]
    endpoints = {}

    def endpoint(endpoint_id):
        endpoints[endpoint_id] = make_endpoint_standin(endpoint_id, hidden=[str(work)], scratch=scratch[endpoint_id])
        return endpoints[endpoint_id]

    probe = make_endpoint_standin("probe", hidden=[str(work)], scratch=str(tmp_path / "scratch-probe"), workers=1)
    try:  # the namespace really hides the work directory
        (work / "seen").write_text("steering side")
        assert probe.submit(os.listdir, str(work)).result(timeout=60) == []
        with pytest.raises(Exception, match="Read-only file system"):
            probe.submit(Path.write_text, work / "from-worker", "x").result(timeout=60)
    finally:
        probe.shutdown()

    outcome = run_loop(SiteConfig.model_validate(site_data), run, live=False,
                       parsl_kwargs={"globus_executor_factory": endpoint})
    db = Database(f"sqlite:///{work / 'autopipe.db'}")
    with db.session() as s:
        remote = list(s.scalars(select(Task).where(Task.kind != TaskKind.embed)))
        assert {t.executor for t in remote} == {"gpu-endpoint", "cpu-endpoint"}
        assert all(t.state is TaskState.done and "ran" in t.payload for t in remote), outcome.stopped_because
        versions = list(s.scalars(select(Potential.version).order_by(Potential.version)))
        assert versions == [1, 2], outcome.stopped_because  # retrained on the trigger frame's label
        assert s.scalar(select(func.count()).select_from(Segment).where(Segment.potential_version == 2))  # hot-swap
        assert s.scalar(select(func.count()).select_from(Structure).where(Structure.origin == Origin.embedded))
    assert all(c == 1 for c in labels_per_structure(db).values())
    sent = {}
    for ep in endpoints.values():
        for task in ep.submitted:
            sent.setdefault(task["function"], []).append(task["bytes"])
    assert {"md_work", "dft_work", "fit_work"} <= set(sent), sent.keys()
    assert all(not any(Path(d).iterdir()) for d in scratch.values())  # the endpoints' files stayed there
    largest = {k: max(v) for k, v in sent.items()}
    print(f"\nglobus stand-in: largest serialised task by app (bytes): {largest}; largest result: "
          f"{max(r for ep in endpoints.values() for r in ep.results)} bytes")
    assert max(largest.values()) < 10 * 2**20  # within the Globus Compute service's limit
