"""Quantum ESPRESSO pw.x labels: render input, build command, run with timeout, parse, retry.

Units: energies in eV, forces in eV/Å, stress in eV/Å³ (ASE converts from pw.x's Ry
and bohr); cutoffs in Ry; k-point spacing in 1/Å with 2π included; times in s.

Each attempt runs in ``<workdir>/attempt-N`` (pw.in, pw.out, pw.err; pw.x's scratch
``out/`` is deleted afterwards). Failures are expected and recovered where possible:

* SCF not converged -> the next attempt halves ``mixing_beta`` and doubles
  ``electron_maxstep`` (at least 100); a second SCF failure switches the
  diagonalisation to ``cg``; further ones halve and double again. Changes accumulate.
* pw.x crashes (non-zero exit, no ``JOB DONE``, unreadable output) or times out ->
  the next attempt repeats the same parameters.

At most ``max_attempts`` attempts in all; a label that still fails is returned as
``failed`` with every attempt recorded. Structures pw.x cannot handle are ``refused``
before anything runs.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from ase import Atoms

from autopipe.config.run import EspressoConfig
from autopipe.dft import geometry, process, pseudo
from autopipe.dft.result import LabelResult, finite_problem, jsonable

CODE = "espresso"
INPUT, OUTPUT, ERRORS = "pw.in", "pw.out", "pw.err"
SCRATCH = "out"  # pw.x outdir, relative to the attempt directory
MIN_RETRY_MAXSTEP = 100  # doubling a tiny electron_maxstep (say 1) would not help


# ----------------------------------------------------------------------------- render


def input_data(config: EspressoConfig, pseudo_dir: Path, overrides: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """pw.x namelists (QE units: Ry) for ``config`` with attempt ``overrides`` applied.

    ``overrides`` keys are ``mixing_beta``, ``electron_maxstep``, ``diagonalization``
    (the &ELECTRONS knobs the retries turn).
    """
    electrons: dict[str, Any] = {
        "conv_thr": config.conv_thr,
        "mixing_beta": config.mixing_beta,
        "electron_maxstep": config.electron_maxstep,
        "diagonalization": "david",
    }
    electrons.update(overrides or {})
    system: dict[str, Any] = {
        "ecutwfc": config.ecutwfc,
        "ecutrho": config.ecutrho if config.ecutrho is not None else 4.0 * config.ecutwfc,
    }
    if config.smearing == "none":
        system["occupations"] = "fixed"
    else:
        system.update(occupations="smearing", smearing=config.smearing, degauss=config.degauss)
    if config.spin_polarized:
        system["nspin"] = 2  # starting_magnetization(i) is written per species by render()
    return {
        "control": {
            "calculation": "scf",
            "tprnfor": True,
            "tstress": True,
            "pseudo_dir": str(Path(pseudo_dir).resolve()),
            "outdir": f"./{SCRATCH}",
            "prefix": "pwscf",
        },
        "system": system,
        "electrons": electrons,
    }


def cell_config(config: EspressoConfig, atoms: Atoms) -> EspressoConfig:
    """The run's pw.x settings for ``atoms``: a carved cell the charge policy marked
    (``info["embedding_spin_polarized"]``, :mod:`autopipe.carving.charge`: an odd electron count or
    a formal charge) is labelled spin-polarised, and smeared (``mv``, the run's ``degauss``) when the
    run has fixed occupations, which a half-filled level cannot have. Other cells: ``config`` itself."""
    if not atoms.info.get("embedding_spin_polarized") or (config.spin_polarized and config.smearing != "none"):
        return config
    update: dict[str, Any] = {"spin_polarized": True}
    if config.smearing == "none":
        update["smearing"] = "mv"
    return config.model_copy(update=update)


def starting_magnetization(symbols: list[str], config: EspressoConfig) -> dict[str, float]:
    """Element -> pw.x ``starting_magnetization`` (fraction of valence charge, -1..1).

    Elements missing from ``config.starting_magnetization`` start at 0; if that leaves
    every element at 0, all start at 0.5, because pw.x refuses nspin=2 with no initial moment.
    """
    given = {s: float(np.clip(config.starting_magnetization.get(s, 0.0), -1.0, 1.0)) for s in symbols}
    if not any(given.values()):
        given = {s: 0.5 for s in symbols}
    return given


def render(
    atoms: Atoms,
    path: Path,
    data: dict[str, dict[str, Any]],
    pseudopotentials: dict[str, str],
    kpts: tuple[int, int, int] | None,
    magnetization: dict[str, float] | None = None,
) -> None:
    """Write the pw.x input for ``atoms`` to ``path`` with ASE's espresso writer.

    ``kpts=None`` writes ``K_POINTS gamma``. ``magnetization`` (element -> QE starting
    magnetization) goes through ASE's per-species moments, which ASE writes unscaled as
    ``starting_magnetization(i)``.
    """
    from ase.io.espresso import write_espresso_in

    clean = geometry.clean_copy(atoms)
    if magnetization:
        clean.set_initial_magnetic_moments([magnetization[s] for s in clean.get_chemical_symbols()])
    with open(path, "w") as fd:
        write_espresso_in(fd, clean, input_data=data, pseudopotentials=pseudopotentials, kpts=kpts)


def build_command(config: EspressoConfig, launcher: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The argv of one attempt: ``[*launcher, *command, "-in", "pw.in"]`` (never a shell string)."""
    return [*launcher, *config.command, "-in", INPUT]


# ----------------------------------------------------------------------------- parse


@dataclass(frozen=True)
class Parsed:
    """One attempt's outcome read from pw.x's output.

    ``status``: done, scf_not_converged, crashed, timeout or parse_error.
    """

    status: str
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    error: str | None = None
    scf_iterations: int | None = None


_NOT_CONVERGED = re.compile(r"convergence NOT achieved.*")
_CONVERGED = re.compile(r"convergence has been achieved in\s+(\d+)\s+iterations")


def _error_block(text: str) -> str | None:
    """The message inside pw.x's ``%%%%`` error box, joined into one line."""
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip().startswith("%%%%")]
    if len(marks) >= 2:
        body = [line.strip() for line in lines[marks[0] + 1 : marks[1]] if line.strip()]
        if body:
            return " ".join(body)
    return None


