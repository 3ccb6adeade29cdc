"""Held-out evaluation: how good a potential is, measured against the run's labeller.

Two kinds of evidence, kept apart on purpose:

* **in-sample**: the run's own trigger frames (:func:`trigger_frames`). The environments
  around their trigger atoms were carved, labelled and trained on, so a low error there
  shows the fit took, not that the potential generalises;
* **fresh** (held-out): MD trajectories the loop never saw. :func:`fresh_starts` draws new
  velocity seeds (and a new starting structure where the run's structure has a seed),
  :func:`run_fresh` runs one of them with the run's MD and OTF settings until it ends or
  triggers, :func:`closest_contact_frames` picks the frames with the smallest pair
  distance from its trajectory (:func:`read_frames`), and :func:`frame_errors` measures
  each potential's force error on those frames after :func:`label_frames` labelled them.

The report and ``autopipe replay`` use these; this module imports neither. Functions take
run configurations, potentials and frames, and touch no database, except
:func:`trigger_frames`, which reads the run's frames from it.

Units: Å, eV, eV/Å; energy drift in eV/atom; wall times in s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from sqlalchemy import select

from autopipe.db import Database, Origin, Structure
from autopipe.generate import min_pair_distance  # smallest pair distance under minimum image (Å)

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import RunConfig
    from autopipe.md import MDState, SegmentResult

#: First fresh seed unless told otherwise; seeds the run used itself are skipped.
DEFAULT_SEED_BASE = 1000

#: A labelled frame: the structure and its reference forces (eV/Å, one row per atom).
LabelledFrame = tuple["Atoms", np.ndarray]


# ----------------------------------------------------------------------------- in-sample frames


def trigger_frames(db: Database, dft_config: dict[str, Any] | None) -> list[LabelledFrame] | None:
    """The run's trigger frames with forces from the labelling code: ``[(atoms, forces eV/Å)]``.

    Only for analytic oracles, which are cheap; pw.x runs return ``None``. These are
    in-sample frames: the environments around their trigger atoms were carved and trained on.
    """
    if not dft_config or dft_config.get("code") == "espresso":
        return None
    from autopipe.db import atoms_from_structure

    with db.session() as s:
        frames = [atoms_from_structure(r) for r in s.scalars(
            select(Structure).where(Structure.origin == Origin.md_frame, not_probe()).order_by(Structure.id))]
    return label_frames(frames, dft_config)


def not_probe():
    """SQL condition: not a false-negative probe's structure (its frames are MD frames that did not trigger)."""
    from autopipe.db import HeldOut

    return Structure.heldout.is_distinct_from(HeldOut.probe)  # NULL (trained on) included


def force_rmse(potential, frames: Sequence[LabelledFrame]) -> float:
    """Force RMSE (eV/Å, per component) of a potential (``PotentialFiles``) on ``[(atoms, forces)]``."""
    err = [force_errors(potential, atoms, ref).ravel() for atoms, ref in frames]
    return float(np.sqrt(np.mean(np.concatenate(err) ** 2))) if err else float("nan")


def force_errors(potential, atoms: Atoms, reference: np.ndarray) -> np.ndarray:
    """Force of ``potential`` minus ``reference`` on every atom of ``atoms``, (n, 3) eV/Å."""
    from autopipe.potentials.uncertainty import evaluate

    return np.asarray(evaluate(atoms, potential)["forces"]) - np.asarray(reference, dtype=float)


def label_frames(frames: Iterable[Atoms], dft_config: Any, *, workdir: Callable[[int], Path] | None = None,
                 launcher: Sequence[str] = ()) -> list[LabelledFrame]:
    """Label ``frames`` with the run's labeller (``dft_config`` as in the run file); failed labels are left out.

    ``workdir(i)``: where pw.x keeps the files of frame ``i`` (oracles write nothing);
    ``launcher``: the site's ``dft_launcher`` (e.g. ``["srun", "-n", "4"]``).
    """
    from autopipe.dft import label

    out = []
    for i, atoms in enumerate(frames):
        res = label(atoms, dft_config, workdir=workdir(i) if workdir else None, launcher=list(launcher))
        if res.ok:
            out.append((atoms, np.asarray(res.forces, dtype=float)))
    return out


