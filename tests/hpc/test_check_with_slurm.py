"""``autopipe check`` asks a reachable Slurm whether it would accept each executor's blocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hpc.conftest import site_data

pytestmark = pytest.mark.slurm
BIN = Path(sys.executable).parent


def _check(site: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return subprocess.run([str(BIN / "autopipe"), "check", "--site", str(path)], capture_output=True, text=True)


def test_check_accepts_the_test_site(slurm_cluster, tmp_path):
    out = _check(site_data(), tmp_path)
    assert out.returncode == 0, out.stderr
    assert "note: Slurm accepts the blocks of 'gpu', 'cpu' (sbatch --test-only; nothing was submitted)" in out.stdout


@pytest.mark.parametrize(
    "change, slurm_says",
    [
        ({"constraint": "gpu&bigmem"}, "Invalid feature specification"),
        ({"partition": "regular_ss11"}, "Invalid partition name specified"),
        ({"gpus_per_node": 8}, "Requested node configuration is not available"),
        ({"nodes_per_block": 4}, "More processors requested than permitted"),  # one node here
    ],
)
def test_check_rejects_blocks_slurm_would_refuse(slurm_cluster, tmp_path, change, slurm_says):
    out = _check(site_data(gpu=change), tmp_path)
    assert out.returncode == 2
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: executor 'gpu': Slurm would refuse its blocks: ") and slurm_says in line
    squeue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    assert "parsl" not in squeue  # nothing was submitted
