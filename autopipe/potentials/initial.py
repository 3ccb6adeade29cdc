"""Version 1: generated, labelled and trained from scratch, or imported from a file.

Restartable: if version 1 exists it is returned as is; if generated structures exist
from an interrupted earlier attempt they are reused, and only those without a label
are labelled.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import InitialPotentialFile, RunConfig
    from autopipe.db import Database
    from autopipe.potentials.store import PotentialFiles, PotentialStore

log = logging.getLogger(__name__)

#: ``label_fn(atoms)`` returns either a tuple ``(status, energy eV, forces eV/Å (n, 3),
#: stress eV/Å³ Voigt or None, extra)`` — ``extra`` may hold ``code``, ``walltime`` (s),
#: ``error``, ``attempts``, ``parameters``; other plain keys go to ``Label.parameters`` —
#: or an object with those attributes, such as :class:`autopipe.dft.LabelResult`.
LabelFn = Callable[["Atoms"], Any]


def _normalise(result: Any) -> dict[str, Any]:
    """The Label fields of one ``label_fn`` result (tuple or LabelResult-like object)."""
    if isinstance(result, tuple):
        status, energy, forces, stress, extra = result
        extra = dict(extra or {})
        params = dict(extra.pop("parameters", {}) or {})
        fields = {
            "code": str(extra.pop("code", "unknown")),
            "walltime": float(extra.pop("walltime", 0.0) or 0.0),
            "error": extra.pop("error", None),
            "attempts": extra.pop("attempts", None),
        }
        params.update({k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, type(None)))})
    else:
        status, energy, forces, stress = result.status, result.energy, result.forces, result.stress
        params = dict(getattr(result, "parameters", {}) or {})
        fields = {
            "code": str(getattr(result, "code", "unknown")),
            "walltime": float(getattr(result, "walltime", 0.0) or 0.0),
            "error": getattr(result, "error", None),
            "attempts": list(getattr(result, "attempts", None) or []) or None,
        }
    fields.update(status=str(getattr(status, "value", status)), energy=energy, forces=forces, stress=stress,
                  parameters=params)
    return fields


def store_label(db: Database, structure_id: int, result: Any) -> int:
    """Insert the :class:`Label` of one ``label_fn`` result; returns its id."""
    import json

    from autopipe.db import Label, LabelStatus

    f = _normalise(result)
    with db.session() as s:
        label = Label(
            structure_id=structure_id,
            status=LabelStatus(f["status"]),
            code=f["code"],
            energy=None if f["energy"] is None else float(f["energy"]),
            forces=None if f["forces"] is None else np.asarray(f["forces"], dtype=float),
            stress=None if f["stress"] is None else np.asarray(f["stress"], dtype=float),
            # default=str: a Path or numpy scalar in the parameters must not break the JSON column.
            parameters=json.loads(json.dumps(f["parameters"], default=str)),
            walltime=f["walltime"],
            attempts=json.loads(json.dumps(f["attempts"], default=str)) if f["attempts"] else None,
            error=f["error"],
        )
        s.add(label)
        s.flush()
        return int(label.id)


def _generated_unlabelled(db: Database) -> tuple[int, list[tuple[int, Atoms]]]:
    """(number of generated structures, [(id, atoms)] of those without any label)."""
    from sqlalchemy import select

    from autopipe.db import Label, Origin, Structure, atoms_from_structure

    with db.session() as s:
        rows = list(s.scalars(select(Structure).where(Structure.origin == Origin.generated).order_by(Structure.id)))
        labelled = set(s.scalars(select(Label.structure_id)))
        todo = [(r.id, atoms_from_structure(r)) for r in rows if r.id not in labelled]
    return len(rows), todo


def build_initial_potential(
    db: Database,
    store: PotentialStore,
    run_config: RunConfig,
    label_fn: LabelFn | None = None,
    *,
    template: Atoms | None = None,
) -> PotentialFiles:
    """Make sure version 1 exists and return it.

    ``initial_potential.kind == "generate"``: structures from
    :func:`autopipe.generate.generate_structures` (template: ``template`` or the run's
    starting structure) are stored (``Origin.generated``), labelled with ``label_fn`` and
    a fresh fit is published as version 1 named ``initial_potential.name``.

    ``kind == "file"``: the given potential is copied in as version 1, with its ``.asi``
    (computed from ``training_data`` when not given) and a ``.yace``.

    Raises :class:`~autopipe.errors.AutopipeError` when version 1 cannot be made.
    """
    try:
        return store.get(1)
    except KeyError:
        pass
    init = run_config.initial_potential
    if init.kind == "file":
        return _import_file(store, init)
    if label_fn is None:
        label_fn = _run_dft_label_fn(run_config)

    from autopipe.db import LabelStatus, structure_from_atoms
    from autopipe.generate import dataset_template, generate_structures
    from autopipe.potentials.trainer import max_label_id, train_version

    n_existing, todo = _generated_unlabelled(db)
    if n_existing == 0:
        tmpl = template if template is not None else dataset_template(run_config)
        structures = generate_structures(run_config.system.elements, tmpl, init)
        with db.session() as s:
            rows = [structure_from_atoms(a, "generated", info={"generator": a.info.get("generator")}) for a in structures]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
        todo = list(zip(ids, structures))
    n_failed = 0
    for sid, atoms in todo:
        try:
            result = label_fn(atoms)
        except Exception as exc:  # one bad structure must not sink the initial dataset
            result = (LabelStatus.failed, None, None, None, {"error": f"{type(exc).__name__}: {exc}"})
        if _normalise(result)["status"] != LabelStatus.done.value:
            n_failed += 1
        store_label(db, sid, result)
    if n_failed:
        log.warning("%d of %d initial structures could not be labelled", n_failed, len(todo))

    outcome = train_version(
        db, store, run_config.train, run_config.system.elements,
        name=init.name, version=1, parent=None, label_snapshot=max_label_id(db), continue_fit=False,
    )
    if not outcome.ok:
        raise AutopipeError(
            f"training the initial potential failed: {outcome.error}\n{outcome.log_tail}".rstrip()
        )
    assert outcome.potential is not None
    return outcome.potential


def _run_dft_label_fn(run_config: RunConfig) -> LabelFn:
    """The run's own DFT code (``autopipe.dft.label``) as a label function."""
    try:
        from autopipe.dft import label
    except ImportError as exc:  # pragma: no cover - the dft package ships with autopipe
        raise AutopipeError(f"no labelling function given and autopipe.dft is unavailable: {exc}") from None
    return lambda atoms: label(atoms, run_config.dft)


