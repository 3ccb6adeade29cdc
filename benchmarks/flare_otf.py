"""FLARE's own on-the-fly learning on the 2D Lennard-Jones healing demo (a row for heal_compare).

FLARE (``mir-flare`` 1.4.0) learns a sparse Gaussian process (B2 descriptors) while ASE runs
MD; whenever an atom's uncertainty crosses a threshold it stops, labels the WHOLE frame
with the oracle (every atom's forces become training labels) and adds the uncertain atoms'
environments to the model. Here the oracle is the demo's: ASE's Lennard-Jones with its
smooth cutoff. The start is the demo's walker exactly (``configs/runs/lj2d-heal.yaml``:
100 atoms in the xy plane, 20 Å vacuum along z, 2500 K, NVE, 1 fs steps), kept in the plane
as LAMMPS's ``enforce2d`` does. FLARE starts from an empty model, as its OTF does; it does
not see the 40 structures autopipe's defective potential was fitted to.

FLARE is not a dependency of autopipe: it lives in its own venv (numpy < 1.24, ASE 3.22),
whose python this script calls as a subprocess. One file, three roles:

* project venv, no sub-command (what ``make bench`` runs): writes the demo's start state,
  runs FLARE's OTF on it in the FLARE venv and prints one JSON object (DFT calls,
  labelled atoms, sparse environments, MD steps, wall time split, why it stopped, the
  model file). Skips with a message, exit 0, when no FLARE python is given.
* ``<flare python> flare_otf.py otf --start STATE.npz ...``: the OTF run itself.
* ``<flare python> flare_otf.py eval --model M.json --frames F.extxyz --out P.npz``:
  forces (eV/Å) and FLARE's per-atom uncertainties of a saved model on given frames.
  From the project venv, :func:`flare_forces` does the same on a list of ``Atoms``.

The FLARE python is ``--flare-python PATH`` or ``$FLARE_PYTHON``. FLARE's C++ runs OpenMP
threads; on a shared machine ``OMP_NUM_THREADS=1`` is faster (3x per prediction measured
under load), so set it for the FLARE process as the comparison requires.

    FLARE_PYTHON=/work/flare-bench/venv/bin/python .venv/bin/python benchmarks/flare_otf.py \\
        [--run configs/runs/lj2d-heal.yaml] [--steps 2000] [--budget 540] [--workdir DIR]

Stopping rule (the demo's ``stop`` block): ``max_md_steps`` MD steps, or ``max_walltime``
seconds, or healed: ``converged_segments * segment_steps`` steps in a row without a DFT
call, whichever comes first. ``labelled_atoms`` counts every atom of every labelled frame
(FLARE labels whole frames); ``sparse_environments`` the environments FLARE kept.

Building the FLARE venv offline (Debian 12, Python 3.11, CMake 3.25; 6 to 11 min wall at
-j2 on the shared 2-core machine, with the C++ tests that setup.py builds too). The sdist's CMakeLists fetches googletest,
nlohmann_json (FetchContent), pybind11 (FetchContent, no tag) and Eigen 3.3.7
(ExternalProject_Add with a URL, which no FETCHCONTENT_* variable overrides) from the
network. A CMake file injected right after ``project(flare)`` points all four at Debian's
packages; FLARE's sources and CMakeLists are untouched::

    apt-get install -y googletest nlohmann-json3-dev libeigen3-dev pybind11-dev \\
        liblapack-dev liblapacke-dev
    mkdir -p /work/flare-bench && cd /work/flare-bench
    python3 -m venv venv
    # requirements.txt pins numpy<1.23 (no Python 3.11 wheel) and pulls jupyter/sphinx/...:
    # install only what the OTF code imports; numpy<1.24 because FLARE uses np.int.
    venv/bin/pip install "numpy==1.23.5" "scipy<1.12" "numba<0.59" "ase==3.22.1" pyyaml \\
        wandb setuptools wheel
    venv/bin/pip download --no-deps --no-binary :all: mir-flare==1.4.0 -d sdist
    cat > offline.cmake <<'EOF'
    include_guard(GLOBAL)
    set(FETCHCONTENT_FULLY_DISCONNECTED ON CACHE BOOL "" FORCE)
    set(FETCHCONTENT_SOURCE_DIR_GOOGLETEST /usr/src/googletest CACHE PATH "" FORCE)
    # pybind11: FetchContent_MakeAvailable tries find_package first -> /usr/lib/cmake/pybind11
    set(FETCHCONTENT_TRY_FIND_PACKAGE_MODE ALWAYS CACHE STRING "" FORCE)
    # json: FLARE does FetchContent_Populate + add_subdirectory, so give it a directory
    # whose CMakeLists imports Debian's nlohmann_json globally.
    set(_json_shim ${CMAKE_BINARY_DIR}/json-from-debian)
    file(WRITE ${_json_shim}/CMakeLists.txt
      "cmake_minimum_required(VERSION 3.24)\\nfind_package(nlohmann_json 3 REQUIRED CONFIG GLOBAL)\\n")
    set(FETCHCONTENT_SOURCE_DIR_JSON ${_json_shim} CACHE PATH "" FORCE)
    # Eigen: ExternalProject is include_guard'ed, so loading it here and redefining
    # ExternalProject_Add makes FLARE's eigen_project an empty target on /usr/include/eigen3.
    include(ExternalProject)
    function(ExternalProject_Add name)
      if(NOT name STREQUAL "eigen_project")
        message(FATAL_ERROR "offline.cmake: unexpected ExternalProject ${name}")
      endif()
      add_custom_target(eigen_project)
      set_property(TARGET eigen_project PROPERTY _EP_SOURCE_DIR /usr/include/eigen3)
    endfunction()
    EOF
    # setup.py passes $FLARE_CMAKE_FLAGS to cmake and builds with --parallel 2*cores:
    # the Ninja job pool holds compiling and linking to 2 jobs.
    FLARE_CMAKE_FLAGS="-DCMAKE_PROJECT_flare_INCLUDE=$PWD/offline.cmake \\
        -DPython_EXECUTABLE=$PWD/venv/bin/python -DCMAKE_JOB_POOLS=two=2 \\
        -DCMAKE_JOB_POOL_COMPILE=two -DCMAKE_JOB_POOL_LINK=two" \\
      venv/bin/pip install --no-build-isolation --no-deps --no-index sdist/mir_flare-1.4.0.tar.gz
    venv/bin/python -c "from flare.bffs.sgp._C_flare import SparseGP; from flare.learners.otf import OTF"

Debian ships newer dependencies than FLARE pins (Eigen 3.4.0 for 3.3.7, nlohmann_json
3.11.2 for 3.9.1, googletest 1.12.1 for 1.11.0, pybind11 2.10.3 for an untagged checkout); FLARE's own C++
test suite (``ctests``: 65 passed, 2 skipped by design) and Python ``tests/test_sparse_gp.py``
pass against them. The same install also succeeds inside ``unshare -n`` (no network at all).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = ROOT / "configs" / "runs" / "lj2d-heal.yaml"

# FLARE's model and OTF settings: those of the sparse-GP OTF example in FLARE's repository
# (examples/test_SGP_LMP_fresh.yaml), with the LJ oracle's cutoff and lmax 3 for one
# species. Uncertainties of variance_type "local" are divided by the kernel's signal std
# (unitless); a negative std_tolerance_factor is an absolute threshold on them, and with
# update_style "threshold" every atom above UPDATE_THRESHOLD joins the sparse set when
# DFT is called.
B2 = {"radial_basis": "chebyshev", "cutoff_function": "quadratic", "nmax": 8, "lmax": 3}
KERNEL = {"sigma": 2.0, "power": 2}
# Stress labels stay on (FLARE's default): its model file cannot be loaded back from
# training structures without stress (SGP_Wrapper.from_dict). The cell is mostly vacuum,
# so the stresses are tiny next to this noise and weigh little.
NOISE = {"energy": 0.01, "forces": 0.05, "stress": 0.005}  # eV, eV/Å, eV/Å³
STD_TOLERANCE = -0.02
UPDATE_THRESHOLD = 0.01
# Hyperparameters are optimised after DFT calls 2..10, then frozen. The example optimises
# after every call from the 2nd; on this scenario that took 63 % of a 540 s run (12 calls,
# growing data). The OTF class's own default, (0, 1), optimises after the first only.
TRAIN_HYPS = (2, 10)
MAX_HYP_ITERATIONS = 20  # BFGS iterations per optimisation (flare-otf's default)


# ------------------------------------------------------------------- project side (autopipe venv)


def flare_python(path: str | None = None) -> Path | None:
    """The FLARE venv's python: ``path``, else ``$FLARE_PYTHON``, else None."""
    p = path or os.environ.get("FLARE_PYTHON")
    return Path(p) if p else None


