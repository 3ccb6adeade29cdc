"""The test Slurm cluster (scripts/slurm-test-server.sh) and Parsl loaded on a site of it.

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
