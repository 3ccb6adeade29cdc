"""Analytic oracles behind the labelling interface: Lennard-Jones, EMT, any ASE calculator.

They stand in for DFT where a test or demo is about the loop, not the physics. They
label any structure whose energy and forces come out finite (overlapping atoms
included); non-finite results or a calculator exception give a ``failed`` label.
Units: eV, eV/Å, eV/Å³, s.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from autopipe.config.run import ASECalculatorConfig, EMTOracleConfig, LJOracleConfig
from autopipe.dft.geometry import clean_copy
from autopipe.dft.result import LabelResult, finite_problem, jsonable
from autopipe.errors import AutopipeError


def lj_calculator(config: LJOracleConfig) -> Calculator:
    """ASE's Lennard-Jones with its smooth cutoff: energy and force go to zero at ``cutoff`` (Å).

    The pair energy 4ε[(σ/r)^12 - (σ/r)^6] is multiplied by a C¹ switch that is 1 below
    ro = 0.66·cutoff (ASE's default) and 0 beyond the cutoff. Works for 2D systems
    through pbc (T, T, F) with vacuum.
    """
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=config.sigma, epsilon=config.epsilon, rc=config.cutoff, smooth=True)


def import_calculator(config: ASECalculatorConfig) -> Calculator:
    """Instantiate ``module.path:ClassName(**kwargs)``; :class:`AutopipeError` if that fails."""
    module_name, _, class_name = config.calculator.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AutopipeError(f"cannot import calculator module {module_name!r}: {exc}.") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AutopipeError(f"module {module_name!r} has no calculator {class_name!r}.")
    try:
        return cls(**config.kwargs)
    except Exception as exc:
        raise AutopipeError(f"cannot create {config.calculator} with {config.kwargs}: {type(exc).__name__}: {exc}.") from None


def calculator_for(config: LJOracleConfig | EMTOracleConfig | ASECalculatorConfig) -> tuple[Calculator, dict[str, Any]]:
    """The calculator of an oracle config and the parameters to record with its labels."""
    if isinstance(config, LJOracleConfig):
        calc = lj_calculator(config)
        params = {"epsilon": config.epsilon, "sigma": config.sigma, "cutoff": config.cutoff, "smooth": True,
                  "ro": float(calc.parameters.ro)}
        return calc, params
    if isinstance(config, EMTOracleConfig):
        from ase.calculators.emt import EMT

        return EMT(), {}
    if isinstance(config, ASECalculatorConfig):
        return import_calculator(config), {"calculator": config.calculator, "kwargs": config.kwargs}
    raise AutopipeError(f"not an oracle configuration: {type(config).__name__}.")


def label_with_calculator(atoms: Atoms, calc: Calculator, *, code: str, parameters: dict[str, Any]) -> LabelResult:
    """Energy (eV), forces (eV/Å) and, for 3D-periodic cells, stress (eV/Å³) of ``atoms``.

    Never raises for the structure: calculator exceptions and non-finite numbers give a
    ``failed`` label. ``atoms`` is not modified.
    """
    work = clean_copy(atoms)
    work.calc = calc
    start = time.monotonic()
    energy = forces = stress = None
    error: str | None = None
    try:
        try:
            # The free energy is what forces derive from when a calculator smears occupations.
            energy = float(work.get_potential_energy(force_consistent=True))
        except PropertyNotImplementedError:
            energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
        if np.all(work.pbc) and work.cell.rank == 3:
            try:
                stress = np.array(work.get_stress(voigt=True), dtype=float)
            except (PropertyNotImplementedError, NotImplementedError):
                stress = None
        error = finite_problem(energy, forces, len(work))
        if error is None and stress is not None and not np.all(np.isfinite(stress)):
            error = "stress is not finite"
    except Exception as exc:  # a calculator may raise anything on a strange structure
        error = f"{type(exc).__name__}: {exc}"
    walltime = time.monotonic() - start
    status = "done" if error is None else "failed"
    attempt = jsonable({"attempt": 1, "reason": "first attempt", "changes": {}, "status": status,
                        "walltime": round(walltime, 6), "error": error})
    if status == "done":
        return LabelResult(status="done", code=code, energy=energy, forces=forces, stress=stress, walltime=walltime,
                           parameters=jsonable(parameters), attempts=[attempt])
    return LabelResult(status="failed", code=code, walltime=walltime, parameters=jsonable(parameters),
                       attempts=[attempt], error=f"{code} oracle: {error}")


def label_oracle(atoms: Atoms, config: LJOracleConfig | EMTOracleConfig | ASECalculatorConfig) -> LabelResult:
    """Label ``atoms`` with the analytic oracle described by ``config`` (``config.latency``: how
    long the label is made to take, for benchmarks)."""
    calc, params = calculator_for(config)
    result = label_with_calculator(atoms, calc, code=config.code, parameters=params)
    if config.latency is not None:
        # A benchmark's stand-in for DFT's latency: the label is returned when DFT would return it.
        target = config.latency.seconds(len(atoms))
        time.sleep(max(0.0, target - result.walltime))
        result = dataclasses.replace(result, walltime=max(result.walltime, target),
                                     parameters={**result.parameters, "emulated_latency_s": round(target, 3)})
    return result
