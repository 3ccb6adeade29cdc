"""The carving instrument: strategies x buffers x k-point rules x frames against whole-frame labels.

For each trigger frame and centre, every combination of carving strategy (``cube``,
``commensurate``, and ``healed``: a cube whose seams the potential relaxed first,
:mod:`autopipe.carving.heal`), buffer width and k-point rule (``density``, ``fold``) is carved and
labelled; the core atoms' forces are compared with the whole frame's label, and with the
current potential's forces on the same atoms. Whole-frame labels are the expensive part
(a 215-atom Si frame: ~1,000 s of pw.x on 2 ranks), so they are cached by a hash of the
positions, cell, species and DFT settings: a rerun does not pay for them again.

The result feeds :func:`autopipe.carving.budget.choose`: per strategy, the core rms over
all frames, the potential's rms on the same atoms, and the mean DFT seconds per cell.

Units: Å, eV/Å, s.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from autopipe.carving.budget import Measured
from autopipe.carving.lattice import ParentTooSmall, ReferenceLattice
from autopipe.carving.strategies import AsBigAsTheFrame, apply_kpoint_rule, carve, check_worth_carving

__all__ = ["Frame", "CarvePoint", "whole_frame_key", "cached_whole_label", "scan_carves", "measurements",
           "format_table", "plot_points"]


@dataclass(frozen=True)
class Frame:
    """A trigger frame to scan: its atoms, the centre atom, and a name for the table."""

    name: str
    atoms: Atoms
    center: int


@dataclass(frozen=True)
class CarvePoint:
    """One carved cell of the scan, compared with its frame's whole label."""

    frame: str
    center: int
    strategy: str
    buffer: float  # Å
    kpoints: str  # the rule asked for
    mesh: str  # the mesh used ("gamma" or "3x3x3")
    n_atoms: int
    n_core: int
    status: str  # done / failed / refused / not carved
    dft_seconds: float
    frame_seconds: float  # the whole frame's DFT seconds (cached or measured)
    core_max: float | None  # eV/Å, max over core atoms of |F_cell - F_frame|
    core_rms: float | None  # eV/Å
    potential_rms: float | None  # eV/Å, the potential against the whole frame on the same core atoms
    note: str = ""


#: DFT settings that decide how a label is run, not what it gives: left out of the cache key, so a
#: benchmark with a longer timeout finds the labels another one paid for.
_NOT_IN_KEY = frozenset({"timeout", "max_attempts"})


def whole_frame_key(atoms: Atoms, settings: dict[str, Any]) -> str:
    """Hash of what determines a whole-frame label: positions (to 1e-6 Å), cell, species, and the
    settings that change the result (not ``timeout`` or ``max_attempts``)."""
    settings = {k: v for k, v in settings.items() if k not in _NOT_IN_KEY}
    h = hashlib.sha256()
    h.update(np.round(np.asarray(atoms.positions, dtype=float), 6).tobytes())
    h.update(np.round(np.asarray(atoms.cell, dtype=float), 6).tobytes())
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def cached_whole_label(atoms: Atoms, settings: dict[str, Any], cache: Path,
                       label_fn: Callable[[Atoms], Any]) -> tuple[np.ndarray | None, float, str]:
    """(forces eV/Å or None, DFT seconds, status) of the whole frame, from ``cache`` or by labelling.

    Only successful labels are cached (a JSON file per key): a failed whole frame is tried again.
    """
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{whole_frame_key(atoms, settings)}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return np.asarray(data["forces"], dtype=float), float(data["seconds"]), "done"
    result = label_fn(atoms)
    if result.status != "done":
        return None, float(result.walltime or 0.0), str(result.status)
    forces = np.asarray(result.forces, dtype=float)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"forces": forces.tolist(), "seconds": float(result.walltime or 0.0),
                               "n_atoms": len(atoms), "settings": settings}, default=str))
    tmp.replace(path)
    return forces, float(result.walltime or 0.0), "done"


def _rms(x: np.ndarray) -> float:
    return float(math.sqrt(np.mean(np.sum(x**2, axis=1)))) if len(x) else float("nan")


