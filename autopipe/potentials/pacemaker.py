"""pacemaker as an external program: render ``input.yaml``, run it, parse its results.

Shape (the same for every external program in autopipe): :func:`render_input` →
:func:`run_pacemaker` (argv list, own timeout, log to a file) → :class:`FitResult`
with a status. A failed or timed-out run returns ``status="failed"`` and the tail of
the log; it does not raise.

TensorFlow is only ever imported by pacemaker's own process (the CLI subprocess here, or
the long-lived trainer of :mod:`autopipe.potentials.warm`), never by the caller.

Metrics (see :func:`parse_metrics`) come from pacemaker's prediction pickles
``train_pred.pckl.gzip`` / ``test_pred.pckl.gzip``: they hold reference and predicted
energies and forces per structure plus the weights, so the RMSEs can be computed over
exactly the data that was trained on (masked forces excluded). The loss trace
(``metrics.txt``: per-iteration train loss) gives the initial and final loss; the log is
the fallback for the RMSEs.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from autopipe.config.run import TrainConfig
    from autopipe.potentials.activeset import ActiveSetFile

log = logging.getLogger(__name__)

#: pacemaker's own output names (relative to its working directory).
OUTPUT_YAML = "output_potential.yaml"
FITTING_DATA_INFO = "fitting_data_info.pckl.gzip"
TEST_DATA_INFO = "test_data_info.pckl.gzip"
LOG_FILE = "pacemaker.log"  # stdout+stderr of the subprocess (pacemaker's own log.txt is a subset)


def venv_bin(name: str) -> str:
    """Path of a console script installed next to the running Python (e.g. ``.venv/bin/pacemaker``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class FitResult:
    """Outcome of one pacemaker run.

    ``metrics`` keys (when available): ``train_energy_rmse`` (eV/atom),
    ``train_forces_rmse`` (eV/Å, per component, unmasked atoms only), the same with
    ``test_``, ``initial_loss``, ``final_loss``, ``iterations``, ``n_train``, ``n_test``.
    """

    status: str  # "done" | "failed"
    workdir: Path
    potential: Path | None = None  # B-basis .yaml written by pacemaker
    metrics: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    walltime: float = 0.0  # s
    log_path: Path | None = None
    log_tail: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"


# ----------------------------------------------------------------------------- input


def render_input(
    train_config: TrainConfig,
    elements: Sequence[str],
    data_file: str,
    *,
    iterations: int | None = None,
    display_step: int = 10,
) -> dict[str, Any]:
    """pacemaker's input as a dict (dump it as YAML).

    The cutoff goes into ``bonds: rcut`` because pacemaker ignores a top-level
    ``cutoff``; a ``backend`` section is always written because the CLI crashes without one.
    """
    tc = train_config
    func_spec = {"nradmax_by_orders": list(tc.ranks), "lmax_by_orders": list(tc.lmax)}
    if len(tc.ranks) != len(tc.lmax):
        raise ValueError(f"ranks {tc.ranks} and lmax {tc.lmax} must have the same length (one per body order)")
    if tc.embedding == "FinnisSinclairShiftedScaled" or tc.embedding == "FinnisSinclair":
        embedding = {"npot": tc.embedding, "fs_parameters": [1, 1, 1, 0.5], "ndensity": 2}
    else:  # linear: one density, identity embedding
        embedding = {"npot": "FinnisSinclair", "fs_parameters": [1, 1], "ndensity": 1}
    data: dict[str, Any] = {"filename": data_file}
    if tc.test_size > 0:
        data["test_size"] = float(tc.test_size)
    functions: dict[str, Any] = {"number_of_functions_per_element": int(tc.number_of_functions_per_element)}
    functions["ALL"] = func_spec
    return {
        "seed": int(tc.seed),
        "metadata": {"origin": "autopipe"},
        "potential": {
            "deltaSplineBins": 0.001,
            "elements": sorted(elements),
            "embeddings": {"ALL": embedding},
            "bonds": {
                "ALL": {
                    "radbase": "SBessel",
                    "radparameters": [5.25],
                    "rcut": float(tc.cutoff),
                    "dcut": 0.01,
                    "NameOfCutoffFunction": "cos",
                }
            },
            "functions": functions,
        },
        "data": data,
        "fit": {
            "loss": {"kappa": float(tc.kappa), "L1_coeffs": 1e-8, "L2_coeffs": 1e-8},
            "optimizer": tc.optimizer,
            "maxiter": int(iterations if iterations is not None else tc.max_iterations),
        },
        "backend": {
            "evaluator": tc.backend,
            "batch_size": int(tc.batch_size),
            "display_step": int(display_step),
            **({"parallel_mode": "serial"} if tc.backend == "pyace" else {}),
        },
    }


def write_input(config: dict[str, Any], path: Path | str) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    return path


# ----------------------------------------------------------------------------- running


def _tail(path: Path, n_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n_lines:])


