"""Site and run files: shipped files load, bad files fail with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopipe.config import load_run, load_site
from tests.globus_standin import make_offline_globus_executor
from autopipe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SITES = {
    "local": {"local": "ThreadPoolExecutor", "train": "ThreadPoolExecutor"},
    "local-htex": {"gpu": "HighThroughputExecutor", "cpu": "HighThroughputExecutor"},
    "perlmutter": {"gpu": "HighThroughputExecutor", "cpu": "HighThroughputExecutor"},
    "globus": {"gpu-endpoint": "GlobusComputeExecutor", "cpu-endpoint": "GlobusComputeExecutor"},
    "slurm-local": {"gpu": "HighThroughputExecutor", "cpu": "HighThroughputExecutor"},
}


@pytest.mark.parametrize("name", sorted(SITES))
def test_shipped_site_builds_parsl_config(name, tmp_path):
    from parsl.config import Config

    site = load_site(ROOT / "configs" / f"{name}.yaml")
    cfg = site.to_parsl_config(tmp_path / "parsl", globus_executor_factory=make_offline_globus_executor)
    assert isinstance(cfg, Config)
    assert {e.label: type(e).__name__ for e in cfg.executors} == SITES[name]
    for role in ("md", "dft", "train"):
        assert site.executor_for(role).label in SITES[name]


def test_perlmutter_uses_slurm_with_gpus_and_srun():
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    cfg = load_site(ROOT / "configs" / "perlmutter.yaml").to_parsl_config()
    gpu = next(e for e in cfg.executors if e.label == "gpu")
    assert isinstance(gpu.provider, SlurmProvider)
    assert isinstance(gpu.provider.launcher, SrunLauncher)
    assert gpu.provider.constraint == "gpu"
    assert "--gpus-per-node=4" in gpu.provider.scheduler_options
    assert "--qos=regular" in gpu.provider.scheduler_options
    assert len(gpu.available_accelerators) == 4
    # The worker pool is the node's one srun task: it gets all 128 logical CPUs, not half.
    assert "-c 128" in gpu.provider.launcher.overrides
    assert "#SBATCH --exclusive" in gpu.provider.scheduler_options
    cpu = next(e for e in cfg.executors if e.label == "cpu")
    assert cpu.provider.constraint == "cpu"
    # Real-site defaults: Parsl's heartbeats and squeue polling, encrypted worker traffic.
    assert (cpu.heartbeat_period, cpu.heartbeat_threshold, cpu.provider.status_polling_interval) == (30, 120, 60)
    assert all(e.encrypted for e in cfg.executors)
    assert cfg.retries == 2


def test_every_htex_executor_is_encrypted(tmp_path):
    for name in ("local-htex", "perlmutter", "slurm-local"):
        cfg = load_site(ROOT / "configs" / f"{name}.yaml").to_parsl_config(tmp_path / name)
        assert all(e.encrypted for e in cfg.executors), name


def test_globus_route_goes_through_the_sdk_executor_boundary(tmp_path):
    """A real Parsl app on the GlobusComputeExecutor, with the SDK's Executor stood in."""
    import parsl
    from parsl import python_app

    made = []

    def factory(endpoint_id):
        ex = make_offline_globus_executor(endpoint_id)
        made.append(ex)
        return ex

    site = load_site(ROOT / "configs" / "globus.yaml")
    dfk = parsl.load(site.to_parsl_config(tmp_path / "parsl", globus_executor_factory=factory))
    try:

        @python_app(executors=["cpu-endpoint"])
        def square(x):
            return x * x

        assert square(7).result(timeout=30) == 49
    finally:
        dfk.cleanup()
        parsl.clear()
    cpu = next(ex for ex in made if ex.endpoint_id.startswith("6666"))
    assert len(cpu.submitted) == 1


@pytest.mark.parametrize("name", ["lj2d-heal", "si-pwx"])
def test_shipped_run_files_load(name):
    run = load_run(ROOT / "configs" / "runs" / f"{name}.yaml")
    assert run.workdir.is_absolute()
    assert run.database_url().startswith("sqlite:///")


def test_workdir_override(tmp_path):
    run = load_run(ROOT / "configs" / "runs" / "lj2d-heal.yaml", workdir=tmp_path / "w")
    assert run.workdir == (tmp_path / "w").resolve()
    assert str(tmp_path / "w" / "autopipe.db") in run.database_url()


