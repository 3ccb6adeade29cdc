"""LAMMPS text dumps: one parser for the native route and the held-out trajectories, box bounds included.

No LAMMPS here: the dumps are written by hand in LAMMPS's documented format, so the box of
a frame can be checked against numbers worked out on paper. ``tests/md/test_native.py``
runs the same decoding on a dump LAMMPS wrote under a barostat.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from autopipe.md.box import lammps_box
from autopipe.md.dump import read_dump_frame, read_dump_frames, read_last_dump_frame
from autopipe.md.native import blowup_fields

# A tilted LAMMPS box (xlo xhi ylo yhi zlo zhi) = (0 4 0 5 0 6), (xy xz yz) = (1 -0.5 0.3), written as
# LAMMPS writes it: the bounding box of the tilted cell, xlo_bound = xlo + min(0, xy, xz, xy + xz) = -0.5,
# xhi_bound = xhi + max(0, xy, xz, xy + xz) = 5, ylo_bound = ylo + min(0, yz) = 0, yhi_bound = 5.3.
TRICLINIC = ("ITEM: BOX BOUNDS xy xz yz pp pp pp\n-0.5 5 1\n0 5.3 -0.5\n0 6 0.3\n",
             [[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [-0.5, 0.3, 6.0]])
ORTHOGONAL = ("ITEM: BOX BOUNDS pp pp pp\n-0.1 4.1\n0.2 4.4\n0 4.3\n",
              [[4.2, 0.0, 0.0], [0.0, 4.2, 0.0], [0.0, 0.0, 4.3]])


def _frame(step: int, bounds: str, gamma: float = 1.5) -> str:
    atoms = "\n".join(f"{i + 1} Ar {0.5 + i:.1f} 1.0 2.0 0 0 0 0 0 0 {gamma + i:g}" for i in range(4))
    return (f"ITEM: TIMESTEP\n{step}\nITEM: NUMBER OF ATOMS\n4\n{bounds}"
            f"ITEM: ATOMS id element x y z vx vy vz fx fy fz f_pace_gamma\n{atoms}\n")


def _start() -> Atoms:
    """A cubic 4 Å start cell, already in LAMMPS's orientation (the ASE and LAMMPS frames coincide)."""
    return Atoms("Ar4", cell=np.eye(3) * 4.0, positions=[[0.5 + i, 1, 2] for i in range(4)], pbc=True)


@pytest.mark.parametrize("bounds, cell", [TRICLINIC, ORTHOGONAL], ids=["triclinic", "orthogonal"])
def test_a_native_blow_up_frame_has_the_dumped_box_not_the_start_box(tmp_path, bounds, cell):
    """Under a barostat the box at the blow-up is not the segment's start box: the frame sent to DFT
    must carry the box LAMMPS dumped with it."""
    start = _start()
    box = lammps_box(start.cell, start.pbc, 3)
    dump = tmp_path / "seg.lammpstrj"
    # two frames, the last one cut off by the halt: the complete one before it is the blow-up's frame
    dump.write_text(_frame(10, ORTHOGONAL[0], gamma=0.5) + _frame(20, bounds) + _frame(30, bounds)[:150])
    error = "ERROR: Fix halt condition for fix-id ap_halt_energy met on step 25 with value 12.5"
    out = blowup_fields(error, dump, box, start, 3)
    assert out["failure"] == "blowup" and out["failed_step"] == 25
    frame = out["last_frame"]
    assert frame.info["step"] == 20 and frame.info["potential_version"] == 3
    assert np.allclose(frame.cell[:], cell, atol=1e-12)
    assert not np.allclose(frame.cell[:], start.cell[:])
    assert np.allclose(frame.arrays["gamma"], [1.5, 2.5, 3.5, 4.5])


@pytest.mark.parametrize("bounds, cell", [TRICLINIC, ORTHOGONAL], ids=["triclinic", "orthogonal"])
def test_the_box_of_a_frame_is_lammps_box_not_its_bounding_box(tmp_path, bounds, cell):
    path = tmp_path / "one.dump"
    path.write_text(_frame(7, bounds))
    frame = read_dump_frame(path)
    assert frame.step == 7
    assert np.allclose(frame.matrix, cell, atol=1e-12)
    assert np.allclose(frame.lo, [0.0, 0.0, 0.0] if bounds is TRICLINIC[0] else [-0.1, 0.2, 0.0], atol=1e-12)
    assert list(frame.columns["element"]) == ["Ar"] * 4 and frame.columns["id"].dtype == float


def test_frames_in_order_up_to_one_cut_off_and_items_lammps_may_add(tmp_path):
    units = "ITEM: UNITS\nmetal\nITEM: TIME\n0.02\n"
    path = tmp_path / "traj.lammpstrj"
    path.write_text(units + _frame(0, ORTHOGONAL[0]) + _frame(10, TRICLINIC[0]) + _frame(20, TRICLINIC[0])[:-20])
    assert [f.step for f in read_dump_frames(path)] == [0, 10]
    assert read_last_dump_frame(path).step == 10
    assert np.allclose(read_dump_frames(path)[1].matrix, TRICLINIC[1])
    path.write_text(_frame(0, ORTHOGONAL[0])[:60])
    with pytest.raises(ValueError, match="traj.lammpstrj: no complete LAMMPS dump frame"):
        read_last_dump_frame(path)
    with pytest.raises(ValueError, match="traj.lammpstrj: no complete LAMMPS dump frame"):
        read_dump_frame(path)