_WALL = re.compile(r"PWSCF\s*:.*CPU\s+(.*?)\s*WALL")


def wall_seconds(text: str) -> float:
    """pw.x's own wall time (s) from its closing ``PWSCF : ... WALL`` line (``1h 2m``, ``3m4.5s``, ``4.8s``); 0 if absent."""
    m = _WALL.search(text)
    if not m:
        return 0.0
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)\s*([hms])", m.group(1)):
        total += float(value) * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]
    return total


def finished_attempt(directory: Path, staged_input: Path) -> process.RunOutcome | None:
    """The outcome of an attempt that already ran to the end with exactly this input, or ``None``.

    A resubmitted label (the steering process died after pw.x finished) is read from
    its files instead of being computed again. "To the end" means pw.x wrote ``JOB DONE``;
    anything else (killed, crashed, another input) is run again.
    """
    out, old_input = directory / OUTPUT, directory / INPUT
    if not (out.is_file() and old_input.is_file()) or old_input.read_bytes() != staged_input.read_bytes():
        return None
    text = out.read_text(errors="replace")
    if "JOB DONE" not in text:
        return None
    return process.RunOutcome(returncode=0, timed_out=False, walltime=wall_seconds(text), reused=True)


def _tail(text: str, n: int = 5) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def parse(directory: Path, run: process.RunOutcome, *, timeout: float, n_atoms: int, periodic3d: bool) -> Parsed:
    """Read the attempt in ``directory``: detect timeouts, SCF failure and crashes first,
    then let ASE parse energy (eV), forces (eV/Å) and stress (eV/Å³) of a finished run."""
    out_path, err_path = directory / OUTPUT, directory / ERRORS
    text = out_path.read_text(errors="replace") if out_path.exists() else ""
    if run.timed_out:
        return Parsed("timeout", error=f"pw.x killed after the {timeout:g} s timeout.")
    not_converged = _NOT_CONVERGED.search(text)
    if not_converged:
        return Parsed("scf_not_converged", error=not_converged.group(0).strip())
    if run.returncode != 0 or "JOB DONE" not in text:
        crash = directory / "CRASH"
        reason = (
            _error_block(text)
            or (_error_block(crash.read_text(errors="replace")) if crash.exists() else None)
            or _tail(err_path.read_text(errors="replace") if err_path.exists() else "")
            or _tail(text)
            or "no output"
        )
        return Parsed("crashed", error=f"pw.x exited with code {run.returncode}, no JOB DONE: {reason}"[:2000])
    from ase.io import read

    try:
        frame = read(out_path, format="espresso-out", index=-1)
        energy = float(frame.get_potential_energy())
        forces = np.array(frame.get_forces(), dtype=float)
        stress = None
        if periodic3d:
            stress = np.array(frame.get_stress(voigt=True), dtype=float)
    except Exception as exc:  # ASE raises many types on truncated or odd output
        return Parsed("parse_error", error=f"cannot read pw.x output: {type(exc).__name__}: {exc}"[:2000])
    problem = finite_problem(energy, forces, n_atoms)
    if problem is None and stress is not None and not np.all(np.isfinite(stress)):
        problem = "stress is not finite"
    if problem:
        return Parsed("parse_error", error=f"unusable pw.x output: {problem}")
    iterations = _CONVERGED.search(text)
    return Parsed(
        "done", energy=energy, forces=forces, stress=stress, scf_iterations=int(iterations.group(1)) if iterations else None
    )


