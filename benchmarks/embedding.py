"""Time ``extract_periodic_subsystem`` on large parents.

For 10^4, 10^5 and 10^6 atoms (a jittered simple-cubic "liquid" at ~2.7 Å
spacing, cubic and triclinic cells) print the median wall time of one
extraction and its ratio to a plain ``np.linalg.norm(positions -
positions[c], axis=1)`` over the same parent, measured in the same run.  The
ratio says how many "passes over the parent" an extraction costs and is less
machine-dependent than the absolute time.

Run:  .venv/bin/python benchmarks/embedding.py
"""

from __future__ import annotations

import time

import numpy as np
from ase import Atoms

from autopipe.embedding import extract_periodic_subsystem

CUTOFF = 6.0  # Å
BUFFER = 6.0  # Å  -> L = 24 Å, ~700 atoms in the sub-cell
SPACING = 2.7  # Å
REPEATS = 7


def make_parent(n_side: int, triclinic: bool, seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    grid = np.stack(
        np.meshgrid(*(np.arange(n_side),) * 3, indexing="ij"), axis=-1
    ).reshape(-1, 3).astype(float)
    frac = (grid + rng.uniform(-0.15, 0.15, grid.shape)) / n_side
    side = n_side * SPACING
    cell = np.diag([side, side, side])
    if triclinic:
        cell[1, 0] = 0.2 * side
        cell[2, 0] = -0.15 * side
        cell[2, 1] = 0.1 * side
    return Atoms(numbers=np.full(len(grid), 18), scaled_positions=frac % 1.0,
                 cell=cell, pbc=True)


def median_time(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    print(f"cutoff={CUTOFF} Å buffer={BUFFER} Å (L={2 * (CUTOFF + BUFFER)} Å), "
          f"median of {REPEATS} runs")
    print(f"{'parent':>10} {'cell':>10} {'sub atoms':>9} {'extract [ms]':>12} "
          f"{'norm [ms]':>10} {'ratio':>7}")
    for n_side in (22, 46, 100):  # 10_648, 97_336, 1_000_000 atoms
        for triclinic in (False, True):
            atoms = make_parent(n_side, triclinic)
            pos = atoms.positions
            c = len(atoms) // 2 + n_side // 2
            sub, _ = extract_periodic_subsystem(atoms, c, CUTOFF, BUFFER)
            t_ext = median_time(lambda: extract_periodic_subsystem(atoms, c, CUTOFF, BUFFER))
            t_norm = median_time(lambda: np.linalg.norm(pos - pos[c], axis=1))
            kind = "triclinic" if triclinic else "cubic"
            print(f"{len(atoms):>10} {kind:>10} {len(sub):>9} {1e3 * t_ext:>12.2f} "
                  f"{1e3 * t_norm:>10.2f} {t_ext / t_norm:>7.1f}")


if __name__ == "__main__":
    main()
