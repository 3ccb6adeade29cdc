"""Carve errors against whole-frame pw.x: the proxy table of issue 25 (strategies x k rules x centres).

For each centre of a crystalline MD frame, carve a cube, a lattice-commensurate cell and a cube
whose seams the potential healed, label each with pw.x (the k-point density rule, and the parent's
mesh folded onto the cell), and compare the core atoms' forces with the whole frame's pw.x forces;
beside them, the potential's error on the same atoms (what a label must beat). Whole-frame labels
are cached under ``benchmarks/results/carve-cache/`` by a hash of positions and DFT settings; a
frame file that already carries its whole-frame pw.x forces (the shared ``si215-vacancy-md``
frame) seeds the cache.

Two materials (``--material``):
- ``si``: diamond Si, the Si vacancy campaign's pw.x settings and imported ACE potential; frames
  from 1300 K MD (the shared frame by default);
- ``al``: fcc Al with a vacancy, a metal (Marzari-Vanderbilt smearing), 107 atoms (3x3x3
  conventional cells less one), frames of 600 K EMT MD made here (``--al-frames N``, seeds 11,
  12, ...). EMT stands in for the potential: its column is EMT's error against pw.x (LDA), and it
  heals the seams.

    .venv/bin/python benchmarks/carve_proxy.py                      # the shared Si frame, 4 centres
    .venv/bin/python benchmarks/carve_proxy.py --frames my.extxyz --centres 3,17
    .venv/bin/python benchmarks/carve_proxy.py --material al --launcher "/usr/bin/mpirun --allow-run-as-root -np 1"

Prints the table, the pooled measurements and the strategy the budget picks (``--max-error-ratio``),
and writes them with a plot to ``benchmarks/results/``. Run it alone: pw.x takes both cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autopipe.analysis.carve_scan import (  # noqa: E402
    Frame,
    cached_whole_label,
    format_table,
    measurements,
    plot_points,
    scan_carves,
    whole_frame_key,
)
from autopipe.carving.budget import DEFAULT_MAX_ERROR_RATIO, choose  # noqa: E402
from autopipe.carving.heal import HealBounds  # noqa: E402
from autopipe.carving.lattice import ReferenceLattice  # noqa: E402

SHARED_FRAME = ROOT.parent / "shared" / "data" / "si215-vacancy-md" / "frame-pwx.extxyz"
RESULTS = ROOT / "benchmarks" / "results"


def _espresso_config(material: str):
    """pw.x settings per material. Si: the Si vacancy campaign's (configs/runs/si-vacancy.yaml), which
    labelled the shared frame. Al: a norm-conserving LDA pseudopotential at 15 Ry, cold smearing of
    0.02 Ry, gentler mixing as metals need; the 12 Å parent at Gamma, so the proxy measures the carve
    against a parent of the same settings, not a k-converged metal."""
    from autopipe.config.run import EspressoConfig

    if material == "al":
        return EspressoConfig(code="espresso", pseudopotentials={"Al": "Al.pz-vbc.UPF"}, ecutwfc=15.0, kspacing=0.6,
                              gamma_only_length=9.5, smearing="mv", degauss=0.02, conv_thr=1e-6, mixing_beta=0.3,
                              timeout=7200, max_attempts=2)
    from autopipe.config import load_run

    # The run file's own settings (one source), with room for a 215-atom frame (timeout is not in the cache key).
    return load_run(ROOT / "configs" / "runs" / "si-vacancy.yaml").dft.model_copy(update={"timeout": 3600.0})


#: Per material: reference crystal, default centres, core radius, buffers and min_distance (Å). Al's core
#: of 3.0 Å holds an atom and those of its 12 neighbours that 600 K leaves within it (8-10 atoms); its
#: 1.0 Å buffer makes the commensurate cell 2x2x2 conventional cells (32 sites, under 1/3 of the parent),
#: 2.0 Å a 10 Å cube (and a commensurate cell as big as the parent, which is not carved).
PRESETS = {
    "si": dict(crystal=("Si", "diamond", 5.43), centres="131,18,60,190", core=2.6, buffers="2.8", min_distance=1.5),
    "al": dict(crystal=("Al", "fcc", 4.05), centres="0,81", core=3.0, buffers="1.0,2.0", min_distance=2.0),
}
AL_FRAMES = RESULTS / "al-frames"
#: Seam healing as tests/carving/test_heal.py measures it (the seam's artefact force halves in 40 steps);
#: the default 100 steps drift seam atoms of hot crystals past the 1 Å bound, and the cell is refused.
HEAL_BOUNDS = HealBounds(fixed_shell=1.0, seam_width=1.5, steps=40, max_displacement=1.0, min_distance=1.0)


def al_frames(n: int, steps: int = 1500) -> list[Path]:
    """``n`` frames of fcc Al with one vacancy after ``steps`` fs of 600 K Langevin MD with EMT (seeds
    11, 12, ...), written once under ``benchmarks/results/al-frames/``."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin

    paths = []
    for k in range(n):
        path = AL_FRAMES / f"al107-seed{11 + k}.extxyz"
        if not path.exists():
            rng = np.random.default_rng(11 + k)
            atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((3, 3, 3))
            del atoms[int(rng.integers(len(atoms)))]
            atoms.calc = EMT()
            atoms.set_momenta(rng.normal(0, 1, (len(atoms), 3)) * np.sqrt(atoms.get_masses()[:, None] * units.kB * 600))
            Langevin(atoms, 2.0 * units.fs, temperature_K=600, friction=0.02, rng=rng, fixcm=False).run(steps // 2)
            atoms.calc = None
            path.parent.mkdir(parents=True, exist_ok=True)
            atoms.write(path)
        paths.append(path)
    return paths


def _seed_cache(frame, settings: dict, cache: Path) -> None:
    """A frame file with stored forces (its whole-frame label) enters the cache as that label."""
    try:
        forces = frame.get_forces()
    except Exception:  # no stored label: the scan labels the frame itself
        return
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{whole_frame_key(frame, settings)}.json"
    if not path.exists():
        seconds = float(frame.info.get("pwx_seconds", 991.0))  # the shared frame: 991 s on 2 ranks (its README)
        path.write_text(json.dumps({"forces": forces.tolist(), "seconds": seconds, "n_atoms": len(frame),
                                    "settings": settings, "source": "stored in the frame file"}, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--material", choices=sorted(PRESETS), default="si")
    ap.add_argument("--frames", default=None, help="comma-separated extxyz frames (Å); default: the shared Si "
                    "frame, or --al-frames EMT frames for al")
    ap.add_argument("--al-frames", type=int, default=2, help="how many Al frames to make and scan")
    ap.add_argument("--centres", default=None, help="centre atoms (per frame, same list)")
    ap.add_argument("--core", type=float, default=None, help="core radius (Å)")
    ap.add_argument("--buffers", default=None, help="buffer widths (Å), comma-separated")
    ap.add_argument("--min-distance", type=float, default=None,
                    help="carving's min_distance (Å): the Si runs' 1.5 removes seam contacts below a bond")
    ap.add_argument("--strategies", default="cube,commensurate,healed")
    ap.add_argument("--fold-centres", type=int, default=1, help="how many centres also get the folded k rule")
    ap.add_argument("--potential", default=str(ROOT / "examples" / "si-vacancy" / "potential.yaml"),
                    help="Si: the ACE potential (yaml) whose error the labels must beat (Al uses EMT)")
    ap.add_argument("--launcher", default="/usr/bin/mpirun --allow-run-as-root -np 2")
    ap.add_argument("--max-error-ratio", type=float, default=DEFAULT_MAX_ERROR_RATIO)
    ap.add_argument("--out", default=None, help="result name under benchmarks/results/ (default carve_proxy_<material>)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.material]
    core = args.core if args.core is not None else preset["core"]
    buffers = [float(b) for b in (args.buffers or preset["buffers"]).split(",")]
    min_distance = args.min_distance if args.min_distance is not None else preset["min_distance"]
    out = args.out or f"carve_proxy_{args.material}"

    from ase.build import bulk
    from ase.io import read

    from autopipe.dft import label

    config = _espresso_config(args.material)
    settings = config.model_dump(mode="json")
    cache = RESULTS / "carve-cache"
    launcher = args.launcher.split()
    symbol, crystal, a = preset["crystal"]
    lattice = ReferenceLattice.from_atoms(bulk(symbol, crystal, a=a, cubic=True))
    centres = [int(c) for c in (args.centres or preset["centres"]).split(",")]
    if args.frames:
        paths = [Path(p) for p in args.frames.split(",")]
    else:
        paths = [SHARED_FRAME] if args.material == "si" else al_frames(args.al_frames)
    frames = []
    for path in paths:
        atoms = read(path)
        _seed_cache(atoms, settings, cache)
        frames += [Frame(f"{path.stem}", atoms, c) for c in centres]

    calc = None
    if args.material == "al":
        from ase.calculators.emt import EMT

        calc = EMT()
    elif args.potential:
        from pyace import PyACECalculator

        calc = PyACECalculator(args.potential)
    pot_forces = None
    if calc is not None:

        def pot_forces(atoms):
            a = atoms.copy()
            a.calc = calc
            return a.get_forces()

    def label_fn(atoms):
        t = time.time()
        r = label(atoms, config, launcher=launcher)
        print(f"  pw.x {len(atoms)} atoms, k {atoms.info.get('embedding_kpts', 'frame')}: {r.status} "
              f"in {time.time() - t:.0f} s", flush=True)
        return r

    def whole(atoms):
        return cached_whole_label(atoms, settings, cache, label_fn)

    t0 = time.time()
    potential = "EMT (stand-in for the potential)" if args.material == "al" else Path(args.potential).name
    header = (f"{args.material}: core {core:g} Å, buffers {buffers} Å, min_distance {min_distance:g} Å, "
              f"potential column {potential}, launcher {args.launcher!r}")

    def write(points: list, done: bool) -> str:
        """The table so far (rewritten after every centre, so a long scan that is stopped keeps its rows)."""
        m = measurements(points)
        pooled = "\n".join(f"- {x.name}: core rms {1000 * x.core_rms:.0f} meV/Å, potential {1000 * x.potential_rms:.0f} "
                           f"meV/Å (ratio {x.ratio:.2f}), {x.cost:.0f} s per cell, whole frame {x.frame_cost:.0f} s, "
                           f"{x.n_atoms} atoms" for x in m)
        choice = choose(m, max_error_ratio=args.max_error_ratio)
        state = "" if done else f"\n\n(partial: {len({(p.frame, p.center) for p in points})} of {len(frames)} centres)"
        text = (f"{header}\n\n{format_table(points)}\n\nPooled over centres:\n{pooled}\n\nBudget (max_error_ratio "
                f"{args.max_error_ratio:g}): {choice.reason}\n\nWall time of the benchmark: {time.time() - t0:.0f} s{state}\n")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{out}.md").write_text(text)
        plot_points(points, RESULTS / f"{out}.png")
        return text

    points = []
    for i, fr in enumerate(frames):
        rules = ["density", "fold"] if i < args.fold_centres else ["density"]
        print(f"frame {fr.name}, centre {fr.center}: k rules {rules}", flush=True)
        points += scan_carves([fr], core_radius=core, strategies=args.strategies.split(","), buffers=buffers,
                              kpoint_rules=rules, label_fn=label_fn, whole_label=whole, potential_forces=pot_forces,
                              lattice=lattice, min_distance=min_distance, kspacing=config.kspacing,
                              gamma_only_length=config.gamma_only_length, heal_calc=calc, heal_bounds=HEAL_BOUNDS)
        write(points, done=False)
    print(write(points, done=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
