"""The warm trainer's own process: pacemaker kept loaded between fits.

Started by :mod:`autopipe.potentials.warm` as ``python -m autopipe.potentials.warm_worker FD``
with one end of a socket pair on file descriptor ``FD``. It serves fit requests one at a
time until the other end closes, a ``stop`` request arrives, or its parent dies.

Each fit runs pacemaker's own command-line entry point (``pyace.cli.pacemaker.main``) in
this process with the same arguments the CLI route passes to the ``pacemaker`` program, in
the fit's work directory, with stdout and stderr (file descriptors 1 and 2, so TensorFlow's
C++ messages too) appended to the fit's ``pacemaker.log``. Same code, same input file, same
``-p`` continuation, same weights: the fit is the CLI's fit. What this process keeps between
fits:

* the imports: Python start-up, pyace, pandas, TensorFlow, tensorpotential (about 5-15 s);
* the traced TensorFlow graphs of the loss/gradient and of the predictions (about 5-10 s per
  fit on 2 cores): see :class:`GraphCache`. The graphs have dynamic batch dimensions
  (tensorpotential declares ``[None, ...]`` input signatures), so a dataset that grows
  between retrains does not retrace them; only a change of the basis shape does.

pacemaker's two diagnostic plots (energy/force histograms, error distributions) are not drawn
here: autopipe reads none of them and they cost about a second each per fit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

#: Traced graphs kept for this many distinct basis shapes (a run uses one).
GRAPH_CACHE_SIZE = 2
#: How often (s) the parent-watch thread checks that the process that started us is alive.
PARENT_POLL = 0.5


# ----------------------------------------------------------------------------- graph reuse


def basis_shape_key(bbasisconfig) -> str:
    """A hash of everything in a B-basis configuration except its coefficients and metadata.

    Two configurations with the same key give the same TensorFlow graph in tensorpotential's
    ``ACE``: the coefficients live in a ``tf.Variable`` that is assigned, never traced, and
    everything else (species, radial basis, cutoffs, embedding, function list) is baked in.
    Hashes pyace's own YAML text with the coefficients zeroed and the top-level ``metadata``
    block dropped (text, not parsed YAML: a large basis is megabytes of it).
    """
    import tempfile

    shape = bbasisconfig.copy()
    shape.set_all_coeffs([0.0] * len(shape.get_all_coeffs()))
    with tempfile.TemporaryDirectory(prefix="autopipe-key-") as tmp:
        path = os.path.join(tmp, "shape.yaml")
        shape.save(path)
        with open(path) as fh:
            lines = fh.read().splitlines()
    kept, in_metadata = [], False
    for line in lines:
        if line and not line[0].isspace():  # a top-level key starts a new block
            in_metadata = line.startswith("metadata:")
        if not in_metadata:
            kept.append(line)
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


class GraphCache:
    """tensorpotential ``TensorPotential`` objects, traced once, reused by later fits.

    pacemaker builds a new ``ACE`` + ``TensorPotential`` for every fit
    (``FitBackendAdapter.setup_tensorpot``), and every new one is traced again on its first
    loss evaluation. :meth:`install` wraps that method: pacemaker still builds its fresh
    objects exactly as usual (so the loss specification, batch size and coefficients are
    pacemaker's own), and then, when a ``TensorPotential`` of the same basis shape was
    traced before, the fresh coefficients, basis and loss factors are moved into the traced
    one, which the fit then uses instead of the fresh one.

    For that to be valid the loss factors (force/energy weights, L1/L2 and auxiliary
    regularisation, which pacemaker divides by the number of batches and so change as the
    dataset grows) must not be baked into the graph as constants: they are turned into
    ``tf.Variable`` s before the first trace and assigned on reuse.
    """

    def __init__(self, size: int = GRAPH_CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self.last: str = "none"  # "reused" | "traced" | "none" (no tensorpot fit yet)

    def adopt(self, fresh):
        """The ``TensorPotential`` to fit with: ``fresh`` (now cached) or a traced twin loaded with its state."""
        key = self._key(fresh)
        cached = self._entries.get(key)
        if cached is None:
            self._make_factors_variables(fresh)
            self._entries[key] = fresh
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            self.last = "traced"
            return fresh
        self._entries.move_to_end(key)
        ace, new = cached.potential, fresh.potential
        ace.bbasisset = new.bbasisset  # get_updated_config() writes the fitted coefficients into it
        ace.set_coefs(new.get_coefs().numpy())
        for name in self._factor_names():
            cached.loss_specs[name].assign(fresh.loss_specs[name])
        self.last = "reused"
        return cached

    @staticmethod
    def _factor_names() -> tuple[str, ...]:
        from tensorpotential.compat.pace.constants import (
            AUX_LOSS_FACTOR,
            L1_REG,
            L2_REG,
            LOSS_ENERGY_FACTOR,
            LOSS_FORCE_FACTOR,
        )

        return (LOSS_FORCE_FACTOR, LOSS_ENERGY_FACTOR, L1_REG, L2_REG, AUX_LOSS_FACTOR)

    def _key(self, tp) -> tuple:
        from tensorpotential.compat.pace.constants import AUX_LOSS_FACTOR, LOSS_TYPE

        ace = tp.potential
        return (
            basis_shape_key(ace.bbasisset.to_BBasisConfiguration()),
            tp.loss_specs[LOSS_TYPE],
            tuple(tp.loss_specs[AUX_LOSS_FACTOR].shape),
            bool(ace.compute_smoothness),
            bool(ace.compute_orthogonality),
            tp.compile_vector_loss,
            tp.compute_loss_compile,
            tp.op_compile,
        )

    def _make_factors_variables(self, tp) -> None:
        import tensorflow as tf

        for name in self._factor_names():
            tp.loss_specs[name] = tf.Variable(tp.loss_specs[name], dtype=tf.float64, trainable=False, name=name)

    def install(self) -> None:
        """Wrap pacemaker's ``FitBackendAdapter.setup_tensorpot`` (in this process only)."""
        from pyace.fitadapter import FitBackendAdapter

        original = FitBackendAdapter.setup_tensorpot
        cache = self

        def setup_tensorpot(adapter, *args, **kwargs):
            result = original(adapter, *args, **kwargs)
            adapter.fitter.tensorpot = cache.adopt(adapter.fitter.tensorpot)
            return result

        FitBackendAdapter.setup_tensorpot = setup_tensorpot


# ----------------------------------------------------------------------------- one fit


@contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 (Python's and C++'s output) to ``log_path`` (appending)."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        os.close(fd)


@contextmanager
def inside(workdir: Path) -> Iterator[None]:
    """chdir into ``workdir`` (pacemaker writes its outputs to the current directory) and back;
    drop the log handlers pacemaker adds to the root logger on every run."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    home = os.getcwd()
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(home)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()


class Trainer:
    """What the worker process holds: the loaded modules, the graph cache, a fit counter."""

    def __init__(self) -> None:
        self.graphs = GraphCache()
        self.n_fits = 0
        self.loaded = False

    def load(self) -> None:
        """Import pacemaker (as its CLI does at start-up) and install the graph cache."""
        import pyace.cli.pacemaker  # noqa: F401  (logging set-up, pandas, pyace: the CLI's start-up)
        import pyace.generalfit

        self.graphs.install()

        def no_plot(*args, **kwargs):
            logging.getLogger("autopipe.warm").info("plot skipped by the warm trainer")

        pyace.generalfit.plot_ef_distributions = no_plot
        pyace.cli.pacemaker.plot_analyse_error_distributions = no_plot
        self.loaded = True

    def fit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one fit described by ``request`` (see :func:`autopipe.potentials.warm.warm_fit_and_export`)."""
        from autopipe.potentials.pacemaker import LOG_FILE, log_marker

        workdir = Path(request["workdir"])
        log_path = workdir / LOG_FILE
        self.n_fits += 1
        reply: dict[str, Any] = {"status": "failed", "pid": os.getpid(), "fit_index": self.n_fits,
                                 "timings": {}, "metrics": {}, "files": {}, "error": None}
        self.graphs.last = "none"
        error: str | None = None
        with output_to(log_path):
            if not self.loaded:
                t0 = time.perf_counter()
                try:
                    self.load()
                except Exception as exc:
                    traceback.print_exc()
                    error = f"cannot load pacemaker: {type(exc).__name__}: {exc}"
                reply["timings"]["imports"] = time.perf_counter() - t0
            if error is None:
                t0 = time.perf_counter()
                error = self._run_pacemaker(workdir, list(request["args"]))
                reply["timings"]["pacemaker"] = time.perf_counter() - t0
            reply["graph"] = self.graphs.last
            log_marker(log_path, f"exit: code {0 if error is None else 1} (warm trainer)")
            if error is None:
                error = self._export(workdir, reply)
        reply["error"] = error
        reply["status"] = "done" if error is None else "failed"
        return reply

    @staticmethod
    def _run_pacemaker(workdir: Path, args: list[str]) -> str | None:
        from pyace.cli import pacemaker as cli

        with inside(workdir):
            try:
                cli.main(args)
            except SystemExit as exc:  # argparse errors and --dry-run leave through sys.exit
                if exc.code not in (0, None):
                    return f"pacemaker exited with code {exc.code}"
            except Exception as exc:  # the fit failed; this process and its caches stay usable
                traceback.print_exc()
                return f"pacemaker raised {type(exc).__name__}: {exc}"
        return None

    @staticmethod
    def _export(workdir: Path, reply: dict[str, Any]) -> str | None:
        """potential.yaml + .yace + .asi next to pacemaker's output, as the CLI route does."""
        from autopipe.potentials.pacemaker import (
            FITTING_DATA_INFO,
            LOG_FILE,
            OUTPUT_YAML,
            compute_active_set,
            log_marker,
            parse_metrics,
            yaml_to_yace,
        )

        t0 = time.perf_counter()
        out = workdir / OUTPUT_YAML
        if not out.exists():
            return f"pacemaker finished but wrote no {OUTPUT_YAML}"
        try:
            reply["metrics"] = parse_metrics(workdir)
        except Exception as exc:  # metrics are informative; a parse problem must not lose the fit
            print(f"could not parse pacemaker metrics: {exc}", file=sys.stderr)
        try:
            pot_yaml = workdir / "potential.yaml"
            shutil.copyfile(out, pot_yaml)
            yace = yaml_to_yace(pot_yaml)
            asi = compute_active_set(pot_yaml, [workdir / FITTING_DATA_INFO])
            reply.setdefault("metrics", {}).update(asi.metrics())
        except Exception as exc:  # a broken export or active set means an unusable potential
            traceback.print_exc()
            return f"{type(exc).__name__}: {exc}"
        finally:
            reply["timings"]["export"] = time.perf_counter() - t0
        reply["files"] = {"yaml": str(pot_yaml), "yace": str(yace), "asi": str(asi.path),
                          "input": str(workdir / "input.yaml"), "log": str(workdir / LOG_FILE)}
        log_marker(workdir / LOG_FILE, "export done (warm trainer)")
        return None


# ----------------------------------------------------------------------------- serving


def _exit_with_parent(parent: int) -> None:
    """Leave at once when the process that started us is gone (it can no longer reap or use us)."""
    while True:
        time.sleep(PARENT_POLL)
        if os.getppid() != parent:
            os._exit(0)


def serve(fd: int) -> None:
    """Answer fit requests on the connection ``fd`` until it closes or ``stop`` arrives."""
    from multiprocessing.connection import Connection

    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    conn = Connection(fd)
    trainer = Trainer()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message.get("op") == "stop":
            return
        if message.get("op") == "fit":
            try:
                reply = trainer.fit(message["request"])
            except Exception as exc:  # a bug here must reach the caller as a failed fit, not a hang
                reply = {"status": "failed", "pid": os.getpid(), "fit_index": trainer.n_fits,
                         "error": f"warm trainer error: {type(exc).__name__}: {exc}",
                         "timings": {}, "metrics": {}, "files": {}, "graph": "none"}
            conn.send(reply)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
