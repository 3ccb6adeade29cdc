"""pw.x wall time against atom count: fit t ∝ N^p for Si diamond cells of 8-64 atoms.

Cells: the 8-atom conventional diamond cell (a = 5.43 Å) repeated 1x1x1, 2x1x1, 2x2x1,
2x2x2, rattled by 0.02 Å so that no run profits from symmetry. Fixed settings:
Si.pz-vbc.UPF, ecutwfc 12 Ry (ecutrho 48), conv_thr 1e-6 Ry per cell, Gamma point only
(``K_POINTS gamma``).

Why the Gamma point and not a fixed k-point density: with a fixed density the number
of k-points falls as the cell grows (27 -> 8 -> ... for kspacing 0.5 1/Å, with jumps from
rounding), so the curve would mix the cost per k-point with a k-point count that
shrinks like 1/N. The Gamma point keeps the work per k-point the only variable: it
shows how one SCF scales with N (FFTs ~ N log N per band, orthogonalisation ~ N³).
``--kspacing`` measures the fixed-density case instead (what a label costs at constant
accuracy).

Each run goes through ``autopipe.dft.label`` (so it includes pw.x start-up) on one
core (``OMP_NUM_THREADS=1``, no MPI launcher). The time per SCF iteration is fitted
too, since the iteration count can change with size. One run per size, all in one
process; the load average is printed because the machine may be shared.

Run:  .venv/bin/python benchmarks/dft.py [--kspacing 0.5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys

import numpy as np
from ase import Atoms
from ase.build import bulk

from autopipe.config.run import EspressoConfig
from autopipe.dft import label

REPEATS = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]  # 8, 16, 32, 64 atoms


def cell(repeat: tuple[int, int, int]) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=0)
    return atoms


def fit_exponent(n: list[int], t: list[float]) -> tuple[float, float]:
    """Least-squares slope p and prefactor of log t = p log N + log c."""
    p, log_c = np.polyfit(np.log(n), np.log(t), 1)
    return float(p), float(math.exp(log_c))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kspacing", type=float, default=None, help="fixed k-point density (1/Å) instead of Gamma")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the fastest counts")
    args = parser.parse_args()
    if shutil.which("pw.x") is None:
        print("pw.x not found", file=sys.stderr)
        return 1
    os.environ["OMP_NUM_THREADS"] = "1"
    config = EspressoConfig(
        code="espresso",
        pseudopotentials={"Si": "Si.pz-vbc.UPF"},
        ecutwfc=12.0,
        conv_thr=1e-6,
        kspacing=args.kspacing or 0.5,
        # Every cell here is longer than 1 Å: Gamma alone unless a k-spacing was asked for.
        gamma_only_length=1000.0 if args.kspacing else 1.0,
        timeout=1800.0,
        max_attempts=1,
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}   ({os.cpu_count()} cores)")
    print(f"{'atoms':>6} {'k-points':>10} {'SCF it':>7} {'wall s':>9} {'s/iter':>8} {'E/atom eV':>11}")
    sizes, times, per_iter = [], [], []
    for repeat in REPEATS:
        atoms = cell(repeat)
        best = None
        for _ in range(args.repeat):
            result = label(atoms, config)
            if result.status != "done":
                print(f"{len(atoms)} atoms: {result.status}: {result.error}", file=sys.stderr)
                return 1
            if best is None or result.walltime < best.walltime:
                best = result
        iterations = best.attempts[-1].get("scf_iterations") or 1
        kpts = best.parameters["kpts"]
        label_k = "gamma" if kpts == "gamma" else "x".join(map(str, kpts))
        sizes.append(len(atoms))
        times.append(best.walltime)
        per_iter.append(best.walltime / iterations)
        print(f"{len(atoms):>6} {label_k:>10} {iterations:>7} {best.walltime:>9.2f} {per_iter[-1]:>8.3f} "
              f"{best.energy / len(atoms):>11.4f}", flush=True)
    p, c = fit_exponent(sizes, times)
    p_iter, _ = fit_exponent(sizes, per_iter)
    print(f"fit t = {c:.3g} s * N^p:  p = {p:.2f}   (per SCF iteration: p = {p_iter:.2f})")
    local = [math.log(times[i + 1] / times[i]) / math.log(sizes[i + 1] / sizes[i]) for i in range(len(sizes) - 1)]
    # One p hides curvature: start-up dominates small cells, N³ terms the large ones.
    print("local slopes: " + ", ".join(f"{a}->{b}: {q:.2f}" for a, b, q in zip(sizes, sizes[1:], local)))
    print(f"64/8 wall-time ratio: {times[-1] / times[0]:.1f}   load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
