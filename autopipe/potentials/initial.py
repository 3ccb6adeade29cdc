"""Version 1: imported from the user's files, or generated, labelled and trained from scratch.

One decision function, :func:`next_step`, says what version 1 still needs; the steering
loop acts on it with Parsl tasks, :func:`build_initial_potential` with a label function in
this process. Both generate the initial dataset with :func:`seed_initial_dataset` and
train version 1 with the one training round of :mod:`autopipe.potentials.trainer`.

Restartable: generated structures are stored before anything is labelled, so an
interrupted attempt reuses them and labels only those still without a label; a
version 1 that exists is returned as is.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import RunConfig
    from autopipe.db import Database
    from autopipe.dft import LabelResult
    from autopipe.layout import RunLayout
    from autopipe.potentials.store import PotentialFiles, PotentialStore

log = logging.getLogger(__name__)

#: ``label_fn(atoms)`` labels one structure: a :class:`autopipe.dft.LabelResult`.
LabelFn = Callable[["Atoms"], "LabelResult"]


@dataclass(frozen=True)
class Ready:
    """Version 1 exists."""

    potential: PotentialFiles


@dataclass(frozen=True)
class NeedLabels:
    """These generated structures (ids) have no label yet."""

    structure_ids: list[int]


@dataclass(frozen=True)
class NeedTraining:
    """Every generated structure is labelled, at least one successfully: train version 1."""


@dataclass(frozen=True)
class Impossible:
    """Version 1 cannot be made (``reason`` says why)."""

    reason: str


FirstStep = Union[Ready, NeedLabels, NeedTraining, Impossible]


def seed_initial_dataset(db: Database, run_config: RunConfig, template: Atoms | None = None) -> list[int]:
    """Generate and store the initial dataset (``Origin.generated``) unless it exists; returns its ids.

    ``template`` defaults to the run's dataset template (``initial_potential.structure`` or
    the starting structure). Raises :class:`AutopipeError` when the generator cannot meet
    its constraints (e.g. a ``min_distance`` the template does not allow).
    """
    from sqlalchemy import select

    from autopipe.db import Origin, Structure, structure_from_atoms
    from autopipe.generate import dataset_template, generate_structures

    with db.session() as s:
        ids = list(s.scalars(select(Structure.id).where(Structure.origin == Origin.generated).order_by(Structure.id)))
    if ids:
        return ids
    try:
        structures = generate_structures(run_config.system.elements,
                                         template if template is not None else dataset_template(run_config),
                                         run_config.initial_potential)
    except ValueError as exc:
        raise AutopipeError(f"cannot generate the initial dataset: {exc}") from None
    with db.session() as s:
        rows = [structure_from_atoms(a, Origin.generated, selected=True, info={"generator": a.info.get("generator")})
                for a in structures]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def next_step(db: Database, store: PotentialStore, run_config: RunConfig, template: Atoms | None = None) -> FirstStep:
    """What version 1 needs next. Imports a ``kind: file`` potential on the spot (seconds);
    generates the initial dataset the first time it is asked (see :func:`seed_initial_dataset`)."""
    from sqlalchemy import select

    from autopipe.db import Label, LabelStatus

    latest = store.latest()
    if latest is not None:
        return Ready(latest)
    init = run_config.initial_potential
    if init.kind == "file":
        return Ready(import_initial_potential(db, store, run_config))
    ids = seed_initial_dataset(db, run_config, template)
    with db.session() as s:
        statuses = dict(s.execute(select(Label.structure_id, Label.status).where(Label.structure_id.in_(ids))).all())
    todo = [i for i in ids if i not in statuses]
    if todo:
        return NeedLabels(todo)
    if not any(st is LabelStatus.done for st in statuses.values()):
        return Impossible(f"none of the {len(ids)} generated structures could be labelled")
    return NeedTraining()


def build_initial_potential(
    db: Database,
    store: PotentialStore,
    run_config: RunConfig,
    label_fn: LabelFn | None = None,
    *,
    template: Atoms | None = None,
    layout: RunLayout | None = None,
) -> PotentialFiles:
    """Make sure version 1 exists, in this process, and return it.

    ``kind: generate``: the generated structures are labelled one by one with ``label_fn``
    (default: the run's own DFT code) and version 1, named ``initial_potential.name``, is
    trained from scratch. ``kind: file``: the given potential is imported.
    Raises :class:`AutopipeError` when version 1 cannot be made.
    """
    from autopipe.dft import LabelResult, store_label
    from autopipe.potentials.trainer import train_round

    if label_fn is None:
        label_fn = _run_dft_label_fn(run_config)
    while True:
        step = next_step(db, store, run_config, template)
        if isinstance(step, Ready):
            return step.potential
        if isinstance(step, Impossible):
            raise AutopipeError(f"no initial potential: {step.reason}")
        if isinstance(step, NeedLabels):
            failed = 0
            for sid in step.structure_ids:
                atoms = _structure(db, sid)
                try:
                    result = label_fn(atoms)
                except Exception as exc:  # one bad structure must not sink the initial dataset
                    result = LabelResult(status="failed", code=str(run_config.dft.code),
                                         error=f"{type(exc).__name__}: {exc}")
                failed += result.status != "done"
                store_label(db, sid, result)
            if failed:
                log.warning("%d of %d initial structures could not be labelled", failed, len(step.structure_ids))
            continue
        outcome = train_round(db, store, run_config, layout, version=1, name=run_config.initial_potential.name,
                              fresh=True)
        if not outcome.ok:
            raise AutopipeError(f"training the initial potential failed: {outcome.error}\n{outcome.log_tail}".rstrip())


def _structure(db: Database, structure_id: int) -> Atoms:
    from autopipe.db import Structure, atoms_from_structure

    with db.session() as s:
        return atoms_from_structure(s.get(Structure, structure_id))


def _run_dft_label_fn(run_config: RunConfig) -> LabelFn:
    """The run's own DFT code (``autopipe.dft.label``) as a label function."""
    from autopipe.dft import label

    return lambda atoms: label(atoms, run_config.dft)


def import_initial_potential(db: Database, store: PotentialStore, run_config: RunConfig) -> PotentialFiles:
    """Publish the user's potential file as version 1 and import its training data.

    Everything is checked before anything is written: the potential parses and covers the
    run's elements, the dataset is a usable pacemaker dataset (see
    :mod:`autopipe.potentials.imported`), the ``.asi`` (given, or computed from the
    dataset) and ``.yace`` can be made. Then the dataset enters the database as imported
    labels (one transaction) and version 1 is published with ``last_label_id`` at the last
    of them, so the user's own data never count as "new". Raises :class:`AutopipeError`
    with one line on bad input.
    """
    from autopipe.potentials.imported import check_training_data, insert_imported, validate_potential_file
    from autopipe.potentials.pacemaker import compute_active_set, yaml_to_yace

    init = run_config.initial_potential
    src = Path(init.path)
    validate_potential_file(src, run_config.system.elements)
    if init.asi is None and init.training_data is None:
        raise AutopipeError(
            f"initial potential {src}: give its active set (asi:) or the data it was trained on "
            "(training_data:) so the extrapolation grade can be computed"
        )
    dataset = check_training_data(run_config)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=store.root) as tmp:
        work = Path(tmp)
        yaml = work / "potential.yaml"
        yaml.write_bytes(src.read_bytes())
        try:
            asi_metrics: dict = {}
            if init.asi is not None:
                if not Path(init.asi).exists():
                    raise AutopipeError(f"active set file not found: {init.asi}")
                asi = work / "potential.asi"
                asi.write_bytes(Path(init.asi).read_bytes())
            else:
                computed = compute_active_set(yaml, [init.training_data])
                asi, asi_metrics = computed.path, computed.metrics()
            yace = yaml_to_yace(yaml)
        except RuntimeError as exc:
            raise AutopipeError(f"cannot import initial potential {src}: {exc}") from None
        summary = insert_imported(db, dataset) if dataset is not None else None
        return store.publish(
            {"yaml": yaml, "yace": yace, "asi": asi},
            name=src.stem,
            version=1,
            n_train=summary.n_structures if summary else 0,
            last_label_id=summary.last_label_id if summary else 0,
            metrics={"imported_from": str(src), "imported_structures": summary.n_structures if summary else 0,
                     **asi_metrics},
        )
