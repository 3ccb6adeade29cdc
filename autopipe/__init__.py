"""autopipe: closed-loop active learning for ACE interatomic potentials.

LAMMPS runs MD in segments with the current potential and watches the per-atom
extrapolation grade (gamma); when it crosses a threshold the loop carves a small
periodic cell around the most uncertain atom, masks the forces of its boundary
buffer, labels it with DFT (pw.x), retrains with pacemaker and hot-swaps the new
potential into the MD. Parsl runs the work; one SQLAlchemy database records it.

Importing this package is cheap on purpose: TensorFlow, LAMMPS and pyace are
imported only inside the functions that need them.
"""

__version__ = "0.1.0"
