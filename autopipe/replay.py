"""The evidence of a healed potential: the first and the newest potential, side by side.

``autopipe replay --workdir DIR`` does two things with the run's own MD and OTF settings:

* **in-sample replay** (:func:`compare`): walker 0's MD again from its initial checkpoint,
  once with each potential: where each stops on high gamma, how well energy is conserved,
  and each one's force error against the labelling code on the run's trigger frames.
  Those frames are in-sample: the environments around their trigger atoms were carved and
  trained on, and the replay repeats the trajectory the loop learnt from;
* **fresh trajectories** (:func:`compare_fresh`): new starts the loop never saw (new
  velocity seeds, a new starting structure where the run's has a seed), the same starts
  for both potentials: how many trigger and when, how long each runs, energy drift, and
  the force error on the closest-contact frames of those runs. This is the held-out test.

Results go to ``replay.json`` and ``fresh.json`` (:class:`autopipe.layout.RunLayout`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from sqlalchemy import select

from autopipe.config.run import load_resolved_run
from autopipe.db import Database, Walker
from autopipe.layout import RunLayout
from autopipe.heldout import DEFAULT_SEED_BASE, FreshReport


@dataclass
class ReplayResult:
    """One in-sample replay: ``status`` as for a segment, steps run, gamma and energy behaviour."""

    version: int
    name: str
    status: str
    steps: int
    planned_steps: int
    max_gamma: float
    energy_drift_per_atom: float  # eV/atom: max |E_total(t) - E_total(0)| / N over the replay
    walltime: float  # s
    collision_force_rmse: float | None  # eV/Å on the run's trigger frames (in-sample), None without frames


def _versions(store, first: int | None, last: int | None, workdir) -> list[int]:
    versions = store.versions()
    if not versions:
        raise ValueError(f"{workdir}: no potential has been published")
    served = store.latest()  # the newest version walkers use: not one the gate rejected
    return list(dict.fromkeys([first or versions[0], last or (served.version if served else versions[-1])]))


def replay(workdir: Path | str, version: int, *, n_steps: int | None = None, frames=None) -> ReplayResult:
    """Run walker 0 from its initial checkpoint with potential ``version`` (for ``n_steps``,
    default the run's ``stop.max_md_steps``), stopping on gamma like the run did."""
    from autopipe.md import load_state, run_segment
    from autopipe.potentials import PotentialStore
    from autopipe.heldout import energy_drift, force_rmse

    layout = RunLayout(Path(workdir))
    run = load_resolved_run(workdir)
    db = Database.for_run(workdir)
    store = PotentialStore(db, layout.potentials)
    pot = store.get(version)
    with db.session() as s:
        w = s.scalars(select(Walker).order_by(Walker.index)).first()
        if w is None:
            raise ValueError(f"{workdir}: the run has no walker to replay")
        first = layout.initial_checkpoint(w.index)
    n = n_steps or run.stop.max_md_steps
    state = load_state(first)
    res = run_segment(state, pot, run.md, run.otf, workdir=layout.replay_dir(version), n_steps=n)
    return ReplayResult(
        version=version, name=pot.name, status=res.status, steps=res.end_step - res.start_step, planned_steps=n,
        max_gamma=float(res.max_gamma), energy_drift_per_atom=energy_drift(res.thermo, len(state.atoms)),
        walltime=res.walltime, collision_force_rmse=force_rmse(pot, frames) if frames else None,
    )


def compare(workdir: Path | str, first: int | None = None, last: int | None = None) -> list[ReplayResult]:
    """In-sample replay with the first and the newest potential (or the versions given); writes replay.json."""
    from autopipe.potentials import PotentialStore
    from autopipe.heldout import trigger_frames

    layout = RunLayout(Path(workdir))
    run = load_resolved_run(workdir)
    db = Database.for_run(workdir)
    versions = _versions(PotentialStore(db, layout.potentials), first, last, workdir)
    frames = trigger_frames(db, run.dft.model_dump())
    results = [replay(workdir, v, frames=frames) for v in versions]
    layout.replay_summary.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


def compare_fresh(
    workdir: Path | str,
    first: int | None = None,
    last: int | None = None,
    *,
    n_seeds: int = 4,
    frames_per_trajectory: int = 3,
    dft_frames: int = 2,
    seed_base: int | None = None,
    n_steps: int | None = None,
    launcher: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> FreshReport:
    """Fresh trajectories with the first and the newest potential (or the versions given).

    ``n_seeds`` new starts (:func:`autopipe.heldout.fresh_starts` from ``seed_base``, default
    :data:`~autopipe.heldout.DEFAULT_SEED_BASE`), each
    run with every potential for ``n_steps`` (default ``stop.max_md_steps``) unless a trigger
    ends it. From every trajectory the ``frames_per_trajectory`` closest-contact frames (and
    its trigger frame, when there is one, as a candidate) go into one pool, labelled by the
    run's labeller: all of them with an oracle, the ``dft_frames`` closest with pw.x (each a
    full MD cell: that costs DFT time), run with ``launcher`` before ``pw.x``. Every
    potential is scored on the whole pool. The pool depends on how far the trajectories
    got: a potential that triggers early adds fewer and milder close contacts, so read the
    scores with the trigger counts.

    Writes ``fresh.json`` and the labelled frames (extxyz, reference forces in
    ``arrays["ref_forces"]``) for the report; files of earlier fresh runs are replaced.
    ``progress`` receives one line per finished piece of work.
    """
    from autopipe.potentials import PotentialStore
    from autopipe.heldout import (
        closest_contact_frames,
        fresh_initial_state,
        fresh_starts,
        frame_errors,
        frames_to_label,
        label_frames,
        run_fresh,
        score,
        segment_frames,
        unique_frames,
        write_labelled_frames,
    )

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    layout = RunLayout(Path(workdir))
    run = load_resolved_run(workdir)
    db = Database.for_run(workdir)
    store = PotentialStore(db, layout.potentials)
    pots = [store.get(v) for v in _versions(store, first, last, workdir)]
    starts = fresh_starts(run, n_seeds, DEFAULT_SEED_BASE if seed_base is None else seed_base)
    n = int(n_steps or run.stop.max_md_steps)
    layout.fresh_summary.unlink(missing_ok=True)  # never a summary of other files than those on disk
    shutil.rmtree(layout.fresh_dir, ignore_errors=True)

    trajectories, candidates = [], []
    total = len(starts) * len(pots)
    for i, start in enumerate(starts):
        state = fresh_initial_state(run, start)
        for j, pot in enumerate(pots):
            traj, res = run_fresh(state, pot, run, layout.fresh_run_dir(pot.version, start.seed), start, n)
            trajectories.append(traj)
            frames = unique_frames(segment_frames(res, state.atoms, run.md.dimension))
            for a in closest_contact_frames(frames, frames_per_trajectory):
                a.info.update(source_version=int(pot.version), seed=start.seed)
                candidates.append(a)
            end = (f"triggered at step {traj.trigger_step} (gamma {traj.trigger_gamma:.1f})"
                   if traj.status == "triggered" else "ran all steps" if traj.status == "completed"
                   else f"FAILED: {traj.error}")
            say(f"fresh {i * len(pots) + j + 1}/{total}: v{pot.version} seed {start.seed}: {end} "
                f"[{traj.walltime:.0f} s]")

    pool = frames_to_label(unique_frames(candidates), run.dft.code, dft_frames)
    say(f"labelling {len(pool)} close-contact frame(s) with {run.dft.code}"
        + (f" (closest pair {pool[0].info['min_distance']:.2f} Å)" if pool else ""))
    labelled = label_frames(pool, run.dft, workdir=layout.fresh_dft_dir, launcher=launcher)
    pooled, per_frame = frame_errors(pots, labelled)
    frames_out = [{"source_version": a.info["source_version"], "seed": a.info["seed"], "step": a.info["step"],
                   "min_distance": a.info["min_distance"], "errors": errs} for (a, _), errs in zip(labelled, per_frame)]
    if labelled:
        write_labelled_frames(layout.fresh_frames, labelled)
    report = FreshReport(
        n_steps=n, threshold=float(run.otf.uncertainty_threshold), labeller=run.dft.code,
        frames_per_trajectory=frames_per_trajectory, starts=starts, trajectories=trajectories, frames=frames_out,
        scores=[score(p.version, p.name, trajectories, pooled.get(p.version, float("nan")), len(labelled))
                for p in pots],
        walltime=time.perf_counter() - t0,
    )
    layout.fresh_summary.write_text(json.dumps(report.to_json(), indent=2))
    return report


def read_fresh(workdir: Path | str) -> FreshReport | None:
    """The last fresh-trajectory validation of a run, or None if there is none."""
    path = RunLayout(Path(workdir)).fresh_summary
    return FreshReport.from_json(json.loads(path.read_text())) if path.is_file() else None


def describe(r: ReplayResult, threshold: float) -> str:
    """One line about an in-sample replay."""
    if r.status == "triggered":
        what = f"stopped at step {r.steps} of {r.planned_steps}: gamma {r.max_gamma:.1f} > {threshold:g}"
    elif r.status == "completed":
        what = f"ran all {r.steps} steps, max gamma {r.max_gamma:.2f} <= {threshold:g}"
    else:
        what = f"failed after {r.steps} steps"
    rmse = ("" if r.collision_force_rmse is None
            else f"; force RMSE on the run's trigger frames (in-sample) {1000 * r.collision_force_rmse:.1f} meV/Å")
    return f"v{r.version} {r.name}: {what}; energy drift {1000 * r.energy_drift_per_atom:.2f} meV/atom{rmse}"
