"""A Perlmutter-shaped site on a real Slurm cluster: jobs land in the right partitions with the
right constraint and GPUs, and pw.x runs as an ``srun`` step inside the CPU block."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, wait

import pytest

from autopipe.config import load_site
from autopipe.config.site import SlurmExecutor
from tests.dft.conftest import HAVE_PWX, si2, si_config
from tests.hpc.conftest import SLURM_SITE, parsl_on, scontrol_job, site_data

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_site_file_has_perlmutters_shape_and_builds_through_the_slurm_path(tmp_path):
    from autopipe.scheduler import PolledSlurmProvider

    site = load_site(SLURM_SITE)
    gpu, cpu = site.executor_for("md"), site.executor_for("dft")
    assert isinstance(gpu, SlurmExecutor) and isinstance(cpu, SlurmExecutor)
    assert site.executor_for("train") is gpu
    assert (gpu.constraint, gpu.gpus_per_node, cpu.constraint) == ("gpu", 4, "cpu")
    assert cpu.dft_launcher[0] == "srun"
    cfg = site.to_parsl_config(tmp_path / "parsl")
    assert cfg.retries == site.retries >= 1
    for ex in cfg.executors:
        assert isinstance(ex.provider, PolledSlurmProvider)
        assert ex.provider.status_polling_interval == 2
        assert ex.encrypted


def test_apps_run_in_gpu_and_cpu_jobs_and_pw_x_as_an_srun_step(slurm_cluster, tmp_path):
    from parsl import python_app

    site = load_site(SLURM_SITE)
    launcher = site.executor_for("dft").dft_launcher

    @python_app(executors=["gpu"])
    def on_gpu():
        import os

        return {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES")}

    @python_app(executors=["cpu"])
    def on_cpu(launcher, workdir):
        import os
        import subprocess

        step = subprocess.run([*launcher, "bash", "-c", "echo $SLURM_JOB_ID.$SLURM_STEP_ID"],
                              capture_output=True, text=True, check=True).stdout.strip()
        return {"job": os.environ["SLURM_JOB_ID"], "worker_step": os.environ.get("SLURM_STEP_ID"), "step": step}

    @python_app(executors=["cpu"])
    def pw_x(atoms, config, launcher, workdir):
        from autopipe.dft import label

        return label(atoms, config, workdir=workdir, launcher=launcher)

    t0 = time.monotonic()
    with parsl_on(site_data(), tmp_path / "parsl"):
        gpu_future, cpu_future = on_gpu(), on_cpu(launcher, str(tmp_path))
        wait([gpu_future, cpu_future], timeout=300, return_when=FIRST_COMPLETED)
        submit_to_first = time.monotonic() - t0
        gpu, cpu = gpu_future.result(), cpu_future.result()
        devices = {on_gpu().result(timeout=60)["CUDA_VISIBLE_DEVICES"] for _ in range(6)}
        label = pw_x(si2(), si_config(), launcher, str(tmp_path / "pw")).result(timeout=300) if HAVE_PWX else None
    print(f"\nslurm-local: parsl.load -> first result {submit_to_first:.1f} s")

    gpu_job, cpu_job = scontrol_job(gpu["SLURM_JOB_ID"]), scontrol_job(cpu["job"])
    assert gpu["SLURM_JOB_PARTITION"] == gpu_job["Partition"] == "gpu"
    assert gpu_job["Features"] == "gpu"
    assert gpu_job["TresPerNode"] == "gres:gpu:4"
    assert gpu_job["JobName"].startswith("parsl.gpu.block-")
    # One worker per GPU: each sees exactly one of the four devices.
    assert devices <= {"0", "1", "2", "3"} and gpu["CUDA_VISIBLE_DEVICES"] in {"0", "1", "2", "3"}
    assert cpu_job["Partition"] == "cpu" and cpu_job["Features"] == "cpu"
    assert cpu_job["JobName"].startswith("parsl.cpu.block-")
    # The worker runs in the batch script (no step); the launcher's command is a step of the same job.
    assert cpu["worker_step"] is None
    job, _, step = cpu["step"].partition(".")
    assert job == cpu["job"] and step.isdigit(), cpu["step"]
    if label is not None:
        assert label.status == "done", label.error
        assert label.parameters["command"][: len(launcher)] == launcher
        assert label.energy == pytest.approx(-215.4, abs=1.0)
