"""k-point rules and the carving budget."""

from __future__ import annotations

import numpy as np
import pytest

from autopipe.carving.budget import Measured, choose, recheck_due
from autopipe.carving.kpoints import choose_kpoints, folded_mesh

A = 5.43


def test_fold_matches_the_measured_si_case() -> None:
    # A 3x3x3-period parent at Gamma carved into 2x2x2 periods: 3x3x3 contains the parent's points.
    assert folded_mesh(np.eye(3) * 2 * A, np.eye(3) * 3 * A, (1, 1, 1)) == (3, 3, 3)
    # A 4-period parent at Gamma holds the states of a 2-period cell at 2x2x2; a 2x2x2 mesh on the
    # 4-period parent needs 4x4x4 on the cell; the parent itself needs only its own mesh.
    assert folded_mesh(np.eye(3) * 2 * A, np.eye(3) * 4 * A, (1, 1, 1)) == (2, 2, 2)
    assert folded_mesh(np.eye(3) * 2 * A, np.eye(3) * 4 * A, (2, 2, 2)) == (4, 4, 4)
    assert folded_mesh(np.eye(3) * 4 * A, np.eye(3) * 4 * A, (1, 1, 1)) == (1, 1, 1)
    assert folded_mesh(np.eye(3) * 2 * A, np.eye(3) * 3 * A, (2, 2, 2)) == (3, 3, 3)
    assert folded_mesh(np.diag([2, 1, 3]) * A, np.diag([3, 3, 3]) * A) == (3, 3, 1)


def test_fold_contains_every_parent_point() -> None:
    """Brute force: every parent mesh point, reduced to the cell's zone, is on the cell's mesh."""
    cell, parent, pmesh = np.diag([2.0, 2.0, 1.0]) * A, np.diag([3.0, 5.0, 2.0]) * A, (2, 1, 3)
    mesh = folded_mesh(cell, parent, pmesh)
    assert mesh is not None
    recip = np.linalg.inv(parent).T
    # The parent's points modulo its own reciprocal lattice are distinct points for the smaller
    # cell: enumerate them over several parent zones.
    points = [np.array(m) for m in np.ndindex(*(6 * np.array(pmesh)))]
    for m in points:
        k = (np.array(m) / pmesh) @ recip
        x = (k @ cell.T) * np.array(mesh)
        assert np.allclose(x, np.round(x), atol=1e-8)
    # ...and one point fewer along an axis would miss some.
    for axis in range(3):
        if mesh[axis] > 1:
            smaller = list(mesh)
            smaller[axis] -= 1
            misses = False
            for m in points:
                x = ((np.array(m) / pmesh) @ recip @ cell.T) * np.array(smaller)
                misses |= not np.allclose(x, np.round(x), atol=1e-8)
            assert misses


def test_fold_falls_back_on_a_cube() -> None:
    cube = np.eye(3) * 10.8  # a cube carve of a 16.29 Å parent: no common period
    choice = choose_kpoints("fold", cube, np.eye(3) * 16.29, None, (2, 2, 2))
    assert choice.mesh == (2, 2, 2) and choice.rule == "density" and "not a whole number" in choice.note
    gamma = choose_kpoints("fold", np.eye(3) * 4 * A, np.eye(3) * 4 * A, None, (2, 2, 2))
    assert gamma.mesh is None and gamma.rule == "fold"
    assert choose_kpoints("density", np.eye(3) * 2 * A, np.eye(3) * 3 * A, None, (2, 2, 2)).mesh == (2, 2, 2)
    with pytest.raises(ValueError, match="unknown k-point rule"):
        choose_kpoints("dense", np.eye(3), np.eye(3), None, None)


def _m(strategy: str, core: float, cost: float, pot: float = 0.25, frame: float = 1000.0) -> Measured:
    return Measured(strategy, 2.8, "gamma", core, pot, cost, frame)


def test_budget_picks_the_cheapest_within_the_ratio() -> None:
    measured = [_m("cube", 0.60, 15), _m("commensurate", 0.21, 18), _m("commensurate-fold", 0.13, 400)]
    assert choose(measured, max_error_ratio=1.0).chosen.strategy == "commensurate"
    assert choose(measured, max_error_ratio=0.6).chosen.strategy == "commensurate-fold"
    # An absolute target overrides the ratio.
    assert choose(measured, max_error_ratio=10.0, max_core_force_error=0.15).chosen.strategy == "commensurate-fold"


def test_budget_falls_back_to_whole_frames_with_numbers() -> None:
    choice = choose([_m("cube", 0.60, 15), _m("commensurate", 0.21, 18)], max_error_ratio=0.5)
    assert choice.whole_frames
    assert "210 meV/Å" in choice.reason and "250 meV/Å" in choice.reason and "whole frames" in choice.reason
    # A carve that costs as much as the frame is never chosen.
    assert choose([_m("commensurate", 0.01, 1000)], max_error_ratio=0.5).whole_frames
    assert choose([]).whole_frames


def test_recheck() -> None:
    assert not recheck_due(4, 5) and recheck_due(5, 5) and not recheck_due(100, 0)


def test_the_run_files_default_ratio_is_the_budgets() -> None:
    from autopipe.carving.budget import DEFAULT_MAX_ERROR_RATIO
    from autopipe.config.run import EmbeddingConfig

    assert EmbeddingConfig(core_radius=2.6, buffer=2.8).max_error_ratio == DEFAULT_MAX_ERROR_RATIO == 0.5
