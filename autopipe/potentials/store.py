"""Versioned potentials on disk, indexed by the ``potentials`` table.

Layout::

    root/
      v0001/  potential.yaml  potential.yace  potential.asi  input.yaml  pacemaker.log  manifest.json
      v0002/  ...
      .staging-*/   (transient)

Publishing is atomic for readers: the files are written into a staging directory on the
same filesystem, flushed, then the directory is renamed (``os.replace``) to ``vNNNN``;
the database row is inserted last. Readers look potentials up through the database
only, so they never see a version whose files are incomplete. If the insert fails the
renamed directory is removed again. A directory without a row (left by a crash between
the rename and the insert) is ignored, and its number is never reused.

Every file's sha256 is recorded; :meth:`PotentialStore.latest` skips (with a warning) a
version whose files no longer match, and returns the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from autopipe.potentials.activeset import FALLBACK_METRIC, describe_fallback

if TYPE_CHECKING:
    from autopipe.db import Database, Potential, PotentialStatus

log = logging.getLogger(__name__)

#: File roles that every complete potential has ("asi" and "yace" may be absent only for
#: imported potentials that could not be completed).
ROLES = ("yaml", "yace", "asi")
_CANONICAL = {"yaml": "potential.yaml", "yace": "potential.yace", "asi": "potential.asi"}
_VDIR = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class PotentialFiles:
    """A published potential: absolute paths of its files.

    ``yaml`` is the B-basis (pyace, active sets), ``yace`` the Ctilde-basis for LAMMPS
    ``pair_style pace``, ``asi`` the active-set inverse for extrapolation grades.
    ``metrics`` hold the fit's RMSEs (energy eV/atom, forces eV/Å) and losses.
    """

    version: int
    name: str
    parent_version: int | None
    directory: Path
    yaml: Path
    yace: Path | None
    asi: Path | None
    metrics: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    n_train: int = 0
    last_label_id: int = 0


def sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PotentialStore:
    """Published potentials of one run: files under ``root_dir``, records in ``db``."""

    def __init__(self, db: Database, root_dir: Path | str):
        self.db = db
        self.root = Path(root_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # (path, mtime_ns, size) -> sha256: re-verifying an unchanged file costs a stat.
        self._checksum_cache: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def _to_files(self, row: Potential) -> PotentialFiles:
        d = self.root / row.directory
        files = row.files or {}
        return PotentialFiles(
            version=row.version,
            name=row.name,
            parent_version=row.parent_version,
            directory=d,
            yaml=d / files["yaml"],
            yace=d / files["yace"] if files.get("yace") else None,
            asi=d / files["asi"] if files.get("asi") else None,
            metrics=dict(row.metrics or {}),
            n_train=int(row.n_train or 0),
            last_label_id=int(row.last_label_id or 0),
        )

    def _checksum(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._checksum_cache.get(key)
        if cached is None:
            cached = sha256(path)
            with self._lock:
                self._checksum_cache[key] = cached
        return cached

    def verify(self, row: Potential, roles: tuple[str, ...] = ROLES) -> list[str]:
        """Roles whose file is missing or no longer matches its recorded sha256 (empty: intact).

        Only the files a potential is used through (yaml, yace, asi) are checked by
        default: a deleted log must not retire a working potential.
        """
        bad = []
        d = self.root / row.directory
        for role, name in (row.files or {}).items():
            if role not in roles:
                continue
            expected = (row.checksums or {}).get(role)
            actual = self._checksum(d / name)
            if actual is None or (expected is not None and actual != expected):
                bad.append(role)
        return bad

    def _rows(self) -> list[Potential]:
        from sqlalchemy import select

        from autopipe.db import Potential

        with self.db.session() as s:
            return list(s.scalars(select(Potential).order_by(Potential.version.desc())))

    def versions(self) -> list[int]:
        """Every published version number, oldest first (intact or not, served or not)."""
        return sorted(r.version for r in self._rows())

    def unserved(self) -> set[int]:
        """Versions walkers must not use: rejected by the gate, withdrawn by a rollback, or still being gated."""
        return {r.version for r in self._rows() if not is_served(r.status)}

    def latest(self) -> PotentialFiles | None:
        """The potential walkers use: the newest served version whose files are intact; None if there is none.

        Versions the gate rejected (or has not judged yet) and versions a rollback withdrew are
        kept in the store but skipped here (see :class:`~autopipe.db.PotentialStatus`)."""
        for row in self._rows():
            if not is_served(row.status):
                continue
            bad = self.verify(row)
            if not bad:
                return self._to_files(row)
            log.warning(
                "potential v%d (%s): %s missing or corrupted (checksum mismatch); using an older version",
                row.version, row.name, ", ".join(bad),
            )
        return None

    def get(self, version: int, *, verify: bool = True) -> PotentialFiles:
        """Potential ``version``; ``KeyError`` if not published, ``ValueError`` if its files are corrupted."""
        from sqlalchemy import select

        from autopipe.db import Potential

        with self.db.session() as s:
            row = s.scalars(select(Potential).where(Potential.version == version)).first()
        if row is None:
            raise KeyError(f"no potential version {version}")
        if verify and (bad := self.verify(row)):
            raise ValueError(f"potential v{version}: {', '.join(bad)} missing or corrupted (checksum mismatch)")
        return self._to_files(row)

    def next_version(self) -> int:
        """The number the next publish will take: above every row and every ``vNNNN`` directory."""
        used = set(self.versions())
        for p in self.root.iterdir():
            if m := _VDIR.match(p.name):
                used.add(int(m.group(1)))
        return max(used, default=0) + 1

    # ------------------------------------------------------------------ writing

    def publish(
        self,
        files: Mapping[str, Path | str],
        *,
        name: str,
        parent_version: int | None = None,
        version: int | None = None,
        n_train: int = 0,
        last_label_id: int = 0,
        metrics: Mapping[str, Any] | None = None,
        walltime: float = 0.0,
        status: PotentialStatus | None = None,
    ) -> PotentialFiles:
        """Copy ``files`` (role -> path; ``yaml`` required, ``yace``/``asi`` expected, any other
        role such as ``log`` or ``input`` kept too) into a new version directory and record it.

        ``version`` defaults to :meth:`next_version`; a version that is taken raises
        ``FileExistsError``. ``status``: ``PotentialStatus.pending`` keeps the version from the
        walkers until the gate has judged it (None: served at once). Returns the published
        :class:`PotentialFiles`.
        """
        from autopipe.db import Potential

        if "yaml" not in files:
            raise ValueError("a potential needs its B-basis 'yaml' file")
        version = self.next_version() if version is None else int(version)
        final = self.root / f"v{version:04d}"
        if final.exists() or version in self.versions():
            raise FileExistsError(f"potential version {version} exists already")

        names: dict[str, str] = {}
        checksums: dict[str, str] = {}
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            for role, src in files.items():
                src = Path(src)
                dst_name = _CANONICAL.get(role, src.name)
                dst = staging / dst_name
                shutil.copyfile(src, dst)
                with open(dst, "rb") as fh:
                    os.fsync(fh.fileno())
                names[role] = dst_name
                checksums[role] = sha256(dst)
            manifest = {
                "version": version,
                "name": name,
                "parent_version": parent_version,
                "files": names,
                "checksums": checksums,
                "n_train": n_train,
                "last_label_id": last_label_id,
                "metrics": _jsonable(dict(metrics or {})),
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=float))
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700
            _fsync_dir(staging)
            # The rename is the moment the files appear under their final name: whole or not at all.
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        try:
            with self.db.session() as s:
                s.add(
                    Potential(
                        version=version,
                        name=name,
                        parent_version=parent_version,
                        directory=final.name,  # relative to root: the run directory can move
                        files=names,
                        checksums=checksums,
                        n_train=int(n_train),
                        last_label_id=int(last_label_id),
                        metrics=_jsonable(dict(metrics or {})),
                        walltime=float(walltime),
                        status=status,
                    )
                )
        except BaseException:
            # No row, no potential: take the directory away again so nothing half-done lingers.
            shutil.rmtree(final, ignore_errors=True)
            raise
        pot = self.get(version, verify=False)
        try:
            held = "" if is_served(status) else " (kept from the walkers until the gate has judged it)"
            self.db.record_event("publish", f"published potential v{version} ({name}){held}", version=version,
                                 name=name)
            fallback = (metrics or {}).get(FALLBACK_METRIC)
            if fallback:  # its gamma leans on boundary-corrupted environments: say so where the run is read
                self.db.record_event("active_set_fallback", f"v{version}: {describe_fallback(fallback)}",
                                     version=version, species=fallback)
        except Exception:  # the event log is informative only
            pass
        return pot


def is_served(status: PotentialStatus | str | None) -> bool:
    """Whether a version with this ``Potential.status`` may be given to walkers (NULL: rows of older runs)."""
    from autopipe.db import PotentialStatus

    return status is None or PotentialStatus(status) is PotentialStatus.served


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Metrics as plain JSON types (numpy floats/ints become Python numbers, NaN stays None)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif hasattr(v, "item"):
            v = v.item()
            out[k] = None if isinstance(v, float) and v != v else v
        elif isinstance(v, float) and v != v:
            out[k] = None
        else:
            out[k] = v
    return out
