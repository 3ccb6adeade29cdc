"""The carving instrument on a real many-body labeller (EMT): commensurate beats cube, the cache
saves the whole frame's label, and the budget reads its measurements."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from autopipe.analysis.carve_scan import (
    Frame,
    cached_whole_label,
    format_table,
    measurements,
    plot_points,
    scan_carves,
)
from autopipe.carving.budget import choose
from autopipe.carving.lattice import ReferenceLattice
from autopipe.dft import label


def _frame(seed: int) -> Frame:
    parent = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5))
    del parent[60]
    parent.positions += np.random.default_rng(seed).normal(0, 0.1, parent.positions.shape)
    return Frame(f"cu-{seed}", parent, 61)


def test_scan_measures_and_caches(tmp_path) -> None:
    lattice = ReferenceLattice.from_atoms(bulk("Cu", "fcc", a=3.61, cubic=True))
    dft = {"code": "emt"}
    calls = []

    def label_fn(atoms):
        calls.append(len(atoms))
        return label(atoms, dft)

    def whole(atoms):
        return cached_whole_label(atoms, dft, tmp_path / "cache", label_fn)

    def potential(atoms):  # a "potential": EMT on a 2 % compressed copy, so its error is known and nonzero
        a = atoms.copy()
        a.set_cell(np.array(a.cell) * 0.98, scale_atoms=True)
        a.calc = EMT()
        return a.get_forces()

    frames = [_frame(1), _frame(2)]
    points = scan_carves(frames, core_radius=2.6, strategies=["cube", "commensurate"], buffers=[3.0],
                         kpoint_rules=["density"], label_fn=label_fn, whole_label=whole, potential_forces=potential,
                         lattice=lattice, min_distance=0.5)
    assert len(points) == 4 and all(p.status == "done" for p in points)
    by = {(p.frame, p.strategy): p for p in points}
    for f in ("cu-1", "cu-2"):
        assert by[(f, "commensurate")].core_rms < by[(f, "cube")].core_rms / 5
        assert by[(f, "cube")].potential_rms == by[(f, "commensurate")].potential_rms > 0.05
    whole_calls = sum(1 for n in calls if n == len(frames[0].atoms))
    assert whole_calls == 2
    # A rerun reads the whole frames from the cache: no whole-frame label again.
    calls.clear()
    scan_carves(frames, core_radius=2.6, strategies=["cube"], buffers=[3.0], kpoint_rules=["density"],
                label_fn=label_fn, whole_label=whole, lattice=lattice)
    assert len(frames[0].atoms) not in calls and len(calls) == 2
    m = measurements(points)
    assert {x.strategy for x in m} == {"cube", "commensurate"}
    # The cube is cheaper and within a loose budget; a tight one needs the commensurate cell.
    assert choose(m, max_error_ratio=0.5).chosen.strategy == "cube"
    assert choose(m, max_error_ratio=0.05).chosen.strategy == "commensurate"
    assert "| cu-1 |" in format_table(points)
    assert plot_points(points, tmp_path / "scan.png").stat().st_size > 1000


def test_parent_too_small_is_recorded_not_raised(tmp_path) -> None:
    small = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    lattice = ReferenceLattice.from_atoms(bulk("Cu", "fcc", a=3.61, cubic=True))
    points = scan_carves([Frame("small", small, 0)], core_radius=2.6, strategies=["commensurate"], buffers=[3.0],
                         kpoint_rules=["density"], label_fn=lambda a: label(a, {"code": "emt"}),
                         whole_label=lambda a: cached_whole_label(a, {"code": "emt"}, tmp_path, lambda x: label(x, {"code": "emt"})),
                         lattice=lattice)
    assert points[0].status == "not carved" and "whole frame" in points[0].note