# ----------------------------------------------------------------------------- fresh starts


@dataclass(frozen=True)
class FreshStart:
    """A new initial state: ``seed`` draws the velocities (and seeds the thermostat);
    ``structure_seed`` replaces the seed of the run's starting structure, or is ``None``
    when that structure has no seed (a file, a crystal without rattle)."""

    seed: int
    structure_seed: int | None


def _structure_seed(run: RunConfig) -> int | None:
    """The seed of the run's starting structure, if changing it changes the structure (a bulk
    crystal's seed draws its rattle, its vacancy sites and an alloy's species)."""
    src = run.system.structure
    if src.kind == "liquid2d" or (src.kind == "bulk" and (src.rattle > 0 or src.vacancies or src.composition)):
        return int(src.seed)
    return None


def run_seeds(run: RunConfig) -> set[int]:
    """Seeds the run itself used: its walkers' velocity seeds (``md.seed + i``) and its structure's seed."""
    used = {run.md.seed + i for i in range(run.walkers.count)}
    if (s := _structure_seed(run)) is not None:
        used.add(s)
    return used


def fresh_starts(run: RunConfig, n: int, seed_base: int = DEFAULT_SEED_BASE) -> list[FreshStart]:
    """``n`` new starts: the first ``n`` integers from ``seed_base`` (>= 1) that the run did not use.

    The same seed draws the velocities and, where the run's structure has a seed, the
    structure, so one integer names one fresh start. A seed whose structure cannot be built
    (random placement of a dense liquid can jam) is skipped like a used one.
    """
    if n < 0:
        raise ValueError(f"the number of fresh seeds must be >= 0, not {n}")
    if seed_base < 1:
        raise ValueError(f"the seed base must be >= 1, not {seed_base}")
    used = run_seeds(run)
    has_structure_seed = _structure_seed(run) is not None
    out: list[FreshStart] = []
    seed, tried = seed_base, 0
    while len(out) < n:
        if seed not in used:
            start = FreshStart(seed=seed, structure_seed=seed if has_structure_seed else None)
            tried += 1
            try:
                _fresh_structure(run, start)
                out.append(start)
            except ValueError:
                if tried > 10 * n + 10:
                    raise ValueError(f"the run's starting structure could not be built for {tried - len(out)} "
                                     f"of {tried} fresh seeds from {seed_base}") from None
        seed += 1
    return out


def _fresh_structure(run: RunConfig, start: FreshStart) -> Atoms:
    from autopipe.generate import template_atoms

    system = run.system
    if start.structure_seed is not None:
        structure = system.structure.model_copy(update={"seed": start.structure_seed})
        system = system.model_copy(update={"structure": structure})
    return template_atoms(system)


def fresh_initial_state(run: RunConfig, start: FreshStart) -> MDState:
    """The initial MD state of ``start``: the run's structure recipe and MD settings with the new seeds."""
    from autopipe.md import initial_state

    return initial_state(_fresh_structure(run, start), run.md.model_copy(update={"seed": start.seed}))


# ----------------------------------------------------------------------------- fresh trajectories


@dataclass
class FreshTrajectory:
    """One fresh trajectory of one potential. A trigger ends it: ``status`` ``"triggered"``,
    ``trigger_step`` (MD step) and ``trigger_gamma`` say where. ``energy_drift_per_atom``:
    max |E_total(t) - E_total(0)| / N over the steps run (eV/atom; meaningful in NVE).
    ``gamma_trace``: ``[[step, max gamma], ...]``. ``trajectory``: the frames file."""

    version: int
    seed: int
    structure_seed: int | None
    status: str
    steps: int
    planned_steps: int
    max_gamma: float
    energy_drift_per_atom: float
    walltime: float
    trigger_step: int | None = None
    trigger_gamma: float | None = None
    error: str | None = None
    gamma_trace: list[list[float]] = field(default_factory=list)
    trajectory: str | None = None


