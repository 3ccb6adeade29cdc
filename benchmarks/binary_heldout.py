"""Fresh-seed held-out force error of a finished multi-element run: version 1 against the newest.

Two sets of frames, both from starts (structure seed: alloy species and vacancy sites; velocity
seed) that the loop never used (:func:`autopipe.heldout.fresh_starts`):

1. the labeller's own dynamics: Langevin MD with the run's oracle (ASE's EMT for
   configs/runs/cuni-heal.yaml) at ``md.temperature`` from each fresh start, one frame every
   ``--every`` steps. These frames do not depend on the potentials under test.
2. ``autopipe replay``'s fresh trajectories (:func:`autopipe.replay.compare_fresh`): each
   potential's own MD from the same starts, its closest-contact frames labelled by the oracle.

Prints the force RMSE (meV/Å, per component) of v1 and the newest served version on each set,
over all atoms and per element, and the trigger counts of set 2::

    nice -n 19 .venv/bin/python benchmarks/binary_heldout.py --workdir runs/cuni-heal

Measured once (a full run of cuni-heal.yaml, converged at v4 after 3 retrains; 3 fresh seeds,
400 steps; a loaded machine, niced: 67 s of CPU, 44 min of wall time), force RMSE in meV/Å:
labeller's own MD v1 253 (Ni 237, Cu 258) -> v4 118 (Ni 158, Cu 102); closest contacts of the
potentials' own MD v1 232 -> v4 111 (2.1x); v1 triggered on 3 of 3 fresh starts (mean 17 steps),
v4 on 1 of 3 (mean 367 of 400 steps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rms_per_element(numbers: np.ndarray, errors: np.ndarray) -> dict[str, float]:
    """Force RMSE (eV/Å, per component) over all atoms (key ``all``) and per element symbol."""
    from ase.data import chemical_symbols

    out = {"all": float(np.sqrt(np.mean(errors ** 2)))}
    for z in sorted(set(numbers.tolist())):
        out[chemical_symbols[z]] = float(np.sqrt(np.mean(errors[numbers == z] ** 2)))
    return out


def labeller_md_frames(run, starts, n_steps: int, every: int):
    """``[(atoms, oracle forces)]``: frames of the oracle's own Langevin MD from each start."""
    from ase import units
    from ase.md.langevin import Langevin

    from autopipe.dft.oracles import calculator_for
    from autopipe.heldout import fresh_initial_state

    out = []
    for start in starts:
        atoms = fresh_initial_state(run, start).atoms.copy()
        atoms.calc = calculator_for(run.dft)[0]
        dyn = Langevin(atoms, timestep=run.md.timestep * units.fs, temperature_K=run.md.temperature,
                       friction=1.0 / (run.md.thermostat_damping * units.fs), rng=np.random.default_rng(start.seed))
        for _ in range(n_steps // every):
            dyn.run(every)
            snap = atoms.copy()
            snap.calc = None
            out.append((snap, atoms.get_forces().copy()))
    return out


def score(pots, frames) -> dict[int, dict[str, float]]:
    """``{version: rms_per_element}`` of each potential on the pooled frames."""
    from autopipe.heldout import force_errors

    numbers = np.concatenate([a.numbers for a, _ in frames])
    return {p.version: rms_per_element(numbers, np.concatenate([force_errors(p, a, f) for a, f in frames]))
            for p in pots}


def table(title: str, scores: dict[int, dict[str, float]], n_frames: int) -> list[str]:
    keys = list(next(iter(scores.values())))
    lines = [f"{title} ({n_frames} frames)", "  version " + "".join(f"{k:>12}" for k in keys)]
    lines += [f"  v{v:<7d}" + "".join(f"{1000 * s[k]:>12.1f}" for k in keys) for v, s in scores.items()]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="work directory of a finished run")
    ap.add_argument("--seeds", type=int, default=3, help="fresh starts (default 3)")
    ap.add_argument("--steps", type=int, default=400, help="MD steps per fresh start (default 400)")
    ap.add_argument("--every", type=int, default=40, help="steps between the labeller's frames (default 40)")
    args = ap.parse_args()

    from autopipe.config.run import load_resolved_run
    from autopipe.db import Database
    from autopipe.heldout import DEFAULT_SEED_BASE, fresh_starts, read_labelled_frames, run_seeds
    from autopipe.layout import RunLayout
    from autopipe.potentials import PotentialStore
    from autopipe.replay import compare_fresh

    run = load_resolved_run(args.workdir)
    store = PotentialStore(Database.for_run(args.workdir), RunLayout(args.workdir).potentials)
    newest = store.latest()
    pots = [store.get(store.versions()[0]), newest]
    starts = fresh_starts(run, args.seeds, DEFAULT_SEED_BASE)
    print(f"run {run.name}: {', '.join(run.system.elements)}, labeller {run.dft.code}; fresh seeds "
          f"{[s.seed for s in starts]} (the run used {sorted(run_seeds(run))})")
    own = labeller_md_frames(run, starts, args.steps, args.every)
    print("\n".join(table(f"force RMSE (meV/Å) on the labeller's own MD at {run.md.temperature:g} K, "
                          f"{args.steps} steps per start, one frame every {args.every}", score(pots, own), len(own))))
    fresh = compare_fresh(args.workdir, pots[0].version, newest.version, n_seeds=args.seeds, n_steps=args.steps)
    contact = read_labelled_frames(RunLayout(args.workdir).fresh_frames)
    if contact:
        print("\n".join(table("force RMSE (meV/Å) on the closest contacts of each potential's own fresh MD",
                              score(pots, contact), len(contact))))
    print("\n".join(fresh.describe()))


if __name__ == "__main__":
    main()
