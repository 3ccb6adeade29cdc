"""The warm trainer: same fits as the pacemaker program, one process for many fits, and
crashes, exceptions and hangs that end as failed fits instead of taking the caller down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from autopipe.config.run import TrainConfig
from autopipe.db import Database
from autopipe.potentials.dataset import build_dataset, write_dataset
from autopipe.potentials.pacemaker import log_phases, read_loss_trace, render_input
from tests.lj import lj_recipe
from autopipe.potentials.trainer import fit_and_export
from autopipe.potentials.warm import WarmTrainer, warm_fit_and_export
from autopipe.potentials.warm_worker import basis_shape_key

from tests.potentials.helpers import add_labelled, copy_cached_run, lj_structures

# batch_size 16: the first dataset (29 training structures) makes 2 batches, the grown one
# (33) makes 3, so pacemaker's per-batch loss factors change between the two fits.
TRAIN = {**lj_recipe(3)["train"], "batch_size": 16, "timeout": 300.0}
ITERATIONS = 4


def _config(**update) -> TrainConfig:
    return TrainConfig(**{"cutoff": 5.0, **TRAIN, **update})


def _gone(pid: int) -> bool:
    """No process and no zombie with this pid."""
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture(scope="module")
def datasets(lj_potential, tmp_path_factory):
    """The fixture potential's 32 training cells, and the same plus 4 new (one carved, 8 atoms masked)."""
    run = copy_cached_run(lj_potential, tmp_path_factory.mktemp("warm") / "run")
    db = Database(f"sqlite:///{run / 'autopipe.db'}")
    try:
        small = write_dataset(build_dataset(db, _config())[0], run / "small.pckl.gzip")
        add_labelled(db, lj_structures(3, seed=31))
        add_labelled(db, lj_structures(1, seed=32), origin="embedded", force_mask=list(range(8)))
        grown, info = build_dataset(db, _config())
        assert info.n_structures == 36 and info.n_masked_atoms == 8
        grown = write_dataset(grown, run / "grown.pckl.gzip")
    finally:
        db.dispose()
    return {"small": small, "grown": grown, "parent": lj_potential.yaml}


def test_basis_shape_key_ignores_coefficients_and_metadata_only():
    from pyace.multispecies_basisextension import create_multispecies_basis_config

    def basis(**train):
        return create_multispecies_basis_config(render_input(_config(**train), ["Ar"], "d")["potential"])

    a, b = basis(), basis()
    b.set_all_coeffs(list(np.random.default_rng(0).normal(size=len(b.get_all_coeffs()))))
    b.metadata["starttime"] = "another day"
    assert basis_shape_key(a) == basis_shape_key(b)
    assert basis_shape_key(a) != basis_shape_key(basis(cutoff=6.0))
    assert basis_shape_key(a) != basis_shape_key(basis(number_of_functions_per_element=20))


@pytest.mark.slow
def test_warm_fits_equal_cli_fits_and_reuse_the_process_and_graph(datasets, tmp_path):
    tc = _config()
    trainer = WarmTrainer()
    try:
        first = warm_fit_and_export(tmp_path / "warm1", tc, ["Ar"], datasets["small"],
                                    parent_yaml=datasets["parent"], iterations=ITERATIONS, trainer=trainer)
        assert first.ok, f"{first.error}\n{first.log_tail}"
        # The second retrain: more data (one more batch, masked forces), the first one's potential as parent.
        second = warm_fit_and_export(tmp_path / "warm2", tc, ["Ar"], datasets["grown"],
                                     parent_yaml=first.files["yaml"], iterations=ITERATIONS, trainer=trainer)
        assert second.ok, f"{second.error}\n{second.log_tail}"
    finally:
        trainer.close()
    cold = fit_and_export(tmp_path / "cold2", tc, ["Ar"], datasets["grown"], parent_yaml=first.files["yaml"],
                          iterations=ITERATIONS, warm=False)
    assert cold.ok, f"{cold.error}\n{cold.log_tail}"

    # One process for both fits; the first paid the imports and traced the graphs, the second neither.
    assert first.metrics["trainer_pid"] == second.metrics["trainer_pid"]
    assert (first.metrics["trainer_fit_index"], second.metrics["trainer_fit_index"]) == (1, 2)
    assert first.metrics["trainer_graph"] == "traced" and second.metrics["trainer_graph"] == "reused"
    assert "trainer_imports" in first.timings and "trainer_imports" not in second.timings
    warm_phases, cold_phases = log_phases(tmp_path / "warm2" / "pacemaker.log"), log_phases(
        tmp_path / "cold2" / "pacemaker.log")
    startup = ("python_startup", "tensorflow_import", "tf_graph_build")
    assert sum(warm_phases[p] for p in startup) < 0.5 * sum(cold_phases[p] for p in startup)
    assert _gone(second.metrics["trainer_pid"])  # close() reaped it

    # The same fit as the pacemaker program: same loss at every iteration, same potential.
    # Same kernels on the same inputs and thread count reproduce bit for bit here; the
    # tolerance only allows last-bit differences of floating-point reduction order.
    warm_trace = read_loss_trace(tmp_path / "warm2" / "metrics.txt")
    cold_trace = read_loss_trace(tmp_path / "cold2" / "metrics.txt")
    assert [i for i, _ in warm_trace] == [i for i, _ in cold_trace] and len(warm_trace) >= ITERATIONS
    assert [v for _, v in warm_trace] == pytest.approx([v for _, v in cold_trace], rel=1e-9)
    for key in ("initial_loss", "final_loss", "train_energy_rmse", "train_forces_rmse", "test_forces_rmse"):
        assert second.metrics[key] == pytest.approx(cold.metrics[key], rel=1e-9), key
    assert second.metrics["n_train"] == cold.metrics["n_train"] == 33
    from pyace.basis import BBasisConfiguration

    warm_c = BBasisConfiguration(second.files["yaml"]).get_all_coeffs()
    cold_c = BBasisConfiguration(cold.files["yaml"]).get_all_coeffs()
    assert np.allclose(warm_c, cold_c, rtol=1e-9, atol=1e-12)
    # Continued from the parent: the first loss is near the parent's last, far below a fresh start.
    assert second.metrics["initial_loss"] < 2 * first.metrics["final_loss"]
    assert Path(second.files["yace"]).read_text() == Path(cold.files["yace"]).read_text()
    assert Path(second.files["asi"]).stat().st_size > 0


