"""Rules ``autopipe check`` applies to a site file, a run file, or the pair.

Each rule is a small function returning :class:`Finding` s (an empty list when all is well):
errors make ``check`` fail, warnings and notes are printed. The rules catch what each file
alone cannot: a DFT label whose attempts outlast the block that runs it, executors that can
never start a block, a SQLite database on a network file system, and a Globus Compute site
that can only be validated offline. Wall times are in seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from autopipe.config.run import EspressoConfig, RunConfig
from autopipe.config.site import GlobusComputeExecutorConfig, SiteConfig, SlurmExecutor


@dataclass(frozen=True)
class Finding:
    """One result of a rule: ``level`` is error (check fails), warning or note."""

    level: Literal["error", "warning", "note"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


# ----------------------------------------------------------------------------- site and run together


def _task_fits(label: str, what: str, timeout: float, attempts: int, executor: Any) -> list[Finding]:
    if not isinstance(executor, SlurmExecutor):
        return []  # no batch walltime on threads, local HTEX or a remote endpoint we cannot see
    wall = executor.walltime_seconds()
    if timeout > wall:
        return [Finding("error", f"{what} ({timeout:g} s) is longer than the walltime of executor {executor.label!r} "
                                 f"({executor.walltime} = {wall} s): no {label} can ever finish in a block")]
    if timeout * attempts > wall:
        return [Finding("error", f"{what} ({timeout:g} s) x {attempts} attempts = {timeout * attempts:g} s exceeds the "
                                 f"walltime of executor {executor.label!r} ({executor.walltime} = {wall} s): a {label} "
                                 "that needs all its attempts is killed with its block; raise walltime or lower them")]
    return []


def dft_attempts_fit_walltime(site: SiteConfig, run: RunConfig) -> list[Finding]:
    """All attempts of one pw.x label (``timeout * max_attempts``) fit in a fresh DFT block."""
    if not isinstance(run.dft, EspressoConfig):
        return []  # analytic oracles take milliseconds
    return _task_fits("label", "dft.timeout", run.dft.timeout, run.dft.max_attempts, site.executor_for("dft"))


def training_fits_walltime(site: SiteConfig, run: RunConfig) -> list[Finding]:
    """One pacemaker run (``train.timeout``) fits in a fresh training block."""
    return _task_fits("training", "train.timeout", run.train.timeout, 1, site.executor_for("train"))


def walkers_run_beside_training(site: SiteConfig, run: RunConfig) -> list[Finding]:
    """Room on the MD executor for a segment of every walker, and for a fit beside them when the
    same executor trains: otherwise walkers that are not waiting for the fit queue behind it."""
    md, train = site.executor_for("md"), site.executor_for("train")
    walkers = run.walkers.count
    shared = md.label == train.label
    if md.slots() >= walkers + shared:
        return []
    if shared and md.slots() >= walkers:
        return [Finding("warning", f"executor {md.label!r} runs MD and training with room for {md.slots()} task(s): "
                                   f"while a fit runs, only {md.slots() - 1} of the {walkers} walker(s) can run; give "
                                   "training its own executor or raise its capacity/workers (see configs/local.yaml)")]
    return [Finding("warning", f"executor {md.label!r} has room for {md.slots()} task(s) but the run has {walkers} "
                               f"walkers{' and trains there' if shared else ''}: walkers take turns")]


# ----------------------------------------------------------------------------- site


def blocks_can_start(site: SiteConfig) -> list[Finding]:
    """Slurm executors whose block settings can never give a running block."""
    found = []
    for ex in site.executors:
        if not isinstance(ex, SlurmExecutor):
            continue
        if ex.min_blocks > ex.max_blocks:
            found.append(Finding("error", f"executor {ex.label!r}: min_blocks ({ex.min_blocks}) exceeds max_blocks "
                                          f"({ex.max_blocks})"))
        if ex.gpus_per_node and ex.workers_per_node and ex.workers_per_node > ex.gpus_per_node:
            found.append(Finding("warning", f"executor {ex.label!r}: workers_per_node ({ex.workers_per_node}) exceeds "
                                            f"gpus_per_node ({ex.gpus_per_node}); Parsl starts one worker per GPU"))
    return found


def slurm_accepts_blocks(site: SiteConfig, built: dict[str, Any]) -> list[Finding]:
    """When Slurm answers here, ask it (``sbatch --test-only``) whether it would accept each block.

    Catches what only the scheduler knows: a partition, constraint, node count, GPU count or
    walltime the cluster does not offer, and site rules (job_submit plugins). ``built`` maps
    executor labels to the Parsl executors :func:`build_executors` made.
    """
    slurm = [ex for ex in site.executors if isinstance(ex, SlurmExecutor)]
    if not slurm:
        return []
    from autopipe.scheduler import sbatch_test_only, slurm_reachable

    if not slurm_reachable():
        return [Finding("note", "Slurm does not answer here: partitions, constraints and limits were not checked "
                                "(run check on the cluster's login node for that)")]
    found = []
    for ex in slurm:
        refusal = sbatch_test_only(built[ex.label].provider)
        if refusal:
            found.append(Finding("error", f"executor {ex.label!r}: Slurm would refuse its blocks: {refusal}"))
    if not found:
        found.append(Finding("note", "Slurm accepts the blocks of " + ", ".join(repr(e.label) for e in slurm)
                                     + " (sbatch --test-only; nothing was submitted)"))
    return found


def globus_endpoints_not_contacted(site: SiteConfig) -> list[Finding]:
    """Globus Compute executors are validated offline: say so, and whether the SDK is installed."""
    found = []
    for ex in site.executors:
        if isinstance(ex, GlobusComputeExecutorConfig):
            found.append(Finding("note", f"executor {ex.label!r}: Globus Compute endpoint {ex.endpoint_id} was not "
                                         "contacted; whether it exists, is online and can run autopipe is unknown "
                                         "until a run"))
    if found:
        try:
            import globus_compute_sdk  # noqa: F401
        except ImportError:
            found.append(Finding("warning", "globus-compute-sdk is not installed here: pip install 'autopipe[globus]'"))
    return found


def build_executors(site: SiteConfig, run_dir: Path) -> dict[str, Any]:
    """Build the Parsl executor of every non-Globus entry (nothing is started or submitted).

    Globus Compute executors are left out: building one needs a Globus login and a reachable
    endpoint, and ``check`` never contacts an endpoint.
    """
    return {ex.label: ex.build(run_dir) for ex in site.executors if not isinstance(ex, GlobusComputeExecutorConfig)}


# ----------------------------------------------------------------------------- run

# Where SQLite's file locking is unreliable (and WAL's shared-memory index cannot be shared).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.ceph-fuse", "glusterfs", "fuse.glusterfs",
    "cifs", "smb3", "smbfs", "dvs", "panfs", "wekafs", "orangefs", "pvfs2", "afs", "fuse.sshfs",
})


def _unescape_mount(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mounts: str) -> str | None:
    """File system type of ``path``: the longest mount point above it in ``mounts`` (/proc/mounts text)."""
    path = Path(path)
    best, best_type = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape_mount(fields[1]))
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, best_type = len(point.parts), fields[2]
    return best_type


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("sqlite") or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database).resolve()


def sqlite_on_shared_filesystem(run: RunConfig, read_mounts: Callable[[], str] | None = None) -> list[Finding]:
    """Warn when the run's SQLite database sits on a network or parallel file system."""
    path = _sqlite_path(run.database_url())
    if path is None:
        return []
    mounts = read_mounts() if read_mounts else Path("/proc/mounts").read_text()
    fstype = filesystem_type(path, mounts)
    if fstype not in NETWORK_FILESYSTEMS:
        return []
    return [Finding("warning", f"the SQLite database {path} is on a {fstype} file system, where SQLite's locking is "
                               "unreliable: use PostgreSQL at sites (database: postgresql+psycopg://user@host/db), "
                               "or put the database on a local disk")]


# ----------------------------------------------------------------------------- all together


def check_site(site: SiteConfig, built: dict[str, Any]) -> list[Finding]:
    """Every rule about a site file alone."""
    return blocks_can_start(site) + globus_endpoints_not_contacted(site) + slurm_accepts_blocks(site, built)


def check_run(run: RunConfig) -> list[Finding]:
    """Every rule about a run file alone."""
    return sqlite_on_shared_filesystem(run)


def check_pair(site: SiteConfig, run: RunConfig) -> list[Finding]:
    """Every rule about a site and a run file used together."""
    return (dft_attempts_fit_walltime(site, run) + training_fits_walltime(site, run)
            + walkers_run_beside_training(site, run))
