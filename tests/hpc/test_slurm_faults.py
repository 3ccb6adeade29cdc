"""Faults at the Parsl level on a real Slurm cluster: a block cancelled or out of walltime while
a task runs (the task runs again on a new block within seconds), and sbatch refusing a block
(Slurm's own message, one line, instead of waiting forever)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.hpc.conftest import lost_worker_lines, parsl_on, scontrol_job, site_data

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _hold_first_try(executor: str):
    """An app that records its Slurm job in ``marker`` and, on its first try only, sleeps long."""
    from parsl import python_app

    @python_app(executors=[executor])
    def hold(marker: str, seconds: float) -> str:
        import os
        import pathlib
        import time

        path = pathlib.Path(marker)
        first = not path.exists()
        path.write_text(os.environ["SLURM_JOB_ID"])
        if first:
            time.sleep(seconds)
        return os.environ["SLURM_JOB_ID"]

    return hold


def _wait_for(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.parametrize("executor", ["cpu", "gpu"])
def test_scancel_of_a_busy_block_reruns_the_task_on_a_new_block(slurm_cluster, tmp_path, executor):
    marker, run_dir = tmp_path / "marker", tmp_path / "parsl"
    with parsl_on(site_data(), run_dir):
        future = _hold_first_try(executor)(str(marker), 600)
        _wait_for(marker.exists, 120, "the task did not start")
        first_job = marker.read_text()
        t0 = time.monotonic()
        subprocess.run(["scancel", first_job], check=True)
        detected = _wait_for(lambda: future.task_record["fail_count"] >= 1, 60, "Parsl did not notice the lost block")
        second_job = future.result(timeout=120)
        recovered = time.monotonic() - t0
    print(f"\nscancel ({executor}): detected after {detected:.1f} s, result from a new block after {recovered:.1f} s")
    assert second_job != first_job
    assert scontrol_job(first_job)["JobState"] == "CANCELLED"
    assert scontrol_job(second_job)["Partition"] == executor
    assert lost_worker_lines(run_dir), "the retry was not caused by a lost worker"
    # Parsl's defaults (60 s squeue polls, 120 s heartbeat threshold) take minutes here.
    assert detected < 30 and recovered < 60


def test_block_walltime_ending_mid_task_reruns_the_task(slurm_cluster, tmp_path):
    marker, run_dir = tmp_path / "marker", tmp_path / "parsl"
    with parsl_on(site_data(cpu={"walltime": "00:01:00"}), run_dir):
        future = _hold_first_try("cpu")(str(marker), 600)
        _wait_for(marker.exists, 120, "the task did not start")
        first_job = marker.read_text()
        t0 = time.monotonic()
        _wait_for(lambda: future.task_record["fail_count"] >= 1, 180, "Parsl did not notice the timed-out block")
        second_job = future.result(timeout=120)
        elapsed = time.monotonic() - t0
    print(f"\nwalltime 1 min: result from a new block {elapsed:.1f} s after the task started")
    assert second_job != first_job
    assert scontrol_job(first_job)["JobState"] == "TIMEOUT"
    assert lost_worker_lines(run_dir)


@pytest.mark.parametrize(
    "change, slurm_says",
    [
        ({"constraint": "cpux"}, "Batch job submission failed: Invalid feature specification"),
        ({"constraint": None}, "Job request does not match any supported policy"),  # the site's job_submit.lua
        ({"walltime": "72:00:00"}, "Requested time limit is invalid"),  # over the partitions' 2-day MaxTime
    ],
)
def test_sbatch_refusal_fails_the_task_with_slurms_message(slurm_cluster, tmp_path, change, slurm_says):
    from parsl import python_app

    from autopipe.scheduler import refusal_from_exception, scheduler_refusal

    @python_app(executors=["cpu"])
    def one() -> int:
        return 1

    t0 = time.monotonic()
    with parsl_on(site_data(cpu=change), tmp_path / "parsl") as dfk:
        with pytest.raises(Exception) as failed:
            one().result(timeout=60)
        surfaced = time.monotonic() - t0
        line = scheduler_refusal(dfk)
    print(f"\nsbatch refusal surfaced {surfaced:.1f} s after parsl.load: {line}")
    assert type(failed.value).__name__ == "BadStateException"
    assert slurm_says in refusal_from_exception(failed.value)
    assert line.startswith("Slurm refused the job of executor 'cpu': ") and slurm_says in line
    assert "\n" not in line and "Unspecified error" not in line