class Killer:
    """Kills each trainer process once it has started pacemaker, ``times`` times in all
    (with ``sig``; SIGSTOP makes a hang)."""

    def __init__(self, trainer: WarmTrainer, log_path: Path, times: int, sig: int = signal.SIGKILL):
        self.trainer, self.log_path, self.times, self.sig = trainer, log_path, times, sig
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while len(self.pids) < self.times and not self._stop.wait(0.05):
            pid = self.trainer.pid
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if pid is not None and pid not in self.pids and text.count("Start pacemaker") > len(self.pids):
                os.kill(pid, self.sig)
                self.pids.append(pid)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_exceptions_crashes_and_hangs_end_as_failed_fits(datasets, tmp_path):
    tc = _config()
    trainer = WarmTrainer()
    try:
        # pacemaker raises on a corrupted parent: a failed fit, the trainer stays up.
        bad = tmp_path / "corrupt.yaml"
        bad.write_text("species: [this is not, a potential\n")
        out = warm_fit_and_export(tmp_path / "bad", tc, ["Ar"], datasets["small"], parent_yaml=bad,
                                  iterations=ITERATIONS, trainer=trainer)
        assert out.status == "failed" and out.error.startswith("pacemaker raised"), out.error
        assert "Traceback" in out.log_tail and out.metrics["trainer_crashes"] == 0
        survivor = trainer.pid
        assert trainer.alive() and out.metrics["trainer_pid"] == survivor

        # The trainer dies mid-fit, and its replacement too: a failed fit, both reaped.
        with Killer(trainer, tmp_path / "twice" / "pacemaker.log", times=2) as killer:
            out = warm_fit_and_export(tmp_path / "twice", tc, ["Ar"], datasets["small"],
                                      parent_yaml=datasets["parent"], iterations=ITERATIONS, trainer=trainer)
        assert killer.pids[0] == survivor and len(killer.pids) == 2
        assert out.status == "failed" and "killed by SIGKILL" in out.error and out.metrics["trainer_crashes"] == 2
        assert "retrying on a fresh trainer" in out.log_tail and "Start pacemaker" in out.log_tail
        assert all(_gone(pid) for pid in killer.pids) and not trainer.alive()

        # Killed once: retried on a fresh trainer, and the fit succeeds.
        with Killer(trainer, tmp_path / "once" / "pacemaker.log", times=1) as killer:
            out = warm_fit_and_export(tmp_path / "once", tc, ["Ar"], datasets["small"],
                                      parent_yaml=datasets["parent"], iterations=ITERATIONS, trainer=trainer)
        assert out.ok, f"{out.error}\n{out.log_tail}"
        assert out.metrics["trainer_crashes"] == 1 and out.metrics["trainer_pid"] not in killer.pids
        assert Path(out.files["asi"]).exists() and _gone(killer.pids[0])

        # A hang (the trainer stopped mid-fit) is killed at the timeout.
        t0 = time.perf_counter()
        with Killer(trainer, tmp_path / "hang" / "pacemaker.log", times=1, sig=signal.SIGSTOP) as hung:
            out = warm_fit_and_export(tmp_path / "hang", _config(timeout=5.0), ["Ar"], datasets["small"],
                                      parent_yaml=datasets["parent"], iterations=ITERATIONS, trainer=trainer)
        assert time.perf_counter() - t0 < 30
        assert out.status == "failed" and "timed out after 5 s" in out.error
        assert "killed the warm trainer" in out.log_tail
        assert _gone(hung.pids[0]) and not trainer.alive()
    finally:
        trainer.close()


_SCRIPT = """
import os, sys, time
from pathlib import Path
from autopipe.config.run import TrainConfig
from autopipe.potentials.warm import acquire, release, warm_fit_and_export
work = Path(sys.argv[1])
(work / "corrupt.yaml").write_text("not a potential")
out = warm_fit_and_export(work / "fit", TrainConfig(timeout=120), ["Ar"], work / "none.pckl.gzip",
                          parent_yaml=work / "corrupt.yaml")
print(out.metrics["trainer_pid"], flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), 9)  # no atexit: the trainer must notice by itself
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "die"])
def test_trainer_leaves_with_its_parent(tmp_path, how):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), how], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip(), proc.stderr
    pid = int(proc.stdout.split()[-1])
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
