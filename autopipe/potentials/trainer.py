"""The retraining trigger and one training round: dataset → pacemaker → yace + asi → publish.

Bookkeeping of labels: a training round snapshots the newest label id when it starts
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
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from autopipe.config.run import RunConfig, TrainConfig
    from autopipe.db import Database
    from autopipe.potentials.store import PotentialFiles, PotentialStore

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


def _fresh_workdir(base: Path) -> Path:
    """``base`` itself, or ``base-2``, ``base-3``, ... if an earlier attempt left it behind."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


@dataclass
class FitOutput:
    """A finished pacemaker fit, not yet published: files by role, metrics, status."""

    status: str  # "done" | "failed"
    files: dict[str, str] = field(default_factory=dict)  # role -> path: yaml, yace, asi, input, log
    metrics: dict[str, Any] = field(default_factory=dict)
    walltime: float = 0.0  # s
    argv: list[str] = field(default_factory=list)
    error: str | None = None
    log_tail: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # s: pacemaker, export

    @property
    def ok(self) -> bool:
        return self.status == "done"


def fit_and_export(
    workdir: Path | str,
    train_config: TrainConfig,
    elements: Sequence[str],
    data_file: Path | str,
    *,
    parent_yaml: Path | str | None = None,
    iterations: int | None = None,
    warm: bool | None = None,
) -> FitOutput:
    """Fit with pacemaker in ``workdir`` (continuing from ``parent_yaml`` if given), export the
    ``.yace`` and compute the active set. Touches no database: runs on any worker.

    ``warm`` (default ``train_config.warm_trainer``): fit in this process's long-lived trainer
    (:func:`autopipe.potentials.warm.warm_fit_and_export`) instead of a fresh ``pacemaker``."""
    use_warm = train_config.warm_trainer if warm is None else warm
    if use_warm:
        from autopipe.potentials.warm import warm_fit_and_export

        return warm_fit_and_export(workdir, train_config, elements, data_file, parent_yaml=parent_yaml,
                                   iterations=iterations)
    from autopipe.potentials.pacemaker import FITTING_DATA_INFO, LOG_FILE, compute_active_set, export_yace, run_pacemaker

    t0 = time.perf_counter()
    workdir = Path(workdir)
    fit = run_pacemaker(workdir, train_config, elements, Path(data_file),
                        initial_potential=Path(parent_yaml) if parent_yaml else None, iterations=iterations)
    out = FitOutput(status="failed", metrics=dict(fit.metrics), argv=list(fit.argv),
                    timings={"pacemaker": fit.walltime})
    if not fit.ok:
        out.error, out.log_tail = fit.error, fit.log_tail
    else:
        t_phase = time.perf_counter()
        try:
            pot_yaml = workdir / "potential.yaml"
            shutil.copyfile(fit.potential, pot_yaml)
            yace = export_yace(pot_yaml)
            asi = compute_active_set(pot_yaml, [workdir / FITTING_DATA_INFO])
            out.files = {"yaml": str(pot_yaml), "yace": str(yace), "asi": str(asi),
                         "input": str(workdir / "input.yaml"), "log": str(workdir / LOG_FILE)}
            out.metrics["fit_walltime"] = fit.walltime
            out.status = "done"
        except Exception as exc:  # a broken export or active set means an unusable potential
            out.error = f"{type(exc).__name__}: {exc}"
        out.timings["export"] = time.perf_counter() - t_phase
    out.walltime = time.perf_counter() - t0
    return out


