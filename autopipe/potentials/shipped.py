"""A published potential by value: what an MD segment or a training round receives on its worker.

The files (yaml, yace, asi) travel as a :class:`autopipe.transfer.FileSet` and are written
once into the worker's cache, in a directory named by their checksums, where LAMMPS and pyace
read them (:meth:`ShippedPotential.materialise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autopipe.potentials.store import PotentialFiles
from autopipe.transfer import FileSet

__all__ = ["ShippedPotential"]


@dataclass(frozen=True)
class ShippedPotential:
    """A published potential by value: its version, name and files (yaml, yace, asi)."""

    version: int
    name: str
    files: FileSet

    @classmethod
    def of(cls, pot: PotentialFiles) -> ShippedPotential:
        paths = {role: getattr(pot, role) for role in ("yaml", "yace", "asi") if getattr(pot, role) is not None}
        return cls(version=pot.version, name=pot.name, files=FileSet.read(paths))

    def materialise(self, cache: Path | str) -> PotentialFiles:
        """The potential as files in the worker's cache (what LAMMPS and pyace read)."""
        paths = self.files.materialise(Path(cache) / "potentials")
        return PotentialFiles(version=self.version, name=self.name, parent_version=None,
                              directory=paths["yaml"].parent, yaml=paths["yaml"], yace=paths.get("yace"),
                              asi=paths.get("asi"))
