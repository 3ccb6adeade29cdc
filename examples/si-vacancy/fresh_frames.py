#!/usr/bin/env python
"""Out-of-sample check of a finished Si-vacancy run: v1 against the newest potential on MD it never saw.

The loop's trigger frames are in-sample (they were labelled and trained on). This script
makes new ones:

1. a fresh starting structure: the run's crystal with its vacancy at another site (the
   run's ``system.structure`` with a new ``seed``), and fresh Langevin velocity/noise seeds;
2. **triggers**: with v1 and with the newest potential, ``--seeds`` runs of ``--steps`` MD
   steps each at the run's temperature, stopping on gamma like the loop does: how many stop,
   and after how many steps;
3. **force error against pw.x**: ``--seeds`` runs of ``--steps`` steps with the newest
   potential, gamma not stopping them; ``--frames`` frames, evenly spaced in time over those
   runs (not chosen by gamma), are labelled with the run's own pw.x settings, and both
   potentials' forces (eV/Å) and energies (eV/atom, in the imported data's reference) are
   compared with pw.x's on every atom and on the vacancy's neighbours.

The pw.x cost is ``--frames`` labels of the run's 63-atom cell (about a minute each on one
core), ``--jobs`` at a time. Writes ``<workdir>/fresh_frames.json`` and prints a summary.

    .venv/bin/python examples/si-vacancy/fresh_frames.py --workdir runs/si-vacancy [--frames 4]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: Offset of the fresh seeds from the run's: far from the walkers' md.seed + i.
SEED_OFFSET = 1000
#: A Si atom within this distance (Å) of the empty lattice site neighbours the vacancy
#: (the diamond nearest-neighbour distance is 2.35 Å; thermal motion at 1300 K adds ~0.2 Å).
NEIGHBOUR_RADIUS = 3.0


def fresh_structure(run, seed_offset: int, repeat: list[int] | None = None):
    """(the run's start with the vacancy elsewhere, empty site position Å, the run's own vacancy
    site); with ``repeat`` the fresh crystal has that many unit cells instead of the run's (a
    smaller parent makes the pw.x references cheaper: the run's own vacancy site is then None)."""
    from autopipe.config.run import SystemConfig
    from autopipe.generate import template_atoms

    src = run.system.structure
    if src.kind != "bulk" or not src.vacancies:
        raise SystemExit("this check needs a bulk structure with a vacancy (system.structure kind: bulk)")
    fresh_src = src.model_copy(update={"seed": src.seed + seed_offset, **({"repeat": list(repeat)} if repeat else {})})
    atoms = template_atoms(SystemConfig(elements=run.system.elements, structure=fresh_src))
    perfect = template_atoms(SystemConfig(elements=run.system.elements,
                                          structure=fresh_src.model_copy(update={"vacancies": 0, "rattle": 0.0})))
    run_site = None if repeat else empty_site(perfect, template_atoms(run.system))
    return atoms, empty_site(perfect, atoms), run_site


def empty_site(perfect, with_vacancy) -> np.ndarray:
    """The lattice site of ``perfect`` farthest from every atom of ``with_vacancy`` (Å)."""
    from ase.geometry import get_distances

    _, d = get_distances(perfect.positions, with_vacancy.positions, cell=perfect.cell, pbc=perfect.pbc)
    return perfect.positions[int(np.argmax(d.min(axis=1)))]


def neighbours(atoms, site: np.ndarray) -> np.ndarray:
    """Indices of the atoms within :data:`NEIGHBOUR_RADIUS` of ``site`` (minimum image)."""
    from ase.geometry import get_distances

    _, d = get_distances(atoms.positions, site[None, :], cell=atoms.cell, pbc=atoms.pbc)
    return np.flatnonzero(d[:, 0] < NEIGHBOUR_RADIUS)


def run_md(atoms, pot, md, otf, workdir: Path, steps: int, chunk: int | None = None):
    """Langevin MD from ``atoms`` with ``pot``; returns (status, steps run, max gamma, frames at chunk ends).

    With ``chunk`` the run is cut into segments of that many steps (frames at their ends);
    without, it is one segment that stops on ``otf.uncertainty_threshold`` like the loop.
    """
    from autopipe.md import initial_state, run_segment

    state = initial_state(atoms, md)
    frames, gmax, done, status = [], 0.0, 0, "completed"
    size = chunk or steps
    while done < steps:
        res = run_segment(state, pot, md, otf, workdir=workdir, n_steps=min(size, steps - done))
        gmax = max(gmax, float(res.max_gamma))
        done = res.end_step
        status = res.status
        if res.status != "completed":
            break
        state = res.final_state
        frames.append((done, state.atoms.copy()))
    return status, done, gmax, frames


