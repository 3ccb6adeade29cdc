"""The test Slurm cluster (scripts/slurm-test-server.sh), Parsl loaded on a site of it, and
what the loop tests need around it: a short silicon campaign (:func:`si_run`), a database of
their own on the PostgreSQL test server, a watch on ``squeue`` (jobs and steps), Parsl's
lost-worker lines and the scheduler-wait measure from the database's timestamps.

``make test`` starts the cluster and exports ``AUTOPIPE_TEST_SLURM=1`` and ``SLURM_CONF``; the
tests here are skipped only when that variable is unset (a plain ``pytest`` run), and fail when
it is set but the cluster does not answer.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SLURM_SITE = ROOT / "configs" / "slurm-local.yaml"


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    if not os.environ.get("AUTOPIPE_TEST_SLURM"):
        pytest.skip('needs the test Slurm cluster: eval "$(scripts/slurm-test-server.sh start)" (make test does)')
    from autopipe.scheduler import slurm_reachable

    if not slurm_reachable():
        pytest.fail(f"AUTOPIPE_TEST_SLURM is set but sinfo does not answer (SLURM_CONF={os.environ.get('SLURM_CONF')})")


def site_data(**executor_changes: dict[str, Any]) -> dict[str, Any]:
    """configs/slurm-local.yaml as a mapping, with per-executor field changes by label."""
    data = yaml.safe_load(SLURM_SITE.read_text())
    for ex in data["executors"]:
        ex.update(executor_changes.get(ex["label"], {}))
    return data


@contextlib.contextmanager
def parsl_on(site_mapping: dict[str, Any], run_dir: Path) -> Iterator[Any]:
    """Parsl loaded on the site (built by ``SiteConfig.to_parsl_config``); cleaned up after."""
    import parsl

    from autopipe.config.site import SiteConfig

    site = SiteConfig.model_validate(site_mapping)
    # Batch jobs inherit sbatch's environment: let the workers import apps defined in tests/.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved) if p)
    dfk = parsl.load(site.to_parsl_config(run_dir))
    try:
        yield dfk
    finally:
        dfk.cleanup()
        parsl.clear()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a mapping (jobs stay visible 10 min after they end: MinJobAge)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, check=True)
    fields: dict[str, str] = {}
    for token in out.stdout.split():
        key, _, value = token.partition("=")
        fields.setdefault(key, value)
    return fields


# ----------------------------------------------------------------------------- the loop on the cluster

EXAMPLE = ROOT / "examples" / "si-vacancy"


def si_run(tmp_path: Path, database: str | None = None, **changes: dict[str, Any]) -> Path:
    """A short silicon campaign for the cluster: a 7-atom diamond cell with a vacancy at 1800 K,
    the example's pw.x-fitted potential imported (no initial labels), real pw.x labels of the
    whole 7-atom frame (smaller than the carving box; about 5 s each on one core), retrains of
    a few iterations. Its gamma starts near 3 and crosses 4 within the first 200 steps.
    ``changes`` update sections of the run file."""
    run: dict[str, Any] = {
        "name": "si-slurm",
        "workdir": str(tmp_path / "work"),
        "system": {"elements": ["Si"], "structure": {"kind": "bulk", "crystal": "diamond", "a": 5.43,
                                                      "repeat": [1, 1, 1], "vacancies": 1, "rattle": 0.02, "seed": 1}},
        "initial_potential": {"kind": "file", "path": str(EXAMPLE / "potential.yaml"),
                              "asi": str(EXAMPLE / "potential.asi"),
                              "training_data": str(EXAMPLE / "training_data.pckl.gzip")},
        "md": {"ensemble": "nvt-langevin", "temperature": 1800.0, "segment_steps": 200, "seed": 99,
               "dump_every": 50, "thermo_every": 50},
        "otf": {"uncertainty_threshold": 4.0, "check_frequency": 10, "max_extractions": 1},
        "embedding": {"core_radius": 2.6, "buffer": 2.4, "min_distance": 1.5},
        "dft": {"code": "espresso", "pseudopotentials": {"Si": "Si.pz-vbc.UPF"}, "ecutwfc": 12.0, "kspacing": 0.6,
                "smearing": "mv", "degauss": 0.01, "conv_thr": 1.0e-6, "mixing_beta": 0.5, "timeout": 300,
                "max_attempts": 2},
        "train": {"cutoff": 5.0, "number_of_functions_per_element": 30, "ranks": [6, 4, 3], "lmax": [0, 3, 2],
                  "max_iterations": 50, "retrain_iterations": 5, "min_new_labels": 1},
        "walkers": {"count": 1},
        "stop": {"max_md_steps": 300, "max_trainings": 1, "max_walltime": 900},
    }
    if database:
        run["database"] = database
    for key, value in changes.items():
        run[key] = {**run.get(key, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def steer(site: Path, run: Path) -> subprocess.Popen:
    """``autopipe-steer`` as a user starts it (the batch jobs inherit this environment)."""
    import sys

    return subprocess.Popen([str(Path(sys.executable).parent / "autopipe-steer"), "--site", str(site),
                             "--run", str(run), "--no-live"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def fresh_postgres(password: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL server (other test runs may share the
    server); yields its URL with ``password`` in it (the server trusts loopback and ignores it)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = os.environ.get("AUTOPIPE_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("no PostgreSQL test server (make test starts one)")
    name = f"autopipe_hpc_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name, password=password).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class SlurmWatch:
    """What ``squeue`` shows of the jobs submitted from under ``root`` (the test's directory: the
    cluster may run other tests' jobs), polled in the background: each job's partition, name and
    first/last time seen running, and each job step's name (steps leave no record once they
    end: accounting is off)."""

    def __init__(self, root: Path, interval: float = 0.2):
        import threading

        self.root = str(root)
        self.interval = interval
        self.jobs: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, str] = {}  # "job.step" -> step name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="slurm-watch")

    def __enter__(self) -> "SlurmWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        import time

        while not self._stop.is_set():
            now = time.time()
            jobs = subprocess.run(["squeue", "-h", "-o", "%i|%P|%j|%T|%o"], capture_output=True, text=True).stdout
            for line in jobs.splitlines():
                job, partition, name, state, command = line.split("|")
                if not command.startswith(self.root):  # Parsl's submit script, in the run's directory
                    continue
                rec = self.jobs.setdefault(job, {"partition": partition, "name": name, "running": None, "last": None})
                if state == "RUNNING":
                    rec["running"] = rec["running"] or now
                    rec["last"] = now
            steps = subprocess.run(["squeue", "-h", "-s", "-o", "%i|%j"], capture_output=True, text=True).stdout
            for line in steps.splitlines():
                step, name = line.split("|")
                if step.partition(".")[0] in self.jobs:
                    self.steps[step] = name
            self._stop.wait(self.interval)

    def running(self, partition: str) -> list[str]:
        """Jobs of ``partition`` seen running lately (within a few polls)."""
        import time

        return [j for j, r in self.jobs.items() if r["partition"] == partition and r["last"]
                and time.time() - r["last"] < 5 * self.interval + 1]


def lost_worker_lines(run_dir: Path) -> list[tuple[float, str]]:
    """(epoch s, line) of Parsl's log lines saying a try failed because its worker or block was lost."""
    found = []
    for log in run_dir.rglob("parsl.log"):
        for line in log.read_text().splitlines():
            if "failed with exception of type" in line and ("ManagerLost" in line or "WorkerLost" in line):
                found.append((float(line.split()[0]), line))
    return sorted(found)


