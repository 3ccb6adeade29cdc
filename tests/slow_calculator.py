"""A Lennard-Jones oracle that takes its time, so a test can kill the loop mid-DFT."""

from __future__ import annotations

import time

from ase.calculators.lj import LennardJones


class SlowLennardJones(LennardJones):
    """ASE's smooth LJ, sleeping ``delay`` seconds per calculation (stands in for a slow DFT code)."""

    def __init__(self, delay: float = 0.5, **kwargs):
        self.delay = delay
        super().__init__(**kwargs)

    def calculate(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().calculate(*args, **kwargs)
