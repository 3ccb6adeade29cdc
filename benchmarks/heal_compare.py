"""Time to heal and DFT cost: autopipe side by side with whole-cell active learning.

One invocation runs the same healing scenario with the same seeds, stopping rules and
budgets under each strategy, scores every result on the same held-out data, and prints
one table. Scenarios (the 2D Lennard-Jones demo, ``configs/runs/lj2d-heal.yaml``: hot NVE,
a version 1 that never saw close contacts, the LJ oracle standing in for DFT):

* ``100 atoms``: the demo as it is;
* ``1000 atoms``: the same at the same density (a 81.6 Å square instead of 25.8 Å), its
  generated initial dataset still made of the demo's 100-atom cells. Random placement of
  1,000 atoms jams at the demo's 2.0 Å minimum distance, so its start keeps 1.9 Å.

Strategies, all through the real loop (:func:`autopipe.steer.loop.run_loop` on
``configs/local.yaml``, each run in a fresh process so no warm trainer carries over):

* ``autopipe``: periodic sub-cells around the uncertain atoms, buffer forces masked,
  priority DFT, D-optimal selection, 2 walkers;
* ``whole-frame``: the same loop with ``embedding.whole_frame: always``: each trigger labels
  the whole MD frame, nothing masked (pacemaker's manual active learning, FLARE's whole-cell
  DFT), 2 walkers;
* ``blocking``: 1 walker, whole frames: the MD stops while DFT and training run (FLARE's
  on-the-fly shape);
* ``FLARE``: FLARE 1.4.0's own OTF (:mod:`benchmarks.flare_otf`) from the same start, when a
  FLARE venv is given (``$FLARE_PYTHON`` or ``--flare-python``); 100-atom scenario only
  unless ``--flare-large``. It starts from an empty model (no initial dataset).

Columns: labels made by the active learning (the initial dataset, the same 40 cells of 100
atoms for the three loop rows, is printed apart), labelled atoms, the oracle's time, the
pw.x time those labels would take (``t = 55 s * (N/64)^1.95`` per label: the scaling
``benchmarks/dft.py`` measured for Si on one core, calibrated at its 64-atom point; from the
atom count alone), wall time to the stopping rule and which rule fired, and the held-out
result: how many of the fresh seeds (new velocities and structures the runs never saw,
:func:`autopipe.heldout.fresh_starts`) trigger the final potential within
``max_md_steps``, and its force error on the closest-contact frames of the *oracle's* own
MD from those fresh starts (the same frames for every row, independent of the potentials
under test; :func:`benchmarks.demo_fresh_seeds.oracle_frames`): RMSE over every atom, and
the worst atom's |ΔF|. For FLARE the trigger column counts held-out frames on which FLARE's
own uncertainty would call DFT. ``covered``: candidates D-optimal selection dropped as
adding nothing beyond the active set and the cells already chosen (DFT jobs saved).

Goals (issue 16): at equal or better held-out error (close-contact RMSE within 10 %),
autopipe's pw.x estimate at least 20x below whole-frame labelling's for the 1,000-atom
parent, and its wall time to the stopping rule at most half the blocking loop's.

    .venv/bin/python benchmarks/heal_compare.py            # both scenarios (see the README for its time)
    .venv/bin/python benchmarks/heal_compare.py --quick    # the 100-atom scenario only
    FLARE_PYTHON=/work/flare-bench/venv/bin/python .venv/bin/python benchmarks/heal_compare.py --keep /tmp/hc
    .venv/bin/python benchmarks/heal_compare.py --large --dft-latency 0.01 --no-flare   # wall time with DFT latency

``--dft-latency F`` makes every oracle label take F times the pw.x estimate (it sleeps; DFT gets
threads of its own, as on a site's CPU partition), so the wall-time comparison sees what a
blocking loop pays while DFT runs; with the bare oracle, labels take milliseconds and fits
dominate every strategy's wall time.

Internal: ``heal_compare.py loop RUN.yaml`` runs one loop and writes ``outcome.json`` next to it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RUN_FILE = ROOT / "configs" / "runs" / "lj2d-heal.yaml"
SITE_FILE = ROOT / "configs" / "local.yaml"
# With --dft-latency, DFT gets threads of its own (an HPC site's CPU partition): a label that
# sleeps for pw.x's time must not hold an MD slot.
LATENCY_SITE = {"name": "local-dft-apart", "executors": [
    {"label": "md", "kind": "threads", "roles": ["md"], "max_workers": 2},
    {"label": "dft", "kind": "threads", "roles": ["dft"], "max_workers": 2},
    {"label": "train", "kind": "threads", "roles": ["train"], "max_workers": 1}]}

# pw.x cost model: benchmarks/dft.py, Si at the Gamma point, 12 Ry, one core: t ∝ N^1.95, 64 atoms in about 55 s.
PWX_EXPONENT = 1.95
PWX_REF_ATOMS = 64
PWX_REF_SECONDS = 55.0

GOAL_DFT_RATIO = 20.0  # whole-frame / autopipe pw.x estimate, 1,000-atom parent
GOAL_WALL_RATIO = 0.5  # autopipe / blocking wall time
ERROR_TOLERANCE = 0.10  # "equal" held-out error: autopipe's RMSE at most 10 % above the other's


def pwx_seconds(n_atoms: int) -> float:
    """pw.x wall time (s, one core) of one label of ``n_atoms`` atoms, from benchmarks/dft.py's scaling."""
    return PWX_REF_SECONDS * (n_atoms / PWX_REF_ATOMS) ** PWX_EXPONENT


