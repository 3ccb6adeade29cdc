"""Every key is validated on load: cross-key and file checks give one line naming the file and the key,
at load time and in ``autopipe check``, before a run writes anything."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from autopipe.config import load_run, load_site
from autopipe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE_RUN = {
    "name": "t",
    "system": {"elements": ["Ar"], "structure": {"kind": "bulk", "crystal": "fcc", "a": 5.2}},
    "initial_potential": {"kind": "generate"},
    "embedding": {"core_radius": 4.0, "buffer": 5.0},
    "dft": {"code": "lj"},
}


def _run_file(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _with(**sections) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE_RUN.items()}
    for key, value in sections.items():
        data[key] = value
    return data


def _one_line_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_run(path)
    text = str(err.value)
    assert "\n" not in text, text
    assert text.startswith(f"{path}: "), text
    return text


def _write_xyz(path: Path, symbols: list[str]) -> Path:
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_chemical_symbols(symbols)
    atoms.write(path, format="extxyz")
    return path


def test_reference_energies_must_cover_every_element(tmp_path):
    data = _with(system={"elements": ["Ar", "Ne"], "structure": {"kind": "liquid2d", "n_atoms": 8, "density": 0.1}},
                 md={"dimension": 2}, train={"reference_energies": {"Ar": -0.1}})
    text = _one_line_error(_run_file(tmp_path, data))
    assert "train.reference_energies: " in text and "Ne" in text
    data["train"] = {"reference_energies": {"Ar": -0.1, "Ne": -0.2}}
    load_run(_run_file(tmp_path, data))  # complete: loads
    data["train"] = {"reference_energies": {"Ar": -0.1, "Ne": -0.2, "Xe": 0.0}}
    assert "train.reference_energies: " in _one_line_error(_run_file(tmp_path, data))


def test_ranks_and_lmax_must_have_one_entry_per_body_order(tmp_path):
    text = _one_line_error(_run_file(tmp_path, _with(train={"ranks": [6, 4, 3], "lmax": [0, 3]})))
    assert "train.lmax: " in text and "3" in text and "2" in text


def test_structure_file_must_exist(tmp_path):
    data = _with(system={"elements": ["Ar"], "structure": {"kind": "file", "path": "missing.xyz"}})
    text = _one_line_error(_run_file(tmp_path, data))
    assert "system.structure.path: " in text and "missing.xyz" in text
    gen = _with(initial_potential={"kind": "generate", "structure": {"kind": "file", "path": "nope.xyz"}})
    assert "initial_potential.structure.path: " in _one_line_error(_run_file(tmp_path, gen))


def test_imported_potential_files_must_exist(tmp_path):
    data = _with(initial_potential={"kind": "file", "path": "pot.yaml"}, train={"retrain": False})
    assert "initial_potential.path: " in _one_line_error(_run_file(tmp_path, data))


def test_structure_elements_must_be_system_elements(tmp_path):
    _write_xyz(tmp_path / "start.xyz", ["Ar", "Ar", "Ar", "Ne"])
    data = _with(system={"elements": ["Ar"], "structure": {"kind": "file", "path": "start.xyz"}})
    text = _one_line_error(_run_file(tmp_path, data))
    assert "system.structure.path: " in text and "Ne" in text
    data["system"]["elements"] = ["Ar", "Ne"]
    load_run(_run_file(tmp_path, data))
    (tmp_path / "garbage.xyz").write_text("not\na structure\n")
    data["system"]["structure"]["path"] = "garbage.xyz"
    assert "system.structure.path: " in _one_line_error(_run_file(tmp_path, data))


def test_bulk_with_several_elements_must_name_its_element(tmp_path):
    data = _with(system={"elements": ["Ar", "Ne"], "structure": {"kind": "bulk", "crystal": "fcc", "a": 5.2}})
    text = _one_line_error(_run_file(tmp_path, data))
    assert "system.structure.element: " in text
    data["system"]["structure"]["element"] = "Kr"
    assert "system.structure.element: " in _one_line_error(_run_file(tmp_path, data))
    data["system"]["structure"]["element"] = "Ne"
    run = load_run(_run_file(tmp_path, data))
    from autopipe.generate import template_atoms

    assert set(template_atoms(run.system).get_chemical_symbols()) == {"Ne"}


def test_min_distance_must_leave_room_in_the_box(tmp_path):
    data = _with(embedding={"core_radius": 2.0, "buffer": 1.0, "min_distance": 3.0})
    text = _one_line_error(_run_file(tmp_path, data))
    assert "embedding.min_distance: " in text


def test_pseudopotential_keys_are_run_elements(tmp_path):
    data = _with(dft={"code": "espresso", "pseudopotentials": {"Si": "Si.pz-vbc.UPF"}})
    assert "dft.pseudopotentials: " in _one_line_error(_run_file(tmp_path, data))


@pytest.mark.parametrize("key, value", [
    ("qos", "regular\n#SBATCH --time=99:00:00"),
    ("account", "m0000\n#SBATCH --nodes=100"),
    ("partition", "debug\nrm -rf ~"),
    ("constraint", "gpu\n#SBATCH --exclusive"),
    ("scheduler_options", "#SBATCH --mem=0\nmodule load x"),  # a shell line ends sbatch's header: later #SBATCH lost
    ("worker_init", "#SBATCH --nodes=100\nmodule load python"),
])
def test_batch_script_strings_cannot_add_lines(tmp_path, key, value):
    data = yaml.safe_load((ROOT / "configs" / "perlmutter.yaml").read_text())
    data["executors"][0][key] = value
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_site(p)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{p}: executors[0].slurm.{key}: "), text


def test_multi_line_worker_init_and_sbatch_options_still_load(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "perlmutter.yaml").read_text())
    data["executors"][0]["scheduler_options"] = "#SBATCH --mem=0\n#SBATCH --mail-type=END\n"
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(data))
    assert load_site(p).executors[0].worker_init.count("\n") >= 3


def test_embedding_cutoff_is_a_deprecated_alias_of_core_radius(tmp_path):
    data = _with(embedding={"cutoff": 3.0, "buffer": 5.0})
    with pytest.warns(FutureWarning, match="embedding.cutoff.*core_radius"):
        run = load_run(_run_file(tmp_path, data))
    assert run.embedding.core_radius == 3.0
    assert "cutoff" not in run.model_dump()["embedding"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(_run_file(tmp_path, _with()))  # the new name: no warning
    data["embedding"]["core_radius"] = 3.0
    assert "embedding: " in _one_line_error(_run_file(tmp_path, data))  # both: which one?


def test_refused_run_file_writes_nothing(tmp_path):
    """autopipe-steer and autopipe check refuse a bad run file before the work directory exists."""
    from autopipe.cli import app, steer_app

    workdir = tmp_path / "w"
    bad = _run_file(tmp_path, _with(workdir=str(workdir), train={"ranks": [6, 4], "lmax": [0, 3, 2]}))
    runner = CliRunner()
    out = runner.invoke(steer_app, ["--site", str(ROOT / "configs" / "local.yaml"), "--run", str(bad)])
    assert out.exit_code == 2, out.output
    assert "train.lmax" in out.output and "Traceback" not in out.output
    assert not workdir.exists()
    out = runner.invoke(app, ["check", "--run", str(bad)])
    assert out.exit_code == 2 and "train.lmax" in out.output
    assert not workdir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def _binary(structure: dict, elements=("Cu", "Au")) -> dict:
    return _with(system={"elements": list(elements), "structure": {"kind": "bulk", "a": 3.75, **structure}},
                 dft={"code": "emt"})


def test_bulk_random_alloy_from_a_composition(tmp_path):
    """composition: seeded random substitution of a one-element crystal's sites, exact counts."""
    from autopipe.generate import template_atoms

    data = _binary({"crystal": "fcc", "repeat": [2, 2, 2], "composition": {"Cu": 0.75, "Au": 0.25}, "seed": 3})
    run = load_run(_run_file(tmp_path, data))
    atoms = template_atoms(run.system)
    symbols = atoms.get_chemical_symbols()
    assert len(atoms) == 32 and symbols.count("Cu") == 24 and symbols.count("Au") == 8
    assert template_atoms(run.system).get_chemical_symbols() == symbols  # seeded
    data["system"]["structure"]["seed"] = 4
    assert template_atoms(load_run(_run_file(tmp_path, data)).system).get_chemical_symbols() != symbols
    # The sites stay the crystal's: only species change.
    from ase.build import bulk

    assert abs(atoms.positions - bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2).positions).max() < 1e-12


