"""Rendering pw.x input and the command line (no pw.x run)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.constraints import FixAtoms
from ase.io import read

from autopipe.config.run import EspressoConfig
from autopipe.dft.espresso import build_command, input_data, recovery_changes, render, starting_magnetization
from autopipe.dft.geometry import kpoint_grid


def _render(tmp_path, atoms, **fields):
    config = EspressoConfig(code="espresso", pseudo_dir=tmp_path, **fields)
    symbols = sorted(set(atoms.get_chemical_symbols()))
    pseudos = {s: f"{s}.fake.UPF" for s in symbols}
    mag = starting_magnetization(symbols, config) if config.spin_polarized else None
    path = tmp_path / "pw.in"
    render(atoms, path, input_data(config, tmp_path), pseudos, kpoint_grid(atoms, config.kspacing, config.gamma_only_length), mag)
    return path.read_text(), path


def _value(text, key):
    for line in text.splitlines():
        if line.strip().startswith(key) and "=" in line:
            return line.split("=", 1)[1].strip()
    return None


def test_defaults_render_forces_stress_smearing_and_grid(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    text, path = _render(tmp_path, atoms, ecutwfc=20.0, kspacing=0.25)
    assert _value(text, "tprnfor") == ".true." and _value(text, "tstress") == ".true."
    assert _value(text, "calculation") == "'scf'"
    assert float(_value(text, "ecutwfc")) == 20.0 and float(_value(text, "ecutrho")) == 80.0
    assert _value(text, "occupations") == "'smearing'" and _value(text, "smearing") == "'mv'"
    assert float(_value(text, "degauss")) == 0.02
    assert _value(text, "nspin") is None
    assert "K_POINTS automatic\n5 5 5  0 0 0" in text
    assert "Si 28.085 Si.fake.UPF" in text
    assert _value(text, "pseudo_dir") == f"'{tmp_path.resolve()}'"
    # ASE reads back the same structure
    back = read(path, format="espresso-in")
    assert np.allclose(back.positions, atoms.positions) and np.allclose(back.cell[:], atoms.cell[:])


def test_fixed_occupations_and_explicit_ecutrho(tmp_path):
    text, _ = _render(tmp_path, bulk("Si", "diamond", a=5.43), smearing="none", ecutrho=100.0)
    assert _value(text, "occupations") == "'fixed'"
    assert _value(text, "smearing") is None and _value(text, "degauss") is None
    assert float(_value(text, "ecutrho")) == 100.0


def test_gamma_point_for_large_cells(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(4)  # 21.7 Å
    text, _ = _render(tmp_path, atoms)
    assert "K_POINTS gamma" in text


def test_spin_polarized_writes_nspin_and_species_magnetization(tmp_path):
    atoms = bulk("FeO", "rocksalt", a=4.3)
    text, _ = _render(tmp_path, atoms, spin_polarized=True, starting_magnetization={"Fe": 0.4, "O": 3.0})
    assert _value(text, "nspin") == "2"
    species = [line.split()[0] for line in text.split("ATOMIC_SPECIES")[1].strip().splitlines()[:2]]
    mags = {species[i]: float(_value(text, f"starting_magnetization({i + 1})")) for i in range(2)}
    assert mags == {"Fe": 0.4, "O": 1.0}  # clipped to pw.x's range


def test_spin_polarized_without_moments_starts_everything_at_half(tmp_path):
    assert starting_magnetization(["Fe", "O"], EspressoConfig(code="espresso", spin_polarized=True)) == {"Fe": 0.5, "O": 0.5}


def test_constraints_and_moments_do_not_leak_into_input(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.set_constraint(FixAtoms([0]))
    atoms.set_initial_magnetic_moments([1.0, 1.0])
    text, _ = _render(tmp_path, atoms)
    assert _value(text, "nspin") is None
    positions = text.split("ATOMIC_POSITIONS")[1].strip().splitlines()[1:3]
    assert all(len(line.split()) == 4 for line in positions)  # no if_pos flags that would zero forces


def test_build_command_is_an_argv_list():
    config = EspressoConfig(code="espresso", command=["pw.x", "-nk", "2"])
    assert build_command(config) == ["pw.x", "-nk", "2", "-in", "pw.in"]
    assert build_command(config, ["srun", "-n", "4"]) == ["srun", "-n", "4", "pw.x", "-nk", "2", "-in", "pw.in"]


def test_recovery_ladder():
    base = {"mixing_beta": 0.7, "electron_maxstep": 100, "diagonalization": "david"}
    first = recovery_changes(1, base)
    assert first == {"mixing_beta": pytest.approx(0.35), "electron_maxstep": 200}
    assert recovery_changes(2, {**base, **first}) == {"diagonalization": "cg"}
    assert recovery_changes(3, {**base, **first, "diagonalization": "cg"}) == {
        "mixing_beta": pytest.approx(0.175), "electron_maxstep": 400}
    assert recovery_changes(1, {**base, "electron_maxstep": 1})["electron_maxstep"] == 100
