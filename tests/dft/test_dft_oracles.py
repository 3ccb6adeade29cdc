"""Analytic oracles: Lennard-Jones against an independent pair sum, EMT, ASE calculators by path."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from autopipe.config.run import ASECalculatorConfig, EMTOracleConfig, LJOracleConfig
from autopipe.dft import label
from autopipe.errors import AutopipeError

EPS, SIGMA, CUTOFF = 0.0104, 3.40, 8.5  # argon-like, eV and Å


def _switch(r: float, rc: float, ro: float) -> float:
    """C¹ switch of the pair energy: 1 below ro, 0 above rc (written in r, not r²)."""
    if r < ro:
        return 1.0
    if r >= rc:
        return 0.0
    return (rc**2 - r**2) ** 2 * (rc**2 + 2 * r**2 - 3 * ro**2) / (rc**2 - ro**2) ** 3


def pair_sum(atoms: Atoms, eps: float, sigma: float, rc: float, ro: float | None, shift: bool = False) -> float:
    """Lennard-Jones energy (eV) by an explicit loop over pairs and periodic images.

    ``ro=None``: no switch (plain cut); ``shift`` subtracts the pair energy at rc.
    """
    pos, cell = atoms.positions, atoms.cell[:]
    # Images far enough to cover rc along each periodic direction (perpendicular widths).
    widths = atoms.cell.volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reach = [int(np.ceil(rc / w)) if p else 0 for w, p in zip(widths, atoms.pbc)]
    e_rc = 4 * eps * ((sigma / rc) ** 12 - (sigma / rc) ** 6)
    energy = 0.0
    for n in itertools.product(*(range(-k, k + 1) for k in reach)):
        offset = np.array(n) @ cell
        for i in range(len(atoms)):
            for j in range(len(atoms)):
                if i == j and not any(n):
                    continue
                r = np.linalg.norm(pos[j] + offset - pos[i])
                if r >= rc:
                    continue
                u = 4 * eps * ((sigma / r) ** 12 - (sigma / r) ** 6)
                if ro is not None:
                    u *= _switch(r, rc, ro)
                elif shift:
                    u -= e_rc
                energy += 0.5 * u
    return energy


def lj(cutoff=CUTOFF) -> LJOracleConfig:
    return LJOracleConfig(code="lj", epsilon=EPS, sigma=SIGMA, cutoff=cutoff)


def argon_3d() -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)  # 4 atoms, 5.3 Å: images well inside the cutoff
    atoms.rattle(0.15, seed=7)
    return atoms


def argon_2d() -> Atoms:
    rng = np.random.default_rng(5)
    grid = np.array([[i, j, 0.0] for i in range(3) for j in range(3)]) * 3.8
    positions = grid + rng.normal(0, 0.15, grid.shape) * [1, 1, 0] + [0, 0, 10.0]
    return Atoms("Ar9", positions=positions, cell=[11.4, 11.4, 20.0], pbc=[True, True, False])


def _finite_difference_forces(atoms: Atoms, config, h: float = 1e-4) -> np.ndarray:
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for c in range(3):
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, c] += sign * h
                e.append(label(moved, config).energy)
            forces[i, c] = -(e[0] - e[1]) / (2 * h)
    return forces


@pytest.mark.parametrize("make", [argon_3d, argon_2d], ids=["3d", "2d"])
def test_lj_energy_matches_independent_pair_sum_with_smooth_cutoff(make):
    atoms = make()
    result = label(atoms, lj())
    assert result.status == "done" and result.code == "lj"
    ro = result.parameters["ro"]
    assert ro == pytest.approx(0.66 * CUTOFF)
    assert result.energy == pytest.approx(pair_sum(atoms, EPS, SIGMA, CUTOFF, ro), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("make", [argon_3d, argon_2d], ids=["3d", "2d"])
def test_lj_large_cutoff_approaches_plain_shifted_sum(make):
    # With rc large the switch sits where the pair energy is tiny: compare with the
    # plain 4ε[(σ/r)^12-(σ/r)^6] sum minus its value at rc.
    atoms, rc = make(), 40.0
    result = label(atoms, lj(cutoff=rc))
    plain = pair_sum(atoms, EPS, SIGMA, rc, ro=None, shift=True)
    assert result.energy == pytest.approx(plain, abs=2e-3 * len(atoms) * EPS)


@pytest.mark.parametrize("make", [argon_3d, argon_2d], ids=["3d", "2d"])
def test_lj_forces_are_minus_energy_gradient(make):
    atoms = make()
    result = label(atoms, lj())
    fd = _finite_difference_forces(atoms, lj())
    assert np.abs(result.forces).max() > 1e-3
    assert np.allclose(result.forces, fd, atol=1e-6)


def test_lj_stress_only_in_3d():
    assert label(argon_3d(), lj()).stress.shape == (6,)
    assert label(argon_2d(), lj()).stress is None


def test_lj_labels_overlapping_atoms_but_fails_on_non_finite():
    close = Atoms("Ar2", positions=[[0, 0, 0], [0.5, 0, 0]], cell=[20, 20, 20], pbc=True)
    result = label(close, lj())
    assert result.status == "done" and result.energy > 1e6  # huge but finite: labelled
    same = Atoms("Ar2", positions=[[1, 1, 1], [1, 1, 1]], cell=[20, 20, 20], pbc=True)
    with np.errstate(all="ignore"):
        failed = label(same, lj())
    assert failed.status == "failed" and "not finite" in failed.error
    assert failed.attempts[0]["status"] == "failed"


def test_masked_structure_gets_forces_on_every_atom():
    atoms = argon_3d()
    atoms.info["force_mask"] = [0, 2]
    result = label(atoms, lj())
    assert result.forces.shape == (len(atoms), 3) and np.all(np.abs(result.forces[[0, 2]]).sum(axis=1) > 0)


def test_emt_matches_ase():
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.rattle(0.05, seed=1)
    result = label(atoms, EMTOracleConfig(code="emt"))
    ref = atoms.copy()
    ref.calc = EMT()
    assert result.status == "done" and result.code == "emt"
    assert result.energy == pytest.approx(ref.get_potential_energy())
    assert np.allclose(result.forces, ref.get_forces()) and np.allclose(result.stress, ref.get_stress())
    assert atoms.calc is None  # the caller's atoms are left alone


def test_ase_calculator_by_import_path_and_dict_config():
    atoms = argon_3d()
    config = {"code": "ase", "calculator": "ase.calculators.lj:LennardJones",
              "kwargs": {"sigma": SIGMA, "epsilon": EPS, "rc": CUTOFF, "smooth": True}}
    result = label(atoms, config)
    assert result.status == "done" and result.code == "ase"
    assert result.parameters["calculator"] == "ase.calculators.lj:LennardJones"
    assert result.energy == pytest.approx(label(atoms, lj()).energy)


@pytest.mark.parametrize(
    "calculator, kwargs, message",
    [
        ("no_such_module_xyz:Calc", {}, "cannot import"),
        ("ase.calculators.lj:NoSuchCalculator", {}, "has no calculator"),
        ("ase.calculators.eam:EAM", {"bogus": 1}, "cannot create"),
    ],
)
def test_bad_calculator_configuration_raises(calculator, kwargs, message):
    with pytest.raises(AutopipeError, match=message):
        label(argon_3d(), ASECalculatorConfig(code="ase", calculator=calculator, kwargs=kwargs))


@pytest.fixture
def custom_calculators(tmp_path, monkeypatch):
    (tmp_path / "autopipe_test_calcs.py").write_text(
        "import numpy as np\n"
        "from ase.calculators.calculator import Calculator, all_changes\n"
        "class NaNForces(Calculator):\n"
        "    implemented_properties = ['energy', 'forces']\n"
        "    def calculate(self, atoms=None, properties=None, system_changes=all_changes):\n"
        "        super().calculate(atoms, properties, system_changes)\n"
        "        f = np.zeros((len(atoms), 3)); f[1, 0] = np.nan\n"
        "        self.results = {'energy': 1.0, 'forces': f}\n"
        "class Explodes(Calculator):\n"
        "    implemented_properties = ['energy', 'forces']\n"
        "    def calculate(self, atoms=None, properties=None, system_changes=all_changes):\n"
        "        raise RuntimeError('calculator blew up')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("autopipe_test_calcs", None)


def test_non_finite_forces_or_exceptions_give_failed(custom_calculators):
    atoms = argon_3d()
    nan = label(atoms, ASECalculatorConfig(code="ase", calculator="autopipe_test_calcs:NaNForces"))
    assert nan.status == "failed" and "forces are not finite on atoms [1]" in nan.error
    boom = label(atoms, ASECalculatorConfig(code="ase", calculator="autopipe_test_calcs:Explodes"))
    assert boom.status == "failed" and "calculator blew up" in boom.error
    assert boom.walltime >= 0 and len(boom.attempts) == 1


def test_latency_makes_a_label_take_as_long_as_dft_would():
    """A benchmark's oracle with DFT-like latency: t = a (N/64)^b, the same numbers, the time recorded."""
    import time

    from autopipe.config.run import OracleLatency

    atoms = argon_3d()
    fast = label(atoms, lj())
    config = lj().model_copy(update={"latency": OracleLatency(seconds_at_64=128.0, exponent=2.0)})
    expected = 128.0 * (len(atoms) / 64) ** 2
    start = time.monotonic()
    slow = label(atoms, config.model_dump())  # as a worker receives it
    took = time.monotonic() - start
    assert expected > 0.05 and took >= expected and slow.walltime >= expected
    assert slow.energy == fast.energy and np.array_equal(slow.forces, fast.forces)
    assert slow.parameters["emulated_latency_s"] == pytest.approx(expected, abs=1e-3)
    with pytest.raises(Exception, match="seconds_at_64"):
        LJOracleConfig.model_validate({"code": "lj", "latency": {"seconds_at_64": -1}})