def test_bulk_compound_prototype(tmp_path):
    from autopipe.generate import template_atoms

    data = _binary({"crystal": "rocksalt", "elements": ["Mg", "O"], "a": 4.21, "repeat": [2, 2, 2]},
                   elements=("Mg", "O"))
    atoms = template_atoms(load_run(_run_file(tmp_path, data)).system)
    assert atoms.get_chemical_symbols().count("Mg") == 32 and atoms.get_chemical_symbols().count("O") == 32
    d = atoms.get_all_distances(mic=True)
    mg = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Mg"]
    assert abs(np.min(d[mg][:, [i for i in range(64) if i not in mg]]) - 4.21 / 2) < 1e-9  # Mg-O at a/2


@pytest.mark.parametrize("structure, elements, key, words", [
    ({"crystal": "fcc", "composition": {"Cu": 0.75, "Ag": 0.25}}, ("Cu", "Au"), "system.structure.composition", "Ag"),
    ({"crystal": "fcc", "composition": {"Cu": 0.75, "Au": 0.5}}, ("Cu", "Au"), "system.structure.composition", "sum"),
    ({"crystal": "fcc", "composition": {"Cu": 1.0, "Au": 0.0}}, ("Cu", "Au"), "system.structure.composition", "Au"),
    ({"crystal": "fcc", "element": "Cu", "composition": {"Cu": 0.5, "Au": 0.5}}, ("Cu", "Au"),
     "system.structure.composition", "one of"),
    ({"crystal": "rocksalt", "element": "Mg"}, ("Mg", "O"), "system.structure.elements", "rocksalt"),
    ({"crystal": "rocksalt", "elements": ["Mg", "O", "Mg"]}, ("Mg", "O"), "system.structure.elements", "two"),
    ({"crystal": "rocksalt", "elements": ["Mg", "S"]}, ("Mg", "O"), "system.structure.elements", "S"),
    ({"crystal": "fcc", "elements": ["Cu", "Au"]}, ("Cu", "Au"), "system.structure.elements", "composition"),
    ({"crystal": "fcc"}, ("Cu", "Au"), "system.structure.element", "composition"),
    ({"crystal": "fcc", "repeat": [1, 1, 1], "composition": {"Cu": 0.9, "Au": 0.1}}, ("Cu", "Au"),
     "system.structure.composition", "no Au"),
])
def test_bad_multi_element_bulk_is_one_line(tmp_path, structure, elements, key, words):
    text = _one_line_error(_run_file(tmp_path, _binary(structure, elements)))
    assert f"{key}: " in text and words in text, text


def test_generated_template_structure_is_checked_too(tmp_path):
    data = _binary({"crystal": "fcc", "composition": {"Cu": 0.5, "Au": 0.5}})
    data["initial_potential"] = {"kind": "generate", "structure": {"kind": "bulk", "crystal": "fcc", "a": 3.7,
                                                                   "composition": {"Cu": 0.5, "Ni": 0.5}}}
    text = _one_line_error(_run_file(tmp_path, data))
    assert "initial_potential.structure.composition: " in text and "Ni" in text