@dataclass(frozen=True)
class Scenario:
    """A parent system: ``n_atoms`` at the demo's density; ``min_distance`` of its random start (Å);
    ``reference_steps``: steps of the oracle's own MD per fresh seed for the held-out frames."""

    name: str
    n_atoms: int
    min_distance: float
    reference_steps: int


@dataclass(frozen=True)
class Strategy:
    name: str
    walkers: int
    whole_frame: str  # embedding.whole_frame
    what: str


SCENARIOS = (
    Scenario("100 atoms", 100, 2.0, 2000),
    # ASE's LJ takes 0.1 s per force call at 1,000 atoms: 500 steps per seed keep the reference
    # at a few minutes (cached), and a 1,000-atom frame has many contacts in 500 steps.
    Scenario("1000 atoms", 1000, 1.9, 500),
)
STRATEGIES = (
    Strategy("autopipe", 2, "if_smaller", "periodic sub-cells, masked buffers, priority DFT"),
    Strategy("whole-frame", 2, "always", "each trigger labels the whole MD frame, no mask"),
    Strategy("blocking", 1, "always", "1 walker, whole frames, MD stops for DFT and training"),
)


@dataclass
class Row:
    """One strategy on one scenario: cost, wall time and held-out result."""

    scenario: str
    strategy: str
    labels: int = 0
    atoms: int = 0
    oracle_s: float = 0.0
    pwx_s: float = 0.0
    wall_s: float = float("nan")
    stopped: str = ""
    version: int | None = None
    triggers: str = "–"  # "k/n" fresh seeds (FLARE: held-out frames over its DFT threshold)
    rmse: float = float("nan")  # eV/Å
    worst: float = float("nan")  # eV/Å
    covered: int | None = None
    selected: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- run files


def scenario_data(sc: Scenario, overrides: list[str] = ()) -> dict[str, Any]:
    """The demo's run file as a mapping with ``overrides`` (``a.b=value``), resized to the scenario's parent."""
    from autopipe.config.base import read_yaml
    from demo_fresh_seeds import apply_overrides

    data = apply_overrides(read_yaml(RUN_FILE), list(overrides))
    demo = copy.deepcopy(data["system"]["structure"])
    if sc.n_atoms != demo["n_atoms"]:
        data["system"]["structure"].update(n_atoms=sc.n_atoms, min_distance=sc.min_distance)
        data["initial_potential"]["structure"] = demo  # the generated cells stay the demo's 100-atom ones
    return data


