"""Three consecutive retrains, cold (a fresh ``pacemaker`` program per fit) and warm (one
long-lived trainer process), measured in one run and split into phases.

A retrain = build the dataset from the database → pacemaker (continuing from the parent
with ``-p``) → ``.yace`` + active set → publish. Each route starts from the test-suite's
cached LJ potential (``tests/.cache``; trained here first if absent, ≈1.5 min) and adds the
same 4 labelled cells before each of its three retrains, so both routes fit the same data
from the same parents: their losses must agree, and the table shows where the time goes.
The routes take turns (cold 1, warm 1, cold 2, ...) so a change of machine load hits both.
Phases come from the timestamps of pacemaker's log:

* start-up: Python, pyace and TensorFlow imports (the warm trainer pays them once);
* graph build: tracing the loss/gradient graph + the first evaluation, and the first test-set
  evaluation, which traces the prediction graph (reused by the warm trainer);
* data: the dataset from the database, pacemaker's input, basis and neighbour lists;
* optimisation: the BFGS iterations; predictions: train/test predictions (plus pacemaker's
  plots on the cold route; the warm trainer skips them);
* export: ``.yace`` + active set; publish: copy, sha256, database row; other: the rest.

    .venv/bin/python benchmarks/train.py [--iterations N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_RETRAINS = 3
ROWS = ("start-up", "graph build", "data", "optimisation", "predictions", "export", "publish", "other", "total")


def phases_of(outcome) -> dict[str, float]:
    """Seconds per row of the table for one retrain (see the module docstring)."""
    from autopipe.potentials.pacemaker import log_phases

    p = log_phases(outcome.workdir / "pacemaker.log")
    t = outcome.timings
    first_test = p.get("first_test_evaluation", 0.0)
    row = {
        "start-up": p.get("python_startup", 0.0) + p.get("tensorflow_import", 0.0),
        "graph build": p.get("tf_graph_build", 0.0) + first_test,
        "data": t["dataset"] + p.get("setup", 0.0) + p.get("data_preparation", 0.0),
        "optimisation": p.get("optimisation", 0.0) - first_test,
        "predictions": p.get("predictions", 0.0),
        "export": t.get("export", 0.0),
        "publish": t.get("publish", 0.0),
        "total": outcome.walltime,
    }
    row["other"] = row["total"] - sum(v for k, v in row.items() if k != "total")
    return row


class Route:
    """One copy of the cached run, retrained again and again by one route (cold or warm)."""

    def __init__(self, parent, recipe: dict, workdir: Path, *, warm: bool, iterations: int | None):
        from autopipe.db import Database
        from autopipe.potentials import PotentialStore
        from tests.lj import lj_run_config
        from tests.potentials.helpers import copy_cached_run

        run = copy_cached_run(parent, workdir)
        self.name = "warm" if warm else "cold"
        self.db = Database(f"sqlite:///{run / 'autopipe.db'}")
        self.store = PotentialStore(self.db, run / "potentials")
        train = {**recipe["train"], "retrain_iterations": iterations or recipe["train"]["max_iterations"],
                 "warm_trainer": warm}
        self.cfg = lj_run_config("bench", run, train=train)
        self.outcomes: list = []

    def retrain(self, i: int) -> None:
        """Add the same 4 labelled cells as the other route, then retrain."""
        from autopipe.potentials import train_round
        from tests.potentials.helpers import add_labelled, lj_structures

        add_labelled(self.db, lj_structures(4, seed=101 + i))
        out = train_round(self.db, self.store, self.cfg)
        if not out.ok:
            sys.exit(f"{self.name} retrain {i + 1} failed: {out.error}\n{out.log_tail}")
        self.outcomes.append(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=None, help="retrain iterations (default: the recipe's)")
    args = ap.parse_args()

    from tests.lj import build_lj_recipe, cached_potential, lj_recipe
    from autopipe.potentials.warm import shutdown

    recipe = lj_recipe(3)
    parent = cached_potential(ROOT / "tests" / ".cache", recipe["name"], recipe, lambda d: build_lj_recipe(d, recipe))
    shutdown()  # building the cached potential may have started a trainer: the warm route starts cold
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        routes = [Route(parent, recipe, Path(tmp) / name, warm=name == "warm", iterations=args.iterations)
                  for name in ("cold", "warm")]
        # Interleaved (cold 1, warm 1, cold 2, ...), so a change of machine load hits both routes alike.
        for i in range(N_RETRAINS):
            for route in routes:
                route.retrain(i)
        for route in routes:
            route.db.dispose()
        cold, warm = (route.outcomes for route in routes)
        pids = {o.metrics.get("trainer_pid") for o in warm}
        graphs = [o.metrics.get("trainer_graph") for o in warm]
        shutdown()
        table = {f"cold {i + 1}": phases_of(o) for i, o in enumerate(cold)}
        table.update({f"warm {i + 1}": phases_of(o) for i, o in enumerate(warm)})

    m = cold[-1].metrics
    print(f"{N_RETRAINS} consecutive retrains of the LJ potential (+4 cells each, up to {m['n_structures']} "
          f"structures / {m['n_atoms']} atoms), {int(m.get('iterations', 0))} BFGS iterations each, "
          "tensorpot CPU backend")
    print(f"{'seconds':<14s}" + "".join(f"{name:>9s}" for name in table))
    for row in ROWS:
        print(f"{row:<14s}" + "".join(f"{col[row]:9.2f}" for col in table.values()))

    def share(col: dict[str, float]) -> float:
        return (col["start-up"] + col["graph build"]) / col["total"]

    print(f"{'start-up+graph':<14s}" + "".join(f"{share(col):9.1%}" for col in table.values()))
    print(f"warm trainer: {len(pids)} process(es) for {N_RETRAINS} fits; graphs {', '.join(graphs)}")

    cold_mean = statistics.mean(table[f"cold {i + 1}"]["total"] for i in range(N_RETRAINS))
    later = [table[f"warm {i + 1}"] for i in range(1, N_RETRAINS)]
    warm_mean = statistics.mean(col["total"] for col in later)
    warm_share = statistics.mean(share(col) for col in later)
    cold_share = statistics.mean(share(table[f"cold {i + 1}"]) for i in range(N_RETRAINS))
    print(f"cold retrain {cold_mean:.1f} s (start-up + graph build {cold_share:.0%} of it); warm retrain after "
          f"the first {warm_mean:.1f} s (start-up + graph build {warm_share:.1%}; goal < 10%)")
    print(f"ratio cold / warm retrain: {cold_mean / warm_mean:.2f}x; first warm retrain "
          f"{table['warm 1']['total']:.1f} s (pays the start-up once)")
    worst = max(abs(c.metrics["final_loss"] - w.metrics["final_loss"]) / abs(c.metrics["final_loss"])
                for c, w in zip(cold, warm))
    print(f"same fits: largest relative difference of the final loss, cold vs warm: {worst:.1e}")
    print(f"machine load (1-min average) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (this benchmark alone makes about 2)")


if __name__ == "__main__":
    main()
