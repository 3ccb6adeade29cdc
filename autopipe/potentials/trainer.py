"""One training round, used by the steering loop, the tests and every command:

    plan_round (steering side: snapshot, parent, version, iterations -> a TrainRequest)
      -> training_set (steering side: the labels up to the snapshot, packed as arrays)
      -> fit_round (any worker: DataFrame from the pack -> pacemaker -> .yace + .asi, as bytes)
      -> publish_round (steering side: the files written to the round's directory, then the
         store's atomic publish)

:func:`train_round` runs them in this process. The steering loop runs :func:`fit_round` as a
Parsl app and publishes when it returns. Everything :func:`fit_round` takes and returns is a
value (:mod:`autopipe.transfer`): the worker needs neither the database nor the run's files.

Bookkeeping of labels: a round snapshots the newest label id when it is planned
(``max(Label.id)``), trains on every successful label up to that id, and publishes the
potential with ``last_label_id`` set to the snapshot. Labels that arrive while the fit
runs have larger ids, so they count toward the next round: none is skipped, none is
trained on twice as "new".
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from autopipe.config.run import RunConfig, TrainConfig
    from autopipe.db import Database, PotentialStatus
    from autopipe.layout import RunLayout
    from autopipe.potentials.packed import TrainingSet
    from autopipe.potentials.store import PotentialFiles, PotentialStore

from autopipe.potentials.fitoutput import FitOutput  # noqa: E402  (re-exported: the fit's result type)

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """Result of one training round; ``status`` is ``done``, ``failed`` or ``skipped``."""

    status: str
    potential: PotentialFiles | None = None
    version: int | None = None
    parent_version: int | None = None
    n_train: int = 0
    last_label_id: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    walltime: float = 0.0  # s, whole round
    workdir: Path | None = None
    argv: list[str] = field(default_factory=list)
    log_tail: str = ""
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # s per phase: dataset, pacemaker, export, publish

    @property
    def ok(self) -> bool:
        return self.status == "done"


def _label_counts(db: Database, after_id: int) -> int:
    from sqlalchemy import func, select

    from autopipe.db import Label, LabelStatus

    with db.session() as s:
        return int(
            s.scalar(select(func.count(Label.id)).where(Label.status == LabelStatus.done, Label.id > after_id)) or 0
        )


def max_label_id(db: Database) -> int:
    """The newest label id in the database (any status); 0 when there are none."""
    from sqlalchemy import func, select

    from autopipe.db import Label

    with db.session() as s:
        return int(s.scalar(select(func.max(Label.id))) or 0)


def _latest_row_label_id(db: Database) -> int:
    from sqlalchemy import select

    from autopipe.db import Potential

    with db.session() as s:
        row = s.scalars(select(Potential).order_by(Potential.version.desc()).limit(1)).first()
        return int(row.last_label_id) if row is not None else 0


def new_label_count(db: Database) -> int:
    """Successful labels newer than what the latest published potential was trained on."""
    return _label_counts(db, _latest_row_label_id(db))


def should_retrain(db: Database, train_config: TrainConfig) -> bool:
    """True when at least ``train_config.min_new_labels`` successful labels are newer than
    the latest potential's ``last_label_id``."""
    return new_label_count(db) >= train_config.min_new_labels


def fit_and_export(
    workdir: Path | str,
    train_config: TrainConfig,
    elements: Sequence[str],
    data_file: Path | str,
    *,
    parent_yaml: Path | str | None = None,
    iterations: int | None = None,
    warm: bool | None = None,
    grow: bool = False,
) -> FitOutput:
    """Fit with pacemaker in ``workdir`` (continuing from ``parent_yaml`` if given), export the
    ``.yace`` and compute the active set. Touches no database: runs on any worker.

    ``grow``: the parent is the start of a larger basis (``train_config``'s
    ``number_of_functions_per_element``; see :mod:`autopipe.potentials.basis`) instead of the basis itself.

    ``warm`` (default ``train_config.warm_trainer``): fit in this process's long-lived trainer
    (:func:`autopipe.potentials.warm.warm_fit_and_export`) instead of a fresh ``pacemaker``."""
    use_warm = train_config.warm_trainer if warm is None else warm
    if use_warm:
        from autopipe.potentials.warm import warm_fit_and_export

        return warm_fit_and_export(workdir, train_config, elements, data_file, parent_yaml=parent_yaml,
                                   iterations=iterations, grow=grow)
    from autopipe.potentials.pacemaker import FITTING_DATA_INFO, LOG_FILE, compute_active_set, run_pacemaker, yaml_to_yace

    t0 = time.perf_counter()
    workdir = Path(workdir)
    fit = run_pacemaker(workdir, train_config, elements, Path(data_file),
                        initial_potential=Path(parent_yaml) if parent_yaml else None, iterations=iterations,
                        grow=grow)
    out = FitOutput(status="failed", metrics=dict(fit.metrics), argv=list(fit.argv),
                    timings={"pacemaker": fit.walltime})
    if not fit.ok:
        out.error, out.log_tail = fit.error, fit.log_tail
    else:
        t_phase = time.perf_counter()
        try:
            pot_yaml = workdir / "potential.yaml"
            shutil.copyfile(fit.potential, pot_yaml)
            yace = yaml_to_yace(pot_yaml)
            asi = compute_active_set(pot_yaml, [workdir / FITTING_DATA_INFO])
            out.files = {"yaml": str(pot_yaml), "yace": str(yace), "asi": str(asi.path),
                         "input": str(workdir / "input.yaml"), "log": str(workdir / LOG_FILE)}
            out.metrics.update(asi.metrics())
            out.metrics["fit_walltime"] = fit.walltime
            out.status = "done"
        except Exception as exc:  # a broken export or active set means an unusable potential
            out.error = f"{type(exc).__name__}: {exc}"
        out.timings["export"] = time.perf_counter() - t_phase
    out.walltime = time.perf_counter() - t0
    return out