def strategy_run(base: dict[str, Any], st: Strategy, workdir: Path, max_walltime: float | None,
                 dft_latency: float | None = None) -> Path:
    """Write the strategy's run file into ``workdir`` (created), and its site file when labels
    emulate pw.x's latency (``dft_latency``: the fraction of the pw.x estimate a label takes);
    returns the run file's path."""
    import yaml

    data = copy.deepcopy(base)
    if dft_latency:
        data["dft"]["latency"] = {"seconds_at_64": PWX_REF_SECONDS * dft_latency, "exponent": PWX_EXPONENT}
        (workdir / "site.yaml").parent.mkdir(parents=True, exist_ok=True)
        (workdir / "site.yaml").write_text(yaml.safe_dump(LATENCY_SITE, sort_keys=False))
    data["walkers"] = {"count": st.walkers}
    data["embedding"]["whole_frame"] = st.whole_frame
    if max_walltime is not None:
        data["stop"]["max_walltime"] = max_walltime
    data["workdir"] = str(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- one loop


def run_one(run_file: Path) -> dict[str, Any]:
    """Run the loop of ``run_file`` in a fresh process (no warm trainer or import carried over);
    returns its outcome (``stopped_because``, ``walltime`` s). Its log goes next to the run file."""
    log = run_file.parent / "loop.out"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "loop", str(run_file)],
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    out = run_file.parent / "outcome.json"
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"loop of {run_file} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def loop_main(run_file: Path) -> None:
    """(child process) One loop on the threads site; writes ``outcome.json``."""
    from autopipe.config import load_run, load_site
    from autopipe.steer.loop import run_loop

    run = load_run(run_file)
    site = run_file.parent / "site.yaml"
    outcome = run_loop(load_site(site if site.is_file() else SITE_FILE), run, live=False)
    (run_file.parent / "outcome.json").write_text(json.dumps(
        {"stopped_because": outcome.stopped_because, "walltime": outcome.walltime}))


def loop_row(sc: Scenario, st: Strategy, run, outcome: dict[str, Any]) -> Row:
    """Labels, selection and timing of a finished loop, from its database."""
    from sqlalchemy import func, select

    from autopipe.db import Candidate, CandidateStatus, Database, Label, Origin, Potential, Segment, Structure
    from loop import md_idle

    db = Database(run.database_url())
    with db.session() as s:
        rows = s.execute(select(Structure.n_atoms, Structure.origin, Label.walltime).join(
            Label, Label.structure_id == Structure.id)).all()
        cands = dict(s.execute(select(Candidate.status, func.count()).group_by(Candidate.status)).all())
        newest = s.scalar(select(func.max(Potential.version)))
        fit_s = s.scalar(select(func.coalesce(func.sum(Potential.walltime), 0.0)).where(Potential.version > 1))
        md_steps = s.scalar(select(func.coalesce(func.sum(Segment.end_step - Segment.start_step), 0)))
        heal_s = time_to_heal(s)
    chosen = [r for r in rows if r.origin not in (Origin.generated, Origin.imported)]
    initial = [r for r in rows if r.origin is Origin.generated]
    idle = md_idle(db)
    return Row(
        scenario=sc.name, strategy=st.name, labels=len(chosen), atoms=sum(r.n_atoms for r in chosen),
        oracle_s=sum(r.walltime for r in chosen), pwx_s=sum(pwx_seconds(r.n_atoms) for r in chosen),
        wall_s=float(outcome["walltime"]), stopped=outcome["stopped_because"], version=newest,
        covered=int(cands.get(CandidateStatus.covered, 0)), selected=int(cands.get(CandidateStatus.selected, 0)),
        extra={"initial_labels": len(initial), "initial_atoms": sum(r.n_atoms for r in initial),
               "initial_pwx_s": sum(pwx_seconds(r.n_atoms) for r in initial),
               "retrains": (newest or 1) - 1, "retrain_s": float(fit_s or 0.0), "md_steps": int(md_steps or 0),
               "no_md_share": idle["no MD, from the first segment"], "heal_s": heal_s},
    )


def time_to_heal(session) -> float:
    """Seconds from version 1's publication to the stop event: the healing itself, without the
    initial dataset and the first fit that every strategy shares."""
    from sqlalchemy import select

    from autopipe.db import Event, Potential

    v1 = session.scalar(select(Potential.created_at).where(Potential.version == 1))
    stop = session.scalar(select(Event.created_at).where(Event.kind == "stop"))
    return (stop - v1).total_seconds() if v1 is not None and stop is not None else float("nan")


# ----------------------------------------------------------------------------- held-out scores