def energy_drift(thermo: dict[str, list[float]], n_atoms: int) -> float:
    """Largest |E_total(t) - E_total(0)| per atom over the thermo records (eV/atom); NaN without records."""
    e = np.asarray(thermo.get("etotal", []), dtype=float)
    return float(np.max(np.abs(e - e[0])) / n_atoms) if len(e) and n_atoms else float("nan")


def run_fresh(state: MDState, potential, run: RunConfig, workdir: Path, start: FreshStart,
              n_steps: int | None = None) -> tuple[FreshTrajectory, SegmentResult]:
    """Run ``potential`` from ``state`` with the run's MD and OTF settings for ``n_steps``
    (default ``stop.max_md_steps``) in one segment that a trigger ends; its files go to ``workdir``."""
    from autopipe.md import run_segment

    n = int(n_steps or run.stop.max_md_steps)
    md = run.md.model_copy(update={"seed": start.seed})  # the thermostat's noise is fresh too
    res = run_segment(state, potential, md, run.otf, workdir=Path(workdir), n_steps=n)
    triggered = res.status == "triggered"
    steps = res.end_step - res.start_step
    if res.status == "failed" and len(res.gamma_trace):  # a failed segment reports no end: its last check
        steps = int(res.gamma_trace[-1, 0]) - res.start_step
    traj = FreshTrajectory(
        version=int(potential.version), seed=start.seed, structure_seed=start.structure_seed, status=res.status,
        steps=steps, planned_steps=n, max_gamma=float(res.max_gamma),
        energy_drift_per_atom=energy_drift(res.thermo, len(state.atoms)), walltime=float(res.walltime),
        trigger_step=res.end_step if triggered else None,
        trigger_gamma=float(res.trigger_frame.info["max_gamma"]) if triggered and res.trigger_frame is not None else None,
        error=res.error, gamma_trace=np.asarray(res.gamma_trace, dtype=float).tolist(),
        trajectory=str(res.trajectory) if res.trajectory else None,
    )
    return traj, res


def segment_frames(res: SegmentResult, template: Atoms, dimension: int) -> list[Atoms]:
    """The frames of a finished segment: its trajectory file, plus the trigger frame when it triggered.

    ``template``: the segment's starting atoms (for LAMMPS dumps: species order, pbc, cell frame).
    Each frame carries ``info["step"]``; forces and gamma written by the MD are dropped.
    """
    frames = read_frames(res.trajectory, template, dimension) if res.trajectory else []
    if res.trigger_frame is not None:
        frames.append(_bare(res.trigger_frame))
    return frames


def _bare(atoms: Atoms) -> Atoms:
    """A copy with positions, cell, pbc, species and the step only: no calculator, no MD arrays."""
    from ase import Atoms

    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info["step"] = int(atoms.info.get("step", -1))
    return out