# ----------------------------------------------------------------------------- retries


def recovery_changes(scf_failures: int, current: dict[str, Any]) -> dict[str, Any]:
    """What to change after the ``scf_failures``-th unconverged SCF, given the current &ELECTRONS.

    First: gentler mixing and more iterations. Second: the slower but sturdier
    conjugate-gradient diagonalisation. Later: gentler and longer again.
    """
    if scf_failures == 2:
        return {"diagonalization": "cg"}
    return {
        "mixing_beta": current["mixing_beta"] / 2.0,
        "electron_maxstep": max(2 * int(current["electron_maxstep"]), MIN_RETRY_MAXSTEP),
    }


@contextmanager
def _work_directory(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="autopipe-pw-") as tmp:
        yield Path(tmp)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # Parallelism comes from the launcher (MPI ranks); OpenMP/BLAS threads on top would
    # oversubscribe shared nodes. A site that wants threads sets OMP_NUM_THREADS itself.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def carved_kpoints(atoms: Atoms) -> tuple[int, int, int] | None:
    """The mesh a carved cell was given by its k-point rule (``info["embedding_kpts"]``, set by
    :mod:`autopipe.carving.kpoints` when the cell was carved), else None (use ``kspacing``)."""
    mesh = atoms.info.get("embedding_kpts")
    if mesh is None:
        return None
    mesh = tuple(int(k) for k in mesh)
    if len(mesh) != 3 or min(mesh) < 1:
        raise ValueError(f"embedding_kpts must be three positive integers, got {atoms.info['embedding_kpts']!r}")
    return mesh  # type: ignore[return-value]