def held_out(row: Row, run, pot, starts, frames, workdir: Path) -> None:
    """Fresh-seed triggers and close-contact force errors of ``pot``, into ``row``."""
    import numpy as np

    from autopipe.heldout import force_errors, force_rmse, fresh_initial_state, run_fresh

    trajectories = []
    for start in starts:
        traj, _ = run_fresh(fresh_initial_state(run, start), pot, run, workdir / f"v{pot.version}-seed{start.seed}",
                            start)
        trajectories.append(traj)
    row.triggers = f"{sum(t.status == 'triggered' for t in trajectories)}/{len(starts)}"
    row.rmse = force_rmse(pot, frames)
    row.worst = float(max(np.linalg.norm(force_errors(pot, a, ref), axis=1).max() for a, ref in frames))
    row.extra["fresh_mean_steps"] = float(np.mean([t.steps for t in trajectories]))


def flare_row(sc: Scenario, python: Path, run_file: Path, frames, workdir: Path) -> Row:
    """FLARE's own OTF on the scenario's start, scored on the held-out frames."""
    import numpy as np

    from flare_otf import STD_TOLERANCE, flare_forces, run_flare_otf

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # faster on a shared machine (flare_otf's docstring)
    try:
        summary = run_flare_otf(python, run_file, workdir)
        preds = flare_forces(python, Path(summary["model"]), [a for a, _ in frames])
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    n_atoms = int(summary["atoms_per_dft_call"])
    err = [p["forces"] - ref for p, (_, ref) in zip(preds, frames)]
    over = sum(float(np.max(p["stds"])) > abs(STD_TOLERANCE) for p in preds)
    return Row(
        scenario=sc.name, strategy="FLARE", labels=int(summary["dft_calls"]), atoms=int(summary["labelled_atoms"]),
        oracle_s=float(summary["time"]["dft"]), pwx_s=int(summary["dft_calls"]) * pwx_seconds(n_atoms),
        wall_s=float(summary["wall_time"]), stopped=summary["stopped_because"], triggers=f"{over}/{len(frames)}f",
        rmse=float(np.sqrt(np.mean(np.concatenate([e.ravel() for e in err]) ** 2))),
        worst=float(max(np.linalg.norm(e, axis=1).max() for e in err)),
        extra={"md_steps": int(summary["md_steps"]), "sparse": int(summary["sparse_environments"])},
    )


# ----------------------------------------------------------------------------- the table


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds:.0f} s"


def table(rows: list[Row]) -> list[str]:
    head = (f"{'scenario':<11} {'strategy':<12} {'labels':>6} {'atoms':>7} {'oracle':>7} {'pw.x est':>9} "
            f"{'wall':>6} {'fresh trig':>10} {'F RMSE':>7} {'worst':>6} {'covered':>7}  stopped because")
    lines = [head, f"{'':<24} {'':>6} {'':>7} {'s':>7} {'':>9} {'s':>6} {'':>10} {'meV/Å':>7} {'eV/Å':>6}"]
    for r in rows:
        cov = "–" if r.covered is None else f"{r.covered}"
        lines.append(f"{r.scenario:<11} {r.strategy:<12} {r.labels:>6} {r.atoms:>7} {r.oracle_s:>7.1f} "
                     f"{_h(r.pwx_s):>9} {r.wall_s:>6.0f} {r.triggers:>10} {1000 * r.rmse:>7.1f} {r.worst:>6.2f} "
                     f"{cov:>7}  {r.stopped}")
    return lines


def details(rows: list[Row]) -> list[str]:
    """Where each loop's wall time went (the loop rows only)."""
    lines = [f"{'scenario':<11} {'strategy':<12} {'heal s':>6} {'retrains':>8} {'fit s':>6} {'MD steps':>9} "
             f"{'no-MD share':>11} {'selected':>8} {'covered':>7} {'fresh steps':>11}"]
    for r in rows:
        if r.covered is None or "retrains" not in r.extra:
            continue
        e = r.extra
        lines.append(f"{r.scenario:<11} {r.strategy:<12} {e['heal_s']:>6.0f} {e['retrains']:>8} {e['retrain_s']:>6.0f} {e['md_steps']:>9} "
                     f"{100 * e['no_md_share']:>10.0f}% {r.selected:>8} {r.covered:>7} "
                     f"{e.get('fresh_mean_steps', float('nan')):>11.0f}")
    return lines