def utc_seconds(stamp) -> float:
    """Epoch seconds of a naive UTC ``datetime`` (the database's) or an ISO string with a zone."""
    import datetime as dt

    if isinstance(stamp, str):
        return dt.datetime.fromisoformat(stamp).timestamp()
    return stamp.replace(tzinfo=dt.timezone.utc).timestamp()


def scheduler_wait(tasks: list, start: float, stop: float) -> dict[str, float]:
    """From the tasks' database timestamps: ``share``, the fraction of the loop's wall time
    (``start``..``stop``, epoch s) during which work was submitted but nothing ran on any worker
    (every submitted task waited for a block); ``queued``, the summed time tasks spent between
    submission and their worker starting them (s). Tasks need ``started_at`` and ``payload["ran"]``."""
    waiting, running = [], []
    for t in tasks:
        ran = (t.payload or {}).get("ran")
        if t.started_at is None or not ran:
            continue
        submitted, began, ended = utc_seconds(t.started_at), utc_seconds(ran["started"]), utc_seconds(ran["finished"])
        waiting.append((submitted, max(began, submitted)))
        running.append((began, ended))

    def union(intervals):
        merged: list[list[float]] = []
        for a, b in sorted(intervals):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return merged

    busy = union(running)
    idle_wait = 0.0
    for a, b in union(waiting):  # the parts of each waiting stretch with no worker busy
        covered = sum(max(0.0, min(b, d) - max(a, c)) for c, d in busy)
        idle_wait += (b - a) - covered
    return {"share": idle_wait / (stop - start), "queued": sum(b - a for a, b in waiting), "walltime": stop - start}
