"""Choosing a UPF file per element."""

from __future__ import annotations

import pytest

from autopipe.dft import pseudo
from autopipe.errors import AutopipeError


@pytest.fixture
def pseudo_dir(tmp_path):
    for name in ["Si.pz-vbc.UPF", "Si.bhs", "si_r.upf", "Si-abc.UPF", "Rhs.pbe.UPF", "pb_s.UPF", "S.pbe.upf", "Sn.txt"]:
        (tmp_path / name).write_text("fake")
    (tmp_path / "C.dir.UPF").mkdir()  # a directory is not a pseudopotential
    return tmp_path


def test_candidates_prefix_case_and_order(pseudo_dir):
    # case-insensitive alphabetical: "si-abc.upf" < "si.pz-vbc.upf" < "si_r.upf"; Si.bhs is not UPF
    assert pseudo.candidates("Si", pseudo_dir) == ["Si-abc.UPF", "Si.pz-vbc.UPF", "si_r.upf"]
    assert pseudo.candidates("Pb", pseudo_dir) == ["pb_s.UPF"]
    assert pseudo.candidates("Rh", pseudo_dir) == []  # Rhs... is not rhodium
    assert pseudo.candidates("S", pseudo_dir) == ["S.pbe.upf"]  # not Si/Sn
    assert pseudo.candidates("C", pseudo_dir) == []


def test_resolve_explicit_wins_and_missing_listed(pseudo_dir):
    chosen, missing = pseudo.resolve(["Si", "Pb", "C"], pseudo_dir, {"Si": "si_r.upf"})
    assert chosen == {"Si": "si_r.upf", "Pb": "pb_s.UPF"}
    assert missing == ["C"]


def test_resolve_config_errors_raise(pseudo_dir):
    with pytest.raises(AutopipeError, match="not found"):
        pseudo.resolve(["Si"], pseudo_dir, {"Si": "nope.UPF"})
    with pytest.raises(AutopipeError, match="not a directory"):
        pseudo.resolve(["Si"], pseudo_dir / "absent", {})


def test_system_pseudo_dir_has_silicon():
    from tests.dft.conftest import PSEUDO_DIR, SI_UPF

    if not PSEUDO_DIR.is_dir():
        pytest.skip("no system pseudopotentials")
    assert SI_UPF in pseudo.candidates("Si", PSEUDO_DIR)
