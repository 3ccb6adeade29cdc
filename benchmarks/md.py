"""MD segment throughput: the callback route (LAMMPS + pyace through fix external), the
native route (LAMMPS's own ML-PACE, one MPI rank and two), and ASE.

System: LJ-argon-like liquid with the test suite's trained ACE potential (element Ar,
cutoff 5 Å, ~40 functions; ``tests/.cache``, trained on first use). A 256-atom fcc cell
(a = 3.4 Å) is melted with a Langevin thermostat at 1200 K, then repeated to 1024, 4096
and 16384 atoms with fresh 900 K velocities.

Per size, all in one process and one run:

* ``callback``: ``run_segment(route="external")`` NVE, 2 fs, gamma checked every 10 steps
  (threshold out of reach, so the run never stops); ``cb-unmon``: the same with
  ``check_frequency`` = 10⁹ (only the start is checked);
* ``native``: ``run_segment(route="native")`` in this process (one rank), gamma every 10
  steps; ``nat-unmon``: the same without checks; ``native x2``: the same under
  ``mpirun -np 2`` (``launcher``);
* ``pyace limit``: one ``PyACECalculator.calculate`` on the same atoms (active set loaded):
  pyace's own cost of one force evaluation, i.e. the best one step could cost through it;
  ``kernel`` is the bare C++ ``ACECalculator.compute`` on a prebuilt neighbour environment;
* ``ASE``: ``VelocityVerlet`` with ``PyACECalculator`` (active set loaded: gamma every step),
  what a user would write instead.

Steps per second of the segments count only LAMMPS's ``run`` (the callback route's
``timings["run"]``, the native route's LAMMPS loop time); ``end-to-end`` includes LAMMPS
start-up, input files, the first neighbour list and the checkpoint. Goals: callback/limit
≥ 0.8, callback/ASE ≥ 1.5; native/callback ≥ 2 from 1k atoms on; checks every 10 steps
cost < 10 % (nat-unmon/native ≤ 1.1); native x2 / native ≥ 1.6 at 16k atoms.

Memory: a longer monitored 256-atom segment with the resident set size (VmRSS) sampled
by a thread while it runs; a leak per step would show as growth between the samples.
Then RSS after each of several consecutive segments (a leak per segment).

Run:  .venv/bin/python benchmarks/md.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autopipe.config.run import MDConfig, OTFConfig  # noqa: E402
from autopipe.md import MDState, initial_state, run_segment  # noqa: E402


@dataclass(frozen=True)
class Pot:
    version: int
    yaml: Path
    yace: Path | None
    asi: Path | None


def potential() -> Pot:
    from tests.lj import build_lj_recipe, cached_potential, lj_recipe

    recipe = lj_recipe(3)
    p = cached_potential(ROOT / "tests" / ".cache", recipe["name"], recipe, lambda d: build_lj_recipe(d, recipe))
    return Pot(1, Path(p.yaml), p.yace, Path(p.asi))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def liquid(pot: Pot, workdir: Path) -> MDState:
    """A melted 256-atom LJ-argon cell (Langevin, 1200 K, 2 ps)."""
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=3.4, cubic=True).repeat((4, 4, 4))
    md = MDConfig(ensemble="nvt-langevin", temperature=1200.0, timestep=2.0, thermostat_damping=100.0,
                  segment_steps=1000, thermo_every=100, dump_every=1000, seed=3)
    res = run_segment(initial_state(atoms, md), pot, md, OTFConfig(uncertainty_threshold=1e9, check_frequency=100),
                      workdir=workdir)
    if res.status != "completed":
        raise SystemExit(f"melting failed: {res.error}")
    return res.final_state


def segment_rate(state: MDState, pot: Pot, steps: int, check_frequency: int, workdir: Path,
                 route: str = "external", launcher: list[str] | None = None):
    md = MDConfig(ensemble="nve", temperature=900.0, timestep=2.0, segment_steps=steps, thermo_every=max(steps, 1),
                  dump_every=10**6, seed=1)
    otf = OTFConfig(uncertainty_threshold=1e9, check_frequency=check_frequency)
    res = run_segment(state, pot, md, otf, workdir=workdir, route=route, launcher=launcher)
    if res.status != "completed":
        raise SystemExit(f"segment failed ({route}, {launcher}): {res.error}")
    return steps / res.timings["run"], steps / res.walltime, res


def cpu_use(res) -> str:
    """LAMMPS's own "% CPU use" of a native segment's main run: below 100 % a rank waited for a core."""
    import re

    runs, steps = [], 0
    for line in res.trajectory.with_suffix(".log").read_text().splitlines():
        if m := re.match(r"Loop time of \S+ on \d+ procs for (\d+) steps", line):
            steps = int(m.group(1))
        elif m := re.match(r"([\d.]+)% CPU use with (\d+) MPI", line):
            runs.append((steps, float(m.group(1)), m.group(2)))
    _, pct, ranks = max(runs)
    return f"{pct:.0f}% x {ranks}"


def pyace_times(atoms, pot: Pot, repeats: int) -> tuple[float, float]:
    """(s per PyACECalculator.calculate, s per bare ACECalculator.compute on a prebuilt environment)."""
    from pyace import PyACECalculator

    calc = PyACECalculator(str(pot.yaml))
    calc.set_active_set(str(pot.asi))
    a = atoms.copy()
    calc.calculate(a)  # warm-up: allocations, first neighbour search
    t = time.perf_counter()
    for _ in range(repeats):
        calc.calculate(a)
    t_calc = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for _ in range(repeats):
        calc.ace.compute(calc.ae, compute_projections=True)
    t_kernel = (time.perf_counter() - t) / repeats
    return t_calc, t_kernel


def ase_rate(atoms, pot: Pot, steps: int) -> float:
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from pyace import PyACECalculator

    a = atoms.copy()
    calc = PyACECalculator(str(pot.yaml))
    calc.set_active_set(str(pot.asi))
    a.calc = calc
    dyn = VelocityVerlet(a, timestep=2.0 * units.fs)
    dyn.run(1)  # first forces
    t = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t)


def memory_probe(state: MDState, pot: Pot, steps: int, workdir: Path) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, rss_mb()))
            stop.wait(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    segment_rate(state, pot, steps, 10, workdir)
    stop.set()
    th.join()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, noisier numbers)")
    args = parser.parse_args()
    # (repeat of the 256-atom liquid, callback steps, native steps, ASE steps, pyace repeats)
    plan = [((1, 1, 1), 200, 2000, 40, 5), ((2, 2, 1), 60, 600, 10, 2), ((4, 4, 1), 20, 200, 3, 1),
            ((4, 4, 4), 8, 60, 2, 1)]
    mem_steps = 3000
    if args.quick:
        plan = [((1, 1, 1), 60, 400, 10, 2), ((2, 2, 1), 20, 100, 2, 1)]
        mem_steps = 600
    print(f"load average before: {os.getloadavg()}  (2 shared cores: numbers can be noisy)")
    pot = potential()
    with tempfile.TemporaryDirectory(prefix="bench-md-") as tmp:
        tmp = Path(tmp)
        rss0 = rss_mb()
        base = liquid(pot, tmp / "melt")
        print(f"liquid ready: {len(base.atoms)} atoms, RSS {rss0:.0f} -> {rss_mb():.0f} MB")
        rows = []
        for rep, steps, nsteps, ase_steps, repeats in plan:
            atoms = base.atoms.repeat(rep)
            md = MDConfig(ensemble="nve", temperature=900.0, seed=sum(rep))
            state = initial_state(atoms, md)
            n = len(atoms)
            cb, cb_e2e, res = segment_rate(state, pot, steps, 10, tmp / f"cb{n}")
            cb_unmon, _, _ = segment_rate(state, pot, steps, 10**9, tmp / f"cbu{n}")
            nat, nat_e2e, res1 = segment_rate(state, pot, nsteps, 10, tmp / f"nat{n}", route="native")
            nat_unmon, _, _ = segment_rate(state, pot, nsteps, 10**9, tmp / f"natu{n}", route="native")
            nat2, _, res2 = segment_rate(state, pot, nsteps, 10, tmp / f"nat2-{n}", route="native",
                                         launcher=["mpirun", "-np", "2"])
            assert res2.n_ranks == 2, res2.n_ranks
            t_calc, t_kernel = pyace_times(atoms, pot, repeats)
            ase = ase_rate(atoms, pot, ase_steps)
            limit, kernel = 1.0 / t_calc, 1.0 / t_kernel
            rows.append((n, cb, cb_unmon, cb_e2e, nat, nat_unmon, nat2, nat_e2e, limit, kernel, ase))
            print(f"  {n} atoms: callback {steps} steps, {res.n_neighbor_builds} neighbour-list builds, "
                  f"callback {res.timings['callback']:.2f} s of run {res.timings['run']:.2f} s, "
                  f"ACE {res.timings['evaluate'] / steps / n * 1e6:.1f} µs/atom/step; native {nsteps} steps "
                  f"{1e6 / nat / n:.1f} µs/atom/step (LAMMPS CPU use: 1 rank {cpu_use(res1)}, "
                  f"2 ranks {cpu_use(res2)}); PyACECalculator {t_calc / n * 1e6:.1f} µs/atom, "
                  f"kernel {t_kernel / n * 1e6:.1f} µs/atom", flush=True)
        print()
        print("steps per second")
        print(f"{'atoms':>6} {'callback':>9} {'cb-unmon':>9} {'cb-e2e':>8} {'native':>8} {'nat-unmon':>9}"
              f" {'native x2':>9} {'nat-e2e':>8} {'limit':>8} {'kernel':>8} {'ASE':>8}")
        for n, cb, cbu, cbe, nat, natu, nat2, nate, limit, kernel, ase in rows:
            print(f"{n:>6} {cb:>9.2f} {cbu:>9.2f} {cbe:>8.2f} {nat:>8.2f} {natu:>9.2f} {nat2:>9.2f} {nate:>8.2f}"
                  f" {limit:>8.2f} {kernel:>8.2f} {ase:>8.2f}")
        print()
        print("ratios")
        print(f"{'atoms':>6} {'cb/limit':>9} {'cb/ASE':>7} {'nat/cb':>7} {'nat/ASE':>8} {'check cost':>10}"
              f" {'x2/x1':>6} {'cb check cost':>13}")
        for n, cb, cbu, cbe, nat, natu, nat2, nate, limit, kernel, ase in rows:
            print(f"{n:>6} {cb / limit:>9.2f} {cb / ase:>7.2f} {nat / cb:>7.2f} {nat / ase:>8.2f}"
                  f" {natu / nat - 1:>10.1%} {nat2 / nat:>6.2f} {cbu / cb - 1:>13.1%}")
        print("goals: cb/limit >= 0.8, cb/ASE >= 1.5, nat/cb >= 2 from 1k atoms, check cost < 10 %, "
              "x2/x1 >= 1.6 at 16k atoms")
        print()
        state = initial_state(base.atoms, MDConfig(ensemble="nve", temperature=900.0, seed=9))
        before = rss_mb()
        short = memory_probe(state, pot, mem_steps // 10, tmp / "mem-short")
        samples = memory_probe(state, pot, mem_steps, tmp / "mem-long")
        after = rss_mb()
        q = [samples[int(f * (len(samples) - 1))][1] for f in (0.1, 0.25, 0.5, 0.75, 1.0)]
        print(f"memory, 256 atoms: RSS before {before:.1f} MB; during a {mem_steps}-step segment at "
              f"10/25/50/75/100 %: {' / '.join(f'{x:.1f}' for x in q)} MB; after {after:.1f} MB")
        print(f"  peak during a {mem_steps // 10}-step segment {max(s[1] for s in short):.1f} MB, "
              f"during the {mem_steps}-step one {max(s[1] for s in samples):.1f} MB")
        per_segment = []
        for i in range(8):
            segment_rate(state, pot, 50, 10, tmp / f"seq{i}")
            per_segment.append(rss_mb())
        print(f"  RSS after each of 8 consecutive 50-step segments: {' '.join(f'{x:.1f}' for x in per_segment)} MB")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