def scan_carves(
    frames: Sequence[Frame],
    *,
    core_radius: float,
    strategies: Sequence[str],
    buffers: Sequence[float],
    kpoint_rules: Sequence[str],
    label_fn: Callable[[Atoms], Any],
    whole_label: Callable[[Atoms], tuple[np.ndarray | None, float, str]],
    potential_forces: Callable[[Atoms], np.ndarray] | None = None,
    lattice: ReferenceLattice | None = None,
    min_distance: float = 0.5,
    kspacing: float = 0.6,
    gamma_only_length: float = 9.5,
    progress: Callable[[CarvePoint], None] | None = None,
    heal_calc: Any = None,
    heal_bounds: Any = None,
) -> list[CarvePoint]:
    """Carve, label and compare every (frame, strategy, buffer, k rule). Cells identical across k
    rules (the rule gave the same mesh) are labelled once. ``label_fn(atoms)`` returns a
    :class:`autopipe.dft.LabelResult`; ``whole_label(frame)`` gives (forces, seconds, status),
    cached (:func:`cached_whole_label`); ``potential_forces(frame)`` the current potential's
    forces on the whole frame (eV/Å), for its error on the same core atoms.

    Strategy ``healed`` (needs ``heal_calc``, an ASE calculator of the current potential, and
    ``potential_forces``): the cube carve with its seam atoms relaxed under the force the carve
    added (:func:`autopipe.carving.heal.heal_seams` with the potential's parent-frame forces as
    target, within ``heal_bounds``, a :class:`~autopipe.carving.heal.HealBounds`); a cell the bounds
    refuse is a ``refused`` point with the reason."""
    if "healed" in strategies and (heal_calc is None or potential_forces is None):
        raise ValueError("the healed strategy needs the potential: heal_calc and potential_forces")
    points: list[CarvePoint] = []
    for fr in frames:
        f_ref, frame_s, frame_status = whole_label(fr.atoms)
        f_pot = potential_forces(fr.atoms) if potential_forces is not None else None
        for strategy in strategies:
            for b in sorted({float(x) for x in buffers}):
                labelled: dict[str, Any] = {}
                for rule in kpoint_rules:
                    base = dict(frame=fr.name, center=fr.center, strategy=strategy, buffer=b, kpoints=rule,
                                frame_seconds=frame_s)
                    try:
                        sub, masked = carve(fr.atoms, fr.center, "cube" if strategy == "healed" else strategy,
                                            core_radius, b, lattice=lattice, min_distance=min_distance)
                        if strategy == "healed":
                            from autopipe.carving.heal import HealBounds, heal_seams

                            target = np.asarray(f_pot)[np.asarray(sub.arrays["parent_index"])]
                            sub, _ = heal_seams(sub, masked, heal_calc, heal_bounds or HealBounds(),
                                                target_forces=target)
                    except ParentTooSmall as exc:
                        points.append(CarvePoint(**base, mesh="-", n_atoms=len(fr.atoms), n_core=0,
                                                 status="not carved", dft_seconds=0.0, core_max=None, core_rms=None,
                                                 potential_rms=None, note=str(exc)))
                        continue
                    except ValueError as exc:
                        points.append(CarvePoint(**base, mesh="-", n_atoms=0, n_core=0, status="refused",
                                                 dft_seconds=0.0, core_max=None, core_rms=None, potential_rms=None,
                                                 note=str(exc).splitlines()[0]))
                        continue
                    try:  # the loop's rule, at a fraction of 1: the instrument measures every cell smaller than the parent
                        check_worth_carving(len(sub), len(fr.atoms), 1.0)
                    except AsBigAsTheFrame as exc:
                        points.append(CarvePoint(**base, mesh="-", n_atoms=len(sub), n_core=0, status="not carved",
                                                 dft_seconds=0.0, core_max=None, core_rms=None, potential_rms=None,
                                                 note=f"{exc}: label the whole frame"))
                        continue
                    choice = apply_kpoint_rule(sub, fr.atoms, rule, kspacing, gamma_only_length)
                    mesh = "gamma" if choice.mesh is None else "x".join(map(str, choice.mesh))
                    result = labelled.get(mesh) or label_fn(sub)
                    labelled[mesh] = result
                    core = np.setdiff1d(np.arange(len(sub)), masked)
                    parent = np.asarray(sub.arrays["parent_index"])[core]
                    cmax = crms = prms = None
                    if result.status == "done" and f_ref is not None:
                        df = np.asarray(result.forces)[core] - f_ref[parent]
                        cmax, crms = float(np.linalg.norm(df, axis=1).max()), _rms(df)
                    if f_pot is not None and f_ref is not None:
                        prms = _rms(f_pot[parent] - f_ref[parent])
                    point = CarvePoint(**base, mesh=mesh, n_atoms=len(sub), n_core=len(core), status=str(result.status),
                                       dft_seconds=float(result.walltime or 0.0), core_max=cmax, core_rms=crms,
                                       potential_rms=prms, note=choice.note or (result.error or "")
                                       or (f"whole frame {frame_status}" if f_ref is None else ""))
                    points.append(point)
                    if progress is not None:
                        progress(point)
    return points


