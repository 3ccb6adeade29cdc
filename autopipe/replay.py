"""The proof of a healed potential: replay a walker's trajectory from its first state.

``autopipe replay --workdir DIR`` runs walker 0's MD again from its initial checkpoint,
once with the first potential and once with the newest, with the run's own MD and OTF
settings, and compares them: where each stops on high gamma, how well energy is
conserved, and each potential's force error against the labelling code on the collision
frames (the MD frames at every trigger of the run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from autopipe.config.run import load_resolved_run
from autopipe.db import Database, Walker
from autopipe.layout import RunLayout


@dataclass
class ReplayResult:
    """One replay: ``status`` as for a segment, steps run, gamma and energy behaviour."""

    version: int
    name: str
    status: str
    steps: int
    planned_steps: int
    max_gamma: float
    energy_drift_per_atom: float  # eV/atom: max |E_total(t) - E_total(0)| / N over the replay
    walltime: float  # s
    collision_force_rmse: float | None  # eV/Å on the run's trigger frames, None without frames


def replay(workdir: Path | str, version: int, *, n_steps: int | None = None, frames=None) -> ReplayResult:
    """Run walker 0 from its initial checkpoint with potential ``version`` (for ``n_steps``,
    default the run's ``stop.max_md_steps``), stopping on gamma like the run did."""
    from autopipe.md import load_state, run_segment
    from autopipe.potentials import PotentialStore
    from autopipe.validation import force_rmse

    layout = RunLayout(Path(workdir))
    run = load_resolved_run(workdir)
    db = Database(run.database_url())
    store = PotentialStore(db, layout.potentials)
    pot = store.get(version)
    with db.session() as s:
        w = s.scalars(select(Walker).order_by(Walker.index)).first()
        if w is None:
            raise ValueError(f"{workdir}: the run has no walker to replay")
        first = layout.initial_checkpoint(w.index)
    n = n_steps or run.stop.max_md_steps
    res = run_segment(load_state(first), pot, run.md, run.otf, workdir=layout.replay_dir(version), n_steps=n)
    e = np.asarray(res.thermo.get("etotal", []), dtype=float)
    n_atoms = len(res.final_state.atoms)
    drift = float(np.max(np.abs(e - e[0])) / n_atoms) if len(e) else float("nan")
    return ReplayResult(
        version=version, name=pot.name, status=res.status, steps=res.end_step - res.start_step, planned_steps=n,
        max_gamma=float(res.max_gamma), energy_drift_per_atom=drift, walltime=res.walltime,
        collision_force_rmse=force_rmse(pot, frames) if frames else None,
    )


def compare(workdir: Path | str, first: int | None = None, last: int | None = None) -> list[ReplayResult]:
    """Replay with the first and the newest potential (or the versions given); writes replay.json."""
    from autopipe.potentials import PotentialStore
    from autopipe.validation import trigger_frames

    layout = RunLayout(Path(workdir))
    run = load_resolved_run(workdir)
    db = Database(run.database_url())
    versions = PotentialStore(db, layout.potentials).versions()
    if not versions:
        raise ValueError(f"{workdir}: no potential has been published")
    first = first or versions[0]
    last = last or versions[-1]
    frames = trigger_frames(db, run.dft.model_dump())
    results = [replay(workdir, v, frames=frames) for v in dict.fromkeys([first, last])]
    layout.replay_summary.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


def describe(r: ReplayResult, threshold: float) -> str:
    """One line about a replay."""
    if r.status == "triggered":
        what = f"stopped at step {r.steps} of {r.planned_steps}: gamma {r.max_gamma:.1f} > {threshold:g}"
    elif r.status == "completed":
        what = f"ran all {r.steps} steps, max gamma {r.max_gamma:.2f} <= {threshold:g}"
    else:
        what = f"failed after {r.steps} steps"
    rmse = "" if r.collision_force_rmse is None else f"; force RMSE on collision frames {1000 * r.collision_force_rmse:.1f} meV/Å"
    return f"v{r.version} {r.name}: {what}; energy drift {1000 * r.energy_drift_per_atom:.2f} meV/atom{rmse}"
