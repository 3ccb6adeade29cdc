"""pacemaker as an external program: input rendering, metrics parsing, failures as results."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.lj import fixture_train_dir
from autopipe.config.run import TrainConfig
from autopipe.potentials.pacemaker import (
    LOG_FILE,
    parse_log_rmse,
    parse_metrics,
    render_input,
    run_pacemaker,
    venv_bin,
    write_input,
    yaml_to_yace,
)


def test_render_input_puts_cutoff_in_bonds_and_has_backend(tmp_path):
    tc = TrainConfig(cutoff=6.5, number_of_functions_per_element=17, ranks=[5, 3], lmax=[0, 2], kappa=0.1,
                     max_iterations=33, optimizer="L-BFGS-B", backend="tensorpot", batch_size=7, seed=3)
    cfg = render_input(tc, ["Cu", "Ag"], "/data/d.pckl.gzip")
    assert "cutoff" not in cfg  # pacemaker ignores a top-level cutoff
    assert cfg["potential"]["bonds"]["ALL"]["rcut"] == 6.5
    assert cfg["potential"]["elements"] == ["Ag", "Cu"]
    assert cfg["potential"]["functions"]["number_of_functions_per_element"] == 17
    assert cfg["potential"]["functions"]["ALL"] == {"nradmax_by_orders": [5, 3], "lmax_by_orders": [0, 2]}
    assert cfg["fit"] == {"loss": {"kappa": 0.1, "L1_coeffs": 1e-8, "L2_coeffs": 1e-8},
                          "optimizer": "L-BFGS-B", "maxiter": 33}
    assert cfg["backend"]["evaluator"] == "tensorpot" and cfg["backend"]["batch_size"] == 7
    assert cfg["seed"] == 3 and "test_size" not in cfg["data"]
    assert render_input(tc, ["Cu"], "d", iterations=5)["fit"]["maxiter"] == 5
    assert render_input(TrainConfig(test_size=0.2), ["Cu"], "d")["data"]["test_size"] == 0.2
    # Round trip through YAML (what pacemaker reads).
    assert yaml.safe_load(write_input(cfg, tmp_path / "input.yaml").read_text()) == cfg
    # Lists of different lengths are refused when the run file is loaded; render_input keeps its own
    # guard for a config built without validation.
    with pytest.raises(ValueError, match="3 entries but ranks has 2"):
        TrainConfig(ranks=[6, 4], lmax=[0, 3, 2])
    with pytest.raises(ValueError, match="same length"):
        render_input(TrainConfig.model_construct(ranks=[6, 4], lmax=[0, 3, 2]), ["Cu"], "d")


def test_the_yace_converter_writes_what_pace_yaml2yace_writes(lj_potential, tmp_path):
    """The one yace converter runs in-process: its file must be the one pyace's own command writes
    (the file LAMMPS reads), and a yaml it cannot read is one RuntimeError naming the file."""
    import subprocess

    ours = yaml_to_yace(lj_potential.yaml, tmp_path / "ours.yace")
    subprocess.run([venv_bin("pace_yaml2yace"), str(lj_potential.yaml), "-o", str(tmp_path / "cli.yace")],
                   check=True, capture_output=True, timeout=300)
    assert ours.read_bytes() == (tmp_path / "cli.yace").read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("elements: [Ar]\nembeddings: {not a basis\n")
    with pytest.raises(RuntimeError, match="bad.yaml"):
        yaml_to_yace(bad)


@pytest.mark.slow
def test_metrics_of_the_fixture_fit(lj_potential):
    workdir = fixture_train_dir(lj_potential)
    m = parse_metrics(workdir)
    assert m["train_forces_rmse"] == pytest.approx(lj_potential.metrics["train_forces_rmse"])
    assert m["n_train"] + m["n_test"] == 32 and m["iterations"] >= 50
    # pacemaker's own log tables (meV) agree with the RMSE computed from its predictions.
    from_log = parse_log_rmse((workdir / LOG_FILE).read_text())
    assert from_log["train_forces_rmse"] == pytest.approx(m["train_forces_rmse"], rel=0.02)
    assert from_log["train_energy_rmse"] == pytest.approx(m["train_energy_rmse"], rel=0.05, abs=2e-4)
    assert from_log["test_forces_rmse"] == pytest.approx(m["test_forces_rmse"], rel=0.02)


@pytest.mark.slow
def test_failed_run_is_a_result_with_the_log_tail(tmp_path):
    bad = tmp_path / "data.pckl.gzip"
    bad.write_bytes(b"this is not a pickle")
    res = run_pacemaker(tmp_path / "fit", TrainConfig(backend="pyace"), ["Ar"], bad, timeout=120)
    assert res.status == "failed" and not res.ok
    assert "exited with code" in res.error
    assert res.log_tail and "Traceback" in res.log_tail
    assert res.potential is None and res.argv[1] == "input.yaml"


def test_timeout_kills_the_run(tmp_path, monkeypatch):
    """A stand-in pacemaker that would run for a minute (and starts a child of its own): only the
    timeout can end it before, whatever the machine's load, and it takes the child with it."""
    import autopipe.potentials.pacemaker as pm

    stand_in = tmp_path / "pacemaker"
    stand_in.write_text("#!/bin/sh\nsleep 60 &\necho $$ $! > pids\nwait\n")
    stand_in.chmod(0o755)
    monkeypatch.setattr(pm, "venv_bin", lambda name: str(stand_in) if name == "pacemaker" else name)
    res = run_pacemaker(tmp_path / "fit", TrainConfig(), ["Ar"], tmp_path / "none.pckl.gzip", timeout=0.5)
    assert res.status == "failed" and "timed out" in res.error, res.error
    assert "killed after" in res.log_tail
    pids = tmp_path / "fit" / "pids"  # absent if the timeout came before the shell got that far
    for pid in (pids.read_text().split() if pids.exists() else []):
        assert _dies(int(pid)), f"pid {pid} of the stand-in's process group survived the timeout"


def _dies(pid: int, within: float = 30.0) -> bool:
    """Whether ``pid`` is gone or a zombie within ``within`` s (SIGKILL and reaping by init are asynchronous;
    the wait is only ever long when the process was not killed)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False
