"""The steering loop through configs/slurm-local.yaml on the test cluster, as a user runs it
(``autopipe-steer``): a healing run with real pw.x labels and PostgreSQL, blocks cancelled
mid-MD and mid-DFT, and a block Slurm refuses."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml
from sqlalchemy import func, select

from autopipe.db import (
    Database,
    Event,
    Label,
    LabelStatus,
    Potential,
    Segment,
    SegmentStatus,
    Task,
    TaskKind,
    TaskState,
)
from tests.hpc.conftest import (
    SLURM_SITE,
    SlurmWatch,
    fresh_postgres,
    lost_worker_lines,
    scheduler_wait,
    scontrol_job,
    si_run,
    site_data,
    steer,
    utc_seconds,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
SECRET = "not-in-any-log-4f1c"


def _labels_per_structure(db: Database) -> dict[int, int]:
    with db.session() as s:
        return dict(s.execute(select(Label.structure_id, func.count()).group_by(Label.structure_id)).all())


@pytest.mark.postgres
def test_healing_loop_runs_md_and_training_in_gpu_jobs_and_pwx_as_an_srun_step_of_a_cpu_job(slurm_cluster, tmp_path):
    site = yaml.safe_load(SLURM_SITE.read_text())
    launcher = next(e for e in site["executors"] if "dft" in e["roles"])["dft_launcher"]
    with fresh_postgres(SECRET) as url, SlurmWatch(tmp_path) as watch:
        run = si_run(tmp_path, database=url)
        proc = steer(SLURM_SITE, run)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
        db = Database(url, create=False)
        try:
            with db.session() as s:
                remote = list(s.scalars(select(Task).where(Task.kind != TaskKind.embed).order_by(Task.id)))
                events = list(s.scalars(select(Event).order_by(Event.id)))
                labels = list(s.scalars(select(Label).where(Label.code == "espresso")))  # not the imported ones
                versions = {p.version: p.parent_version for p in s.scalars(select(Potential))}
                swapped = s.scalar(select(func.count()).select_from(Segment).where(Segment.potential_version == 2))
                triggered = s.scalar(select(func.count()).select_from(Segment).where(
                    Segment.status == SegmentStatus.triggered, Segment.potential_version == 1))
            once = _labels_per_structure(db)
        finally:
            db.dispose()
    # Healed: a trigger with v1, a pw.x label, v2 trained from v1, and MD with v2 after it.
    assert triggered and versions.get(2) == 1 and swapped, out[-3000:]
    assert labels and all(lb.status is LabelStatus.done for lb in labels)
    assert all(lb.parameters["command"][: len(launcher) + 1] == [*launcher, "pw.x"] for lb in labels)
    assert all(n == 1 for n in once.values())
    # From the database: where each task ran; from Slurm: those jobs' partitions and pw.x's step.
    where = {(t.kind, t.payload["ran"]["slurm_partition"], t.executor) for t in remote}
    assert where == {(TaskKind.md, "gpu", "gpu"), (TaskKind.train, "gpu", "gpu"), (TaskKind.dft, "cpu", "cpu")}
    for t in remote:
        job = t.payload["ran"]["slurm_job"]
        assert watch.jobs[job]["partition"] == scontrol_job(job)["Partition"] == t.payload["ran"]["slurm_partition"]
        assert watch.jobs[job]["name"].startswith(f"parsl.{t.executor}.block-")
    pw_steps = {step.partition(".")[0] for step, name in watch.steps.items() if name == "pw.x"}
    assert {t.payload["ran"]["slurm_job"] for t in remote if t.kind is TaskKind.dft} <= pw_steps, watch.steps
    # The database password is in no output, event, or file of the work directory (log, run
    # marker, resolved run file, batch scripts, Parsl's logs, ...).
    work = tmp_path / "work"
    assert "***@" in out and SECRET not in out and (work / "autopipe.log").is_file()
    assert not [p for p in work.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not [e for e in events if SECRET in e.message or SECRET in str(e.data)]
    # Measured: submit to first result, and the share of the loop's wall time spent waiting for blocks.
    start = utc_seconds(next(e.created_at for e in events if e.kind == "start"))
    stop = utc_seconds(next(e.created_at for e in events if e.kind == "stop"))
    first = remote[0]
    first_result = utc_seconds(first.finished_at) - utc_seconds(first.started_at)
    wait = scheduler_wait(remote, start, stop)
    print(f"\nslurm loop: {wait['walltime']:.0f} s; submit -> first result {first_result:.1f} s; waiting on the "
          f"scheduler with nothing running {100 * wait['share']:.0f}% of the wall time; tasks queued "
          f"{wait['queued']:.0f} s in all")
    assert first_result < 90 and wait["share"] < 0.6


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    t0 = time.monotonic()
    while not (found := predicate()):
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the loop ended first:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)
    return found


def test_blocks_cancelled_mid_segment_and_mid_label_are_retried_and_nothing_is_lost(slurm_cluster, tmp_path):
    """One long segment (its only gamma check after 30,000 steps, several seconds of MD) and one
    pw.x label; the gpu block is scancel'ed while LAMMPS runs the segment, the cpu block while
    pw.x runs. The run stops after its one DFT call."""
    steps = 30000
    run = si_run(tmp_path, md={"segment_steps": steps, "dump_every": 5000, "thermo_every": 5000},
                 otf={"check_frequency": steps}, stop={"max_md_steps": steps, "max_dft_calls": 1})
    work = tmp_path / "work"
    with SlurmWatch(tmp_path) as watch:
        proc = steer(SLURM_SITE, run)
        _wait_for(lambda: list((work / "walkers" / "w00" / "seg0000").glob("*.log")), 120, "LAMMPS did not start", proc)
        [md_job] = _wait_for(lambda: watch.running("gpu"), 30, "no gpu block", proc)
        subprocess.run(["scancel", md_job], check=True)
        t_md = time.time()
        _wait_for(lambda: list(work.glob("dft/s*/attempt-1/pw.out")), 300, "pw.x did not start", proc)
        [dft_job] = _wait_for(lambda: watch.running("cpu"), 30, "no cpu block", proc)
        subprocess.run(["scancel", dft_job], check=True)
        t_dft = time.time()
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "stopped: DFT budget of 1 calls used" in out, out[-4000:]
    db = Database(f"sqlite:///{work / 'autopipe.db'}", create=False)
    with db.session() as s:
        md = s.scalars(select(Task).where(Task.kind == TaskKind.md)).one()
        dft = s.scalars(select(Task).where(Task.kind == TaskKind.dft)).one()
        seg = s.scalars(select(Segment)).one()
        label = s.scalars(select(Label).where(Label.code == "espresso")).one()  # not the imported ones
        retried = list(s.scalars(select(Event).where(Event.kind == "retried")))
    # Each task ran twice inside Parsl (the loop saw it once), the second time on a new block.
    for task, cancelled, partition in ((md, md_job, "gpu"), (dft, dft_job, "cpu")):
        ran = task.payload["ran"]
        assert task.state is TaskState.done and task.attempts == 1
        assert ran["tries"] == 2 and "ManagerLost" in ran["lost"][0], ran
        assert ran["slurm_job"] != cancelled and scontrol_job(cancelled)["JobState"] == "CANCELLED"
        assert scontrol_job(ran["slurm_job"])["Partition"] == partition
    assert len(retried) == 2
    # Nothing lost or doubled: one segment, one label, pw.x's killed attempt run again from scratch.
    assert seg.status is SegmentStatus.triggered and seg.end_step == steps
    assert label.status is LabelStatus.done and label.structure_id == dft.structure_id
    assert [a["attempt"] for a in label.attempts] == [1] and not label.attempts[0].get("reused")
    lost = lost_worker_lines(work / "parsl")
    detect_md = min(t for t, _ in lost if t > t_md) - t_md
    detect_dft = min(t for t, _ in lost if t > t_dft) - t_dft
    recover_md = utc_seconds(md.finished_at) - t_md
    recover_dft = utc_seconds(dft.finished_at) - t_dft
    print(f"\nscancel in the loop: MD block lost detected after {detect_md:.1f} s, segment done on a new block "
          f"{recover_md:.1f} s after the scancel; DFT block: {detect_dft:.1f} s, label {recover_dft:.1f} s")
    # slurm-local.yaml: heartbeats every 2 s, lost after 6 s, squeue polled every 2 s.
    assert detect_md < 30 and detect_dft < 30
    assert recover_md < 120 and recover_dft < 120


def test_a_block_slurm_refuses_stops_the_loop_with_slurms_message(slurm_cluster, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(site_data(gpu={"constraint": "gpux"})))
    t0 = time.monotonic()
    proc = steer(site, si_run(tmp_path))
    out, _ = proc.communicate(timeout=300)
    elapsed = time.monotonic() - t0
    line = "Slurm refused the job of executor 'gpu': Batch job submission failed: Invalid feature specification"
    stopped = [ln for ln in out.splitlines() if ln.startswith("stopped:")]
    assert proc.returncode == 0 and stopped == [f"stopped: {line}"], out[-3000:]
    db = Database(f"sqlite:///{tmp_path / 'work' / 'autopipe.db'}", create=False)
    with db.session() as s:
        [event] = s.scalars(select(Event).where(Event.kind == "cannot_run")).all()
        md = s.scalars(select(Task).where(Task.kind == TaskKind.md)).one()
    assert event.message == line
    assert md.state is TaskState.pending  # kept for a restart with a site file Slurm accepts
    noticed = utc_seconds(event.created_at) - utc_seconds(md.started_at)
    print(f"\nrefused block: stopped {noticed:.1f} s after the first submission, {elapsed:.1f} s after "
          "autopipe-steer started")
    assert noticed < 60 and elapsed < 180
