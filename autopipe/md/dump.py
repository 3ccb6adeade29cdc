"""LAMMPS text dumps (``dump custom``, ``write_dump``): the one parser of them.

The native route reads its final and trigger frames and, after a blow-up, the last frame of
its trajectory with it (:mod:`autopipe.md.native`); the held-out trajectories are read with
it too (:mod:`autopipe.heldout`).

A frame carries LAMMPS's box at its step: under a barostat that is not the box the segment
started with. LAMMPS writes the box of a tilted cell as its bounding box together with the
tilt factors (``ITEM: BOX BOUNDS xy xz yz``); the box itself is recovered from them as the
LAMMPS manual's "Triclinic (non-orthogonal) simulation boxes" describes:
``xlo_bound = xlo + min(0, xy, xz, xy + xz)``, ``xhi_bound = xhi + max(0, xy, xz, xy + xz)``,
``ylo_bound = ylo + min(0, yz)``, ``yhi_bound = yhi + max(0, yz)``, z unchanged.

Units: as LAMMPS wrote them (``units metal``: Å, Å/ps, eV/Å).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["DumpFrame", "read_dump_frames", "read_dump_frame", "read_last_dump_frame"]


@dataclass(frozen=True)
class DumpFrame:
    """One frame: ``step``; ``columns`` by name, numeric ones as float arrays, others (``element``)
    as string arrays, in the dump's row order; LAMMPS's box at that step: its corner ``lo`` (Å)
    and ``matrix``, the edge vectors A, B, C as rows (lower triangular, Å), as
    :class:`autopipe.md.box.LammpsBox` holds them."""

    step: int
    columns: dict[str, np.ndarray]
    lo: np.ndarray
    matrix: np.ndarray


def _box(header: list[str], rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(lo, matrix) from the BOX BOUNDS item: its flags after "BOX BOUNDS" and three rows of numbers."""
    if "abc" in header:
        raise ValueError("general triclinic boxes (BOX BOUNDS abc origin) are not supported")
    bounds = np.array([r[:2] for r in rows], dtype=float)
    xy, xz, yz = (rows[0][2], rows[1][2], rows[2][2]) if "xy" in header else (0.0, 0.0, 0.0)
    lo = bounds[:, 0] - [min(0.0, xy, xz, xy + xz), min(0.0, yz), 0.0]
    hi = bounds[:, 1] - [max(0.0, xy, xz, xy + xz), max(0.0, yz), 0.0]
    lx, ly, lz = hi - lo
    return lo, np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])


def _columns(names: list[str], rows: list[list[str]]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        try:
            columns[name] = np.array(values, dtype=float)
        except ValueError:  # e.g. the element column of a trajectory dump
            columns[name] = np.array(values)
    return columns


def _frame_at(lines: list[str], i: int) -> tuple[DumpFrame, int]:
    """The frame whose ``ITEM: TIMESTEP`` is line ``i``, and the index of the line after it.
    Raises IndexError or ValueError for a frame cut off or malformed."""
    step = int(lines[i + 1])
    i += 2
    n, box = None, None
    while True:
        item = lines[i]
        if item.startswith("ITEM: NUMBER OF ATOMS"):
            n, i = int(lines[i + 1]), i + 2
        elif item.startswith("ITEM: BOX BOUNDS"):
            box = _box(item.split()[3:], [[float(t) for t in lines[i + 1 + k].split()] for k in range(3)])
            i += 4
        elif item.startswith("ITEM: ATOMS"):
            if n is None or box is None:
                raise ValueError("ITEM: ATOMS before the atom count or the box")
            names = item.split()[2:]
            rows = [line.split() for line in lines[i + 1 : i + 1 + n]]
            if len(rows) != n or any(len(r) != len(names) for r in rows):
                raise ValueError(f"{len(rows)} complete atom lines, expected {n}")
            return DumpFrame(step=step, columns=_columns(names, rows), lo=box[0], matrix=box[1]), i + 1 + n
        elif item.startswith("ITEM:"):  # UNITS, TIME, ...: not needed here
            i += 1
            while not lines[i].startswith("ITEM:"):
                i += 1
        else:
            raise ValueError(f"unexpected line {item!r}")


def _frames(text: str) -> Iterator[DumpFrame]:
    """The complete frames of ``text`` in order, up to the first one cut off (a run killed while writing)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i] != "ITEM: TIMESTEP":
            i += 1
            continue
        try:
            frame, i = _frame_at(lines, i)
        except (IndexError, ValueError):
            return
        yield frame


def read_dump_frames(path: Path | str) -> list[DumpFrame]:
    """Every complete frame of a multi-frame text dump, in file order (a cut-off last frame is left out)."""
    return list(_frames(Path(path).read_text()))


def read_dump_frame(path: Path | str) -> DumpFrame:
    """The frame of a one-frame dump (``write_dump``); ValueError naming the file if it is incomplete."""
    frame = next(_frames(Path(path).read_text()), None)
    if frame is None:
        raise ValueError(f"{path}: no complete LAMMPS dump frame")
    return frame


def read_last_dump_frame(path: Path | str) -> DumpFrame:
    """The last complete frame of a multi-frame dump: a run stopped by an error may leave its last
    frame cut off, then it is the one before. Only the last two frames are parsed."""
    text = Path(path).read_text(errors="replace")
    starts = [m.start() for m in re.finditer(r"^ITEM: TIMESTEP$", text, re.MULTILINE)][-2:]
    for a in reversed(starts):
        frame = next(_frames(text[a:]), None)
        if frame is not None:
            return frame
    raise ValueError(f"{path}: no complete LAMMPS dump frame")
