"""MD walkers in LAMMPS with in-run uncertainty monitoring (module E of the spec).

* :class:`MDState`, :func:`save_state`, :func:`load_state`, :func:`initial_state`: a walker's
  state between segments and its checkpoint files (:mod:`autopipe.md.state`).
* :func:`run_segment` -> :class:`SegmentResult`: one segment with gamma checks that stops
  inside LAMMPS when the extrapolation grade crosses the threshold (:mod:`autopipe.md.segment`, the
  dispatcher; results in :mod:`autopipe.md.result`):
  LAMMPS's own ML-PACE as an ``lmp`` process, one rank or under an MPI launcher
  (:mod:`autopipe.md.native`), or pyace through ``fix external`` (:mod:`autopipe.md.external`);
  :func:`lammps_has_ml_pace` says which one ``route="auto"`` takes.
* :func:`run_walker_segment`: the same for a walker: blow-ups probed into triggers, and the
  state at the last good check to rewind to (:mod:`autopipe.md.walk`).

Importing this package is light: LAMMPS and pyace are imported inside the functions that
run a segment.
"""

from __future__ import annotations

from autopipe.md.bootstrap import lammps_has_ml_pace
from autopipe.md.external import BlowUpLimits
from autopipe.md.result import SegmentResult
from autopipe.md.segment import PotentialLike, run_segment
from autopipe.md.state import MDState, initial_state, kinetic_temperature, load_state, save_state
from autopipe.md.walk import run_walker_segment

__all__ = [
    "MDState",
    "save_state",
    "load_state",
    "initial_state",
    "kinetic_temperature",
    "run_segment",
    "run_walker_segment",
    "SegmentResult",
    "PotentialLike",
    "BlowUpLimits",
    "lammps_has_ml_pace",
]
