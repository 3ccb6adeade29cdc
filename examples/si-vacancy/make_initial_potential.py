#!/usr/bin/env python
"""Fit a small silicon ACE potential on crystal configurations only, as a user would bring it.

What a materials scientist typically has before starting active learning: a pacemaker
potential fitted to DFT on the perfect crystal (rattled and strained cells), plus the
dataset it was fitted on. This script makes exactly that, with real pw.x labels:

1. diamond-Si cells of 8 and 16 atoms (a = 5.43 Å), rattled (0.05-0.15 Å, about the
   thermal displacements up to ~1500 K) and strained (up to 4 %) with
   :func:`autopipe.generate.generate_structures`; no defects, no liquid, no surfaces;
2. pw.x labels (Debian's ``Si.pz-vbc.UPF``, the settings of ``configs/runs/si-pwx.yaml``)
   and one isolated Si atom in a 10 Å box as the per-element reference energy;
3. ``training_data.pckl.gzip``: ``ase_atoms``, ``energy`` (total, eV), ``energy_corrected``
   (energy minus n × the isolated-atom energy), ``forces`` (eV/Å), the pacemaker convention;
4. a pacemaker fit (cutoff 5 Å, small basis) -> ``potential.yaml`` and its active set
   ``potential.asi``.

Usage (about 4 minutes on 2 cores):

    .venv/bin/python examples/si-vacancy/make_initial_potential.py [--out DIR] [--jobs 2]

``configs/runs/si-vacancy.yaml`` imports the result with ``initial_potential: kind: file``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
A_SI = 5.43  # Å, the lattice constant of the MD run
#: pw.x settings of configs/runs/si-pwx.yaml: ~4 s per 8-atom cell on one core.
PWX = dict(code="espresso", pseudopotentials={"Si": "Si.pz-vbc.UPF"}, ecutwfc=12.0, kspacing=0.6,
           gamma_only_length=9.5, smearing="mv", degauss=0.01, conv_thr=1e-6, mixing_beta=0.5,
           timeout=600, max_attempts=2)
#: (repeat of the 8-atom cubic cell, n_structures drawn, rattle Å, strain, seed); the randomly
#: packed quarter that generate_structures also draws is dropped: crystal configurations only.
FAMILIES = [
    ((1, 1, 1), 12, 0.05, 0.02, 11),
    ((1, 1, 1), 12, 0.10, 0.03, 12),
    ((1, 1, 1), 12, 0.15, 0.04, 13),
    ((2, 1, 1), 8, 0.10, 0.03, 14),
    ((2, 1, 1), 8, 0.15, 0.03, 15),
    ((2, 1, 1), 8, 0.20, 0.02, 16),
]
TRAIN = dict(cutoff=5.0, number_of_functions_per_element=30, ranks=[6, 4, 3], lmax=[0, 3, 2],
             max_iterations=300, kappa=0.3, seed=7, timeout=1800.0)


def crystal_structures():
    """Rattled and strained diamond-Si cells (ase.Atoms), no randomly packed ones."""
    from ase.build import bulk

    from autopipe.config.run import InitialPotentialGenerate
    from autopipe.generate import generate_structures

    out = []
    for repeat, n, rattle, strain, seed in FAMILIES:
        template = bulk("Si", "diamond", a=A_SI, cubic=True).repeat(repeat)
        cfg = InitialPotentialGenerate(kind="generate", n_structures=n, rattle=rattle, strain=strain, seed=seed)
        out += [a for a in generate_structures(["Si"], template, cfg) if a.info["generator"] != "packed"]
    return out


def label_all(structures, workdir: Path, jobs: int):
    """pw.x labels of every structure, ``jobs`` at a time; prints progress."""
    from autopipe.config.run import EspressoConfig
    from autopipe.dft import label

    cfg = EspressoConfig(**PWX)
    done = [0]
    t0 = time.time()

    def one(k_atoms):
        k, atoms = k_atoms
        r = label(atoms, cfg, workdir=workdir / f"s{k:03d}")
        done[0] += 1
        print(f"  [{done[0]:3d}/{len(structures)}] {len(atoms):2d} atoms: {r.status} in {r.walltime:5.1f} s"
              f"  ({time.time() - t0:5.0f} s so far)", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, enumerate(structures)))


def isolated_atom_energy(workdir: Path) -> float:
    """pw.x energy (eV) of one Si atom in a 10 Å cubic box (Gamma point, not spin-polarised)."""
    from ase import Atoms

    from autopipe.config.run import EspressoConfig
    from autopipe.dft import label

    r = label(Atoms("Si", positions=[[5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=True), EspressoConfig(**PWX),
              workdir=workdir / "isolated-atom")
    if r.status != "done":
        sys.exit(f"isolated-atom pw.x run failed: {r.error}")
    return float(r.energy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="where potential.yaml/.asi and training_data go")
    ap.add_argument("--jobs", type=int, default=2, help="pw.x runs at a time (one core each)")
    ap.add_argument("--keep", action="store_true", help="keep the pw.x and pacemaker work directories")
    args = ap.parse_args()

    import pandas as pd

    from autopipe.config.run import TrainConfig
    from autopipe.potentials.pacemaker import FITTING_DATA_INFO, compute_active_set, run_pacemaker

    t_start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="si-initial-", dir=args.out))
    try:
        structures = crystal_structures()
        print(f"{len(structures)} crystal cells ({sum(len(a) for a in structures)} atoms); labelling with pw.x "
              f"({args.jobs} at a time)", flush=True)
        e_atom = isolated_atom_energy(work)
        print(f"isolated Si atom: {e_atom:.4f} eV (the per-element reference energy)", flush=True)
        t_dft = time.time()
        results = label_all(structures, work / "pwx", args.jobs)
        dft_wall, dft_cpu = time.time() - t_dft, sum(r.walltime for r in results)
        ok = [(a, r) for a, r in zip(structures, results) if r.status == "done"]
        if len(ok) < len(structures):
            print(f"warning: {len(structures) - len(ok)} pw.x runs failed and are left out", flush=True)
        df = pd.DataFrame({
            "ase_atoms": [a for a, _ in ok],
            "energy": [r.energy for _, r in ok],
            "energy_corrected": [r.energy - len(a) * e_atom for a, r in ok],
            "forces": [np.asarray(r.forces) for _, r in ok],
        })
        data = args.out / "training_data.pckl.gzip"
        df.to_pickle(data, compression="gzip", protocol=4)
        epa = df.energy_corrected / df.ase_atoms.map(len)
        print(f"wrote {data} ({len(df)} structures; energy_corrected {epa.min():.3f} to {epa.max():.3f} eV/atom)",
              flush=True)

        print(f"fitting with pacemaker ({TRAIN['max_iterations']} iterations, cutoff {TRAIN['cutoff']} Å)", flush=True)
        tc = TrainConfig(**TRAIN)
        fit = run_pacemaker(work / "fit", tc, ["Si"], data)
        if not fit.ok:
            sys.exit(f"pacemaker failed: {fit.error}\n{fit.log_tail}")
        shutil.copyfile(fit.potential, args.out / "potential.yaml")
        asi = compute_active_set(args.out / "potential.yaml", [work / "fit" / FITTING_DATA_INFO]).path
        m = fit.metrics
        summary = {
            "structures": len(df), "atoms": int(sum(len(a) for a in df.ase_atoms)),
            "isolated_atom_energy_eV": e_atom,
            "pwx_wall_s": round(dft_wall, 1), "pwx_cpu_s": round(dft_cpu, 1),
            "fit_wall_s": round(fit.walltime, 1),
            "train_energy_rmse_meV_per_atom": round(1000 * m.get("train_energy_rmse", float("nan")), 2),
            "train_forces_rmse_meV_per_A": round(1000 * m.get("train_forces_rmse", float("nan")), 1),
            "iterations": m.get("iterations"), "total_wall_s": round(time.time() - t_start, 1),
            "train": TRAIN, "pwx": PWX,
        }
        (args.out / "fit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out / 'potential.yaml'} and {asi}")
        print(f"train RMSE: {summary['train_energy_rmse_meV_per_atom']} meV/atom, "
              f"{summary['train_forces_rmse_meV_per_A']} meV/Å; pw.x {dft_wall:.0f} s wall ({dft_cpu:.0f} s CPU), "
              f"fit {fit.walltime:.0f} s; total {time.time() - t_start:.0f} s")
    finally:
        if args.keep:
            print(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