def train_version(
    db: Database,
    store: PotentialStore,
    train_config: TrainConfig,
    elements: Sequence[str],
    *,
    name: str,
    version: int,
    parent: PotentialFiles | None,
    label_snapshot: int,
    continue_fit: bool = True,
    iterations: int | None = None,
    workdir: Path | None = None,
    reference_energies: Mapping[str, float] | None = None,
) -> TrainOutcome:
    """Train on every label up to ``label_snapshot`` and publish the result as ``version``.

    ``parent`` is the version this one succeeds; with ``continue_fit`` the fit starts
    from the parent's coefficients (``pacemaker -p``), otherwise from scratch.
    Runs in ``workdir`` (default ``<store root>/train/vNNNN``), which keeps pacemaker's
    input, log and data for inspection. ``reference_energies`` (eV per atom of each
    element, e.g. isolated-atom DFT energies) are subtracted from the labels' energies;
    without them raw energies are fitted, which suits analytic oracles (LJ, EMT).
    """
    from autopipe.potentials.dataset import build_dataset, write_dataset

    t0 = time.perf_counter()
    workdir = _fresh_workdir(workdir or store.root / "train" / f"v{version:04d}")
    outcome = TrainOutcome(
        status="failed", workdir=workdir, parent_version=parent.version if parent else None,
        last_label_id=label_snapshot,
    )
    t_phase = time.perf_counter()
    try:
        df, info = build_dataset(db, train_config, max_label_id=label_snapshot,
                                 reference_energies=reference_energies)
    except ValueError as exc:
        outcome.error = f"cannot build the training set: {exc}"
        return outcome
    if info.n_structures == 0:
        outcome.error = "no successful labels to train on"
        return outcome
    outcome.n_train = info.n_structures
    data_file = write_dataset(df, workdir / "dataset.pckl.gzip")
    outcome.timings["dataset"] = time.perf_counter() - t_phase

    fit = fit_and_export(
        workdir, train_config, elements, data_file,
        parent_yaml=parent.yaml if (parent is not None and continue_fit) else None,
        iterations=iterations,
    )
    outcome.argv = fit.argv
    outcome.metrics = dict(fit.metrics)
    outcome.timings.update(fit.timings)
    if not fit.ok:
        outcome.error, outcome.log_tail = fit.error, fit.log_tail
        outcome.walltime = time.perf_counter() - t0
        log.warning("training v%d failed: %s", version, fit.error)
        return outcome

    t_phase = time.perf_counter()
    metrics = {
        **fit.metrics,
        "n_structures": info.n_structures,
        "n_atoms": info.n_atoms,
        "n_embedded": info.n_embedded,
        "n_masked_atoms": info.n_masked_atoms,
        "continued_from": parent.version if (parent is not None and continue_fit) else None,
    }
    outcome.walltime = time.perf_counter() - t0
    try:
        pot = store.publish(
            {role: Path(path) for role, path in fit.files.items()},
            name=name,
            parent_version=parent.version if parent else None,
            version=version,
            n_train=info.n_structures,
            last_label_id=label_snapshot,
            metrics=metrics,
            walltime=outcome.walltime,
        )
    except Exception as exc:  # e.g. another trainer took this version number meanwhile
        outcome.error = f"publishing v{version} failed: {exc}"
        return outcome
    outcome.timings["publish"] = time.perf_counter() - t_phase
    outcome.walltime = time.perf_counter() - t0
    outcome.status = "done"
    outcome.potential = pot
    outcome.version = pot.version
    outcome.metrics = pot.metrics
    return outcome


def train_next_version(
    db: Database,
    store: PotentialStore,
    run_config: RunConfig,
    *,
    name: str | None = None,
    reference_energies: Mapping[str, float] | None = None,
) -> TrainOutcome:
    """Retrain on every successful label so far, continuing from the latest potential.

    The new version is named ``name`` or ``<run name>_v<N>``. Labels created after this
    call started are not included; they count toward the next round (see module doc).
    """
    tc = run_config.train
    snapshot = max_label_id(db)  # first: anything newer belongs to the next round
    parent = store.latest()
    version = store.next_version()
    continuing = parent is not None and tc.continue_from_parent
    iterations = (tc.retrain_iterations or tc.max_iterations) if continuing else tc.max_iterations
    outcome = train_version(
        db, store, tc, run_config.system.elements,
        name=name or f"{run_config.name}_v{version}",
        version=version,
        parent=parent,
        label_snapshot=snapshot,
        continue_fit=continuing,
        iterations=iterations,
        reference_energies=reference_energies,
    )
    return outcome
