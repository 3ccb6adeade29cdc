"""The typed result of labelling one structure, whatever code produced it.

Units: energy in eV, forces in eV/Å, stress in eV/Å³ (Voigt order xx yy zz yz xz xy,
ASE sign convention: positive is tensile), wall time in s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Status = Literal["done", "failed", "refused"]
STATUSES: tuple[str, ...] = ("done", "failed", "refused")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, paths and tuples turned into plain JSON types.

    Parameters and attempt records go into JSON columns; converting here means a
    numpy float or a ``Path`` slipped in by a caller never breaks the database write.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True, kw_only=True)
class LabelResult:
    """What one labelling call produced.

    Attributes:
        status: ``"done"`` (energy and forces usable), ``"failed"`` (the code ran but gave
            no usable result after every attempt) or ``"refused"`` (never ran: the
            structure cannot be computed with this configuration).
        energy: Total energy (eV); for smeared occupations the free energy the forces
            derive from. ``None`` unless done.
        forces: ``(n_atoms, 3)`` forces (eV/Å) on every atom, masked or not. ``None`` unless done.
        stress: Voigt stress (eV/Å³), only when the cell is periodic in all three directions.
        walltime: Wall time of all attempts together (s).
        code: ``"espresso"``, ``"lj"``, ``"emt"`` or ``"ase"``.
        parameters: The exact parameters of the last attempt (JSON-able).
        attempts: One dict per attempt: ``attempt`` (1-based), ``changes`` (what this
            attempt changed relative to the configured parameters), ``status``,
            ``walltime`` (s), ``error``, and code-specific extras.
        error: Why the label is not done (``None`` when done).
    """

    status: Status
    code: str
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    walltime: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def __post_init__(self) -> None:
        # Catch construction bugs here rather than as a confusing row in the database.
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status == "done":
            if self.energy is None or self.forces is None:
                raise ValueError("a done label needs energy and forces")
            if self.forces.ndim != 2 or self.forces.shape[1] != 3:
                raise ValueError(f"forces must have shape (n, 3), got {self.forces.shape}")
        elif not self.error:
            raise ValueError(f"a {self.status} label needs an error message")

    @property
    def ok(self) -> bool:
        """True when energy and forces are usable for training."""
        return self.status == "done"

    @classmethod
    def refused(cls, code: str, reason: str, parameters: dict[str, Any] | None = None) -> "LabelResult":
        """A label for a structure the code was never started on."""
        return cls(status="refused", code=code, error=reason, parameters=jsonable(parameters or {}))


def finite_problem(energy: float | None, forces: np.ndarray | None, n_atoms: int) -> str | None:
    """Why an energy/forces pair is unusable (non-finite, wrong shape), or ``None`` if usable."""
    if energy is None or not math.isfinite(float(energy)):
        return f"energy is not finite: {energy!r}"
    if forces is None:
        return "no forces"
    if forces.shape != (n_atoms, 3):
        return f"forces have shape {forces.shape}, expected ({n_atoms}, 3)"
    if not np.all(np.isfinite(forces)):
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(forces))[0]})
        return f"forces are not finite on atoms {bad[:10]}"
    return None


