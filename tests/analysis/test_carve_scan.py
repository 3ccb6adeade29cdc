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


def test_healed_strategy_and_a_cell_as_big_as_the_parent(tmp_path) -> None:
    """``healed``: the cube with its seams relaxed by the potential is labelled as its own strategy (its
    cell differs from the cube's, its core does not); it needs the potential. A commensurate cell with
    as many atoms as the parent is not carved (no saving) and costs no label."""
    import pytest

    lattice = ReferenceLattice.from_atoms(bulk("Cu", "fcc", a=3.61, cubic=True))
    dft = {"code": "emt"}
    cells = []

    def label_fn(atoms):
        cells.append(atoms.copy())
        return label(atoms, dft)

    def whole(atoms):
        return cached_whole_label(atoms, dft, tmp_path / "cache", lambda a: label(a, dft))

    def potential(atoms):
        a = atoms.copy()
        a.calc = EMT()
        return a.get_forces()

    from autopipe.carving.heal import HealBounds

    frame = Frame("cu", bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5)), 0)
    frame.atoms.positions += np.random.default_rng(0).normal(0, 0.05, frame.atoms.positions.shape)
    # The bounds of tests/carving/test_heal.py, where healing is measured to halve the seam's artefact force.
    bounds = HealBounds(fixed_shell=1.0, seam_width=1.5, steps=40, max_displacement=1.0, min_distance=1.0)
    points = scan_carves([frame], core_radius=2.6, strategies=["cube", "healed"], buffers=[2.2],
                         kpoint_rules=["density"], label_fn=label_fn, whole_label=whole, potential_forces=potential,
                         lattice=lattice, min_distance=1.5, heal_calc=EMT(), heal_bounds=bounds)
    by = {p.strategy: p for p in points}
    assert by["cube"].status == by["healed"].status == "done"
    cube, healed = cells
    assert healed.info["embedding_strategy"] == "healed" and healed.info["embedding_healed"]["moved"] > 0
    assert np.abs(healed.positions - cube.positions).max() > 1e-3  # the seams moved
    core = [i for i, d in enumerate(cube.get_distances(0, range(len(cube)), mic=True)) if d <= 2.6]
    assert np.allclose(healed.positions[core], cube.positions[core])  # the core did not
    # A cell the bounds refuse is a point with the reason, not an exception and not a label.
    n = len(cells)
    [refused] = scan_carves([frame], core_radius=2.6, strategies=["healed"], buffers=[2.2], kpoint_rules=["density"],
                            label_fn=label_fn, whole_label=whole, potential_forces=potential, lattice=lattice,
                            min_distance=1.5, heal_calc=EMT(), heal_bounds=HealBounds(steps=40, max_displacement=0.01))
    assert refused.status == "refused" and "seam healing moved an atom" in refused.note and len(cells) == n
    with pytest.raises(ValueError, match="healed strategy needs the potential"):
        scan_carves([frame], core_radius=2.6, strategies=["healed"], buffers=[2.2], kpoint_rules=["density"],
                    label_fn=label_fn, whole_label=whole, lattice=lattice)

    parent = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    cells.clear()
    [point] = scan_carves([Frame("p3", parent, 0)], core_radius=2.6, strategies=["commensurate"], buffers=[2.8],
                          kpoint_rules=["density"], label_fn=label_fn, whole_label=whole, lattice=lattice)
    assert point.status == "not carved" and point.n_atoms == len(parent) and "whole frame" in point.note
    assert cells == []


def test_the_cache_key_ignores_how_a_label_is_run_not_what_it_gives() -> None:
    from autopipe.analysis.carve_scan import whole_frame_key

    atoms = _frame(1).atoms
    base = {"code": "espresso", "ecutwfc": 12.0, "timeout": 900, "max_attempts": 2}
    assert whole_frame_key(atoms, base) == whole_frame_key(atoms, {**base, "timeout": 3600, "max_attempts": 1})
    assert whole_frame_key(atoms, base) != whole_frame_key(atoms, {**base, "ecutwfc": 20.0})
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-4
    assert whole_frame_key(atoms, base) != whole_frame_key(moved, base)
