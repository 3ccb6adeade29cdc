"""Wall time of one retrain on the LJ dataset, split into phases, measured in one run.

A retrain = build the dataset from the database → pacemaker (continuing from the parent
with ``-p``) → ``.yace`` + active set → publish. pacemaker's share is split further from
the timestamps of its log: Python start-up, TensorFlow import, data preparation, TF graph
build (tracing + first loss/gradient evaluation), optimisation, predictions.

Starts from the test-suite's cached LJ potential (``tests/.cache``; trained here first if
absent, ≈1.5 min) plus 4 new labelled cells, so the parent and data match the tests.

    .venv/bin/python benchmarks/train.py [--iterations N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=None, help="retrain iterations (default: the recipe's)")
    args = ap.parse_args()

    from autopipe.db import Database
    from autopipe.potentials import PotentialStore, train_round
    from autopipe.potentials.pacemaker import log_phases
    from tests.lj import build_lj_recipe, cached_potential, lj_recipe, lj_run_config
    from tests.potentials.helpers import add_labelled, copy_cached_run, lj_structures

    recipe = lj_recipe(3)
    parent = cached_potential(ROOT / "tests" / ".cache", recipe["name"], recipe, lambda d: build_lj_recipe(d, recipe))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        run = copy_cached_run(parent, Path(tmp) / "run")
        db = Database(f"sqlite:///{run / 'autopipe.db'}")
        store = PotentialStore(db, run / "potentials")
        add_labelled(db, lj_structures(4, seed=101))
        train = {**recipe["train"], "retrain_iterations": args.iterations or recipe["train"]["max_iterations"]}
        cfg = lj_run_config("bench", run, train=train)
        out = train_round(db, store, cfg)
        if not out.ok:
            sys.exit(f"retrain failed: {out.error}\n{out.log_tail}")
        phases = log_phases(out.workdir / "pacemaker.log")
        db.dispose()

    total = out.walltime
    m = out.metrics
    n_it = int(m.get("iterations", 0))

    def row(label: str, seconds: float, indent: int = 2) -> None:
        print(f"{' ' * indent}{label:<44s}{seconds:8.2f} s  {seconds / total:6.1%}")

    print(f"one retrain: {m['n_structures']} structures / {m['n_atoms']} atoms, "
          f"{n_it} BFGS iterations, tensorpot CPU backend")
    print(f"{'total wall time':<46s}{total:8.2f} s  {1:6.1%}")
    row("dataset from the database", out.timings["dataset"])
    row("pacemaker subprocess", out.timings["pacemaker"])
    for name in ("python_startup", "setup", "tensorflow_import", "data_preparation", "tf_graph_build",
                 "optimisation", "predictions"):
        if name in phases:
            row(name.replace("_", " "), phases[name], indent=6)
    row("pace_yaml2yace + pace_activeset", out.timings["export"])
    row("publish (copy, sha256, db row)", out.timings["publish"])

    tf = phases.get("tensorflow_import", 0.0) + phases.get("tf_graph_build", 0.0)
    prep = out.timings["dataset"] + phases.get("python_startup", 0.0) + phases.get("setup", 0.0) + phases.get(
        "data_preparation", 0.0)
    opt = phases.get("optimisation", 0.0)
    rest = total - tf - prep - opt
    print("summary")
    row("TensorFlow start-up (import + graph build)", tf)
    row("data preparation (db, start-up, pacemaker)", prep)
    row("optimisation", opt)
    row("other (predictions, export, publish)", rest)
    if n_it:
        print(f"  optimisation per iteration: {opt / n_it:.3f} s")
    print(f"continuation: initial loss {m['initial_loss']:.4g} vs parent's final loss "
          f"{parent.metrics['final_loss']:.4g} (parent's fresh start: {parent.metrics['initial_loss']:.4g})")
    print(f"train RMSE: energy {1000 * m['train_energy_rmse']:.1f} meV/atom, forces "
          f"{1000 * m['train_forces_rmse']:.0f} meV/Å")


if __name__ == "__main__":
    main()
