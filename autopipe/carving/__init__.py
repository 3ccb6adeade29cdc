"""Carving strategies beyond the cube of :mod:`autopipe.embedding`, and how to choose one.

- :mod:`autopipe.carving.lattice`: lattice-commensurate cells for crystals (the sub-cell is
  spanned by whole periods of a reference lattice, one atom per site, scaled to the local
  strain), so no bond is cut at a wrong length at the seams.
- :mod:`autopipe.carving.kpoints`: the k-point rules (equal density, or folding the parent's
  mesh onto the carved cell).
- :mod:`autopipe.carving.budget`: which strategy a run uses, from measured carve errors and the
  potential's own error on the same atoms.

Everything here is pure numpy/ASE geometry and arithmetic: no files, no database.
"""
