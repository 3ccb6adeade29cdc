#!/usr/bin/env python
"""Does the imported potential notice the vacancy? Max gamma along short MD runs, with and without it.

Runs Langevin MD (ASE, the potential through pyace with its active set) at the run file's
temperature on the run's starting structure (63 atoms, one vacancy) and on the perfect
64-atom crystal, and prints the largest per-atom extrapolation grade every
``otf.check_frequency`` steps and the first step above ``otf.uncertainty_threshold``.
Writes the first vacancy frame above the threshold on a vacancy neighbour (with its per-atom ``gamma``) as
``trigger-frame.extxyz``: ``autopipe buffer-scan --structure trigger-frame.extxyz --run ...``
measures the buffer pw.x needs around it.

    .venv/bin/python examples/si-vacancy/gamma_on_vacancy.py [--run configs/runs/si-vacancy.yaml] [--steps 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def gamma_trace(atoms, yaml: Path, asi: Path, temperature: float, steps: int, every: int, seed: int):
    """[(step, max gamma, most uncertain atom, frame copy)] of a Langevin run (1 fs steps)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from pyace import PyACECalculator

    calc = PyACECalculator(str(yaml))
    calc.set_active_set(str(asi))
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    md = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                  rng=np.random.default_rng(seed + 1))
    out = []
    for step in range(0, steps + 1, every):
        if step:
            md.run(every)
        atoms.get_forces()
        g = np.asarray(calc.results["gamma"])
        frame = atoms.copy()
        frame.calc = None
        frame.arrays["gamma"] = g.copy()
        out.append((step, float(g.max()), int(g.argmax()), frame))
    return out


def distance_to_site(atoms, index: int, site: np.ndarray) -> float:
    """Minimum-image distance (Å) of atom ``index`` from the point ``site``."""
    from ase.geometry import find_mic

    d, _ = find_mic(atoms.positions[index] - site, atoms.cell, atoms.pbc)
    return float(np.linalg.norm(d))


def vacancy_site(perfect, with_vacancy) -> np.ndarray:
    """The lattice site of ``perfect`` farthest from every atom of ``with_vacancy`` (Å)."""
    far = [min(distance_to_site(with_vacancy, j, p) for j in range(len(with_vacancy))) for p in perfect.positions]
    return perfect.positions[int(np.argmax(far))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "configs/runs/si-vacancy.yaml")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=3, help="MD seeds per structure")
    args = ap.parse_args()

    from autopipe.config import load_run
    from autopipe.config.run import SystemConfig
    from autopipe.generate import template_atoms

    run = load_run(args.run)
    init = run.initial_potential
    thr, every, temp = run.otf.uncertainty_threshold, run.otf.check_frequency, run.md.temperature
    with_vacancy = template_atoms(run.system)
    perfect = template_atoms(SystemConfig(elements=run.system.elements, structure=run.system.structure.model_copy(
        update={"vacancies": 0})))
    site = vacancy_site(perfect, with_vacancy)
    print(f"threshold {thr:g}, {temp:g} K, {args.steps} steps, gamma every {every} steps; nearest-neighbour "
          "distance 2.35 Å")
    first_trigger = None
    for name, atoms in (("vacancy (%d atoms)" % len(with_vacancy), with_vacancy),
                        ("perfect (%d atoms)" % len(perfect), perfect)):
        for seed in range(args.seeds):
            trace = gamma_trace(atoms, init.path, init.asi, temp, args.steps, every, seed=100 + seed)
            above = [t for t in trace if t[1] > thr]
            gmax = max(t[1] for t in trace)
            print(f"{name:18s} seed {seed}: gamma at step 0 {trace[0][1]:.2f}, max {gmax:.2f}; "
                  + (f"first above {thr:g} at step {above[0][0]} (gamma {above[0][1]:.2f}, atom {above[0][2]}"
                     + (f", {distance_to_site(above[0][3], above[0][2], site):.2f} Å from the vacancy)"
                        if "vacancy" in name else ")") if above else f"never above {thr:g}"))
            # Keep a trigger on a vacancy neighbour (within 3 Å of the empty site) for buffer-scan.
            if above and first_trigger is None and "vacancy" in name \
                    and distance_to_site(above[0][3], above[0][2], site) < 3.0:
                first_trigger = above[0][3]
    if first_trigger is not None:
        path = Path.cwd() / "trigger-frame.extxyz"
        first_trigger.write(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