def compare(atoms, pot, ref_forces: np.ndarray, ref_energy_per_atom: float, near: np.ndarray) -> dict:
    """Force and energy errors of ``pot`` on ``atoms`` against the labeller."""
    from autopipe.potentials.uncertainty import evaluate

    out = evaluate(atoms, pot)
    df = np.asarray(out["forces"]) - ref_forces
    return {
        "force_rmse": float(np.sqrt(np.mean(df**2))),  # eV/Å per component
        "force_max": float(np.linalg.norm(df, axis=1).max()),  # eV/Å, worst atom
        "force_rmse_vacancy_neighbours": float(np.sqrt(np.mean(df[near] ** 2))) if len(near) else None,
        "energy_error_per_atom": float(out["energy"]) / len(atoms) - ref_energy_per_atom,  # eV/atom
        "max_gamma": float(np.max(out["gamma"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True, help="The finished run.")
    ap.add_argument("--seeds", type=int, default=2, help="Fresh velocity/noise seeds.")
    ap.add_argument("--steps", type=int, default=1000, help="MD steps per fresh run.")
    ap.add_argument("--frames", type=int, default=4, help="Fresh frames labelled with pw.x.")
    ap.add_argument("--jobs", type=int, default=2, help="pw.x labels at a time (one core each).")
    ap.add_argument("--structure-seed-offset", type=int, default=SEED_OFFSET,
                    help="Added to system.structure.seed: moves the vacancy.")
    ap.add_argument("--repeat", type=int, nargs=3, default=None, metavar=("NX", "NY", "NZ"),
                    help="Unit cells of the fresh crystal (default: the run's): a smaller parent for cheaper pw.x.")
    args = ap.parse_args()

    from autopipe.config.run import load_resolved_run
    from autopipe.db import Database
    from autopipe.dft import label
    from autopipe.layout import RunLayout
    from autopipe.potentials import PotentialStore
    from autopipe.potentials.imported import check_training_data

    t0 = time.time()
    workdir = args.workdir.resolve()
    run = load_resolved_run(workdir)
    store = PotentialStore(Database(run.database_url()), RunLayout(workdir).potentials)
    versions = store.versions()
    first, newest = store.get(versions[0]), store.get(versions[-1])
    out_dir = workdir / "fresh"
    atoms, site, run_site = fresh_structure(run, args.structure_seed_offset, args.repeat)
    moved = float(np.linalg.norm(site - run_site)) if run_site is not None else None
    where = f"{moved:.2f} Å from the run's" if moved is not None else f"a {'x'.join(map(str, args.repeat))} crystal"
    print(f"fresh start: {len(atoms)} atoms, vacancy at {np.round(site, 2)} Å ({where}); "
          f"v{first.version} against v{newest.version}; {args.seeds} seeds x {args.steps} steps")
    if moved is not None and moved < 1e-6:
        raise SystemExit("the fresh structure seed put the vacancy where the run had it: choose another offset")

    result: dict = {"first": first.version, "newest": newest.version, "seeds": args.seeds, "steps": args.steps,
                    "vacancy_moved_A": moved, "n_atoms": len(atoms), "repeat": args.repeat, "threshold": run.otf.uncertainty_threshold, "triggers": {}}
    md_seeds = [run.md.seed + SEED_OFFSET + k for k in range(args.seeds)]
    for pot in (first, newest):
        rows = []
        for seed in md_seeds:
            md = run.md.model_copy(update={"seed": seed})
            status, steps, gmax, _ = run_md(atoms, pot, md, run.otf, out_dir / f"trig-v{pot.version}-s{seed}",
                                            args.steps)
            rows.append({"seed": seed, "status": status, "steps": steps, "max_gamma": gmax})
        n_trig = sum(r["status"] == "triggered" for r in rows)
        result["triggers"][pot.version] = rows
        print(f"v{pot.version}: {n_trig} of {len(rows)} fresh runs stop on gamma > {run.otf.uncertainty_threshold:g}; "
              + ", ".join(f"seed {r['seed']}: {r['status']} at step {r['steps']} (max gamma {r['max_gamma']:.2f})"
                          for r in rows))

    # Frames from the newest potential's fresh trajectories, gamma not stopping them.
    no_stop = run.otf.model_copy(update={"uncertainty_threshold": 1e9})
    pool = []
    for seed in md_seeds:
        md = run.md.model_copy(update={"seed": seed})
        status, _, _, frames = run_md(atoms, newest, md, no_stop, out_dir / f"traj-s{seed}", args.steps,
                                      chunk=run.md.segment_steps)
        pool += [(seed, step, a) for step, a in frames]
        if status != "completed":
            print(f"seed {seed}: the newest potential's run {status} after {frames[-1][0] if frames else 0} steps")
    if not pool:
        raise SystemExit("no fresh frame: every run failed")
    picks = [pool[int(i)] for i in np.unique(np.linspace(len(pool) - 1, 0, args.frames).round().astype(int))]
    refs = check_training_data(run).reference_energies or {}
    e_ref = {s: refs.get(s, 0.0) for s in run.system.elements}

    def one(k_pick):
        k, (seed, step, a) = k_pick
        return label(a, run.dft, workdir=out_dir / f"pwx-{k}-s{seed}-step{step}")

    t_dft = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as ex:
        labels = list(ex.map(one, enumerate(picks)))
    t_dft = time.time() - t_dft
    frames_out = []
    for (seed, step, a), lab in zip(picks, labels):
        if lab.status != "done":
            print(f"seed {seed} step {step}: pw.x {lab.status}: {lab.error}")
            continue
        near = neighbours(a, site)
        e_dft = (lab.energy - sum(e_ref[s] for s in a.get_chemical_symbols())) / len(a)
        row = {"seed": seed, "step": step, "pwx_walltime": lab.walltime, "n_vacancy_neighbours": int(len(near)),
               "pwx_force_rms": float(np.sqrt(np.mean(np.asarray(lab.forces) ** 2)))}
        for name, pot in (("first", first), ("newest", newest)):
            row[name] = compare(a, pot, np.asarray(lab.forces), e_dft, near)
        frames_out.append(row)
        print(f"seed {seed} step {step}: force RMSE v{first.version} {1000 * row['first']['force_rmse']:.0f} "
              f"-> v{newest.version} {1000 * row['newest']['force_rmse']:.0f} meV/Å (vacancy neighbours "
              f"{1000 * row['first']['force_rmse_vacancy_neighbours']:.0f} -> "
              f"{1000 * row['newest']['force_rmse_vacancy_neighbours']:.0f}); energy error "
              f"{1000 * row['first']['energy_error_per_atom']:+.1f} -> {1000 * row['newest']['energy_error_per_atom']:+.1f} "
              f"meV/atom; pw.x {lab.walltime:.0f} s")
    for name in ("first", "newest"):
        if frames_out:
            f_all = np.sqrt(np.mean([r[name]["force_rmse"] ** 2 for r in frames_out]))
            f_near = np.sqrt(np.mean([r[name]["force_rmse_vacancy_neighbours"] ** 2 for r in frames_out]))
            result[f"{name}_force_rmse"], result[f"{name}_force_rmse_vacancy_neighbours"] = float(f_all), float(f_near)
    result.update(frames=frames_out, pwx_seconds=float(sum(lab.walltime or 0.0 for lab in labels)),
                  pwx_wall_s=t_dft, walltime=time.time() - t0)
    if frames_out:
        print(f"over {len(frames_out)} fresh frames: force RMSE v{first.version} {1000 * result['first_force_rmse']:.0f}"
              f" -> v{newest.version} {1000 * result['newest_force_rmse']:.0f} meV/Å, vacancy neighbours "
              f"{1000 * result['first_force_rmse_vacancy_neighbours']:.0f} -> "
              f"{1000 * result['newest_force_rmse_vacancy_neighbours']:.0f} meV/Å; pw.x {result['pwx_seconds']:.0f} s "
              f"in labels, {result['walltime']:.0f} s in all")
    (workdir / "fresh_frames.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {workdir / 'fresh_frames.json'}")


if __name__ == "__main__":
    main()
