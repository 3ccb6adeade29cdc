"""Neutralised against raw carved cells of a compound: issue 21 item 5 (MgO with an O vacancy).

A cube carved from an ionic crystal holds one cation or one anion too many, and a vacancy in it
adds its own formal charge; pw.x still labels the cell electrically neutral, so the surplus
electrons (or holes) go into states the parent does not have. ``embedding.charge_policy:
neutralise`` removes masked atoms beyond core_radius + buffer until the formal charge is zero.
This script carves the same centres both ways, labels both with pw.x and compares the core atoms'
forces with pw.x on the whole frame, with the SCF iterations each cell needed.

Frames: the run's 63-atom parent (rocksalt MgO 2x2x2 less one O, a = 4.21 Å) with every atom
displaced by a Gaussian of 0.1 Å (about the thermal displacement at 2000 K), seeds 3, 4, ...
Cells: ``cube7`` (core 2.3 Å: the centre and its 6 neighbours, buffer 1.4 Å: a 7.4 Å cube, the
largest cube a 63-atom parent leaves room for) and ``test``, the reduced test's (core 1.0 Å, buffer
1.5 Å: a 5 Å cube). The example itself carves commensurate 8.42 Å cells from a 215-atom parent,
whose whole-frame labels are too dear for this table. pw.x settings: ``examples/mgo-vacancy/run.yaml``.
Whole-frame labels are cached under ``benchmarks/results/neutralise-cache/``.

    .venv/bin/python benchmarks/neutralise_proxy.py [--frames 1] [--centres vacancy,far]

Prints the table (Markdown) and writes it to ``benchmarks/results/neutralise_proxy.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autopipe.analysis.carve_scan import cached_whole_label  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "neutralise-cache"
RUN = ROOT / "examples" / "mgo-vacancy" / "run.yaml"
#: name -> (core_radius, buffer, min_distance) in Å
SIZES = {"cube7": (2.3, 1.4, 1.2), "test": (1.0, 1.5, 1.2)}


def frame(seed: int):
    """The 63-atom O-vacancy parent, rattled (0.1 Å) with ``seed``; the vacancy is the 6th O site."""
    from ase.build import bulk

    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat(2)
    vacancy = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "O"][5]
    site = atoms.positions[vacancy].copy()
    del atoms[vacancy]
    atoms.rattle(0.1, seed=seed)
    atoms.info["vacancy_site"] = site.tolist()
    return atoms


def centres(atoms, which: list[str]) -> dict[str, int]:
    """``vacancy``: the Mg nearest the vacancy site; ``far``: the O farthest from it."""
    site = np.asarray(atoms.info["vacancy_site"])
    probe = atoms.copy()
    probe.append("X")
    probe.positions[-1] = site
    dist = probe.get_distances(len(probe) - 1, range(len(atoms)), mic=True)
    symbols = np.array(atoms.get_chemical_symbols())
    out = {}
    if "vacancy" in which:
        mg = np.flatnonzero(symbols == "Mg")
        out["vacancy Mg"] = int(mg[np.argmin(dist[mg])])
    if "far" in which:
        o = np.flatnonzero(symbols == "O")
        out["far O"] = int(o[np.argmax(dist[o])])
    return out


def carve_pair(atoms, center: int, size: str, dft, oxidation_states: dict[str, float]):
    """(raw cell, its core, neutralised cell or the refusal's text, its core): cube carves of ``size``
    around ``center`` with their k-point meshes (``dft``'s rule); cores are indices in the cells."""
    from autopipe.carving.charge import ChargeRefused, ChargeRule, apply_charge_policy, valences
    from autopipe.carving.strategies import apply_kpoint_rule, carve

    core_radius, buffer, min_distance = SIZES[size]
    sub, masked = carve(atoms, center, "cube", core_radius, buffer, min_distance=min_distance)
    apply_kpoint_rule(sub, atoms, "density", dft.kspacing, dft.gamma_only_length)
    rule = ChargeRule(policy="neutralise", valence=valences(sorted(set(atoms.get_chemical_symbols())), dft.pseudo_dir,
                                                            dft.pseudopotentials),
                      oxidation_states=dict(oxidation_states), protected_radius=core_radius + buffer)
    raw, _ = apply_charge_policy(sub, masked, dataclasses.replace(rule, policy="none"))  # records the charge
    core = [i for i in range(len(sub)) if i not in {int(m) for m in masked}]
    try:
        neut, nmasked = apply_charge_policy(sub, masked, rule)
    except ChargeRefused as exc:
        return raw, core, str(exc), []
    return raw, core, neut, [i for i in range(len(neut)) if i not in set(nmasked)]


def core_errors(cell, core: list[int], forces, whole) -> tuple[float, float]:
    """max and RMS |ΔF| (eV/Å) of the core atoms against the whole frame's forces."""
    parent = cell.arrays["parent_index"][core]
    d = np.linalg.norm(np.asarray(forces)[core] - whole[parent], axis=1)
    return float(d.max()), float(np.sqrt(np.mean(d ** 2)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1, help="frames (seeds 3, 4, ...)")
    ap.add_argument("--centres", default="vacancy,far", help="vacancy and/or far")
    ap.add_argument("--sizes", default="cube7,test", help="carve sizes: cube7 and/or test")
    ap.add_argument("--launcher", default="", help="e.g. '/usr/bin/mpirun --allow-run-as-root -np 1'")
    args = ap.parse_args(argv)

    import yaml

    from autopipe.config.run import EspressoConfig
    from autopipe.dft import label

    # The run file's pw.x settings and oxidation states (read directly: the run needs its potential to load).
    spec = yaml.safe_load(RUN.read_text())
    config = EspressoConfig(**{**spec["dft"], "timeout": 3600.0})  # a 63-atom frame; timeout is not in the cache key
    oxidation = spec["embedding"]["oxidation_states"]
    settings = config.model_dump(mode="json")
    launcher = args.launcher.split()

    def pwx(atoms):
        return label(atoms, config, launcher=launcher)

    rows = []
    for seed in range(3, 3 + args.frames):
        atoms = frame(seed)
        whole, seconds, status = cached_whole_label(atoms, settings, CACHE, pwx)
        if whole is None:
            print(f"frame {seed}: whole-frame pw.x {status}", flush=True)
            continue
        print(f"frame {seed}: whole frame {len(atoms)} atoms, pw.x {seconds:.0f} s", flush=True)
        for cname, center in centres(atoms, args.centres.split(",")).items():
            for size in args.sizes.split(","):
                raw, core, neut, ncore = carve_pair(atoms, center, size, config, oxidation)
                for kind, cell, idx in (("raw", raw, core), ("neutralised", neut, ncore)):
                    if isinstance(cell, str):
                        rows.append(dict(frame=seed, centre=cname, size=size, kind=kind, note=cell))
                        continue
                    if kind == "neutralised" and not cell.info.get("embedding_charge_removed"):
                        rows.append(dict(frame=seed, centre=cname, size=size, kind=kind, note="neutral as carved"))
                        continue
                    t = time.time()
                    r = pwx(cell)
                    row = dict(frame=seed, centre=cname, size=size, kind=kind, atoms=len(cell), core=len(idx),
                               charge=raw.info["embedding_formal_charge"] if kind == "raw" else 0.0,
                               kpts=cell.info.get("embedding_kpts"), status=r.status, seconds=round(r.walltime, 1),
                               scf=r.attempts[-1].get("scf_iterations") if r.attempts else None,
                               decision=cell.info.get("embedding_charge_decision"))
                    if r.status == "done":
                        row["max"], row["rms"] = core_errors(cell, idx, r.forces, whole)
                    rows.append(row)
                    print(json.dumps(row), f"({time.time() - t:.0f} s)", flush=True)
    table = format_rows(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "neutralise_proxy.md").write_text(table + "\n")
    (RESULTS / "neutralise_proxy.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def format_rows(rows: list[dict]) -> str:
    """The Markdown table of the rows (forces in meV/Å)."""
    out = ["| frame | centre | carve | cell | atoms (core) | formal charge | max \\|ΔF\\| meV/Å | rms \\|ΔF\\| meV/Å "
           "| SCF iterations | pw.x s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            out.append(f"| {r['frame']} | {r['centre']} | {r['size']} | {r['kind']} | {r['note']} | | | | | |")
            continue
        err = (f"{1000 * r['max']:.0f} | {1000 * r['rms']:.0f}" if "max" in r else f"{r['status']} | ")
        out.append(f"| {r['frame']} | {r['centre']} | {r['size']} | {r['kind']} | {r['atoms']} ({r['core']}) | "
                   f"{r['charge']:+g} | {err} | {r['scf']} | {r['seconds']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
