"""One entry point for every labelling code, and recording labels in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from autopipe.dft.result import LabelResult, jsonable
from autopipe.errors import AutopipeError


def _validated(dft_config: Any):
    """Accept a config model or a plain mapping (as read from a run file or sent to a worker)."""
    from pydantic import TypeAdapter, ValidationError

    from autopipe.config.run import DFTConfig

    if isinstance(dft_config, dict):
        try:
            return TypeAdapter(DFTConfig).validate_python(dft_config)
        except ValidationError as err:
            raise AutopipeError(f"invalid DFT configuration: {err}") from None
    return dft_config


def label(atoms: Atoms, dft_config: Any, *, workdir: Path | None = None, launcher: list[str] | tuple[str, ...] = ()) -> LabelResult:
    """Label ``atoms`` with the code in ``dft_config``: energy (eV), forces (eV/Å), stress (eV/Å³).

    ``dft_config`` is an ``EspressoConfig``, ``LJOracleConfig``, ``EMTOracleConfig`` or
    ``ASECalculatorConfig`` (or the equivalent dict with a ``code`` key). ``workdir``
    keeps pw.x's files (``attempt-N`` directories); ``launcher`` (e.g. ``["srun", "-n", "4"]``)
    goes before the pw.x command. A bad structure or a failing code gives a result with
    status ``failed`` or ``refused``; only configuration errors raise
    :class:`autopipe.errors.AutopipeError`. Force masks travel with the structure record:
    forces are returned for every atom.
    """
    from autopipe.config.run import ASECalculatorConfig, EMTOracleConfig, EspressoConfig, LJOracleConfig

    config = _validated(dft_config)
    if isinstance(config, EspressoConfig):
        from autopipe.dft.espresso import label_espresso

        return label_espresso(atoms, config, workdir=workdir, launcher=launcher)
    if isinstance(config, (LJOracleConfig, EMTOracleConfig, ASECalculatorConfig)):
        from autopipe.dft.oracles import label_oracle

        return label_oracle(atoms, config)
    raise AutopipeError(f"unknown DFT configuration type {type(config).__name__}.")


def store_label(db, structure_id: int, result: LabelResult) -> int:
    """Record ``result`` in the ``labels`` table against structure ``structure_id``; returns the label id.

    Raises :class:`AutopipeError` if the structure does not exist.
    """
    from autopipe.db import Label, LabelStatus, Structure

    with db.session() as s:
        if s.get(Structure, structure_id) is None:
            raise AutopipeError(f"structure {structure_id} does not exist; cannot store its label.")
        row = Label(
            structure_id=structure_id,
            status=LabelStatus(result.status),
            code=result.code,
            energy=None if result.energy is None else float(result.energy),
            forces=None if result.forces is None else np.asarray(result.forces, dtype=float),
            stress=None if result.stress is None else np.asarray(result.stress, dtype=float),
            parameters=jsonable(result.parameters),
            walltime=float(result.walltime),
            attempts=jsonable(result.attempts),
            error=result.error,
        )
        s.add(row)
        s.flush()
        return int(row.id)
