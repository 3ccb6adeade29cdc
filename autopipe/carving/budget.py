"""Which carve is worth its DFT: an error budget tied to the potential's own error.

A carved label is noisy (its core forces differ from the whole frame's by the carve error)
but cheap; it is worth having when that noise is well below the error of the potential it
corrects on the same atoms. Given measured strategies (each a carve error and a cost, from
``autopipe buffer-scan --strategies`` or the loop's own checks), :func:`choose` picks the
cheapest whose core rms force error is at most ``max_error_ratio`` times the potential's on
the same core atoms, or at most ``max_core_force_error`` (eV/Å) when the user sets that.
No strategy fits: whole frames, with the numbers that said so.

Units: eV/Å for forces, s for cost (DFT wall time, or an estimate with the same scaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Measured", "Choice", "choose", "recheck_due", "DEFAULT_MAX_ERROR_RATIO"]

#: Default ``embedding.max_error_ratio``. The equal-pw.x comparison (benchmarks/carve_campaign, Si
#: vacancy, 215-atom parent, 2026-12-03, quiet machine) carved commensurate Gamma cells whose core
#: error is 0.93x the potential's (benchmarks/results/carve_proxy_si.md): they brought the held-out
#: error from 281 to 252 meV/Å with 137 s of pw.x (the whole-frame arm needed 1,987 s for 251), and
#: then stopped there: the walkers no longer triggered, and labels as noisy as the potential cannot
#: teach it below their own noise. Two whole frames (3,613 s) reached 215. So 0.93 wins early and
#: loses at a 45-minute budget. 0.5 asks a carve to be clearly better than the potential it
#: corrects (to cut the potential's error by 1.5x the labels' noise must be below 0.67x of it);
#: where between 0.5 and 0.93 carves stop paying is not measured.
DEFAULT_MAX_ERROR_RATIO = 0.5


@dataclass(frozen=True)
class Measured:
    """One strategy measured on one or more trigger frames against whole-frame labels.

    ``strategy`` names it (``cube``, ``commensurate``, ``healed``); ``buffer`` (Å) and
    ``kpoints`` (``density``/``fold``) complete it. ``core_rms``: rms over the core atoms of
    |F_cell - F_frame| (eV/Å); ``potential_rms``: the current potential's rms error on the same
    atoms against the whole frame (eV/Å); ``cost``: DFT seconds per cell; ``frame_cost``: DFT
    seconds of the whole frame.
    """

    strategy: str
    buffer: float
    kpoints: str
    core_rms: float
    potential_rms: float
    cost: float
    frame_cost: float
    n_atoms: int = 0

    @property
    def name(self) -> str:
        return f"{self.strategy} (buffer {self.buffer:g} Å, k {self.kpoints})"

    @property
    def ratio(self) -> float:
        """Carve error over the potential's error on the same atoms."""
        return self.core_rms / self.potential_rms if self.potential_rms > 0 else math.inf


@dataclass(frozen=True)
class Choice:
    """The strategy to carve with (None: label whole frames), and why, in one line."""

    chosen: Measured | None
    reason: str

    @property
    def whole_frames(self) -> bool:
        return self.chosen is None


def choose(measured: Sequence[Measured], max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO,
           max_core_force_error: float | None = None) -> Choice:
    """The cheapest measured strategy within the budget, or whole frames.

    Within the budget: ``core_rms <= max_core_force_error`` when that is set (eV/Å), else
    ``core_rms <= max_error_ratio * potential_rms``; and cheaper than the whole frame. Ties in
    cost go to the smaller error.
    """
    if not measured:
        return Choice(None, "no carving strategy was measured: whole frames")

    def limit(m: Measured) -> float:
        return max_core_force_error if max_core_force_error is not None else max_error_ratio * m.potential_rms

    fits = [m for m in measured if m.core_rms <= limit(m) and m.cost < m.frame_cost]
    what = (f"core rms <= {max_core_force_error:g} eV/Å" if max_core_force_error is not None
            else f"core rms <= {max_error_ratio:g} x the potential's")
    if not fits:
        best = min(measured, key=lambda m: m.core_rms)
        return Choice(None, f"no carve meets {what}: the most accurate, {best.name}, misses by "
                            f"{1000 * best.core_rms:.0f} meV/Å against the potential's {1000 * best.potential_rms:.0f} "
                            f"meV/Å (ratio {best.ratio:.2f}); whole frames")
    pick = min(fits, key=lambda m: (m.cost, m.core_rms))
    return Choice(pick, f"{pick.name}: core rms {1000 * pick.core_rms:.0f} meV/Å, the potential's "
                        f"{1000 * pick.potential_rms:.0f} meV/Å (ratio {pick.ratio:.2f}; {what}), "
                        f"{pick.cost:.0f} s per cell against {pick.frame_cost:.0f} s per whole frame "
                        f"({pick.frame_cost / pick.cost:.0f}x cheaper)" if pick.cost > 0 else pick.name)


def recheck_due(labels_since_check: int, every: int) -> bool:
    """True when the strategy should be checked again with one whole-frame label: every ``every``
    carved labels (0 or less: never). The potential improves, so a carve that was good enough
    against v1 may not be against v5."""
    return every > 0 and labels_since_check >= every
