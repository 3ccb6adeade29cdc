#!/usr/bin/env python
"""Fit a small MgO ACE potential on perfect-crystal cells only, as a user would bring it.

The starting point of ``run.yaml``: a pacemaker potential fitted to pw.x
on rattled and strained rocksalt MgO (no vacancy, no surface), and the dataset it was fitted on.

1. rocksalt MgO cells of 8 and 16 atoms (a = 4.21 Å, the LDA lattice constant of these
   pseudopotentials), each atom displaced with a Gaussian of 0.05-0.15 Å (thermal
   displacements up to ~2000 K) and the cell strained by up to 3 %; species stay on their sites;
2. pw.x labels with the run file's settings (``Mg.pz-n-vbc.UPF``, ``O.pz-van_ak.UPF``,
   25 Ry) and one isolated atom of each element in a 10 Å box: the per-element reference
   energies, which go into the run file (``train.reference_energies``) because a dataset of
   stoichiometric cells cannot separate the Mg reference from the O one;
3. ``training_data.pckl.gzip`` with ``ase_atoms``, ``energy_corrected`` (energy minus the
   isolated-atom energies, eV) and ``forces`` (eV/Å), pacemaker's convention;
4. a pacemaker fit (cutoff 5 Å, small basis) -> ``potential.yaml`` and its active set ``potential.asi``.

Usage (27 pw.x runs of about 11 s (8 atoms) and 45 s (16 atoms) on one shared core, then pacemaker):

    .venv/bin/python examples/mgo-vacancy/make_initial_potential.py [--out DIR] [--jobs 1] [--work DIR]
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
import yaml

HERE = Path(__file__).resolve().parent
RUN = HERE / "run.yaml"
A_MGO = 4.21  # Å
#: (repeat of the 8-atom cubic cell, structures, rattle Å, largest strain, seed)
FAMILIES = [((1, 1, 1), 8, 0.05, 0.02, 21), ((1, 1, 1), 8, 0.10, 0.03, 22), ((1, 1, 1), 8, 0.15, 0.03, 23),
            ((2, 1, 1), 3, 0.10, 0.02, 24)]
TRAIN = dict(cutoff=5.0, number_of_functions_per_element=30, ranks=[6, 4, 3], lmax=[0, 3, 2],
             max_iterations=150, kappa=0.3, seed=7, timeout=3600.0)


def crystal_cells() -> list:
    """Rattled and strained rocksalt MgO cells (ase.Atoms); every atom keeps its species."""
    from ase.build import bulk

    cells = []
    for repeat, n, rattle, strain, seed in FAMILIES:
        rng = np.random.default_rng(seed)
        for _ in range(n):
            atoms = bulk("MgO", "rocksalt", a=A_MGO, cubic=True).repeat(repeat)
            eps = rng.uniform(-strain, strain, (3, 3))
            atoms.set_cell(atoms.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
            atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
            cells.append(atoms)
    return cells


def pwx_config():
    """The run file's pw.x settings (one place for them: run.yaml)."""
    from autopipe.config.run import EspressoConfig

    return EspressoConfig(**yaml.safe_load(RUN.read_text())["dft"])


def fit_and_write(cells, results, refs: dict[str, float], out: Path, work: Path, *, dft_wall: float,
                  t_start: float) -> dict:
    """Write the dataset (``energy_corrected`` against ``refs``, eV), fit pacemaker, write the potential,
    its active set and ``fit_summary.json`` into ``out``; ``results`` are the cells' pw.x labels."""
    import pandas as pd

    from autopipe.config.run import TrainConfig
    from autopipe.potentials.pacemaker import FITTING_DATA_INFO, compute_active_set, run_pacemaker

    ok = [(a, r) for a, r in zip(cells, results) if r.status == "done"]
    df = pd.DataFrame({
        "ase_atoms": [a for a, _ in ok],
        "energy_corrected": [r.energy - sum(refs[s] for s in a.get_chemical_symbols()) for a, r in ok],
        "forces": [np.asarray(r.forces) for _, r in ok],
    })
    data = out / "training_data.pckl.gzip"
    df.to_pickle(data, compression="gzip", protocol=4)
    fit = run_pacemaker(work / "fit", TrainConfig(**TRAIN, reference_energies=refs), ["Mg", "O"], data)
    if not fit.ok:
        sys.exit(f"pacemaker failed: {fit.error}\n{fit.log_tail}")
    shutil.copyfile(fit.potential, out / "potential.yaml")
    compute_active_set(out / "potential.yaml", [work / "fit" / FITTING_DATA_INFO])
    m = fit.metrics
    summary = {
        "structures": len(df), "atoms": int(sum(len(a) for a in df.ase_atoms)), "failed": len(cells) - len(ok),
        "isolated_atom_energies_eV": refs, "pwx_wall_s": round(dft_wall, 1),
        "pwx_cpu_s": round(sum(r.walltime for r in results), 1), "fit_wall_s": round(fit.walltime, 1),
        "train_energy_rmse_meV_per_atom": round(1000 * m.get("train_energy_rmse", float("nan")), 2),
        "train_forces_rmse_meV_per_A": round(1000 * m.get("train_forces_rmse", float("nan")), 1),
        "force_rms_in_data_eV_per_A": round(float(np.sqrt(np.mean(np.concatenate(df.forces.to_list()) ** 2) * 3)), 3),
        "total_wall_s": round(time.time() - t_start, 1), "train": TRAIN,
    }
    (out / "fit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="where potential.yaml/.asi and training_data go")
    ap.add_argument("--jobs", type=int, default=1, help="pw.x runs at a time (one core each)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the pw.x and pacemaker files here: a rerun reads every pw.x run that finished "
                         "instead of running it again (default: a temporary directory, removed)")
    args = ap.parse_args()

    from ase import Atoms

    from autopipe.dft import label

    t_start = time.time()
    cfg = pwx_config()
    work = args.work or Path(tempfile.mkdtemp(prefix="mgo-initial-", dir=args.out))
    try:
        refs = {}
        for el in ("Mg", "O"):
            r = label(Atoms(el, positions=[[5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=True), cfg, workdir=work / f"atom-{el}")
            if r.status != "done":
                sys.exit(f"isolated {el} atom: pw.x failed: {r.error}")
            refs[el] = float(r.energy)
        print(f"isolated atoms (eV): {refs}", flush=True)
        cells = crystal_cells()
        t_dft = time.time()

        def one(k_atoms):
            k, atoms = k_atoms
            r = label(atoms, cfg, workdir=work / f"s{k:03d}")
            print(f"  [{k + 1:2d}/{len(cells)}] {len(atoms):2d} atoms: {r.status} in {r.walltime:5.1f} s", flush=True)
            return r

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(one, enumerate(cells)))
        fit_and_write(cells, results, refs, args.out, work, dft_wall=time.time() - t_dft, t_start=t_start)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