def read_frames(path: Path | str, template: Atoms, dimension: int) -> list[Atoms]:
    """Frames of a segment trajectory: the callback route's extxyz or a LAMMPS custom dump (``.lammpstrj``)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    if path.suffix == ".lammpstrj":
        return read_lammps_dump(path, template, dimension)
    from ase.io import read

    return [_bare(a) for a in read(path, index=":", format="extxyz")]


def read_lammps_dump(path: Path | str, template: Atoms, dimension: int) -> list[Atoms]:
    """Frames of a LAMMPS ``dump custom`` with columns ``id element x y z ...`` in the ASE frame of ``template``.

    Positions are mapped back with the rotation of ``template``'s cell (as the segment did), each
    frame in its own dumped box; LAMMPS's box corner is not restored, so frames may be rigidly
    shifted: forces do not care. A truncated last frame (a segment killed while writing) is skipped.
    """
    from ase.data import atomic_numbers

    from autopipe.md.box import frame_atoms, lammps_box
    from autopipe.md.dump import read_dump_frames

    box = lammps_box(template.cell, template.pbc, dimension, template.positions)
    frames: list[Atoms] = []
    for dump in read_dump_frames(path):
        cols = dump.columns
        order = np.argsort(cols["id"], kind="stable")
        pos = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)[order]
        if dimension == 2:
            pos[:, 2] = 0.0
        numbers = [atomic_numbers[str(s)] for s in cols["element"][order]]
        atoms = frame_atoms(box, numbers, template.pbc, pos, box.lo, dump.matrix)
        atoms.info["step"] = dump.step
        frames.append(atoms)
    return frames


def frames_to_label(frames: Sequence[Atoms], dft_code: str, dft_frames: int) -> list[Atoms]:
    """The frames worth labelling, closest contact first: all of them for an analytic oracle,
    the ``dft_frames`` closest for pw.x (each one a DFT calculation of a whole MD cell)."""
    ordered = sorted(frames, key=min_pair_distance)
    return ordered[:max(int(dft_frames), 0)] if dft_code == "espresso" else ordered


def write_labelled_frames(path: Path | str, frames: Sequence[LabelledFrame]) -> None:
    """Write labelled frames as extxyz, the reference forces (eV/Å) in ``arrays["ref_forces"]``."""
    from ase.io import write

    out = []
    for atoms, ref in frames:
        a = atoms.copy()
        a.arrays["ref_forces"] = np.asarray(ref, dtype=float)
        out.append(a)
    write(Path(path), out, format="extxyz")


def read_labelled_frames(path: Path | str) -> list[LabelledFrame]:
    """Frames written by :func:`write_labelled_frames`; empty if the file does not exist."""
    if not Path(path).is_file():
        return []
    from ase.io import read

    return [(a, a.arrays["ref_forces"]) for a in read(Path(path), index=":", format="extxyz")]


def closest_contact_frames(frames: Sequence[Atoms], k: int) -> list[Atoms]:
    """The ``k`` frames with the smallest pair distance, closest first (ties: earlier frame first).

    Each returned frame gets ``info["min_distance"]`` (Å).
    """
    if k <= 0 or not frames:
        return []
    d = np.array([min_pair_distance(a) for a in frames])
    picked = np.argsort(d, kind="stable")[:k]
    out = []
    for j in picked:
        a = frames[int(j)].copy()
        a.info["min_distance"] = float(d[j])
        out.append(a)
    return out


def unique_frames(frames: Iterable[Atoms], tolerance: float = 1e-4) -> list[Atoms]:
    """Drop repeats of a structure (positions within ``tolerance`` Å): the shared first frame of
    two runs from one start, a trigger frame also written to the trajectory (at lower precision)."""
    out: list[Atoms] = []
    for a in frames:
        if not any(len(a) == len(b) and np.allclose(a.cell.array, b.cell.array, atol=tolerance)
                   and np.allclose(a.positions, b.positions, atol=tolerance) for b in out):
            out.append(a)
    return out


# ----------------------------------------------------------------------------- summaries


@dataclass
class FreshScore:
    """One potential on the fresh trajectories and the shared close-contact frames.

    ``mean_steps``: MD steps run per trajectory (a trigger ends one); ``max_drift``: the
    largest energy drift of its trajectories (eV/atom); ``force_rmse``: force RMSE on the
    close-contact frames (eV/Å, per component, every atom), NaN without frames.
    """

    version: int
    name: str
    trajectories: int
    triggers: int
    failures: int
    mean_steps: float
    max_drift: float
    force_rmse: float
    n_frames: int


def score(version: int, name: str, trajectories: Sequence[FreshTrajectory], frame_rmse: float, n_frames: int) -> FreshScore:
    """Summarise one potential's fresh trajectories (those of other versions are ignored)."""
    mine = [t for t in trajectories if t.version == version]
    drifts = [t.energy_drift_per_atom for t in mine if np.isfinite(t.energy_drift_per_atom)]
    return FreshScore(
        version=version, name=name, trajectories=len(mine), triggers=sum(t.status == "triggered" for t in mine),
        failures=sum(t.status == "failed" for t in mine),
        mean_steps=float(np.mean([t.steps for t in mine])) if mine else float("nan"),
        max_drift=float(max(drifts)) if drifts else float("nan"), force_rmse=float(frame_rmse), n_frames=n_frames,
    )


