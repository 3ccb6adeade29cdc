"""Where a run keeps its files: the work-directory layout, in one place.

Everything else asks this module for a path instead of spelling one out::

    <workdir>/
      autopipe-run.json        run marker: where the database is (read by `autopipe status` etc.)
      run.resolved.json        the run file as validated, defaults filled in
      autopipe.db              the database, unless the run file names another URL
      autopipe.log             the steering process's log
      potentials/vNNNN/        published potentials (autopipe.potentials.store)
      train/vNNNN[-k]/         one directory per fit: dataset, pacemaker input, log, outputs
      walkers/wNN/             checkpoint-00000000.npz: the walker's first state
      walkers/wNN/segNNNN/     one MD segment: LAMMPS records, trajectory, checkpoint-<step>.npz
      dft/sNNNNNN/             pw.x attempts of structure NNNNNN (attempt-N/)
      cache/                   potentials and UPF files received by value, by checksum (workers)
      parsl/                   Parsl's run directory
      replay/vNNNN/            `autopipe replay` segments (in-sample); replay.json their summary
      replay/fresh/            fresh trajectories (vNNNN-sSEED/), their labelled close-contact
                               frames (frames.extxyz, dft/fNNN/ for pw.x); fresh.json the summary
      report/                  `autopipe report`: index.html and its plots

Workers use the same layout under their own root (:meth:`RunLayout.on_worker`): the run's
work directory when they share it, else a directory per run under their executor's
``scratch``; the files the loop keeps (checkpoints, published potentials) are written here
from what the tasks return.

Nothing here creates files except :meth:`RunLayout.fresh_train_dir` and
:func:`write_run_files`; the functions are pure path arithmetic otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

#: The run marker's file name: the steering loop writes it; readers find the database by it.
RUN_MARKER = "autopipe-run.json"


def checkpoint_file(directory: Path | str, step: int) -> Path:
    """The checkpoint of a walker state at MD ``step`` inside ``directory``."""
    return Path(directory) / f"checkpoint-{int(step):08d}.npz"


def segment_prefix(directory: Path | str, start_step: int, version: int | None) -> Path:
    """Common stem of one segment's LAMMPS files (``.data``, ``.thermo``, ``.extxyz``, ...)."""
    return Path(directory) / f"seg-{int(start_step):08d}-v{version}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run's work directory (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ run-level files
    @property
    def marker(self) -> Path:
        return self.root / RUN_MARKER

    @property
    def resolved_config(self) -> Path:
        return self.root / "run.resolved.json"

    @property
    def database_file(self) -> Path:
        return self.root / "autopipe.db"

    @property
    def log_file(self) -> Path:
        return self.root / "autopipe.log"

    @property
    def potentials(self) -> Path:
        return self.root / "potentials"

    @property
    def parsl(self) -> Path:
        return self.root / "parsl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def replay_summary(self) -> Path:
        return self.root / "replay.json"

    @property
    def fresh_summary(self) -> Path:
        """Fresh-trajectory validation of ``autopipe replay`` (held-out), next to replay.json."""
        return self.root / "fresh.json"

    @property
    def fresh_dir(self) -> Path:
        return self.root / "replay" / "fresh"

    @property
    def fresh_frames(self) -> Path:
        """The labelled close-contact frames of the fresh trajectories (extxyz, ``ref_forces``)."""
        return self.fresh_dir / "frames.extxyz"

    # ------------------------------------------------------------------ per unit of work
    def walker_dir(self, walker_index: int) -> Path:
        return self.root / "walkers" / f"w{int(walker_index):02d}"

    def initial_checkpoint(self, walker_index: int) -> Path:
        """A walker's first state, written when the walker is created."""
        return checkpoint_file(self.walker_dir(walker_index), 0)

    def segment_dir(self, walker_index: int, number: int) -> Path:
        return self.walker_dir(walker_index) / f"seg{int(number):04d}"

    def on_worker(self, scratch: str | None, run_name: str) -> str:
        """This run's directory on a worker: the work directory itself when ``scratch`` is None
        (workers share this filesystem), else ``<scratch>/<run name>-<8 hex digits of the work
        directory's path>`` (expanded on the worker; the same for every task of the run, so
        a task resubmitted to the same worker finds what an earlier try left there)."""
        import hashlib

        if scratch is None:
            return str(self.root.resolve())
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]
        return f"{scratch.rstrip('/')}/{run_name}-{digest}"

    def relative(self, path: Path | str) -> str:
        """``path`` (inside the work directory) relative to it: the same place on a worker."""
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def dft_dir(self, structure_id: int) -> Path:
        return self.root / "dft" / f"s{int(structure_id):06d}"

    def replay_dir(self, version: int, tag: str = "") -> Path:
        return self.root / "replay" / (f"v{int(version):04d}" + (f"-{tag}" if tag else ""))

    def fresh_run_dir(self, version: int, seed: int) -> Path:
        return self.fresh_dir / f"v{int(version):04d}-s{int(seed)}"

    def fresh_dft_dir(self, index: int) -> Path:
        return self.fresh_dir / "dft" / f"f{int(index):03d}"

    def train_dir(self, version: int) -> Path:
        return self.root / "train" / f"v{int(version):04d}"

    def fresh_train_dir(self, version: int) -> Path:
        """``train/vNNNN``, or ``vNNNN-2``, ``-3``, ... when an earlier attempt left one; created."""
        base = self.train_dir(version)
        candidate, n = base, 1
        while candidate.exists():
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        candidate.mkdir(parents=True)
        return candidate


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 600 from the moment it exists;
    a file left by an older version with wider permissions is narrowed first)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_run_files(layout: RunLayout, run_config, site_name: str) -> None:
    """Write the run marker and the resolved run file (both small JSON files, mode 600).

    Both hold the database URL without its password: a shared file system is no place for it.
    Whoever opens the database gives the password at connect time (PGPASSWORD or a pgpass
    file, which libpq reads; see the README).
    """
    from autopipe.db.urls import without_password

    layout.root.mkdir(parents=True, exist_ok=True)
    url = without_password(run_config.database_url())
    marker = {"database": url, "run": run_config.name, "site": site_name}
    write_private(layout.marker, json.dumps(marker, indent=2))
    stored = run_config.model_copy(update={"database": url if run_config.database else None})
    write_private(layout.resolved_config, stored.model_dump_json(indent=2))

