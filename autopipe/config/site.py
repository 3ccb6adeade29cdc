"""Site files: where work runs.

A site names Parsl executors, each with the roles it serves (``md`` and ``train``
usually on GPU nodes, ``dft`` on CPU nodes; one executor may serve several roles),
and builds a real :class:`parsl.config.Config` from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import Field, field_validator, model_validator

from autopipe.config.base import StrictModel, load_model

Role = Literal["md", "dft", "train"]
ROLES: tuple[Role, ...] = ("md", "dft", "train")


class _ExecutorBase(StrictModel):
    label: str = Field(description="Unique executor name; Parsl routes apps by it.", pattern=r"^[A-Za-z0-9_\-]+$")
    roles: list[Role] = Field(min_length=1, description="Work this executor takes: md, dft, train.")
    dft_launcher: list[str] = Field(
        default_factory=list,
        description="argv prefix for pw.x on this executor, e.g. ['srun', '-n', '4'] or ['mpirun', '-np', '2'].",
    )
    md_launcher: list[str] = Field(
        default_factory=list,
        description="argv prefix that runs LAMMPS (lmp, native ML-PACE route) for MD on this executor, e.g. "
        "['mpirun', '-np', '2'] or ['srun', '-n', '4']; empty: lmp runs alone, one MPI rank.",
    )
    capacity: int | None = Field(
        default=None,
        ge=1,
        description="Tasks the steering loop keeps in flight on this executor (default: its worker count).",
    )
    scratch: str | None = Field(
        default=None,
        description="Directory on the workers under which this executor's tasks write (pw.x attempts, LAMMPS "
        "segment files, pacemaker fits, a cache of the potentials they receive), in a subdirectory per run; '~' "
        "and $VARS are expanded on the worker, e.g. '$PSCRATCH/autopipe'. Default: the run's work directory "
        "itself (workers that share the steering host's filesystem).",
    )
    max_payload_mb: float = Field(
        default=512.0,
        gt=0,
        description="Largest pickled arguments, and result, of one task on this executor (MB). Larger ones are "
        "not sent: the run stops with a message saying which and how big.",
    )
    shared_scratch: str | None = Field(
        default=None,
        description="A directory the steering host and this executor's workers both reach under the same path, "
        "e.g. '$PSCRATCH/autopipe' on Perlmutter ('~', $VAR and ${VAR} expanded on the steering host). With it, "
        "MD walker checkpoints stay there and only their path, size and sha256 travel (md executor); without it "
        "walker states travel by value, within max_payload_mb.",
    )

    def payload_bytes(self) -> int:
        """``max_payload_mb`` in bytes."""
        return int(self.max_payload_mb * (1 << 20))

    def shared_scratch_path(self) -> Path | None:
        """``shared_scratch`` expanded here (absolute), or None; :class:`ConfigError` (one line) when a
        variable in it is not set or the result is not an absolute path."""
        import os

        from autopipe.errors import ConfigError

        if self.shared_scratch is None:
            return None
        expanded = os.path.expanduser(os.path.expandvars(self.shared_scratch))
        if "$" in expanded or not os.path.isabs(expanded):
            raise ConfigError(f"site executor {self.label!r}: shared_scratch {self.shared_scratch!r} is "
                              f"{expanded!r} here: " + ("a variable in it is not set" if "$" in expanded
                                                        else "not an absolute path"))
        return Path(expanded)

    def slots(self) -> int:
        """Tasks the steering loop keeps in flight here: ``capacity``, else the worker count."""
        return self.capacity or self.workers()


class ThreadsExecutor(_ExecutorBase):
    """Threads in the steering process: for tests and laptops."""

    kind: Literal["threads"]
    max_workers: int = Field(default=2, ge=1, description="Worker threads.")

    def workers(self) -> int:
        return self.max_workers

    def build(self, run_dir: Path, **_: Any):
        from parsl.executors.threads import ThreadPoolExecutor

        return ThreadPoolExecutor(label=self.label, max_threads=self.max_workers)


class HtexLocalExecutor(_ExecutorBase):
    """A HighThroughputExecutor with workers on this machine (separate processes)."""

    kind: Literal["htex-local"]
    max_workers_per_node: int = Field(default=2, ge=1, description="Worker processes.")
    cores_per_worker: float = Field(default=1.0, gt=0, description="CPU cores per worker.")

    def workers(self) -> int:
        return self.max_workers_per_node

    def build(self, run_dir: Path, **_: Any):
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        return HighThroughputExecutor(
            label=self.label,
            max_workers_per_node=self.max_workers_per_node,
            cores_per_worker=self.cores_per_worker,
            address="127.0.0.1",
            encrypted=True,  # CurveZMQ: the interchange's ports accept no unauthenticated pickles
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )


class SlurmExecutor(_ExecutorBase):
    """A HighThroughputExecutor whose workers are Slurm jobs (e.g. NERSC Perlmutter)."""

    kind: Literal["slurm"]
    account: str = Field(description="Slurm account (-A) charged for the jobs.")
    qos: str | None = Field(default=None, description="Slurm QOS, e.g. 'regular' or 'debug'.")
    partition: str | None = Field(default=None, description="Slurm partition (-p).")
    constraint: str | None = Field(default=None, description="Slurm constraint (-C), e.g. 'gpu' or 'cpu'.")
    nodes_per_block: int = Field(default=1, ge=1, description="Nodes per Slurm job.")
    min_blocks: int = Field(default=0, ge=0, description="Slurm jobs kept alive when idle.")
    max_blocks: int = Field(default=1, ge=1, description="Most Slurm jobs at once.")
    walltime: str = Field(
        default="01:00:00",
        # Parsl's SlurmProvider reads HH:MM:SS only (no 'D-' days) and refuses less than a minute.
        pattern=r"^\d+:[0-5]\d:[0-5]\d$",
        description="Wall time per job, HH:MM:SS (hours may exceed 24, e.g. 48:00:00); at least one minute.",
    )
    gpus_per_node: int = Field(default=0, ge=0, description="GPUs per node; one worker per GPU when > 0.")
    workers_per_node: int | None = Field(default=None, ge=1, description="Workers per node (default: GPUs, else 1).")
    cores_per_worker: float = Field(default=1.0, gt=0, description="CPU cores per worker.")
    launcher: Literal["srun", "single", "simple"] = Field(default="srun", description="How workers start on nodes.")
    launcher_overrides: str = Field(
        default="",
        description="Extra srun options for the worker launch (srun only). The worker pool is one srun task "
        "per node: give it the whole node, e.g. '-c 128 --cpu-bind=none' on a Perlmutter GPU node.",
    )
    cpu_affinity: str = Field(
        default="none",
        pattern=r"^(none|block|block-reverse|alternating|list(:[0-9,\-]+)+)$",
        description="How Parsl pins each worker to CPUs of what its srun task got: 'none' (workers share "
        "them), 'block', 'block-reverse', 'alternating', or 'list:0-15,64-79:16-31,80-95:...' (one range "
        "per worker).",
    )
    exclusive: bool = Field(
        default=True, description="Whole nodes per block (--exclusive); false lets blocks share a node."
    )
    md_lammps_args: list[str] = Field(
        default_factory=list,
        description="LAMMPS command-line switches for MD on these nodes, e.g. KOKKOS on GPUs: "
        "['-k', 'on', 'g', '1', '-sf', 'kk', '-pk', 'kokkos', 'newton', 'on', 'neigh', 'half'].",
    )
    worker_init: str = Field(default="", description="Shell lines run before workers start (modules, venv).")
    scheduler_options: str = Field(default="", description="Extra '#SBATCH' lines.")
    heartbeat_period: int = Field(
        default=30, ge=1, description="Seconds between heartbeats of the worker pools and the steering process."
    )
    heartbeat_threshold: int = Field(
        default=120,
        ge=2,
        description="Seconds without a heartbeat after which a block's workers count as lost and their "
        "tasks fail with ManagerLost (then the site's retries resubmit them).",
    )
    status_polling_interval: int = Field(
        default=60, ge=1, description="Seconds between squeue polls of this executor's jobs (Parsl's default 60)."
    )

    @field_validator("account", "qos", "partition", "constraint", "launcher_overrides")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        # Parsl writes these into '#SBATCH --qos=...' lines and the srun command of the batch
        # script: a newline would add lines (#SBATCH options or shell commands) of its own.
        if v is not None and ("\n" in v or "\r" in v):
            raise ValueError("must be one line (a newline would add lines to the batch script)")
        return v

    @field_validator("scheduler_options")
    @classmethod
    def _only_sbatch_lines(cls, v: str) -> str:
        # sbatch stops reading options at the first command line, so a shell line here would
        # silently drop the account, QOS and GPU lines Parsl writes after it.
        bad = [ln.strip() for ln in v.splitlines() if ln.strip() and not ln.strip().startswith("#SBATCH")]
        if bad:
            raise ValueError(f"every line must be an '#SBATCH' line (put shell commands in worker_init): {bad[0]!r}")
        return v

    @field_validator("worker_init")
    @classmethod
    def _no_sbatch_lines(cls, v: str) -> str:
        # worker_init follows the batch header: an '#SBATCH' line at its top would be read as one.
        if any(ln.strip().startswith("#SBATCH") for ln in v.splitlines()):
            raise ValueError("holds an '#SBATCH' line: batch options go in scheduler_options")
        return v

    @model_validator(mode="after")
    def _timings_fit(self) -> "SlurmExecutor":
        if self.walltime_seconds() < 60:
            raise ValueError(f"walltime {self.walltime} is shorter than one minute")
        if self.heartbeat_threshold < 2 * self.heartbeat_period:
            raise ValueError(
                f"heartbeat_threshold ({self.heartbeat_threshold} s) must be at least twice heartbeat_period "
                f"({self.heartbeat_period} s), or live workers are declared lost between two heartbeats"
            )
        return self

    def workers(self) -> int:
        per_node = self.workers_per_node or (self.gpus_per_node or 1)
        return per_node * self.nodes_per_block * self.max_blocks

    def walltime_seconds(self) -> int:
        """The walltime in seconds."""
        h, m, s = (int(x) for x in self.walltime.split(":"))
        return h * 3600 + m * 60 + s

    def build(self, run_dir: Path, **_: Any):
        from parsl.executors import HighThroughputExecutor
        from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher

        from autopipe.scheduler import PolledSlurmProvider

        if self.launcher == "srun":
            launcher = SrunLauncher(overrides=self.launcher_overrides)
        else:
            launcher = {"single": SingleNodeLauncher, "simple": SimpleLauncher}[self.launcher]()
        per_node = self.workers_per_node or (self.gpus_per_node or 1)
        extra: dict[str, Any] = {}
        if self.gpus_per_node:
            # One worker per GPU, each seeing only its own device.
            extra["available_accelerators"] = self.gpus_per_node
        options = self.scheduler_options
        if self.gpus_per_node and "--gpus" not in options:
            options = (options + f"\n#SBATCH --gpus-per-node={self.gpus_per_node}").strip()
        if self.qos and "--qos" not in options:
            options = (options + f"\n#SBATCH --qos={self.qos}").strip()
        return HighThroughputExecutor(
            label=self.label,
            max_workers_per_node=per_node,
            cores_per_worker=self.cores_per_worker,
            cpu_affinity=self.cpu_affinity,
            heartbeat_period=self.heartbeat_period,
            heartbeat_threshold=self.heartbeat_threshold,
            encrypted=True,  # CurveZMQ: on a shared login node the ports would accept anyone's pickles
            provider=PolledSlurmProvider(
                account=self.account,
                partition=self.partition,
                constraint=self.constraint,
                nodes_per_block=self.nodes_per_block,
                init_blocks=self.min_blocks,
                min_blocks=self.min_blocks,
                max_blocks=self.max_blocks,
                walltime=self.walltime,
                scheduler_options=options,
                worker_init=self.worker_init,
                launcher=launcher,
                exclusive=self.exclusive,
                status_polling_interval=self.status_polling_interval,
                # sbatch/squeue on a busy centre can take tens of seconds; Parsl's 10 s default
                # would count a slow sbatch as a failed block and stop the executor.
                cmd_timeout=120,
            ),
            **extra,
        )


class GlobusComputeExecutorConfig(_ExecutorBase):
    """Tasks go to a remote Globus Compute endpoint (needs the ``globus`` extra)."""

    kind: Literal["globus-compute"]
    endpoint_id: str = Field(
        pattern=r"^[0-9a-fA-F-]{36}$", description="UUID of the Globus Compute endpoint (globus-compute-endpoint list)."
    )
    max_tasks: int = Field(default=4, ge=1, description="Tasks kept in flight on the endpoint.")
    scratch: str | None = Field(
        default="~/.cache/autopipe/scratch",
        description="Directory on the endpoint's workers under which tasks write, in a subdirectory per run ('~' "
        "and $VARS expanded there); point it at a scratch file system, e.g. '$PSCRATCH/autopipe'. An endpoint "
        "shares no files with the steering process: everything else travels by value.",
    )
    max_payload_mb: float = Field(
        default=7.0,
        gt=0,
        description="Largest pickled arguments, and result, of one task (MB). The Globus Compute service refuses "
        "task submissions and results above 10 MB of the SDK's base64 text, about 1.35 times the pickle.",
    )

    def workers(self) -> int:
        return self.max_tasks

    def build(self, run_dir: Path, *, globus_executor_factory: Callable[..., Any] | None = None, **_: Any):
        from parsl.executors import GlobusComputeExecutor

        if globus_executor_factory is None:
            try:
                from globus_compute_sdk import Executor as globus_executor_factory  # type: ignore[no-redef]
            except ImportError as exc:  # pragma: no cover - depends on the extra
                from autopipe.errors import ConfigError

                raise ConfigError(
                    f"executor {self.label!r} is kind globus-compute but globus-compute-sdk is not installed "
                    "(pip install 'autopipe[globus]')"
                ) from exc
        return GlobusComputeExecutor(executor=globus_executor_factory(endpoint_id=self.endpoint_id), label=self.label)


ExecutorConfig = Annotated[
    Union[ThreadsExecutor, HtexLocalExecutor, SlurmExecutor, GlobusComputeExecutorConfig],
    Field(discriminator="kind"),
]


class SiteConfig(StrictModel):
    """Where work runs: executors and the roles they serve."""

    name: str = Field(description="Site name, shown in plans and reports.")
    executors: list[ExecutorConfig] = Field(min_length=1, description="Parsl executors of this site.")
    run_dir: str | None = Field(default=None, description="Parsl's run directory (default: <workdir>/parsl).")
    retries: int = Field(
        default=2,
        ge=0,
        description="Times a task is resubmitted after its worker or block was lost (scancel, node failure, "
        "walltime); an app's own errors are never retried here.",
    )

    @model_validator(mode="after")
    def _check_roles(self) -> "SiteConfig":
        labels = [e.label for e in self.executors]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"executor labels must be unique; repeated: {', '.join(dupes)}")
        for role in ROLES:
            serving = [e.label for e in self.executors if role in e.roles]
            if not serving:
                raise ValueError(f"no executor serves role {role!r}; every site needs md, dft and train")
            if len(serving) > 1:
                raise ValueError(f"role {role!r} is served by several executors ({', '.join(serving)}); give it to one")
        return self

    def executor_for(self, role: Role):
        """The executor config serving ``role``."""
        return next(e for e in self.executors if role in e.roles)

    def to_parsl_config(self, run_dir: Path | str = "parsl-runinfo", extra_executors: tuple = (), **build_kwargs: Any):
        """Build a :class:`parsl.config.Config` with one executor per entry, plus ``extra_executors``
        (Parsl executor objects, e.g. the steering process's own).

        ``build_kwargs`` reach each executor's ``build``; tests pass
        ``globus_executor_factory`` to stand in for the Globus Compute SDK.
        """
        from parsl.config import Config

        from autopipe.scheduler import retry_lost_workers

        _venv_bin_on_path()
        run_dir = Path(self.run_dir) if self.run_dir else Path(run_dir)
        return Config(
            executors=[*(e.build(run_dir, **build_kwargs) for e in self.executors), *extra_executors],
            run_dir=str(run_dir),
            strategy="simple",
            initialize_logging=True,
            retries=self.retries,
            retry_handler=retry_lost_workers,
        )


def _venv_bin_on_path() -> None:
    """Put this interpreter's bin directory on PATH.

    HTEX starts ``interchange.py`` and ``process_worker_pool.py`` by name; a user who runs
    ``.venv/bin/autopipe-steer`` without activating the venv would otherwise get
    'No such file or directory: interchange.py'.
    """
    import os
    import sys

    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def load_site(path: Path | str) -> SiteConfig:
    """Load and validate a site file; raises :class:`autopipe.errors.ConfigError`."""
    return load_model(SiteConfig, Path(path))
