"""Run-file keys of the carving strategies: checked at load time, one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ase.build import bulk

from autopipe.carving.reference import reference_lattice
from autopipe.config import load_run
from autopipe.errors import ConfigError

BASE = {
    "name": "t",
    "system": {"elements": ["Cu"], "structure": {"kind": "bulk", "crystal": "fcc", "a": 3.61, "repeat": [4, 4, 4]}},
    "initial_potential": {"kind": "generate"},
    "embedding": {"core_radius": 2.6, "buffer": 3.0, "strategy": "commensurate"},
    "dft": {"code": "emt"},
}


def _write(tmp_path: Path, **sections) -> Path:
    data = {**BASE, **sections}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_run(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    return text


def test_a_bulk_system_is_its_own_reference(tmp_path) -> None:
    run = load_run(_write(tmp_path))
    lattice = reference_lattice(run)
    assert lattice.n_sites == 4 and abs(lattice.cell[0, 0] - 3.61) < 1e-12


def test_commensurate_needs_a_lattice(tmp_path) -> None:
    xyz = tmp_path / "liquid.extxyz"
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3)).write(xyz)
    text = _error(_write(tmp_path, system={"elements": ["Cu"], "structure": {"kind": "file", "path": str(xyz)}}))
    assert "embedding.lattice" in text and "reference lattice" in text


def test_a_lattice_that_does_not_tile_the_parent_names_both(tmp_path) -> None:
    xyz = tmp_path / "cu.extxyz"
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3)).write(xyz)
    text = _error(_write(tmp_path, system={"elements": ["Cu"], "structure": {"kind": "file", "path": str(xyz)}},
                         embedding={**BASE["embedding"], "lattice": {"crystal": "fcc", "a": 4.05, "elements": "Cu"}}))
    assert "embedding.lattice" in text and "does not tile the parent cell" in text
    assert "4.05" in text and "10.83" in text  # both cells are named
    # The right lattice loads.
    load_run(_write(tmp_path, system={"elements": ["Cu"], "structure": {"kind": "file", "path": str(xyz)}},
                    embedding={**BASE["embedding"], "lattice": {"crystal": "fcc", "a": 3.61, "elements": "Cu"}}))


def test_lattice_keys(tmp_path) -> None:
    assert "embedding.lattice.file" in _error(_write(tmp_path, embedding={**BASE["embedding"],
                                                                          "lattice": {"file": "nowhere.cif"}}))
    assert "embedding.lattice" in _error(_write(tmp_path, embedding={**BASE["embedding"],
                                                                     "lattice": {"crystal": "fcc"}}))
    assert "embedding.strategy" in _error(_write(tmp_path, embedding={**BASE["embedding"], "strategy": "sphere"}))
    assert "embedding.kpoints" in _error(_write(tmp_path, embedding={**BASE["embedding"], "kpoints": "many"}))