def _write(tmp_path: Path, text: str, name: str = "f.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


MINIMAL_RUN = """
name: t
system: {elements: [Ar], structure: {kind: bulk, crystal: fcc, a: 5.2}}
initial_potential: {kind: generate}
embedding: {core_radius: 4.0, buffer: 5.0}
dft: {code: lj}
"""


@pytest.mark.parametrize(
    "text, expected",
    [
        (MINIMAL_RUN + "md: {temprature: 300}\n", "f.yaml: md.temprature: unknown key"),
        (MINIMAL_RUN + "md: {timestep: fast}\n", "f.yaml: md.timestep: Input should be a valid number"),
        (MINIMAL_RUN + "md: {timestep: -1}\n", "f.yaml: md.timestep: Input should be greater than 0"),
        (MINIMAL_RUN + "otf: {uncertainty_threshold: 0.5}\n", "otf.uncertainty_threshold: Input should be greater than 1"),
        (MINIMAL_RUN.replace("code: lj", "code: vasp"), "f.yaml: dft: Input tag 'vasp' found using 'code' does not match"),
        (MINIMAL_RUN.replace("code: lj", "code: espresso, ecutwfc: -3"), "dft.espresso.ecutwfc: Input should be greater than 0"),
        (MINIMAL_RUN.replace("[Ar]", "[Xx]"), "system.elements: Value error, unknown chemical symbol(s): Xx"),
        (MINIMAL_RUN.replace("embedding: {core_radius: 4.0, buffer: 5.0}\n", ""), "f.yaml: embedding: required key is missing"),
        (MINIMAL_RUN + "bogus: 1\n", "f.yaml: bogus: unknown key"),
        ("name: [unclosed\n", "f.yaml: not valid YAML (line 2"),
        ("- just\n- a list\n", "expected a mapping of keys at the top level"),
    ],
)
def test_bad_run_files_name_file_key_and_expectation(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_run(_write(tmp_path, text))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: s\nexecutors: [{label: a, kind: threads, roles: [md, dft]}]\n", "no executor serves role 'train'"),
        (
            "name: s\nexecutors: [{label: a, kind: threads, roles: [md, dft, train]}, {label: a, kind: threads, roles: [md]}]\n",
            "executor labels must be unique; repeated: a",
        ),
        ("name: s\nexecutors: [{label: a, kind: pbs, roles: [md, dft, train]}]\n", "executors[0]: Input tag 'pbs'"),
        ("name: s\nexecutors: [{label: a, kind: slurm, roles: [md, dft, train]}]\n", "executors[0].slurm.account: required key is missing"),
        (
            "name: s\nexecutors: [{label: a, kind: slurm, account: x, walltime: '2h', roles: [md, dft, train]}]\n",
            "executors[0].slurm.walltime: String should match pattern",
        ),
        (
            "name: s\nexecutors: [{label: a, kind: globus-compute, endpoint_id: nope, roles: [md, dft, train]}]\n",
            "endpoint_id: String should match pattern",
        ),
        ("name: s\nexecutors: [{label: a, kind: threads, roles: [gpu]}]\n", "roles[0]: Input should be 'md', 'dft' or 'train'"),
        (
            "name: s\nexecutors: [{label: a, kind: slurm, account: x, heartbeat_period: 10, heartbeat_threshold: 15, "
            "roles: [md, dft, train]}]\n",
            "heartbeat_threshold (15 s) must be at least twice heartbeat_period (10 s)",
        ),
        (
            "name: s\nexecutors: [{label: a, kind: slurm, account: x, walltime: '1-00:00:00', roles: [md, dft, train]}]\n",
            "executors[0].slurm.walltime: String should match pattern",  # Parsl reads HH:MM:SS only
        ),
        (
            "name: s\nexecutors: [{label: a, kind: slurm, account: x, walltime: '00:00:30', roles: [md, dft, train]}]\n",
            "walltime 00:00:30 is shorter than one minute",
        ),
        (
            "name: s\nexecutors: [{label: a, kind: slurm, account: x, cpu_affinity: numa, roles: [md, dft, train]}]\n",
            "executors[0].slurm.cpu_affinity: String should match pattern",
        ),
    ],
)
def test_bad_site_files(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_site(_write(tmp_path, text, "site.yaml"))
    assert "site.yaml" in str(err.value)
    assert expected in str(err.value)


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_site(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_run_file(tmp_path):
    from ase.build import bulk

    (tmp_path / "sub").mkdir()
    bulk("Ar", "fcc", a=5.2).write(tmp_path / "sub" / "start.xyz")  # load_run refuses a missing structure file
    p = _write(
        tmp_path / "sub",
        MINIMAL_RUN.replace("{kind: bulk, crystal: fcc, a: 5.2}", "{kind: file, path: start.xyz}") + "workdir: out\n",
    )
    run = load_run(p)
    assert run.system.structure.path == (tmp_path / "sub" / "start.xyz").resolve()
    assert run.workdir == (tmp_path / "sub" / "out").resolve()
