"""Stand-in MD and training apps for measuring the steering loop itself (test-only, like
``tests/slow_calculator.py``, which stands in for DFT): they sleep instead of computing.

They take the arguments of the real apps (:mod:`autopipe.steer.work`) and return what they
return, so everything around them is the real loop: dispatcher, handlers, database,
checkpoints, carving and D-optimal selection, Parsl executors. Their numbers say what the
loop costs, never anything about physics. Instances are picklable (HTEX workers import this
module: put the repository on ``PYTHONPATH``); :func:`autopipe.steer.apps.build_apps`
takes them in place of the real functions.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class StandinMD:
    """A segment that sleeps ``seconds`` and triggers with probability ``trigger_rate``
    (drawn per segment from its scratch path, so a rerun draws the same). A trigger frame is
    the walker's atoms rattled by ``rattle`` Å with per-atom gamma below the threshold but one
    atom at 1.5x it; the walker rewinds one gamma check before the trigger. The state comes
    back unchanged but for its step: the stand-in does no dynamics."""

    seconds: float = 0.5
    trigger_rate: float = 0.1
    rattle: float = 0.05  # Å
    __name__ = "standin_md"  # Parsl names apps after their function

    def __call__(self, state, potential, md_config, otf_config, scratch, n_steps: int, *rest,
                 parsl_resource_specification: dict | None = None):
        # ``rest``: launcher, LAMMPS switches and the worker-side carving and probe plans of md_work, if any.
        import numpy as np

        from autopipe.md.result import finish
        from autopipe.md.state import MDState
        from autopipe.steer.work import _ran, after_segment

        t0 = time.time()
        time.sleep(self.seconds)
        rng = np.random.default_rng(zlib.crc32(str(scratch.relative).encode()))
        thr, every = otf_config.uncertainty_threshold, otf_config.check_frequency
        start, end = state.step, state.step + n_steps
        atoms = state.atoms
        if rng.random() < self.trigger_rate:
            at = start + max(every, (n_steps // 2) // every * every)
            frame = atoms.copy()
            frame.positions += rng.normal(0.0, self.rattle, frame.positions.shape)
            frame.wrap()
            gamma = rng.uniform(0.3, 0.9, len(frame)) * thr
            top = int(rng.integers(len(frame)))
            gamma[top] = 1.5 * thr
            frame.arrays["gamma"] = gamma
            frame.info.update(step=at, max_gamma=float(gamma[top]))
            res = finish("triggered", MDState(atoms, at), start, [(start, 0.5 * thr), (at, 1.5 * thr)],
                         trigger_frame=frame, trigger_atom=top, rewind_state=MDState(atoms, at - every),
                         walltime=time.time() - t0, route="stand-in")
        else:
            res = finish("completed", MDState(atoms, end), start, [(start, 0.5 * thr), (end, 0.5 * thr)],
                         walltime=time.time() - t0, route="stand-in",
                         end_gamma=rng.uniform(0.1, 0.9, len(atoms)) * thr)  # stand-in gamma for the probe
        # Carve triggers and the probe's cell on the worker as md_work does.
        carve, probe = (list(rest[2:4]) + [None, None])[:2]
        after_segment(res, carve, probe)
        return _ran(res, t0, scratch, f"stand-in MD segment {scratch.relative}")


@dataclass(frozen=True)
class StandinFit:
    """A fit that sleeps ``seconds`` and returns its parent's files as the new version."""

    seconds: float = 2.0
    __name__ = "standin_fit"

    def __call__(self, request, data, parent, scratch, parsl_resource_specification: dict | None = None):
        from autopipe.potentials.fitoutput import FitOutput
        from autopipe.steer.work import _ran

        t0 = time.time()
        time.sleep(self.seconds)
        if parent is None:
            fit = FitOutput(status="failed", error="the stand-in fit needs a parent potential")
        else:
            fit = FitOutput(status="done", blobs=dict(parent.files.files), n_train=data.n_structures,
                            walltime=time.time() - t0, metrics={"stand_in": True})
        return _ran(fit, t0, scratch, f"stand-in training {scratch.relative}")