def _import_file(store: PotentialStore, init: InitialPotentialFile) -> PotentialFiles:
    from autopipe.potentials.pacemaker import compute_active_set, export_yace

    src = Path(init.path)
    if not src.exists():
        raise AutopipeError(f"initial potential file not found: {src}")
    if init.asi is None and init.training_data is None:
        raise AutopipeError(
            f"initial potential {src}: give its active set (asi:) or the data it was trained on "
            "(training_data:) so the extrapolation grade can be computed"
        )
    n_train = 0
    with tempfile.TemporaryDirectory(prefix=".import-", dir=store.root) as tmp:
        work = Path(tmp)
        yaml = work / "potential.yaml"
        yaml.write_bytes(src.read_bytes())
        try:
            if init.asi is not None:
                if not Path(init.asi).exists():
                    raise AutopipeError(f"active set file not found: {init.asi}")
                asi = work / "potential.asi"
                asi.write_bytes(Path(init.asi).read_bytes())
            else:
                if not Path(init.training_data).exists():
                    raise AutopipeError(f"training data file not found: {init.training_data}")
                asi = compute_active_set(yaml, [init.training_data])
                try:
                    import pandas as pd

                    n_train = len(pd.read_pickle(init.training_data, compression="gzip"))
                except Exception:
                    n_train = 0
            yace = export_yace(yaml)
        except RuntimeError as exc:
            raise AutopipeError(f"cannot import initial potential {src}: {exc}") from None
        return store.publish(
            {"yaml": yaml, "yace": yace, "asi": asi},
            name=src.stem,
            version=1,
            n_train=n_train,
            metrics={"imported_from": str(src)},
        )
