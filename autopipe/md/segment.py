"""One MD segment in LAMMPS with in-run uncertainty monitoring: :func:`run_segment`.

A segment starts from an :class:`MDState`, runs up to ``n_steps`` steps with one potential,
checks the largest per-atom extrapolation grade (gamma) at the start and every
``check_frequency`` steps, and stops inside LAMMPS (``fix halt``) as soon as it exceeds
``uncertainty_threshold``. It returns a :class:`SegmentResult` whose ``status`` is

* ``"completed"``: all steps done, no check above the threshold;
* ``"triggered"``: stopped at a check above the threshold; ``final_state`` is the state at
  that step and ``trigger_frame`` the frame with per-atom gamma;
* ``"failed"``: blown up (non-finite or exploding energy/forces, lost atoms), a LAMMPS
  error, or a failure in the force callback; ``error`` says what, ``final_state`` is the
  unchanged starting state.

Completed and triggered segments write ``workdir/checkpoint-<end_step:08d>.npz``. Hot-swap
happens between segments: the next call simply passes a newer potential. Between segments
only positions, velocities, box and step carry over: the internal variables of a
Nosé-Hoover thermostat or a barostat restart from zero, and Langevin noise is reseeded
from (seed, start step), so segment boundaries are invisible in NVE and nearly so otherwise.

Gamma is checked at the segment's first step and at every step that is a multiple of
``check_frequency`` (absolute step count, so checks line up across segments).

Routes: with ML-PACE compiled into LAMMPS (``"ML-PACE" in lmp.installed_packages``; the
installer builds it) the native ``pair_style pace/extrapolation`` runs everything in C++,
as an ``lmp`` process of its own, one rank or under an MPI launcher
(``launcher=["mpirun", "-np", "2"]``), see :mod:`autopipe.md.native`; otherwise (e.g. the
PyPI wheel) forces come from pyace through ``fix external``, in this process, one rank
(see :mod:`autopipe.md.external`). Both routes check gamma at the same steps, stop at the
same check and return the same kind of result (:mod:`autopipe.md.result`). This module is
the dispatcher both share: it writes the segment's data file and settings, picks the route,
and saves the checkpoint.

Concurrency: every input is picklable and each call creates and closes its own LAMMPS
instance (or process), so segments can run one after another in one process or in separate
Parsl workers. Within one process, callback-route runs are serialised by
:data:`autopipe.md.bootstrap.LAMMPS_LOCK` (native runs are separate processes and need none): LAMMPS instances
share MPI and library-global state, the Python callback needs the GIL at every step anyway,
and pyace evaluators are not thread-safe, so two threads gain nothing from overlapping and
could corrupt each other. Use processes for parallel walkers.

Units: Å, eV, fs (config), K, bar; LAMMPS runs in ``units metal`` (ps, Å/ps).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from autopipe.layout import checkpoint_file, segment_prefix
from autopipe.md.bootstrap import lammps_has_ml_pace
from autopipe.md.box import lammps_box
from autopipe.md.external import BlowUpLimits, run_external
from autopipe.md.lammps_input import render_data
from autopipe.md.native import run_native
from autopipe.md.result import SegmentResult
from autopipe.md.state import MDState, save_state, velocities_fs

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import MDConfig, OTFConfig

__all__ = ["PotentialLike", "run_segment", "potential_cutoff_from_yaml"]

#: Verlet skin of the pyace neighbour list and of LAMMPS (Å).
SKIN = 1.0


@runtime_checkable
class PotentialLike(Protocol):
    """What a segment needs of a potential (``autopipe.potentials.PotentialFiles`` fits).

    ``yaml``: B-basis (pyace; forces and gamma), ``asi``: active set, ``yace``: Ctilde basis
    (unused here: ``pair_style pace/extrapolation`` reads the B-basis), ``version``: recorded
    in the result.
    """

    version: int
    yaml: Path
    yace: Path | None
    asi: Path | None


def potential_cutoff_from_yaml(yaml: Path | str) -> float:
    """Largest ``rcutij`` of a B-basis yaml (Å), read as text so the native route needs no pyace."""
    values = [float(v) for v in re.findall(r"rcutij:\s*([-+0-9.eE]+)", Path(yaml).read_text())]
    if values:
        return max(values)
    from autopipe.md.ace import potential_cutoff

    return potential_cutoff(yaml)


# ----------------------------------------------------------------------------- atoms -> LAMMPS types


def _types(atoms: Atoms) -> tuple[list[str], list[float], np.ndarray]:
    """(elements per type, mass per type (u), 1-based type per atom). One type per element."""
    symbols = atoms.get_chemical_symbols()
    masses = atoms.get_masses()
    elements = sorted(set(symbols), key=lambda s: (symbols.index(s)))
    type_of = {el: i + 1 for i, el in enumerate(elements)}
    types = np.array([type_of[s] for s in symbols], dtype=int)
    type_masses = []
    for el in elements:
        m = masses[types == type_of[el]]
        if np.ptp(m) > 1e-9 * max(1.0, float(np.max(m))):
            raise ValueError(f"atoms of element {el} have different masses; LAMMPS sets one mass per type")
        type_masses.append(float(m[0]))
    return elements, type_masses, types


# ----------------------------------------------------------------------------- the segment


def run_segment(
    state: MDState,
    potential: PotentialLike,
    md_config: MDConfig,
    otf_config: OTFConfig,
    *,
    workdir: Path,
    n_steps: int | None = None,
    route: Literal["auto", "external", "native"] = "auto",
    limits: BlowUpLimits | None = None,
    lammps_dump: bool = False,
    launcher: Sequence[str] | None = None,
    lammps_args: Sequence[str] | None = None,
    timeout: float | None = None,
) -> SegmentResult:
    """Run one MD segment of ``n_steps`` (default ``md_config.segment_steps``) from ``state``.

    ``workdir`` receives ``seg-<start>-v<version>.*`` files (thermo records, trajectory; the
    LAMMPS data file is kept only when the segment failed; on the native route also LAMMPS's
    input script, log and output files) and the checkpoint ``checkpoint-<end_step:08d>.npz``.
    ``route``: ``"auto"`` picks ``native`` when LAMMPS has ML-PACE or a launcher is given,
    else ``external`` (pyace through fix external). ``limits``: bounds that count as a
    blown-up run (both routes; the native route checks them at gamma checks).
    ``lammps_dump``: on the callback route, also write LAMMPS's own dump (LAMMPS frame:
    positions, velocities, total forces) to ``<workdir>/seg-<start>-v<version>.lammpstrj``;
    the native route always writes it.

    Native route only: LAMMPS runs as ``launcher + [lmp] + lammps_args + [-in ...]`` in a
    process of its own, killed after ``timeout`` s (default
    :data:`autopipe.md.native.DEFAULT_TIMEOUT`). ``launcher``: the site's ``md_launcher``,
    e.g. ``["mpirun", "-np", "2"]`` or ``["srun", "-n", "4"]`` (empty: one rank).
    ``lammps_args``: LAMMPS command-line switches (e.g. KOKKOS's ``-k on g 1 -sf kk``).

    Invalid inputs (cell LAMMPS cannot hold; on the callback route elements the potential
    lacks) raise ``ValueError``; everything that goes wrong while running is a ``"failed"``
    result, on the native route with LAMMPS's own error line (elements the potential lacks, a
    missing potential or active-set file, an error mid-run, a timeout).
    """
    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()  # every path LAMMPS reads or writes: lmp runs in its own directory
    workdir.mkdir(parents=True, exist_ok=True)
    n = int(md_config.segment_steps if n_steps is None else n_steps)
    if n < 0:
        raise ValueError(f"n_steps must be >= 0, not {n}")
    if potential.asi is None:
        raise ValueError(f"potential v{potential.version} has no active set (.asi): gamma cannot be monitored")
    limits = limits or BlowUpLimits()
    atoms = state.atoms
    start = state.step
    version = getattr(potential, "version", None)

    def failed(message: str, **extra: Any) -> SegmentResult:
        fields: dict[str, Any] = dict(
            status="failed", final_state=state, start_step=start, end_step=start, max_gamma=math.nan,
            gamma_trace=np.zeros((0, 2)), error=message, potential_version=version, failure="error",
        )
        fields.update(extra)
        trace = np.asarray(fields["gamma_trace"], dtype=float).reshape(-1, 2)
        fields["gamma_trace"] = trace
        if len(trace):
            fields["max_gamma"] = float(np.max(trace[:, 1]))
        return SegmentResult(**fields)

    missing = [str(f) for f in (potential.yaml, potential.asi) if not Path(f).is_file()]
    if missing:
        return failed(f"potential v{version}: file not found: {', '.join(missing)}")
    dim = int(md_config.dimension)
    cutoff = potential_cutoff_from_yaml(potential.yaml)
    box = lammps_box(atoms.cell, atoms.pbc, dim, atoms.positions, min_half_height=cutoff + SKIN + 1.0)
    elements, masses, types = _types(atoms)
    pos_l = box.to_lammps_positions(atoms.positions)
    vel_l = box.to_lammps_vectors(velocities_fs(atoms))
    if dim == 2:
        pos_l[:, 2] = 0.0
        vel_l[:, 2] = 0.0
    prefix = segment_prefix(workdir, start, version)
    tag = prefix.name
    data_file = prefix.with_suffix(".data")
    data_file.write_text(render_data(box, pos_l, vel_l, types, masses, elements))
    thermo_file = workdir / f"{tag}.thermo"
    thermo_file.unlink(missing_ok=True)
    spec_kw = dict(
        data_file=str(data_file),
        dimension=dim,
        elements=tuple(elements),
        masses=tuple(masses),
        ensemble=md_config.ensemble,
        temperature=float(md_config.temperature),
        pressure=float(md_config.pressure),
        timestep=float(md_config.timestep),
        thermostat_damping=float(md_config.thermostat_damping),
        barostat_damping=float(md_config.barostat_damping),
        seed=int(md_config.seed),
        start_step=start,
        n_steps=n,
        check_frequency=int(otf_config.check_frequency),
        threshold=float(otf_config.uncertainty_threshold),
        thermo_every=int(md_config.thermo_every),
        thermo_file=str(thermo_file),
        dump_every=int(md_config.dump_every),
        neighbor_skin=SKIN,
    )

    launcher = [str(a) for a in (launcher or ())]
    if route == "external" and launcher:
        raise ValueError("a launcher runs LAMMPS with ML-PACE (the native route); the callback route runs in-process")
    # A launcher means "run lmp": whether that lmp has ML-PACE is for LAMMPS to say.
    use_native = route == "native" or (route == "auto" and (bool(launcher) or lammps_has_ml_pace()))
    if use_native:
        result = run_native(state, potential, box, spec_kw, workdir, tag, failed, limits,
                            launcher, list(lammps_args or ()), timeout)
    else:
        if lammps_dump:
            spec_kw["dump_file"] = str(workdir / f"{tag}.lammpstrj")
        result = run_external(state, potential, box, spec_kw, workdir, tag, limits, failed)
    if result.status in ("completed", "triggered"):
        result.checkpoint = save_state(checkpoint_file(workdir, result.end_step), result.final_state)
        # The data file only restates the starting checkpoint; keep it only to debug failures.
        data_file.unlink(missing_ok=True)
    result.walltime = time.perf_counter() - t0
    return result