@dataclass(frozen=True)
class TrainRequest:
    """What one training round is: planned on the steering side, picklable.

    ``snapshot``: the newest label id to train on. ``parent_yaml``: the published potential to
    continue from (``pacemaker -p``; a path on the steering side, whose files travel to the
    worker by value), ``None`` for a fresh fit. ``workdir``: the round's directory in the run's
    work directory, where the published files are written from the fit's blobs.
    ``basis_functions``: the round's basis size per element (None: ``train_config``'s);
    ``grow``: it is larger than the parent's and grows from it (:mod:`autopipe.potentials.basis`).
    """

    version: int
    name: str
    parent_version: int | None
    parent_yaml: str | None
    snapshot: int
    iterations: int
    train_config: TrainConfig
    elements: tuple[str, ...]
    workdir: str
    basis_functions: int | None = None
    grow: bool = False

    def fit_config(self) -> TrainConfig:
        """The training settings with this round's basis size."""
        if self.basis_functions is None:
            return self.train_config
        return self.train_config.model_copy(update={"number_of_functions_per_element": int(self.basis_functions)})


def plan_round(
    db: Database,
    store: PotentialStore,
    run_config: RunConfig,
    layout: RunLayout,
    *,
    version: int | None = None,
    name: str | None = None,
    fresh: bool = False,
) -> TrainRequest:
    """The next round: every successful label so far, continuing from the latest potential
    unless ``fresh`` (or ``train.continue_from_parent`` is off). The new version is named
    ``name`` or ``<run name>_v<N>``; its work directory is created under ``layout``."""
    tc = run_config.train
    snapshot = max_label_id(db)  # first: anything newer belongs to the next round
    parent = store.latest()
    version = store.next_version() if version is None else int(version)
    continuing = parent is not None and tc.continue_from_parent and not fresh
    size, grow = tc.number_of_functions_per_element, False
    if parent is not None and not fresh:
        from autopipe.potentials.basis import next_size, record

        decision = next_size(db, tc, parent.metrics)
        size, grow = decision.new_size, decision.grow and continuing
        record(db, decision, version, parent.version)
    return TrainRequest(
        version=version,
        name=name or f"{run_config.name}_v{version}",
        parent_version=parent.version if parent is not None else None,
        parent_yaml=str(parent.yaml) if continuing else None,
        snapshot=snapshot,
        iterations=round_iterations(tc, continuing, after_rejection=_newest_rejected(db)),
        train_config=tc,
        elements=tuple(run_config.system.elements),
        workdir=str(layout.fresh_train_dir(version)),
        basis_functions=size,
        grow=grow,
    )


def round_iterations(tc: TrainConfig, continuing: bool, *, after_rejection: bool = False) -> int:
    """Optimizer iterations of a round: ``retrain_iterations`` when continuing from the parent, the
    full ``max_iterations`` for a fresh fit and for the round after the gate rejected a version
    (the short continuation did not do)."""
    if continuing and not after_rejection:
        return tc.retrain_iterations or tc.max_iterations
    return max(tc.max_iterations, tc.retrain_iterations or 0) if continuing else tc.max_iterations


def _newest_rejected(db: Database) -> bool:
    """Whether the newest version (by number) was rejected by the gate."""
    from sqlalchemy import select

    from autopipe.db import Potential, PotentialStatus

    with db.session() as s:
        return s.scalar(select(Potential.status).order_by(Potential.version.desc()).limit(1)) is \
            PotentialStatus.rejected


def training_set(db: Database, request: TrainRequest) -> TrainingSet:
    """The round's training set, packed for the worker (steering side: reads the database).
    A set that cannot be trained on comes back with its ``error``, never raises."""
    from autopipe.potentials.dataset import build_dataset
    from autopipe.potentials.packed import TrainingSet, pack

    try:
        df, _ = build_dataset(db, request.train_config, max_label_id=request.snapshot)
    except ValueError as exc:
        return TrainingSet(error=f"cannot build the training set: {exc}")
    if len(df) == 0:
        return TrainingSet(error="no successful labels to train on")
    return pack(df)