def measurements(points: Sequence[CarvePoint]) -> list[Measured]:
    """Per (strategy, buffer, k rule): core rms and the potential's rms pooled over every frame's core
    atoms (weighted by core size), mean DFT seconds per cell and per whole frame."""
    groups: dict[tuple[str, float, str], list[CarvePoint]] = {}
    for p in points:
        if p.core_rms is not None and p.potential_rms is not None:
            groups.setdefault((p.strategy, p.buffer, p.kpoints), []).append(p)
    out = []
    for (strategy, buffer, rule), ps in groups.items():
        w = np.array([p.n_core for p in ps], dtype=float)
        pooled = lambda xs: float(math.sqrt(np.sum(w * np.square(xs)) / w.sum()))  # noqa: E731
        out.append(Measured(strategy=strategy, buffer=buffer, kpoints=rule,
                            core_rms=pooled([p.core_rms for p in ps]), potential_rms=pooled([p.potential_rms for p in ps]),
                            cost=float(np.mean([p.dft_seconds for p in ps])),
                            frame_cost=float(np.mean([p.frame_seconds for p in ps])),
                            n_atoms=int(round(np.mean([p.n_atoms for p in ps])))))
    return sorted(out, key=lambda m: (m.cost, m.core_rms))


def format_table(points: Sequence[CarvePoint]) -> str:
    """The scan as a Markdown table (one row per carved cell)."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| frame | centre | strategy | buffer Å | k rule | mesh | atoms | core | core max dF eV/Å | "
             "core rms eV/Å | potential rms eV/Å | DFT s | whole frame s | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.frame} | {p.center} | {p.strategy} | {p.buffer:g} | {p.kpoints} | {p.mesh} | {p.n_atoms} | "
                     f"{p.n_core} | {fmt(p.core_max)} | {fmt(p.core_rms)} | {fmt(p.potential_rms)} | "
                     f"{p.dft_seconds:.0f} | {p.frame_seconds:.0f} | {p.note[:80]} |")
    return "\n".join(lines)


def plot_points(points: Sequence[CarvePoint], path: Path | str) -> Path:
    """PNG: core rms error against DFT seconds per cell, one marker per strategy and k rule, with the
    potential's own error on the same atoms as a band (what a label has to beat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    done = [p for p in points if p.core_rms is not None]
    for key in sorted({(p.strategy, p.kpoints) for p in done}):
        ps = [p for p in done if (p.strategy, p.kpoints) == key]
        ax.scatter([p.dft_seconds for p in ps], [1000 * p.core_rms for p in ps], label=f"{key[0]}, k {key[1]}")
    pots = [1000 * p.potential_rms for p in done if p.potential_rms is not None]
    if pots:
        ax.axhspan(min(pots), max(pots), color="grey", alpha=0.2, label="potential's own error")
    frames = [p.frame_seconds for p in done if p.frame_seconds > 0]
    if frames:
        ax.axvline(float(np.mean(frames)), color="black", ls="--", lw=1, label="whole frame")
    ax.set_xscale("log")
    ax.set_xlabel("DFT seconds per label")
    ax.set_ylabel("core force rms vs whole frame (meV/Å)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
