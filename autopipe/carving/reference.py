"""The reference lattice a run carves commensurate cells with, from its run file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopipe.carving.lattice import ReferenceLattice

if TYPE_CHECKING:
    from autopipe.config.run import RunConfig


def reference_lattice(run: RunConfig) -> ReferenceLattice | None:
    """``embedding.lattice``, else the unit cell of a ``bulk`` starting structure, else None."""
    from ase.build import bulk

    spec = run.embedding.lattice
    if spec is not None and spec.file is not None:
        from ase.io import read

        return ReferenceLattice.from_atoms(read(spec.file))
    if spec is not None:
        element = spec.elements or _bulk_element(run)
        kwargs = {"c": spec.c} if spec.c is not None else {}
        return ReferenceLattice.from_atoms(bulk(element, spec.crystal, a=spec.a, cubic=spec.cubic, **kwargs))
    src = run.system.structure
    if src.kind == "bulk":
        from autopipe.bulk import bulk_unit_cell

        # An alloy's sites are its crystal's: carving reads species from the frame, not the lattice.
        return ReferenceLattice.from_atoms(bulk_unit_cell(src, run.system.elements))
    return None


def _bulk_element(run: RunConfig) -> str:
    from autopipe.bulk import bulk_formula

    src = run.system.structure
    return bulk_formula(src, run.system.elements) if src.kind == "bulk" else run.system.elements[0]


def starting_cell(run: RunConfig):
    """The starting structure's cell and pbc (as :class:`ase.Atoms`; for a bulk crystal without its
    vacancies and rattle, which do not change the cell). A 2D liquid is not periodic along z."""

    src = run.system.structure
    if src.kind == "bulk":
        from autopipe.bulk import bulk_unit_cell

        return bulk_unit_cell(src, run.system.elements).repeat(src.repeat)
    if src.kind == "file":
        from ase.io import read

        return read(src.path, format=src.format)
    from ase import Atoms

    return Atoms(pbc=(True, True, False))