def scenario(run_file: Path) -> tuple[Any, dict[str, Any]]:
    """The demo's start state (an :class:`autopipe.md.state.MDState`) and FLARE's run options from a run file."""
    from autopipe.config import load_run
    from autopipe.generate import template_atoms
    from autopipe.md.state import initial_state

    run = load_run(run_file)
    if run.dft.code != "lj":
        raise SystemExit(f"{run_file}: the FLARE row needs the LJ oracle (dft.code: lj), not {run.dft.code}")
    if run.md.ensemble != "nve":
        raise SystemExit(f"{run_file}: the FLARE row runs NVE (ASE VelocityVerlet), not {run.md.ensemble}")
    stop = run.stop
    options = {
        "steps": stop.max_md_steps,
        "budget": stop.max_walltime,
        "converged_steps": stop.converged_segments * run.md.segment_steps if stop.converged_segments else None,
        "timestep": run.md.timestep,
        "dimension": run.md.dimension,
        "log_every": run.md.dump_every,
        "lj": [run.dft.epsilon, run.dft.sigma, run.dft.cutoff],
    }
    return initial_state(template_atoms(run.system), run.md), options


def run_flare_otf(python: Path, run_file: Path = DEMO_RUN, workdir: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """FLARE's OTF on the run file's scenario in the FLARE venv; returns :func:`otf_run`'s summary.

    ``overrides`` replace the run file's options (``steps``, ``budget`` in s,
    ``converged_steps``) or FLARE's thresholds (``std_tolerance``, ``update_threshold``);
    each becomes the ``otf`` sub-command's flag of that name. The model and FLARE's logs go
    to ``workdir`` (a new temporary directory when None; it is kept).
    """
    from autopipe.md.state import save_state

    state, options = scenario(run_file)
    options.update({k: v for k, v in overrides.items() if v is not None})
    workdir = Path(workdir or tempfile.mkdtemp(prefix="flare-otf-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    start = save_state(workdir / "start.npz", state)
    argv = [str(python), str(Path(__file__).resolve()), "otf", "--start", str(start), "--workdir", str(workdir)]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    t = time.perf_counter()
    _run(argv)
    summary = json.loads((workdir / "summary.json").read_text())
    summary["process_wall_time"] = time.perf_counter() - t  # with Python start-up and FLARE's imports
    return summary


def flare_forces(python: Path, model: Path, frames: list) -> list[dict[str, np.ndarray]]:
    """Forces (eV/Å) and uncertainties of a saved FLARE model on ``frames`` (ASE ``Atoms``), in order.

    Each entry: ``forces`` (N, 3) and ``stds`` (N, 3), FLARE's per-atom uncertainty of
    variance_type "local" in column 0 (unitless), zeros elsewhere. FLARE treats every cell
    as periodic in x, y and z: a non-periodic direction needs more vacuum than the cutoff.
    """
    from ase.io import write

    with tempfile.TemporaryDirectory(prefix="flare-eval-") as tmp:
        src, out = Path(tmp) / "frames.extxyz", Path(tmp) / "pred.npz"
        write(src, [a.copy() for a in frames], format="extxyz")
        _run([str(python), str(Path(__file__).resolve()), "eval", "--model", str(model),
              "--frames", str(src), "--out", str(out)])
        with np.load(out) as z:
            return [{"forces": z[f"forces_{i}"], "stds": z[f"stds_{i}"]} for i in range(len(frames))]


def _run(argv: list[str]) -> None:
    """Run a FLARE-venv sub-command; its stderr tail becomes the error if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}):\n{tail}")


# ------------------------------------------------------------------------------ FLARE side


def load_start(path: Path):
    """Atoms with momenta from an ``autopipe.md.state.save_state`` file (read without autopipe)."""
    from ase import Atoms

    with np.load(path, allow_pickle=False) as z:
        atoms = Atoms(numbers=z["numbers"], positions=z["positions"], cell=z["cell"], pbc=z["pbc"])
        atoms.set_masses(z["masses"])
        atoms.set_momenta(z["momenta"])
    return atoms


def sgp_calculator(species: list[int], cutoff: float) -> tuple[Any, list]:
    """An empty FLARE sparse GP (B2 descriptors, normalised dot-product kernel) as an ASE calculator.

    Returns the calculator and its kernels: the C++ sparse GP holds raw pointers to the
    kernel objects, so the caller must keep the list alive as long as the calculator
    (FLARE's own scripts do the same; dropping it is a segmentation fault).
    """
    from flare.bffs.sgp import SGP_Wrapper
    from flare.bffs.sgp._C_flare import B2 as B2Descriptor
    from flare.bffs.sgp._C_flare import NormalizedDotProduct
    from flare.bffs.sgp.calculator import SGP_Calculator

    n = len(species)
    descriptor = B2Descriptor(B2["radial_basis"], B2["cutoff_function"], [0.0, cutoff], [], [n, B2["nmax"], B2["lmax"]])
    kernels = [NormalizedDotProduct(KERNEL["sigma"], KERNEL["power"])]
    sgp = SGP_Wrapper(
        kernels=kernels,
        descriptor_calculators=[descriptor],
        cutoff=cutoff,
        sigma_e=NOISE["energy"], sigma_f=NOISE["forces"], sigma_s=NOISE["stress"],
        species_map={z: i for i, z in enumerate(species)},
        variance_type="local",
        single_atom_energies={i: 0.0 for i in range(n)},
        energy_training=True, force_training=True, stress_training=True,
        max_iterations=MAX_HYP_ITERATIONS,
    )
    return SGP_Calculator(sgp), kernels


def otf_run(start, *, steps: int, timestep: float, lj: tuple[float, float, float], workdir: Path,
            dimension: int = 2, log_every: int = 10, budget: float | None = None,
            converged_steps: int | None = None, std_tolerance: float = STD_TOLERANCE,
            update_threshold: float = UPDATE_THRESHOLD) -> dict[str, Any]:
    """FLARE's ASE OTF (NVE VelocityVerlet) from ``start`` (Atoms with momenta) with the LJ oracle.

    ``timestep`` in fs, ``lj`` = (epsilon eV, sigma Å, cutoff Å), ``budget`` in s of wall
    time. Stops after ``steps`` MD steps, when the budget is spent, or after
    ``converged_steps`` steps in a row without a DFT call (None or 0: no such rule). FLARE logs the frame every
    ``log_every`` steps and at every DFT call. ``std_tolerance`` and ``update_threshold``
    are FLARE's ``std_tolerance_factor`` and ``update_threshold``. Writes ``flare_model.json``
    (load with ``SGP_Calculator.from_file``) and FLARE's logs (``otf.out``) to
    ``workdir``; returns the summary (times in s).
    """
    from ase.calculators.lj import LennardJones
    from ase.constraints import FixCartesian
    from flare.learners.otf import OTF

    epsilon, sigma, cutoff = lj
    atoms = start.copy()
    atoms.set_momenta(start.get_momenta())
    if dimension == 2:  # LAMMPS's enforce2d: no motion along z. One constraint for all atoms:
        # FLARE's log reads the forces atom by atom, and each read applies every constraint.
        atoms.set_constraint(FixCartesian(np.arange(len(atoms)), mask=(False, False, True)))
    t0 = time.perf_counter()
    timers = {"dft": 0.0, "update_and_train": 0.0, "md_and_predict": 0.0}
    stop = {"why": "max_md_steps"}

    class BudgetedOTF(OTF):
        """FLARE's OTF with wall times per phase and the demo's budget and healed rules.

        OTF.run ends its loop cleanly (final log, no model write) when md_step raises
        StopIteration; that is the hook for the two extra stopping rules.
        """

        def run_dft(self):
            t = time.perf_counter()
            super().run_dft()
            timers["dft"] += time.perf_counter() - t

        def update_gp(self, *args, **kwargs):
            t = time.perf_counter()
            super().update_gp(*args, **kwargs)
            timers["update_and_train"] += time.perf_counter() - t

        def compute_properties(self):
            t = time.perf_counter()
            super().compute_properties()
            timers["md_and_predict"] += time.perf_counter() - t

        def md_step(self):
            if budget and time.perf_counter() - t0 > budget:
                stop["why"] = "max_walltime"
                raise StopIteration
            if converged_steps and self.curr_step - self.last_dft_step >= converged_steps:
                stop["why"] = "converged"
                raise StopIteration
            t = time.perf_counter()
            super().md_step()
            timers["md_and_predict"] += time.perf_counter() - t

    calc, kernels = sgp_calculator(sorted({int(z) for z in atoms.numbers}), cutoff)
    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)  # FLARE writes its logs to the working directory
    try:
        otf = BudgetedOTF(
            atoms, dt=timestep / 1000.0, number_of_steps=steps,  # dt in ps
            dft_calc=LennardJones(sigma=sigma, epsilon=epsilon, rc=cutoff, smooth=True),
            md_engine="VelocityVerlet", md_kwargs={}, flare_calc=calc,
            force_only=False,  # train on energies, forces and stresses
            std_tolerance_factor=std_tolerance, max_atoms_added=-1,
            update_style="threshold", update_threshold=update_threshold,
            train_hyps=TRAIN_HYPS, write_model=0, output_name="otf", skip=log_every,
        )
        otf._kernels = kernels  # where FLARE keeps them alive itself (OTF.from_dict)
        otf.run()
        wall = time.perf_counter() - t0
        model = workdir / "flare_model.json"
        otf.flare_calc.write_model(str(model))
    finally:
        os.chdir(cwd)
    n_atoms = len(atoms)
    return {
        "code": "flare", "version": _flare_version(), "stopped_because": stop["why"],
        "md_steps": int(otf.curr_step), "dft_calls": int(otf.dft_count),
        "dft_frame_steps": [int(s) for s in otf.dft_frames],
        "atoms_per_dft_call": n_atoms, "labelled_atoms": int(otf.dft_count) * n_atoms,
        "sparse_environments": int(sum(len(i) for i in otf.gp.sparse_gp.sparse_indices[0])),
        "wall_time": wall, "time": timers, "hyperparameters": [float(h) for h in otf.gp.hyps],
        "settings": {"std_tolerance": std_tolerance, "update_threshold": update_threshold,
                     "train_hyps": list(TRAIN_HYPS), "b2": B2, "kernel": KERNEL, "noise": NOISE},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average": list(os.getloadavg()),
        "model": str(model), "workdir": str(workdir),
    }


def evaluate(model: Path, frames: list) -> list[dict[str, np.ndarray]]:
    """Forces (eV/Å) and per-atom uncertainties of a saved FLARE model on ASE ``frames``."""
    from flare.bffs.sgp.calculator import SGP_Calculator

    calc, _kernels = SGP_Calculator.from_file(str(model))  # _kernels: keeps them alive while calc runs
    out = []
    for atoms in frames:
        calc.calculate(atoms)
        out.append({"forces": np.array(calc.results["forces"]), "stds": np.array(calc.results["stds"])})
    return out


def _flare_version() -> str:
    from flare._version import __version__

    return str(__version__)


# ------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--flare-python", help="the FLARE venv's python (default: $FLARE_PYTHON)")
    ap.add_argument("--run", type=Path, default=DEMO_RUN, help="run file of the scenario (default: the demo)")
    ap.add_argument("--steps", type=int, help="MD steps (default: the run file's stop.max_md_steps)")
    ap.add_argument("--budget", type=float, help="wall-time budget in s (default: stop.max_walltime; 0: none)")
    ap.add_argument("--workdir", type=Path, help="where FLARE's model and logs go (default: a new temporary dir)")
    ap.add_argument("--std-tolerance", type=float, help=f"FLARE's std_tolerance_factor (default {STD_TOLERANCE})")
    ap.add_argument("--update-threshold", type=float, help=f"FLARE's update_threshold (default {UPDATE_THRESHOLD})")

    o = sub.add_parser("otf", help="(FLARE venv) run FLARE's OTF from a start state")
    o.add_argument("--start", type=Path, required=True, help="start state, an autopipe state .npz")
    o.add_argument("--workdir", type=Path, required=True)
    o.add_argument("--steps", type=int, required=True)
    o.add_argument("--timestep", type=float, default=1.0, help="fs")
    o.add_argument("--dimension", type=int, choices=(2, 3), default=2)
    o.add_argument("--log-every", type=int, default=10, help="steps between frames in FLARE's log")
    o.add_argument("--lj", type=float, nargs=3, metavar=("EPSILON", "SIGMA", "CUTOFF"), default=(0.1, 2.0, 5.0),
                   help="LJ oracle: eV, Å, Å")
    o.add_argument("--budget", type=float, help="wall-time budget (s); 0: none")
    o.add_argument("--converged-steps", type=int, help="stop after this many steps without a DFT call")
    o.add_argument("--std-tolerance", type=float, default=STD_TOLERANCE,
                   help="FLARE's std_tolerance_factor (negative: absolute threshold on the normalised uncertainty)")
    o.add_argument("--update-threshold", type=float, default=UPDATE_THRESHOLD,
                   help="atoms above this uncertainty join the sparse set at a DFT call")

    e = sub.add_parser("eval", help="(FLARE venv) forces of a saved FLARE model on frames")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--frames", type=Path, required=True, help="any file ASE reads (extxyz, ...)")
    e.add_argument("--out", type=Path, required=True, help=".npz with forces_<i>, stds_<i>")
    args = ap.parse_args(argv)

    if args.cmd == "otf":
        summary = otf_run(load_start(args.start), steps=args.steps, timestep=args.timestep, lj=tuple(args.lj),
                          workdir=args.workdir.resolve(), dimension=args.dimension, log_every=args.log_every,
                          budget=args.budget, std_tolerance=args.std_tolerance,
                          update_threshold=args.update_threshold,
                          converged_steps=args.converged_steps)
        (args.workdir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary))
    elif args.cmd == "eval":
        from ase.io import read

        preds = evaluate(args.model, read(args.frames, index=":"))
        np.savez(args.out, **{f"{k}_{i}": p[k] for i, p in enumerate(preds) for k in ("forces", "stds")})
    else:
        python = flare_python(args.flare_python)
        if python is None:
            print("FLARE benchmark skipped: no FLARE venv (set FLARE_PYTHON or --flare-python; "
                  "see this file's docstring for building one)")
            return
        if not python.exists():
            raise SystemExit(f"no FLARE python at {python}")
        sys.path.insert(0, str(ROOT))
        summary = run_flare_otf(python, args.run, args.workdir, steps=args.steps, budget=args.budget,
                                std_tolerance=args.std_tolerance, update_threshold=args.update_threshold)
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