def run_command(argv: list[str], cwd: Path, log_path: Path, timeout: float, env: dict | None = None) -> tuple[int | None, float]:
    """Run ``argv`` in ``cwd`` with stdout+stderr appended to ``log_path``.

    Returns (return code, wall time in s); the return code is None on timeout. The child
    gets its own process group so a timeout kills it and anything it started.
    """
    t0 = time.perf_counter()
    log_marker(log_path, f"start: {' '.join(argv)}")
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
            fh.write(f"\n[autopipe] killed after the {timeout:.0f} s timeout\n".encode())
        except BaseException:
            # Interrupted (KeyboardInterrupt, test teardown): never leave a fit running.
            kill_group(proc)
            raise
    log_marker(log_path, f"exit: code {rc}")
    return rc, time.perf_counter() - t0


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (started with ``start_new_session``) and reap it."""
    if proc.returncode is None:  # once reaped, its pid (and group id) may belong to someone else
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def log_marker(log_path: Path | str, message: str) -> None:
    """Append ``<timestamp> [autopipe] <message>`` to a pacemaker log.

    Same timestamp format as pacemaker's own lines, so :func:`log_phases` can time the
    phases between autopipe's markers and pacemaker's.
    """
    with open(log_path, "ab") as fh:
        fh.write(f"{_stamp()} [autopipe] {message}\n".encode())


def _stamp() -> str:
    """Local time as Python logging's default ``asctime`` (``2026-11-28 10:43:45,738``)."""
    import datetime as dt

    now = dt.datetime.now()
    return now.strftime("%Y-%m-%d %H:%M:%S") + f",{now.microsecond // 1000:03d}"


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MPLBACKEND", "Agg")  # pacemaker plots error distributions; no display here
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def prepare_input(
    workdir: Path | str,
    train_config: TrainConfig,
    elements: Sequence[str],
    dataset: Path | str,
    *,
    initial_potential: Path | str | None = None,
    iterations: int | None = None,
    grow: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``workdir/input.yaml``; return the resolved workdir and pacemaker's arguments.

    The arguments (``input.yaml [-p <parent yaml>]``) are the same whether pacemaker runs
    as a subprocess (:func:`run_pacemaker`) or in the warm trainer
    (:mod:`autopipe.potentials.warm`), so both routes fit exactly the same problem.

    ``grow``: the parent starts a larger basis (``-ip <parent yaml>``, pacemaker's
    ``potential::initial_potential``): the input's ``number_of_functions_per_element`` sets the
    new size, pacemaker adds the missing functions with zero coefficients in one ladder step and
    keeps the parent's. ``-p`` instead replaces the input's basis with the parent's.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = render_input(train_config, elements, str(Path(dataset).resolve()), iterations=iterations)
    write_input(cfg, workdir / "input.yaml")
    args = ["input.yaml"]
    if initial_potential is not None:
        args += ["-ip" if grow else "-p", str(Path(initial_potential).resolve())]
    return workdir, args


def run_pacemaker(
    workdir: Path | str,
    train_config: TrainConfig,
    elements: Sequence[str],
    dataset: Path | str,
    *,
    initial_potential: Path | str | None = None,
    iterations: int | None = None,
    timeout: float | None = None,
    extra_args: Sequence[str] = (),
    grow: bool = False,
) -> FitResult:
    """Fit a potential with pacemaker in ``workdir``.

    ``dataset`` is a gzip pickle from :func:`~autopipe.potentials.dataset.write_dataset`.
    With ``initial_potential`` the fit continues from that B-basis ``.yaml``
    (``pacemaker -p``): same basis, its coefficients as the starting point. ``iterations``
    overrides ``train_config.max_iterations``; ``timeout`` (s) overrides
    ``train_config.timeout``. ``grow``: see :func:`prepare_input`.
    """
    workdir, args = prepare_input(workdir, train_config, elements, dataset,
                                  initial_potential=initial_potential, iterations=iterations, grow=grow)
    argv = [venv_bin("pacemaker"), *args, *extra_args]
    log_path = workdir / LOG_FILE
    rc, wall = run_command(argv, workdir, log_path, timeout or train_config.timeout, env=_subprocess_env())
    result = FitResult(status="failed", workdir=workdir, argv=argv, walltime=wall, log_path=log_path)
    out = workdir / OUTPUT_YAML
    if rc is None:
        result.error = f"pacemaker timed out after {timeout or train_config.timeout:.0f} s"
    elif rc != 0:
        result.error = f"pacemaker exited with code {rc}"
    elif "--dry-run" in argv or "-dr" in argv:
        result.status = "done"
    elif not out.exists():
        result.error = f"pacemaker finished but wrote no {OUTPUT_YAML}"
    else:
        result.status = "done"
        result.potential = out
        try:
            result.metrics = parse_metrics(workdir)
        except Exception as exc:  # metrics are informative; a parse problem must not lose the fit
            log.warning("could not parse pacemaker metrics in %s: %s", workdir, exc)
    if not result.ok:
        result.log_tail = _tail(log_path)
    return result


def yaml_to_yace(yaml_path: Path | str, out: Path | str | None = None) -> Path:
    """B-basis ``.yaml`` → the C-tilde ``.yace`` that LAMMPS ``pair_style pace`` reads (default:
    next to the yaml), in this process: the same file ``pace_yaml2yace`` writes, without starting
    a process that imports pyace again (every caller computes the active set with pyace anyway).
    A basis pyace cannot read or convert raises RuntimeError naming the file."""
    from pyace import ACEBBasisSet

    yaml_path = Path(yaml_path).resolve()
    out = Path(out).resolve() if out else yaml_path.with_suffix(".yace")
    try:
        ACEBBasisSet(str(yaml_path)).to_ACECTildeBasisSet().save_yaml(str(out))
    except Exception as exc:  # pyace raises RuntimeError with yaml-cpp's message, not the file's name
        raise RuntimeError(f"{yaml_path}: cannot convert to .yace: {exc}") from exc
    return out


def compute_active_set(yaml_path: Path | str, datasets: Sequence[Path | str]) -> ActiveSetFile:
    """Active set (``.asi``, written next to ``yaml_path``) from pacemaker-format datasets.

    The datasets are pacemaker's ``fitting_data_info.pckl.gzip`` or any DataFrame pickle
    with ``ase_atoms`` (and ``w_forces``). Every atom with a non-zero force weight counts,
    however well it was fitted: see :mod:`autopipe.potentials.activeset` for why this is not
    ``pace_activeset``'s default, and for the species whose masked atoms had to be admitted
    (``.fallback`` of the result; put ``.metrics()`` into the potential's metrics).
    """
    from autopipe.potentials.activeset import compute_trusted_active_set

    try:
        return compute_trusted_active_set(Path(yaml_path).resolve(), [Path(d).resolve() for d in datasets])
    except Exception as exc:
        raise RuntimeError(f"active set computation failed: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- metrics


def _read_pickle(path: Path):
    import pandas as pd

    return pd.read_pickle(path, compression="gzip")


def prediction_rmse(pred) -> dict[str, float]:
    """Energy (eV/atom) and force (eV/Å, per component) RMSE of a pacemaker prediction DataFrame.

    Only structures with positive energy weight count for the energy and only atoms with
    positive force weight for the forces: masked data were not fitted, so including them
    would measure the boundary artefacts rather than the fit.
    """
    n_at = pred["NUMBER_OF_ATOMS"].to_numpy(dtype=float)
    de = (pred["energy_pred"].to_numpy(dtype=float) - pred["energy_corrected"].to_numpy(dtype=float)) / n_at
    we = pred["w_energy"].to_numpy(dtype=float) > 0
    df_all = []
    for f_ref, f_pred, wf in zip(pred["forces"], pred["forces_pred"], pred["w_forces"]):
        keep = np.asarray(wf, dtype=float) > 0
        df_all.append((np.asarray(f_pred, dtype=float) - np.asarray(f_ref, dtype=float))[keep])
    dfo = np.concatenate(df_all) if df_all else np.zeros((0, 3))
    return {
        "energy_rmse": float(np.sqrt(np.mean(de[we] ** 2))) if we.any() else float("nan"),
        "forces_rmse": float(np.sqrt(np.mean(dfo**2))) if dfo.size else float("nan"),
        "n": int(len(pred)),
    }


def read_loss_trace(path: Path) -> list[tuple[int, float]]:
    """(iteration, total loss) rows of pacemaker's ``metrics.txt`` (whitespace table with header)."""
    rows: list[tuple[int, float]] = []
    lines = Path(path).read_text().splitlines()
    if not lines:
        return rows
    header = lines[0].split()
    i_it, i_loss = header.index("iter_num"), header.index("loss")
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == len(header):
            rows.append((int(parts[i_it]), float(parts[i_loss])))
    return rows


_LOG_RMSE = re.compile(r"RMSE:\s+([-\d.eE+]+)\s+[-\d.eE+]+\s+([-\d.eE+]+)")


def parse_log_rmse(log_text: str) -> dict[str, float]:
    """Fallback: the final train/test RMSE tables of pacemaker's log (converted to eV/atom, eV/Å)."""
    out: dict[str, float] = {}
    for tag, key in (("--Cycle last iteration:", "train"), ("--TEST Cycle last iteration:", "test")):
        pos = log_text.rfind(tag)
        if pos < 0:
            continue
        m = _LOG_RMSE.search(log_text, pos)
        if m:
            out[f"{key}_energy_rmse"] = float(m.group(1)) / 1000.0
            out[f"{key}_forces_rmse"] = float(m.group(2)) / 1000.0
    return out


def parse_metrics(workdir: Path | str) -> dict[str, Any]:
    """Metrics of a finished pacemaker run in ``workdir`` (see :class:`FitResult`)."""
    workdir = Path(workdir)
    metrics: dict[str, Any] = {}
    for split in ("train", "test"):
        p = workdir / f"{split}_pred.pckl.gzip"
        if p.exists():
            r = prediction_rmse(_read_pickle(p))
            metrics[f"{split}_energy_rmse"] = r["energy_rmse"]
            metrics[f"{split}_forces_rmse"] = r["forces_rmse"]
            metrics[f"n_{split}"] = r["n"]
    if "train_energy_rmse" not in metrics:
        for logname in (LOG_FILE, "log.txt"):
            if (workdir / logname).exists():
                fallback = parse_log_rmse((workdir / logname).read_text(errors="replace"))
                for k, v in fallback.items():
                    metrics.setdefault(k, v)
    trace_file = workdir / "metrics.txt"
    if trace_file.exists():
        trace = read_loss_trace(trace_file)
        if trace:
            metrics["initial_loss"] = trace[0][1]
            metrics["final_loss"] = trace[-1][1]
            metrics["iterations"] = trace[-1][0]
    cycle_file = workdir / "cycle_metrics.txt"
    if cycle_file.exists():
        # The loss of the coefficients pacemaker saved (its best cycle): what a
        # continuation run starts from.
        lines = cycle_file.read_text().split("\n")
        header = lines[0].split()
        rows = [ln.split() for ln in lines[1:] if len(ln.split()) == len(header)]
        if rows and "loss" in header:
            metrics["final_loss"] = float(rows[-1][header.index("loss")])
    return metrics


# ----------------------------------------------------------------------------- timing

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (.*)$")

#: (phase, first marker, second marker): the phase lasts from the first log line that
#: contains the first marker to the first line after it that contains the second.
PHASES = (
    ("python_startup", "[autopipe] start", "Start pacemaker"),  # interpreter, pyace/pandas imports
    ("setup", "Start pacemaker", "Cutoff for neighbour lists construction"),  # input, basis construction
    ("tensorflow_import", "Cutoff for neighbour lists construction", "tensorpot_version"),
    ("data_preparation", "tensorpot_version", "Fitting dataset size"),  # load, neighbour lists, weights, plots
    ("tf_graph_build", "Fitting dataset size", "Initial state:"),  # tracing + first loss/gradient evaluation
    ("optimisation", "Initial state:", "Fitting cycle finished"),
    # Inside "optimisation", with a test set: the first test evaluation, which traces the
    # prediction graph (a fresh process pays it; the warm trainer reuses its trace).
    ("first_test_evaluation", "Initial state:", "Initial(TEST)"),
    ("predictions", "Fitting cycle finished", "[autopipe] exit"),  # save, predict train/test, plots
)


def log_phases(log_path: Path | str) -> dict[str, float]:
    """Seconds spent in each phase of a pacemaker run, from the timestamps of its log.

    Needs the combined log written by :func:`run_pacemaker` or the warm trainer
    (pacemaker's lines plus autopipe's start/exit markers). Phases whose markers are missing
    (e.g. the TensorFlow ones with the pyace backend) are left out.
    """
    import datetime as dt

    events: list[tuple[float, str]] = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m:
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((t, m.group(2)))

    def first(marker: str, after: float = float("-inf")) -> float | None:
        for t, msg in events:
            if t >= after and marker in msg:
                return t
        return None

    out: dict[str, float] = {}
    for name, a, b in PHASES:
        ta = first(a)
        tb = first(b, ta) if ta is not None else None
        if ta is not None and tb is not None:
            out[name] = tb - ta
    return out
