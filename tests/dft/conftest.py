"""Fixtures for the DFT factory tests: Si cells, pw.x settings, stand-in executables."""

from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from ase import Atoms
from ase.build import bulk

from autopipe.config.run import EspressoConfig

PSEUDO_DIR = Path("/usr/share/espresso/pseudo")
SI_UPF = "Si.pz-vbc.UPF"
HAVE_PWX = shutil.which("pw.x") is not None and (PSEUDO_DIR / SI_UPF).is_file()
needs_pwx = pytest.mark.skipif(not HAVE_PWX, reason="pw.x or Si.pz-vbc.UPF not installed")


def si_config(**changes) -> EspressoConfig:
    """Cheap but force-accurate pw.x settings for Si: 14 Ry, tight SCF, few k-points."""
    fields = dict(
        code="espresso",
        pseudopotentials={"Si": SI_UPF},
        pseudo_dir=PSEUDO_DIR,
        ecutwfc=14.0,
        kspacing=0.6,
        conv_thr=1e-10,
        timeout=120.0,
        max_attempts=3,
    )
    fields.update(changes)
    return EspressoConfig(**fields)


def si2(rattle: float = 0.05, seed: int = 3) -> Atoms:
    """Primitive diamond Si (2 atoms, a = 5.43 Å), rattled so that forces are non-zero."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(rattle, seed=seed)
    return atoms


def si8(rattle: float = 0.05, seed: int = 3) -> Atoms:
    """Conventional cubic diamond Si (8 atoms), rattled."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def stand_in(tmp_path: Path, name: str, body: str) -> list[str]:
    """A fake pw.x: a Python script at the run boundary; returns the ``command`` argv.

    The script runs in the attempt directory and receives ``-in pw.in`` like pw.x.
    """
    script = tmp_path / f"{name}.py"
    script.write_text("import os, sys, time, subprocess, pathlib\n" + textwrap.dedent(body))
    return [sys.executable, str(script)]


@dataclass
class SiRun:
    atoms: Atoms
    config: EspressoConfig
    result: object
    output: Path  # pw.out of the successful attempt


@pytest.fixture(scope="session")
def si2_run(tmp_path_factory) -> SiRun:
    """One real pw.x label of rattled Si2, shared: its pw.out is replayed by stand-ins."""
    if not HAVE_PWX:
        pytest.skip("pw.x or Si.pz-vbc.UPF not installed")
    from autopipe.dft import label

    workdir = tmp_path_factory.mktemp("si2")
    atoms, config = si2(), si_config()
    result = label(atoms, config, workdir=workdir)
    assert result.status == "done", result.error
    return SiRun(atoms, config, result, workdir / "attempt-1" / "pw.out")