def goals(rows: list[Row]) -> list[str]:
    """The issue's goals, met or not, from the rows."""
    by = {(r.scenario, r.strategy): r for r in rows}
    out = []
    for sc in dict.fromkeys(r.scenario for r in rows):
        ap, wf, bl = by.get((sc, "autopipe")), by.get((sc, "whole-frame")), by.get((sc, "blocking"))
        if ap and wf:
            ratio = wf.pwx_s / ap.pwx_s if ap.pwx_s else float("inf")
            err_ok = ap.rmse <= wf.rmse * (1 + ERROR_TOLERANCE)
            line = (f"{sc}: pw.x estimate whole-frame/autopipe {ratio:.1f}x, close-contact RMSE autopipe "
                    f"{1000 * ap.rmse:.1f} vs whole-frame {1000 * wf.rmse:.1f} meV/Å")
            if sc.startswith("1000"):
                met = ratio >= GOAL_DFT_RATIO and err_ok
                line += f" -> goal (>= {GOAL_DFT_RATIO:g}x at equal or better error): {'met' if met else 'NOT met'}"
            out.append(line)
        if ap and bl:
            ratio = ap.wall_s / bl.wall_s
            err_ok = ap.rmse <= bl.rmse * (1 + ERROR_TOLERANCE)
            out.append(f"{sc}: wall time autopipe/blocking {ratio:.2f} ({ap.wall_s:.0f} s vs {bl.wall_s:.0f} s; "
                       f"RMSE {1000 * ap.rmse:.1f} vs {1000 * bl.rmse:.1f} meV/Å) -> goal (<= {GOAL_WALL_RATIO:g} at "
                       f"equal or better error): {'met' if ratio <= GOAL_WALL_RATIO and err_ok else 'NOT met'}")
            heal = ap.extra["heal_s"] / bl.extra["heal_s"]
            out.append(f"{sc}: time to heal after v1 autopipe/blocking {heal:.2f} ({ap.extra['heal_s']:.0f} s vs "
                       f"{bl.extra['heal_s']:.0f} s; the initial dataset and v1's fit, the same for both, left out)")
    return out


# ----------------------------------------------------------------------------- main


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} cores"


def compare(sc: Scenario, root: Path, args, say) -> tuple[list[Row], str]:
    """Every strategy on one scenario; returns the rows and a line about the initial dataset."""
    from autopipe.config import load_run
    from autopipe.db import Database
    from autopipe.layout import RunLayout
    from autopipe.potentials import PotentialStore
    from autopipe.heldout import DEFAULT_SEED_BASE, fresh_starts
    from demo_fresh_seeds import oracle_frames

    base = scenario_data(sc, args.overrides)
    rows, runs, initial = [], {}, ""
    for st in STRATEGIES:
        run_file = strategy_run(base, st, root / st.name, args.max_walltime, args.dft_latency)
        say(f"{sc.name}, {st.name} ({st.what}): running the loop [{load()}]")
        done = run_file.parent / "outcome.json"
        outcome = json.loads(done.read_text()) if args.reuse and done.is_file() else run_one(run_file)
        run = load_run(run_file)
        runs[st.name] = run
        row = loop_row(sc, st, run, outcome)
        rows.append(row)
        e = row.extra
        initial = (f"initial dataset (every loop row, not in the table): {e['initial_labels']} labels, "
                   f"{e['initial_atoms']} atoms, pw.x est {_h(e['initial_pwx_s'])}")
        say(f"  {outcome['stopped_because']} after {outcome['walltime']:.0f} s: v{row.version}, {row.labels} labels "
            f"({row.atoms} atoms), {row.covered} covered")

    # The held-out data: the same fresh starts and oracle frames for every row.
    first = runs[STRATEGIES[0].name]
    starts = fresh_starts(first, args.seeds, args.seed_base or DEFAULT_SEED_BASE)
    for run in runs.values():
        assert [s.seed for s in fresh_starts(run, args.seeds, args.seed_base or DEFAULT_SEED_BASE)] == \
            [s.seed for s in starts], "fresh seeds differ between strategies"
    say(f"{sc.name}: held-out frames from the oracle's own MD, {len(starts)} fresh seeds x {sc.reference_steps} steps")
    # The reference labels are the oracle's own answers: no emulated latency (and the same cache key).
    bare = first.model_copy(update={"dft": first.dft.model_copy(update={"latency": None})})
    frames = oracle_frames(bare, len(starts), args.seed_base, sc.reference_steps)
    fresh_dir = root / "fresh"
    v1 = Row(scenario=sc.name, strategy="v1 (before)", stopped="the defective start, for reference")
    for row, st in zip(rows, STRATEGIES):
        run = runs[st.name]
        store = PotentialStore(Database(run.database_url()), RunLayout(run.workdir).potentials)
        if st is STRATEGIES[0]:
            held_out(v1, run, store.get(1), starts, frames, fresh_dir / st.name)
        say(f"{sc.name}, {st.name}: v{row.version} on {len(starts)} fresh seeds and {len(frames)} frames")
        held_out(row, run, store.get(row.version), starts, frames, fresh_dir / st.name)
    rows.insert(0, v1)

    python = None if args.no_flare else _flare_python(args.flare_python)
    if python is not None and (sc.n_atoms == 100 or args.flare_large):
        say(f"{sc.name}, FLARE's own OTF [{load()}]")
        blocking = root / "blocking" / "run.yaml"
        rows.append(flare_row(sc, python, blocking, frames, root / "flare"))
    return rows, initial