def frame_errors(potentials: Sequence, frames: Sequence[LabelledFrame]) -> tuple[dict[int, float], list[dict[int, float]]]:
    """Force RMSE (eV/Å) of each potential over all ``frames``, and per frame: ``({version: rmse}, [{version: rmse}])``."""
    pooled: dict[int, float] = {}
    per_frame: list[dict[int, float]] = [{} for _ in frames]
    for pot in potentials:
        errs = [force_errors(pot, atoms, ref) for atoms, ref in frames]
        for row, e in zip(per_frame, errs):
            row[int(pot.version)] = float(np.sqrt(np.mean(e ** 2)))
        pooled[int(pot.version)] = float(np.sqrt(np.mean(np.concatenate([e.ravel() for e in errs]) ** 2))) \
            if errs else float("nan")
    return pooled, per_frame


def describe_scores(scores: Sequence[FreshScore], n_steps: int) -> list[str]:
    """A plain-text table of :class:`FreshScore` rows (drift in meV/atom, force RMSE in meV/Å)."""
    head = f"{'potential':<24} {'trajectories':>12} {'triggered':>9} {'mean steps':>11} {'max drift':>14} {'close-contact F RMSE':>21}"
    lines = [head]
    for s in scores:
        rmse = "–" if not np.isfinite(s.force_rmse) else f"{1000 * s.force_rmse:.1f} meV/Å ({s.n_frames})"
        drift = "–" if not np.isfinite(s.max_drift) else f"{1000 * s.max_drift:.2f} meV/atom"
        lines.append(f"{f'v{s.version} {s.name}':<24} {s.trajectories:>12} {s.triggers:>9} "
                     f"{s.mean_steps:>5.0f}/{n_steps:<5d} {drift:>14} {rmse:>21}")
    return lines


@dataclass
class FreshReport:
    """Everything one fresh-trajectory validation measured (written as JSON next to replay.json).

    ``frames``: one entry per labelled close-contact frame: ``source_version`` and ``seed``
    of the trajectory it came from, ``step``, ``min_distance`` (Å) and ``errors``
    (``{version: force RMSE eV/Å}``). Every potential is scored on all of them, so the
    scores compare like with like.
    """

    n_steps: int
    threshold: float
    labeller: str
    frames_per_trajectory: int
    starts: list[FreshStart]
    trajectories: list[FreshTrajectory]
    frames: list[dict[str, Any]]
    scores: list[FreshScore]
    walltime: float = 0.0

    def ratio(self) -> float:
        """Close-contact force RMSE of the first scored potential over the last one's (NaN if undefined)."""
        if len(self.scores) < 2 or not self.scores[-1].force_rmse > 0:
            return float("nan")
        return self.scores[0].force_rmse / self.scores[-1].force_rmse

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FreshReport:
        d = dict(data)
        d["starts"] = [FreshStart(**x) for x in d["starts"]]
        d["trajectories"] = [FreshTrajectory(**x) for x in d["trajectories"]]
        d["scores"] = [FreshScore(**x) for x in d["scores"]]
        d["frames"] = [{**f, "errors": {int(k): v for k, v in f["errors"].items()}} for f in d["frames"]]
        return cls(**d)

    def describe(self) -> list[str]:
        """The table, and one line saying what was measured on what."""
        n_frames = len(self.frames)
        lines = [f"fresh trajectories (held-out: new seeds the loop never saw): {len(self.starts)} start(s) "
                 f"x {len(self.scores)} potential(s), up to {self.n_steps} steps each, a trigger (gamma > "
                 f"{self.threshold:g}) ends one; force RMSE against {self.labeller} on {n_frames} close-contact "
                 f"frame(s) of those trajectories ({self.frames_per_trajectory} closest per trajectory), "
                 "the same frames for every potential"]
        lines += describe_scores(self.scores, self.n_steps)
        for t in self.trajectories:
            end = (f"triggered at step {t.trigger_step} (gamma {t.trigger_gamma:.1f})" if t.status == "triggered"
                   else "ran all steps" if t.status == "completed" else f"failed after {t.steps} steps: {t.error}")
            lines.append(f"  v{t.version} seed {t.seed}: {end}, max gamma {t.max_gamma:.2f}")
        if np.isfinite(r := self.ratio()):
            lines.append(f"close-contact force RMSE v{self.scores[0].version}/v{self.scores[-1].version}: {r:.1f}x")
        return lines
