"""What travels between the steering process and a worker, by value.

A Globus Compute endpoint (or a Slurm cluster without the steering host's filesystem) sees
none of the run's files, so every app receives what it needs and returns what it made as
values, and writes only under its own scratch directory on the worker:

* :class:`FileBlob`: one file's bytes (zlib-compressed) with its sha256, checked on arrival;
  :class:`FileSet`: files that travel together (a potential's yaml/yace/asi, the UPF files of
  a pw.x run), written on the worker into a cache directory named by their checksums, once;
  a potential travels as one (:class:`autopipe.potentials.shipped.ShippedPotential`);
* :class:`Scratch`: where a task writes on its worker (the run's directory there, ``~`` and
  ``$VARS`` expanded on the worker) and how big its result may be;
* :func:`check_size`: the bound on one task's pickled arguments (checked on the steering side
  before anything is sent) and result (checked on the worker before it is sent back).

Bounds: an executor's ``max_payload_mb`` (site file), on the pickled size; 7 MB by default
for Globus Compute (its service refuses task submissions and results above 10 MB of the SDK's
base64 text, 1.35 times the pickle), 512 MB for the others. Typical
sizes: an MD segment's arguments are the walker state (about 57 bytes per atom) plus the
potential's files (tens of kB for the test potentials; the active set ``.asi`` holds an
n x n matrix per element for n basis functions, 8n² bytes: 8 MB per element at n = 1,000); a training round's arguments are its training set packed as
arrays (about 58 bytes per atom before compression, see :mod:`autopipe.potentials.packed`);
its result the new potential's files and pacemaker's log.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from autopipe.errors import AutopipeError

MB = 1 << 20


class PayloadTooLarge(AutopipeError):
    """A task's arguments or result exceed the bound of the executor that would carry them."""


def pickled_size(obj: object) -> int:
    """Bytes of ``obj`` pickled (what HTEX sends; Globus Compute's dill is within a few percent)."""
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def human(n: int) -> str:
    """A size in bytes as kB or MB (1 kB = 1024 bytes)."""
    return f"{n / 1024:.0f} kB" if n < MB else f"{n / MB:.1f} MB"


def check_size(obj: object, limit: int, what: str) -> int:
    """The pickled size of ``obj``; :class:`PayloadTooLarge` (one line) when above ``limit`` bytes."""
    n = pickled_size(obj)
    if n > limit:
        raise PayloadTooLarge(f"{what} is {human(n)} pickled, above the {human(limit)} bound of its executor "
                              "(max_payload_mb in the site file)")
    return n


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_blob_name(name: object) -> None:
    """``ValueError`` unless ``name`` is a plain file name (no directory part, not ``.``/``..``)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\0" in name:
        raise ValueError(f"a file blob's name must be a plain file name, not {name!r}")


@dataclass(frozen=True)
class FileBlob:
    """One file by value: its name (no directory), zlib-compressed bytes, and the sha256 and size
    (bytes) of the content, checked whenever the content is read back."""

    name: str
    sha256: str
    size: int
    data: bytes

    # The name is checked wherever a blob comes into being, unpickling included (the steering
    # side writes returned blobs to ``directory / blob.name``): unpickling runs no constructor,
    # but it does call __setstate__.
    def __post_init__(self) -> None:
        _check_blob_name(self.name)

    def __setstate__(self, state: dict) -> None:
        _check_blob_name(state.get("name") if isinstance(state, dict) else None)
        for key, value in state.items():
            object.__setattr__(self, key, value)

    @classmethod
    def of(cls, content: bytes, name: str) -> FileBlob:
        return cls(name=name, sha256=_sha256(content), size=len(content), data=zlib.compress(content, 6))

    @classmethod
    def read(cls, path: Path | str, name: str | None = None) -> FileBlob:
        path = Path(path)
        return cls.of(path.read_bytes(), name or path.name)

    def content(self) -> bytes:
        """The file's bytes; ``ValueError`` when they do not match the recorded checksum."""
        data = zlib.decompress(self.data)
        if len(data) != self.size or _sha256(data) != self.sha256:
            raise ValueError(f"{self.name}: content does not match its sha256 (damaged in transit)")
        return data

    def write(self, path: Path | str) -> Path:
        """Write the content to ``path`` atomically (temporary file, then rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.content())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


@dataclass(frozen=True)
class FileSet:
    """Files that travel together, by key (a potential's role, an element): materialised on the
    worker in ``<cache>/<checksum of the set>/`` under their own names, once per cache."""

    files: Mapping[str, FileBlob]

    @classmethod
    def read(cls, paths: Mapping[str, Path | str]) -> FileSet:
        return cls({key: _read_cached(Path(p)) for key, p in paths.items()})

    @property
    def key(self) -> str:
        """Checksum of the whole set (names and contents)."""
        text = "\n".join(f"{k}\t{b.name}\t{b.sha256}" for k, b in sorted(self.files.items()))
        return _sha256(text.encode())[:24]

    @property
    def nbytes(self) -> int:
        """Bytes in transit (compressed)."""
        return sum(len(b.data) for b in self.files.values())

    def directory(self, cache: Path | str) -> Path:
        """Where :meth:`materialise` puts the files under ``cache``."""
        return Path(cache) / self.key

    def materialise(self, cache: Path | str) -> dict[str, Path]:
        """Write the files under ``cache`` unless an intact copy is there; key -> path."""
        directory = self.directory(cache)
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for key, blob in self.files.items():
            path = directory / blob.name
            if not _intact(path, blob):
                blob.write(path)
            out[key] = path
        return out


# (path, mtime_ns, size) -> blob: the steering side ships the same potential with every segment.
_BLOBS: dict[tuple[str, int, int], FileBlob] = {}
# (path, mtime_ns, size) -> sha256 of files already checked in a worker's cache.
_CHECKED: dict[tuple[str, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _read_cached(path: Path) -> FileBlob:
    key = _stat_key(path)
    blob = _BLOBS.get(key)
    if blob is None:
        if len(_BLOBS) > 64:
            _BLOBS.clear()
        blob = _BLOBS[key] = FileBlob.read(path)
    return blob


def _intact(path: Path, blob: FileBlob) -> bool:
    try:
        key = _stat_key(path)
    except OSError:
        return False
    if key[2] != blob.size:
        return False
    if _CHECKED.get(key) != blob.sha256:
        _CHECKED[key] = _sha256(path.read_bytes())
    return _CHECKED[key] == blob.sha256


@dataclass(frozen=True)
class Scratch:
    """Where one task writes on its worker, and the bound on what it sends back.

    ``root``: the run's directory on the worker (:meth:`autopipe.layout.RunLayout.on_worker`),
    with ``~`` and ``$VARS`` expanded there; ``relative``: the task's directory under it (the
    same relative path as in the run's work directory, e.g. ``dft/s000012``, so a task
    resubmitted to the same worker finds what an earlier try left); ``max_result_bytes``: the
    largest pickled result the executor carries back.
    """

    root: str
    relative: str = ""
    max_result_bytes: int = 512 * MB

    def run_root(self) -> Path:
        expanded = os.path.expanduser(os.path.expandvars(self.root))
        if "$" in expanded:
            raise AutopipeError(f"scratch directory {self.root!r}: an environment variable in it is not set on "
                                f"worker {socket.gethostname()}")
        return Path(expanded)

    def path(self) -> Path:
        """The task's directory on this worker (created)."""
        d = self.run_root() / self.relative
        d.mkdir(parents=True, exist_ok=True)
        return d

    def cache(self) -> Path:
        """The worker's cache of files that arrive by value (potentials, pseudopotentials)."""
        return self.run_root() / "cache"