def _flare_python(path: str | None) -> Path | None:
    from flare_otf import flare_python

    p = flare_python(path)
    return p if p is not None and p.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 100-atom scenario only")
    ap.add_argument("--large", action="store_true", help="the 1,000-atom scenario only")
    ap.add_argument("--dft-latency", type=float, default=None, metavar="FRACTION",
                    help="each label takes this fraction of the pw.x estimate (sleeping; DFT on threads of its "
                         "own), so wall times include DFT-like latency; default: the oracle's own time")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep it (default: a temporary one)")
    ap.add_argument("--seeds", type=int, default=4, help="fresh seeds for the held-out scores (default 4)")
    ap.add_argument("--seed-base", type=int, default=None, help="first fresh seed (default: autopipe's)")
    ap.add_argument("--max-walltime", type=float, default=None,
                    help="wall-time budget of every run (s; default: the demo's stop.max_walltime)")
    ap.add_argument("--flare-python", help="the FLARE venv's python (default: $FLARE_PYTHON)")
    ap.add_argument("--flare-large", action="store_true", help="run FLARE on the 1,000-atom parent too")
    ap.add_argument("--no-flare", action="store_true", help="leave FLARE out even when its venv exists")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the demo's run file for every run (dotted path, YAML value); repeatable")
    ap.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: take the loops that finished in an earlier run there, rescore them")
    args = ap.parse_args()

    def say(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    t0 = time.perf_counter()
    say(f"start [{load()}]")
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="heal-compare-") as tmp:
        root = (args.keep or Path(tmp)).resolve()
        for sc in SCENARIOS[:1] if args.quick else SCENARIOS[1:] if args.large else SCENARIOS:
            sc_rows, initial = compare(sc, root / sc.name.replace(" ", "-"), args, say)
            rows += sc_rows
            notes.append(f"{sc.name}: {initial}")
    if args.dft_latency:
        notes.append(f"labels took {args.dft_latency:g} x the pw.x estimate (slept, DFT on threads of its own): the "
                     "loops' wall times include DFT-like latency; FLARE's row does not")
    if args.no_flare:
        notes.append("FLARE: left out (--no-flare)")
    elif _flare_python(args.flare_python) is None:
        notes.append("FLARE: skipped, no FLARE venv (set FLARE_PYTHON; benchmarks/flare_otf.py says how to build one)")
    total = time.perf_counter() - t0

    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(details(rows)))
    print()
    print("\n".join(notes))
    print(f"pw.x estimate: {PWX_REF_SECONDS:g} s * (N/{PWX_REF_ATOMS})^{PWX_EXPONENT} per label (benchmarks/dft.py, "
          "Si, one core); fresh trig: fresh seeds whose trajectory triggered the final potential (FLARE: held-out "
          "frames over its DFT threshold); F RMSE and worst |ΔF| on the oracle-MD close-contact frames")
    print("\n".join(goals(rows)))
    print(f"benchmark wall time {total / 60:.0f} min [{load()}]")
    if args.json:
        from dataclasses import asdict

        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "loop":
        loop_main(Path(sys.argv[2]))
    else:
        main()
