"""A walker's segment: :func:`run_segment`, then make every extrapolation count.

Two things a bare segment leaves on the table, fixed here on the worker that ran it:

* **Blow-ups become triggers.** A segment that runs away between two gamma checks (lost
  atoms, non-finite or exploding energy/forces) yields no trigger frame. It is run again
  from the same start with a check at every step: deterministic MD retraces the same
  path, so the re-run stops at the first step where gamma crosses the threshold, and
  that frame is the trigger. If gamma never crosses it before the blow-up (the potential
  is confidently wrong), the last frame before the blow-up becomes the trigger frame, its
  most uncertain atom the centre, and ``note`` says so.
* **Rewind to the last good check.** A triggered walker should resume from its state at
  the last check below the threshold, not from the segment's start. That state is
  recovered by re-running the segment's start up to that step (deterministic again);
  at most ``check_frequency`` steps of good MD are lost per trigger instead of up to
  ``segment_steps``. MD is cheap next to the DFT label and the fit a trigger causes.

If a re-run does not retrace the original (it should, in serial), the walker falls back
to the segment's start, and ``note`` says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autopipe.md.result import SegmentResult
from autopipe.md.segment import run_segment

if TYPE_CHECKING:
    from autopipe.config.run import MDConfig, OTFConfig
    from autopipe.md.state import MDState


def last_good_check(result: SegmentResult, threshold: float) -> int:
    """The step of the last gamma check below ``threshold`` before the result's end (its start if none)."""
    trace = np.asarray(result.gamma_trace, dtype=float).reshape(-1, 2)
    good = trace[(trace[:, 0] < result.end_step) & (trace[:, 1] <= threshold), 0]
    return int(good.max()) if len(good) else result.start_step


def run_walker_segment(
    state: MDState,
    potential: Any,
    md_config: MDConfig,
    otf_config: OTFConfig,
    *,
    workdir: Path,
    n_steps: int | None = None,
    **kwargs: Any,
) -> SegmentResult:
    """:func:`autopipe.md.run_segment` with blow-up probing and rewind (see the module docstring).

    A triggered result carries ``rewind_state``; ``kwargs`` go to ``run_segment``.
    """
    workdir = Path(workdir)
    res = run_segment(state, potential, md_config, otf_config, workdir=workdir, n_steps=n_steps, **kwargs)
    if res.status == "failed" and res.failure == "blowup":
        res = _probe(state, potential, md_config, otf_config, workdir, res, **kwargs)
    if res.status == "triggered" and res.rewind_state is None:
        res.rewind_state, note = _rewind(state, potential, md_config, otf_config, workdir, res, **kwargs)
        if note:
            res.note = f"{res.note}; {note}" if res.note else note
    return res


def _probe(state, potential, md_config, otf_config, workdir: Path, failed: SegmentResult, **kwargs) -> SegmentResult:
    """Re-run a blown-up segment with a check at every step; a trigger or a labelled last frame."""
    thr = otf_config.uncertainty_threshold
    at = failed.failed_step
    n = (at - failed.start_step + 1) if at is not None else None
    every_step = otf_config.model_copy(update={"check_frequency": 1})
    frames = md_config.model_copy(update={"dump_every": 1})  # the native route's last frame comes from its dump
    probe = run_segment(state, potential, frames, every_step, workdir=workdir / "probe", n_steps=n, **kwargs)
    where = f"step {at}" if at is not None else "a step"
    if probe.status == "triggered":
        probe.note = (f"blew up at {where} between two checks ({failed.error.splitlines()[0]}); re-run with a check "
                      f"every step: gamma {probe.max_gamma:.2f} > {thr:g} first at step {probe.end_step}")
        return probe
    frame = probe.last_frame if probe.status == "failed" else None
    if frame is None or "gamma" not in frame.arrays:
        return failed  # nothing to label: the probe did not retrace the run, or failed otherwise
    gamma = frame.arrays["gamma"]
    step = int(frame.info.get("step", failed.start_step))
    g = float(gamma.max())
    if g > thr:
        note = (f"blew up at {where} between two checks; re-run with a check every step: gamma {g:.2f} > {thr:g} "
                f"first at step {step}, where the forces ran away")
        label_anyway = False
    else:
        note = (f"blew up at {where} with gamma at or below {thr:g} at every step up to it (max {g:.2f}): the "
                f"potential is confidently wrong; labelling the most uncertain region of the frame at step {step}")
        label_anyway = True
    return replace(failed, status="triggered", trigger_frame=frame, trigger_atom=int(np.argmax(gamma)), end_step=step,
                   max_gamma=max(g, float(np.max(failed.gamma_trace[:, 1])) if len(failed.gamma_trace) else g),
                   error=None, note=note, label_anyway=label_anyway)


def _rewind(state, potential, md_config, otf_config, workdir: Path, res: SegmentResult, **kwargs):
    """(state at the last check below the threshold, note or None)."""
    good = last_good_check(res, otf_config.uncertainty_threshold)
    if good <= state.step:
        return state, None
    again = run_segment(state, potential, md_config, otf_config, workdir=workdir / "rewind",
                        n_steps=good - state.step, **kwargs)
    if again.status != "completed" or again.end_step != good:
        return state, f"the re-run to step {good} did not retrace the segment ({again.status}): resuming at its start"
    return again.final_state, None


def refused_start(ref, message: str) -> SegmentResult:
    """The failed result of a segment that did not start because its state by reference (``ref``, a
    :class:`autopipe.md.state.StateRef`) was refused: ``failure == "refused"``, and the steering
    side puts the walker back on its previous good state."""
    return SegmentResult(status="failed", final_state=ref, start_step=ref.step, end_step=ref.step,
                         max_gamma=float("nan"), gamma_trace=np.zeros((0, 2)), error=message, failure="refused")