def fit_round(request: TrainRequest, data: TrainingSet, *, workdir: Path | str,
              parent_yaml: Path | str | None = None) -> FitOutput:
    """Fit on ``data`` in ``workdir`` (continuing from ``parent_yaml`` when given), export the
    ``.yace``, compute the active set, and return the files by value in ``blobs``. Touches
    neither the database nor anything outside ``workdir`` and the parent's file; never raises
    for a bad dataset or a failed fit (the result's ``status`` says)."""
    from autopipe.potentials.dataset import write_dataset
    from autopipe.transfer import FileBlob

    t0 = time.perf_counter()
    if data.error:
        return FitOutput(status="failed", error=data.error)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_file = write_dataset(data.frame(), workdir / "dataset.pckl.gzip")
    t_data = time.perf_counter() - t0
    out = fit_and_export(workdir, request.fit_config(), request.elements, data_file,
                         parent_yaml=parent_yaml, iterations=request.iterations, grow=request.grow and bool(parent_yaml))
    if out.ok:
        out.metrics.update(_basis_size(out.files["yaml"], request.fit_config().number_of_functions_per_element,
                                       len(request.elements)))
        out.blobs = {role: FileBlob.read(path) for role, path in out.files.items()}
    out.n_train = data.n_structures
    out.timings = {"dataset": t_data, **out.timings}
    out.metrics.update(n_structures=data.n_structures, n_atoms=data.n_atoms, n_embedded=data.n_embedded,
                       n_masked_atoms=data.n_masked_atoms,
                       continued_from=request.parent_version if parent_yaml else None)
    out.walltime = time.perf_counter() - t0
    return out


def _basis_size(yaml_path: str, per_element: int, n_elements: int) -> dict[str, Any]:
    """The round's basis size: ``basis_functions``, the ``number_of_functions_per_element`` it was
    fitted with (what the growth rule compares), ``basis_functions_total``, every function of
    the fitted B-basis file, and ``basis_saturated``: fewer than asked (``ranks``/``lmax`` offer no more)."""
    from pyace import BBasisConfiguration

    from autopipe.potentials.basis import SATURATED_KEY, SIZE_KEY

    total = int(BBasisConfiguration(str(yaml_path)).total_number_of_functions)
    return {SIZE_KEY: int(per_element), "basis_functions_total": total,
            SATURATED_KEY: total < int(per_element) * n_elements}


def publish_round(store: PotentialStore, request: TrainRequest, fit: FitOutput, *,
                  status: PotentialStatus | None = None) -> PotentialFiles:
    """Write a successful fit's files into the round's directory and publish them as its
    version (atomic; see the store); ``status``: see :meth:`PotentialStore.publish`."""
    if not fit.ok:
        raise ValueError(f"cannot publish a failed fit: {fit.error}")
    workdir = Path(request.workdir)
    files = {role: blob.write(workdir / blob.name) for role, blob in fit.blobs.items()}
    return store.publish(
        files,
        name=request.name,
        parent_version=request.parent_version,
        version=request.version,
        n_train=fit.n_train,
        last_label_id=request.snapshot,
        metrics=fit.metrics,
        walltime=fit.walltime,
        status=status,
    )


def train_round(
    db: Database,
    store: PotentialStore,
    run_config: RunConfig,
    layout: RunLayout | None = None,
    **plan: Any,
) -> TrainOutcome:
    """Plan, fit and publish one round in this process (see the module docstring);
    ``plan`` goes to :func:`plan_round` (``version``, ``name``, ``fresh``)."""
    from autopipe.layout import RunLayout

    t0 = time.perf_counter()
    request = plan_round(db, store, run_config, layout or RunLayout(store.root.parent), **plan)
    fit = fit_round(request, training_set(db, request), workdir=request.workdir, parent_yaml=request.parent_yaml)
    outcome = TrainOutcome(
        status="failed", parent_version=request.parent_version, last_label_id=request.snapshot,
        workdir=Path(request.workdir), argv=list(fit.argv), metrics=dict(fit.metrics), n_train=fit.n_train,
        timings=dict(fit.timings), error=fit.error, log_tail=fit.log_tail,
    )
    if not fit.ok:
        log.warning("training v%d failed: %s", request.version, fit.error)
    else:
        t_publish = time.perf_counter()
        try:
            pot = publish_round(store, request, fit)
        except Exception as exc:  # e.g. another trainer took this version number meanwhile
            outcome.error = f"publishing v{request.version} failed: {exc}"
        else:
            outcome.status, outcome.potential, outcome.version = "done", pot, pot.version
            outcome.metrics = pot.metrics
            outcome.timings["publish"] = time.perf_counter() - t_publish
    outcome.walltime = time.perf_counter() - t0
    return outcome
