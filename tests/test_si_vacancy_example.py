"""The Si-vacancy example: the committed user potential and dataset import cleanly, and the vacancy triggers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from autopipe.config import load_run
from autopipe.config.run import SystemConfig
from autopipe.generate import template_atoms
from autopipe.potentials.imported import check_training_data, validate_potential_file

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "configs/runs/si-vacancy.yaml"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples/si-vacancy" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_file_imports_the_users_potential_and_data():
    run = load_run(RUN)
    assert len(template_atoms(run.system)) == 63
    data = check_training_data(run)
    assert len(data.rows) >= 40 and {len(r.atoms) for r in data.rows} == {8, 16}  # crystal cells only
    assert data.reference_energies["Si"] == pytest.approx(-101.75, abs=0.01)  # the isolated pw.x atom
    assert validate_potential_file(run.initial_potential.path, ["Si"]).cutoff == run.train.cutoff
    out = subprocess.run([str(Path(sys.executable).parent / "autopipe"), "check", "--run", str(RUN)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "training data: " in out.stdout
    # The carving budget decides by measurement: check says so instead of applying the buffer rule.
    assert "embedding.strategy is 'budget'" in out.stdout + out.stderr
    assert "below the potential's cutoff" not in out.stdout + out.stderr


def test_the_vacancy_triggers_and_the_perfect_crystal_does_not_in_200_steps():
    run = load_run(RUN)
    g = _example("gamma_on_vacancy")
    init, thr = run.initial_potential, run.otf.uncertainty_threshold
    vacancy = template_atoms(run.system)
    perfect = template_atoms(SystemConfig(elements=["Si"], structure=run.system.structure.model_copy(
        update={"vacancies": 0})))
    site = g.vacancy_site(perfect, vacancy)
    trace = g.gamma_trace(vacancy, init.path, init.asi, run.md.temperature, 200, 10, seed=101)
    step, gmax, atom, frame = next(t for t in trace if t[1] > thr)
    assert step <= 100 and g.distance_to_site(frame, atom, site) < 3.0  # a neighbour of the vacancy
    quiet = g.gamma_trace(perfect, init.path, init.asi, run.md.temperature, 200, 10, seed=101)
    assert max(t[1] for t in quiet) < thr