def label_espresso(
    atoms: Atoms, config: EspressoConfig, *, workdir: Path | None = None, launcher: list[str] | tuple[str, ...] = ()
) -> LabelResult:
    """Label ``atoms`` with pw.x; never raises for a bad structure or a failing pw.x.

    Raises :class:`autopipe.errors.AutopipeError` only for configuration errors (missing
    pseudo_dir or named UPF file, an executable that cannot be started).
    ``workdir=None`` runs in a temporary directory that is removed afterwards.
    """
    config = cell_config(config, atoms)
    periodic3d = bool(np.all(atoms.pbc))
    base = {"command": build_command(config, launcher), "pseudo_dir": str(config.pseudo_dir)}
    problem = geometry.structure_problem(atoms, min_distance=config.min_distance, needs_full_cell=True)
    if problem:
        return LabelResult.refused(CODE, f"refused: {problem}", base)
    symbols = sorted(set(atoms.get_chemical_symbols()))
    pseudopotentials, missing = pseudo.resolve(symbols, Path(config.pseudo_dir), config.pseudopotentials)
    if missing:
        return LabelResult.refused(
            CODE, f"refused: no pseudopotential for {', '.join(missing)} in {config.pseudo_dir}.", base
        )
    kpts = carved_kpoints(atoms)
    if kpts is None:
        kpts = geometry.kpoint_grid(atoms, config.kspacing, config.gamma_only_length)
    elif kpts == (1, 1, 1):
        kpts = None  # the Gamma point alone: pw.x's real-wavefunction routines
    magnetization = starting_magnetization(symbols, config) if config.spin_polarized else None
    # Recorded with every label: two labels are comparable only if they used the same files.
    checksums = {s: pseudo.sha256(Path(config.pseudo_dir) / f) for s, f in pseudopotentials.items()}
    argv = build_command(config, launcher)
    env = _environment()

    attempts: list[dict[str, Any]] = []
    overrides: dict[str, Any] = {}
    reason = "first attempt"
    scf_failures = 0
    walltime = 0.0
    parsed: Parsed | None = None
    parameters: dict[str, Any] = {}
    with _work_directory(workdir) as root:
        for number in range(1, config.max_attempts + 1):
            data = input_data(config, config.pseudo_dir, overrides)
            parameters = jsonable(
                {
                    "input_data": data,
                    "kpts": list(kpts) if kpts is not None else "gamma",
                    "pseudopotentials": pseudopotentials,
                    "pseudo_sha256": checksums,
                    "starting_magnetization": magnetization,
                    "command": argv,
                    "timeout": config.timeout,
                }
            )
            directory = root / f"attempt-{number}"
            staged = root / f".{INPUT}.attempt-{number}"
            try:
                render(atoms, staged, data, pseudopotentials, kpts, magnetization)
            except Exception as exc:  # ASE's writer on a structure it cannot express: no retry helps
                return LabelResult(
                    status="failed", code=CODE, walltime=walltime, parameters=parameters, attempts=attempts,
                    error=f"cannot write pw.x input: {type(exc).__name__}: {exc}",
                )
            outcome = finished_attempt(directory, staged)
            if outcome is not None:
                # Finished before the process that started it died: read it, never run it again.
                staged.unlink()
            else:
                if directory.exists():  # an interrupted or crashed run of the same label
                    shutil.rmtree(directory)
                directory.mkdir(parents=True)
                staged.replace(directory / INPUT)
                outcome = process.run(argv, directory, timeout=config.timeout, stdout=directory / OUTPUT,
                                      stderr=directory / ERRORS, env=env)
            walltime += outcome.walltime
            parsed = parse(directory, outcome, timeout=config.timeout, n_atoms=len(atoms), periodic3d=periodic3d)
            shutil.rmtree(directory / SCRATCH, ignore_errors=True)  # wavefunctions: large, never reused
            record: dict[str, Any] = {
                "attempt": number,
                "reason": reason,
                "changes": dict(overrides),
                "status": parsed.status,
                "walltime": round(outcome.walltime, 3),
                "returncode": outcome.returncode,
                "error": parsed.error,
            }
            if parsed.scf_iterations is not None:
                record["scf_iterations"] = parsed.scf_iterations
            if workdir is not None:
                record["directory"] = str(directory)
            if outcome.reused:
                record["reused"] = True
            attempts.append(jsonable(record))
            if parsed.status == "done":
                break
            reason = f"attempt {number}: {parsed.status}"
            if parsed.status == "scf_not_converged":
                scf_failures += 1
                current = input_data(config, config.pseudo_dir, overrides)["electrons"]
                overrides = {**overrides, **recovery_changes(scf_failures, current)}

    assert parsed is not None  # max_attempts >= 1
    if parsed.status == "done":
        return LabelResult(
            status="done",
            code=CODE,
            energy=parsed.energy,
            forces=parsed.forces,
            stress=parsed.stress,
            walltime=walltime,
            parameters=parameters,
            attempts=attempts,
        )
    return LabelResult(
        status="failed",
        code=CODE,
        walltime=walltime,
        parameters=parameters,
        attempts=attempts,
        error=f"{len(attempts)} attempt(s) failed; last: {parsed.status}: {parsed.error}",
    )
