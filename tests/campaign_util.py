"""Example campaigns run small: a run file cut down to one walker and one retrain, through
``autopipe-steer`` as a user starts it (tests/test_si_campaign.py, tests/test_mgo_example.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from autopipe.config import load_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def reduced_run(run_file: Path, dest: Path, *, repeat: list[int], max_md_steps: int,
                edit: Callable[[dict], None] | None = None) -> Path:
    """``run_file`` with a ``repeat`` supercell, one walker, 50-step segments, one short retrain and
    ``max_md_steps``; ``edit`` changes the resolved data further. Written to ``dest`` (a directory)."""
    data = load_run(run_file).model_dump(mode="json", exclude={"workdir"})  # paths come out absolute
    data["system"]["structure"]["repeat"] = repeat
    data["md"]["segment_steps"] = 50
    data["walkers"] = {"count": 1}
    data["train"]["retrain_iterations"] = 20
    data["stop"] = {"max_md_steps": max_md_steps, "max_trainings": 1, "max_walltime": 600}
    if edit is not None:
        edit(data)
    path = dest / f"{Path(run_file).parent.name}-{Path(run_file).stem}-reduced.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def steer(run_path: Path, workdir: Path) -> str:
    """Run ``autopipe-steer`` on the local site to its end; its stdout, after asserting it succeeded."""
    out = subprocess.run(
        [str(BIN / "autopipe-steer"), "--site", str(ROOT / "configs/local.yaml"), "--run", str(run_path),
         "--workdir", str(workdir), "--no-live"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return out.stdout
