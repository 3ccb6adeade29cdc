"""What runs on Parsl workers: thin wrappers over the plain functions of each module.

Everything crosses by value (:mod:`autopipe.transfer`), so the same function runs in a
thread, an HTEX worker, a Slurm job or on a Globus Compute endpoint with no shared
filesystem: walker states, potentials and pseudopotentials as file bytes (written once into
the worker's cache, keyed by checksum), the training set packed as arrays; results come back
the same way (segment states, labels, the fitted potential's files). Each app writes only
under its :class:`~autopipe.transfer.Scratch` directory on the worker and touches no
database. MD, DFT and training return a :class:`Ran`: the result, where and when it ran, or
why it was too big to send back. Heavy imports happen inside. ``parsl_resource_specification``
is accepted (and ignored) because Parsl passes per-task priorities only to apps that declare it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ran:
    """A worker's answer: ``value`` (the app's result), where it ran (host, Slurm job and
    partition when in one) and when (``started``/``finished``, epoch seconds on the worker's
    clock); ``too_large``: why ``value`` was not sent back (it exceeded the executor's bound);
    ``result_bytes``: ``value`` pickled, the bytes the answer carries back (issue 22's "what travels")."""

    value: Any
    host: str
    started: float
    finished: float
    slurm_job: str | None = None
    slurm_partition: str | None = None
    too_large: str | None = None
    result_bytes: int | None = None


def _ran(value: Any, started: float, scratch, what: str) -> Ran:
    from autopipe.transfer import PayloadTooLarge, check_size

    where = dict(host=socket.gethostname(), started=started, finished=time.time(),
                 slurm_job=os.environ.get("SLURM_JOB_ID"), slurm_partition=os.environ.get("SLURM_JOB_PARTITION"))
    try:
        n = check_size(value, scratch.max_result_bytes, f"the result of {what}")
    except PayloadTooLarge as exc:
        return Ran(None, too_large=str(exc), **where)
    return Ran(value, result_bytes=n, **where)


def md_work(state, potential, md_config, otf_config, scratch, n_steps: int, launcher: list[str] | None = None,
            lammps_args: list[str] | None = None, carve: WorkerCarve | None = None, probe: WorkerProbe | None = None,
            parsl_resource_specification: dict | None = None) -> Ran:
    """Run one walker segment from ``state`` (an ``MDState``, or an ``OnScratch`` reference on the
    shared-scratch route: its states then come back as ``StateRef``) with ``potential`` (a
    ``ShippedPotential``), blow-ups probed into triggers and the rewind state found
    (:func:`autopipe.md.run_walker_segment`); the value is a ``SegmentResult`` whose states
    and frames are values (``trajectory`` names the file on the worker).
    ``launcher``/``lammps_args``: the MD executor's MPI launcher and LAMMPS switches (native route).
    ``carve``: a trigger frame larger than ``carve.keep_frames_up_to`` atoms is carved here and
    only its cells and compact record come back (:func:`carve_on_worker`); None: frames travel whole.
    ``probe``: a segment that completes gives the false-negative probe's cell, carved here from its end
    (:func:`probe_on_worker`); None: not asked for."""
    from autopipe.md import BlowUpLimits, run_walker_segment
    from autopipe.md.state import OnScratch, StateRefused
    from autopipe.md.walk import refused_start

    t0 = time.time()
    on_scratch = state if isinstance(state, OnScratch) else None  # the shared-scratch route: by reference
    if on_scratch is not None:
        try:
            state = on_scratch.load()  # its sha256 checked before the walker resumes
        except StateRefused as exc:
            return _ran(refused_start(on_scratch.ref, str(exc)), t0, scratch, f"MD segment {scratch.relative}")
    limits = BlowUpLimits(max_force=md_config.max_force, max_energy_change=md_config.max_energy_change)
    files = potential.materialise(scratch.cache())
    res = run_walker_segment(state, files, md_config, otf_config, workdir=scratch.path(), n_steps=n_steps,
                             limits=limits, launcher=launcher or None, lammps_args=lammps_args or None)
    res.checkpoint = None  # a file on the worker: the steering side saves ``final_state`` itself
    if res.status in ("completed", "triggered"):
        drop_restated(scratch.path())  # before keep(): the worker's scratch may be the shared one
    after_segment(res, carve, probe, files)
    if on_scratch is not None:
        res = on_scratch.keep(res)  # its states stay on the shared scratch; their references travel
    return _ran(res, t0, scratch, f"MD segment {scratch.relative}")


def after_segment(res, carve: WorkerCarve | None, probe: WorkerProbe | None, potential=None) -> None:
    """What the MD worker does with a segment's result before it travels: carve a large trigger frame
    (:func:`carve_on_worker`), carve the probe's cell from a completed segment's end
    (:func:`probe_on_worker`; ``potential``: the materialised files, for gamma where the route did
    not compute it at the end), and drop the end's per-atom gamma, which only the probe reads."""
    if carve is not None:
        carve_on_worker(res, carve)
    if probe is not None and res.status == "completed":
        gamma = res.end_gamma
        if gamma is None:
            from autopipe.potentials.uncertainty import gamma as evaluate_gamma

            gamma = evaluate_gamma(res.final_state.atoms, potential)
        res.probe = probe_on_worker(res.final_state, gamma, probe)
    res.end_gamma = None


@dataclass(frozen=True)
class WorkerProbe:
    """What the MD worker needs to carve the false-negative probe's cell at the end of a segment that
    did not trigger (see :mod:`autopipe.steer.probe`): the carving rules of trigger frames (the
    budget's strategy when the segment was submitted), the threshold, the picker's seed parts (the
    run's MD seed and the walker: with the end step they fix the atom, so a resumed run picks the
    same one), the segment and the version that runs it (for the probe's record) and
    ``keep_frames_up_to`` (atoms): a larger frame comes back as its compact record."""

    embedding_config: Any
    threshold: float
    seed: int
    walker: int
    segment: int
    version: int
    keep_frames_up_to: int
    lattice: Any = None
    kpoint_settings: tuple[float, float] | None = None
    strategy: str | None = None
    charge: Any = None


@dataclass
class ProbeFound:
    """The probe's pick at a segment's end, made on the MD worker: ``cell`` (None: nothing to label,
    ``what`` says why), ``what`` (the atom and its gamma, or the reason), ``info`` (the probe record,
    :func:`autopipe.steer.probe_pick.probe_info`; None without a cell) and ``frame``: the end frame with
    per-atom gamma where it is small enough to travel, else its compact record
    (:func:`autopipe.carving.record.frame_record`, the atoms near the picked atom)."""

    cell: CarvedCell | None
    what: str
    step: int
    info: dict | None = None
    frame: Any = None


def probe_on_worker(state, gamma, probe: WorkerProbe) -> ProbeFound:
    """The false-negative probe at ``state`` (an ``MDState``, a segment's end) with its per-atom
    ``gamma`` under the version that ran: a random atom below the threshold
    (:func:`autopipe.steer.probe_pick.pick_atom`) and the cell carved around it (:func:`carve_one`)."""
    import numpy as np

    from autopipe.steer.probe_pick import probe_cell, probe_info, probe_rng

    frame = state.atoms.copy()
    frame.wrap()
    frame.calc = None
    frame.arrays["gamma"] = np.asarray(gamma, dtype=float)
    e = probe.embedding_config
    cell, what = probe_cell(frame, probe.threshold, probe_rng(probe.seed, probe.walker, state.step),
                            lambda f, c: carve_one(f, c, e, probe.strategy, probe.lattice, probe.kpoint_settings,
                                                   probe.charge))
    if cell is None:
        return ProbeFound(None, what, state.step)
    info = probe_info(cell, frame.arrays["gamma"], probe.version, probe.walker, probe.segment, state.step)
    if len(frame) > probe.keep_frames_up_to and not cell.whole_frame:
        from autopipe.carving.record import frame_record

        frame = frame_record(frame, [cell.center], e.core_radius, probe.threshold)
    return ProbeFound(cell, what, state.step, info, frame)


#: Files a finished segment leaves on its worker that only restate a state the answer carries (or the
#: shared scratch keeps): LAMMPS's final and start-of-run dumps, read into the state, and the worker's
#: own checkpoints of it. The trajectory dump (``md.dump_every``), log and input stay.
RESTATED = ("checkpoint-*.npz", "*.final.dump", "*.start-trigger.dump")


def drop_restated(workdir) -> int:
    """Delete :data:`RESTATED` files in a segment's worker directory and its ``rewind``/``probe``
    re-runs; returns the bytes freed. Measured (``benchmarks/big_walker.py``, 10^6 atoms): 240-300 MB
    per segment that nothing read again (an 88 MB checkpoint, a 140-150 MB final dump and, on a
    trigger at the first check, a 73 MB start dump), more than a trajectory frame (194 MB)."""
    from pathlib import Path

    freed = 0
    for sub in (Path(workdir), Path(workdir) / "rewind", Path(workdir) / "probe"):
        for pattern in RESTATED:
            for f in sub.glob(pattern):
                freed += f.stat().st_size
                f.unlink(missing_ok=True)
    return freed


def dft_work(atoms, dft_config, pseudopotentials, scratch, launcher: list[str],
             parsl_resource_specification: dict | None = None) -> Ran:
    """Label one structure; the value is a :class:`autopipe.dft.LabelResult` (never an error
    for bad input). pw.x runs in ``scratch``'s directory (the structure's own: a resubmitted
    label reads attempts that finished there instead of running them again) with the UPF files
    of ``pseudopotentials`` (a ``FileSet`` by element, or ``None`` for the analytic oracles)."""
    from autopipe.dft import label

    t0 = time.time()
    if pseudopotentials is not None:
        cache = scratch.cache() / "pseudo"
        names = {el: path.name for el, path in pseudopotentials.materialise(cache).items()}
        dft_config = dft_config.model_copy(update={"pseudo_dir": pseudopotentials.directory(cache),
                                                   "pseudopotentials": names})
    result = label(atoms, dft_config, workdir=scratch.path(), launcher=launcher)
    return _ran(result, t0, scratch, f"DFT label {scratch.relative}")


@dataclass
class CarvedCell:
    """One centre of a trigger frame: the cell carved around it, or why none could be (the
    embed handler records each as an :class:`autopipe.db.Candidate` row).

    ``atoms`` carries ``parent_index`` and the embedding info; ``whole_frame``: ``atoms`` is
    the trigger frame itself (nothing masked).
    """

    center: int  # index of the centre atom in the parent frame
    gamma: float  # its gamma in the parent frame
    atoms: Any = None
    masked: list[int] = field(default_factory=list)
    refused: str | None = None
    whole_frame: bool = False
    note: str = ""  # why the whole frame is labelled
    calibration: bool = False  # a measurement for the carving budget, not a training label


#: Centres tried per trigger frame whose carving is refused before giving up on the frame.
MAX_REFUSED = 8


@dataclass(frozen=True)
class WorkerCarve:
    """What the MD worker needs to carve a trigger frame where it was made: the arguments of
    :func:`embed_work` (the strategy fixed when the segment was submitted) and
    ``keep_frames_up_to`` (atoms): frames no larger travel whole, as before."""

    embedding_config: Any
    threshold: float
    max_extractions: int
    keep_frames_up_to: int
    lattice: Any = None
    kpoint_settings: tuple[float, float] | None = None
    strategy: str | None = None
    charge: Any = None


def carve_on_worker(res, carve: WorkerCarve) -> None:
    """On a trigger with a frame of more than ``carve.keep_frames_up_to`` atoms, carve it here
    (:func:`embed_work`) and replace the frame in ``res`` (a ``SegmentResult``) by the cells
    (``res.carved``) and a compact record (``res.frame_record``, see
    :func:`autopipe.carving.record.frame_record`: the atoms within ``core_radius`` of each centre
    tried). When the frame itself must be labelled (too small for the carve, or a cell as big as
    it) it stays in ``res`` whole, the steering side carves as before, and ``res.frame_route``
    says why. Nothing carved (every centre refused) comes back as refused cells and the record."""
    frame = res.trigger_frame
    if res.status != "triggered" or frame is None:
        return
    if len(frame) <= carve.keep_frames_up_to:
        res.frame_route = f"whole: {len(frame)} atoms, at most embedding.keep_frames_up_to ({carve.keep_frames_up_to})"
        return
    from autopipe.carving.record import frame_record

    cells = embed_work(frame, carve.embedding_config, carve.threshold, carve.max_extractions, carve.lattice,
                       carve.kpoint_settings, carve.strategy, (), carve.charge)
    whole = next((c for c in cells if c.whole_frame), None)
    if whole is not None:
        res.frame_route = f"whole: {whole.note}"
        return
    res.carved = cells
    res.frame_record = frame_record(frame, [c.center for c in cells], carve.embedding_config.core_radius,
                                    carve.threshold)
    res.frame_route = "carved on the MD worker"
    res.trigger_frame = res.last_frame = None  # the frame stays here: only the record and the cells travel


def embed_work(frame, embedding_config, threshold: float, max_extractions: int, lattice=None,
               kpoint_settings: tuple[float, float] | None = None, strategy: str | None = None,
               calibrate: tuple[str, ...] = (), charge=None,
               parsl_resource_specification: dict | None = None) -> list[CarvedCell]:
    """Carve up to ``max_extractions`` periodic sub-cells around the frame's most uncertain
    atoms (centres at least one box apart) with the run's strategy (``cube``, or
    ``commensurate`` with ``lattice``, a :class:`autopipe.carving.lattice.ReferenceLattice`).
    A centre whose cell cannot be made (a close contact in its core, ...) is recorded as
    refused and the next one is tried. The whole frame is labelled instead (exact, nothing
    masked) with ``embedding.whole_frame: always``, when a carved cell would hold at least
    ``embedding.whole_frame_fraction`` of the frame's atoms, or when the frame is smaller than
    a commensurate cell; ``CarvedCell.note`` says why. ``kpoint_settings``: the run's pw.x
    ``(kspacing, gamma_only_length)``, for the k-point rule of carved cells (None: no k-points,
    an analytic labeller). ``strategy`` overrides ``embedding.strategy`` (the budget's choice;
    ``whole``: the whole frame). ``calibrate``: strategies whose cells around the most uncertain
    atom are carved too, as measurements for the carving budget (``CarvedCell.calibration``).
    ``charge``: the run's :class:`autopipe.carving.charge.ChargeRule` (pw.x runs with a charge
    policy; None: cells go as carved); a cell it refuses is a refused centre with its reason.
    """
    import numpy as np

    from autopipe.embedding import select_centers

    e = embedding_config
    gamma = np.asarray(frame.arrays["gamma"], dtype=float)
    side = 2 * (e.core_radius + e.buffer)
    top = int(np.argmax(gamma))

    def whole(note: str) -> list[CarvedCell]:
        return [_whole(frame, top, gamma, note)]

    strategy = strategy or e.strategy
    if calibrate:
        return whole("calibrating the carving budget") + _calibration_cells(frame, top, gamma, e, calibrate, lattice,
                                                                            kpoint_settings, charge)
    if (note := _whole_rule(e, strategy)) is not None:
        return whole(note)
    order = select_centers(frame, gamma, threshold, len(frame), 0.0)  # every atom above it, most uncertain first
    out: list[CarvedCell] = []
    chosen: list[int] = []
    refused = 0
    for c in order:
        if len(chosen) >= max_extractions or refused >= MAX_REFUSED:
            break
        if chosen and np.min(frame.get_distances(c, chosen, mic=True)) < side:
            continue
        cell = carve_one(frame, int(c), e, strategy, lattice, kpoint_settings, charge)
        if cell.whole_frame:
            return whole(cell.note)
        out.append(cell)
        if cell.refused:
            refused += 1
            continue
        chosen.append(int(c))
    return out


def _whole_rule(e, strategy: str) -> str | None:
    """Why every frame is labelled whole under these settings, or None."""
    if e.whole_frame == "always":
        return "embedding.whole_frame is 'always'"
    if strategy == "whole":
        return "the carving budget chose whole frames"
    return None


def _whole(frame, center: int, gamma, note: str) -> CarvedCell:
    atoms = frame.copy()
    atoms.arrays.pop("gamma", None)
    return CarvedCell(center=center, gamma=float(gamma[center]), atoms=atoms, whole_frame=True, note=note)


def carve_one(frame, center: int, embedding_config, strategy: str | None = None, lattice=None,
              kpoint_settings: tuple[float, float] | None = None, charge=None) -> CarvedCell:
    """The cell around atom ``center`` of ``frame`` (``arrays["gamma"]`` per atom), by the rules of
    :func:`embed_work` for one centre: the whole frame with ``embedding.whole_frame: always``, the
    ``whole`` strategy, a frame too small for the strategy, or a cell holding at least
    ``embedding.whole_frame_fraction`` of it (``note`` says which); refused (``refused``) when
    no cell can be carved there. Used for trigger centres and for the false-negative probe's."""
    from autopipe.carving.lattice import ParentTooSmall
    from autopipe.carving.strategies import AsBigAsTheFrame

    e = embedding_config
    gamma = frame.arrays["gamma"]
    strategy = strategy or e.strategy
    if (note := _whole_rule(e, strategy)) is not None:
        return _whole(frame, center, gamma, note)
    try:
        sub, masked = _carve_cell(frame, center, strategy, e, lattice, kpoint_settings, charge)
    except (ParentTooSmall, AsBigAsTheFrame) as exc:
        return _whole(frame, center, gamma, str(exc))
    except ValueError as exc:
        return CarvedCell(center=center, gamma=float(gamma[center]), refused=str(exc))
    return CarvedCell(center=center, gamma=float(gamma[center]), atoms=sub, masked=masked)


def _carve_cell(frame, center: int, strategy: str, e, lattice, kpoint_settings, charge=None) -> tuple[Any, list[int]]:
    """``(cell, masked)`` around ``center`` with ``strategy``, its k-point mesh set by the run's rule
    and the charge policy applied (``charge``, a ``ChargeRule``, or None). Raises ``ValueError`` when it
    cannot be carved or the policy refuses it, :class:`~autopipe.carving.strategies.AsBigAsTheFrame` when it is not worth it."""
    from autopipe.carving.strategies import apply_kpoint_rule, carve, check_worth_carving

    sub, masked = carve(frame, center, strategy, e.core_radius, e.buffer, lattice=lattice, min_distance=e.min_distance)
    check_worth_carving(len(sub), len(frame), e.whole_frame_fraction)
    if kpoint_settings is not None:
        apply_kpoint_rule(sub, frame, e.kpoints, *kpoint_settings)
    if charge is not None:
        from autopipe.carving.charge import apply_charge_policy

        sub, masked = apply_charge_policy(sub, masked, charge)  # removing atoms keeps the cell: k-points stand
    return sub, [int(i) for i in masked]


def _calibration_cells(frame, center: int, gamma, e, strategies, lattice, kpoint_settings,
                       charge=None) -> list[CarvedCell]:
    """One cell per strategy around ``center``, for the carving budget's measurement (a strategy
    that cannot carve here, or whose cell is as big as the frame, is recorded as refused)."""
    out = []
    for name in strategies:
        try:
            sub, masked = _carve_cell(frame, center, name, e, lattice, kpoint_settings, charge)
        except ValueError as exc:
            out.append(CarvedCell(center=center, gamma=float(gamma[center]), refused=f"{name}: {exc}", calibration=True))
            continue
        out.append(CarvedCell(center=center, gamma=float(gamma[center]), atoms=sub, masked=masked, calibration=True))
    return out


def fit_work(request, data, parent, scratch, parsl_resource_specification: dict | None = None) -> Ran:
    """One training round's fit on ``data`` (a packed ``TrainingSet``), continuing from
    ``parent`` (a ``ShippedPotential``) when given (:func:`autopipe.potentials.trainer.fit_round`);
    the value is a ``FitOutput`` carrying the new potential's files by value."""
    from autopipe.potentials.trainer import fit_round

    t0 = time.time()
    parent_yaml = parent.materialise(scratch.cache()).yaml if parent is not None else None
    fit = fit_round(request, data, workdir=scratch.path(), parent_yaml=parent_yaml)
    return _ran(fit, t0, scratch, f"training {scratch.relative}")
