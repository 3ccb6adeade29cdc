"""Small Lennard-Jones recipes shared by the tests and benchmarks (test-only: not part of the package).

The reference system: argon-like LJ with sigma 2.0 Å, epsilon 0.1 eV, a smooth cutoff at
5 Å (ASE's ``LennardJones(smooth=True)``), 32-atom cells at about 0.1 atoms/Å³ (3D) or a
planar layer with vacuum along z (2D, pbc (T, T, F)).

:func:`cached_potential` trains a recipe once and keeps the result on disk keyed by a
hash of the recipe, so repeated test sessions (and other test modules) reuse it. Builds
are serialised with a file lock and published by a directory rename, so concurrent test
runs neither train twice nor see a half-built cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import RunConfig
    from autopipe.potentials.store import PotentialFiles

LJ_SIGMA = 2.0  # Å
LJ_EPSILON = 0.1  # eV
LJ_CUTOFF = 5.0  # Å

#: Bump when the meaning of a recipe changes without its fields changing
#: (2: packed cells honour the packing distance in dense 2D layers).
RECIPE_FORMAT = 4  # 3: active sets over every trusted atom (autopipe.potentials.activeset); 4: train/ at the top


def lj_calculator(sigma: float = LJ_SIGMA, epsilon: float = LJ_EPSILON, rc: float = LJ_CUTOFF):
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=sigma, epsilon=epsilon, rc=rc, smooth=True)


def lj_label(atoms: Atoms, sigma: float = LJ_SIGMA, epsilon: float = LJ_EPSILON, rc: float = LJ_CUTOFF):
    """A ``label_fn`` result for ``atoms`` under LJ: a done :class:`autopipe.dft.LabelResult`
    (energy eV, forces eV/Å, stress eV/Å³ in ASE's Voigt order when fully periodic)."""
    from autopipe.dft import LabelResult

    a = atoms.copy()
    a.calc = lj_calculator(sigma, epsilon, rc)
    return LabelResult(status="done", code="lj", energy=float(a.get_potential_energy()), forces=np.array(a.get_forces()),
                       stress=np.array(a.get_stress(voigt=True)) if all(a.pbc) else None,
                       parameters={"sigma": sigma, "epsilon": epsilon, "rc": rc})


def lj3d_template(a: float = 3.4, repeat: int = 2) -> Atoms:
    """fcc argon-like cell: 4·repeat³ atoms, a = 3.4 Å gives 0.10 atoms/Å³ (nearest neighbours 2.40 Å)."""
    from ase.build import bulk

    return bulk("Ar", "fcc", a=a, cubic=True).repeat((repeat, repeat, repeat))


def lj2d_template(n_side: int = 4, spacing: float = 2.4, vacuum: float = 15.0) -> Atoms:
    """Triangular argon-like layer in the z=0 plane, 2·n_side² atoms, vacuum along z, pbc (T, T, F)."""
    from ase import Atoms

    a1 = np.array([spacing, 0.0, 0.0])
    a2 = np.array([0.5 * spacing, 0.5 * np.sqrt(3) * spacing, 0.0])
    # Rectangular cell holding two atoms per primitive row pair.
    lx, ly = n_side * spacing, n_side * np.sqrt(3) * spacing
    pos = []
    for i in range(n_side):
        for j in range(2 * n_side):
            p = i * a1 + j * a2
            pos.append([p[0] % lx, p[1] % ly, 0.0])
    return Atoms("Ar" * len(pos), positions=pos, cell=[lx, ly, vacuum], pbc=(True, True, False))


def lj_run_config(name: str, workdir: Path, *, dimension: int = 3, train: dict[str, Any] | None = None,
                  generate: dict[str, Any] | None = None) -> RunConfig:
    """A complete :class:`RunConfig` for the LJ system (element Ar, LJ oracle, small basis)."""
    from autopipe.config.run import RunConfig

    system = (
        {"elements": ["Ar"], "structure": {"kind": "bulk", "crystal": "fcc", "a": 3.4, "repeat": [2, 2, 2]}}
        if dimension == 3
        else {"elements": ["Ar"], "structure": {"kind": "liquid2d", "n_atoms": 32, "density": 0.17,
                                                 "min_distance": 2.0, "vacuum": 15.0}}
    )
    return RunConfig.model_validate(
        {
            "name": name,
            "workdir": str(workdir),
            "system": system,
            "initial_potential": {"kind": "generate", "name": name, **(generate or {})},
            "md": {"dimension": dimension},
            "embedding": {"core_radius": 4.0, "buffer": 5.0},
            "dft": {"code": "lj", "sigma": LJ_SIGMA, "epsilon": LJ_EPSILON, "cutoff": LJ_CUTOFF},
            "train": {"cutoff": LJ_CUTOFF, **(train or {})},
        }
    )


def recipe_key(recipe: dict[str, Any]) -> str:
    """Short stable hash of a recipe (and of the pyace version that trains it)."""
    try:
        from importlib.metadata import version

        pyace_version = version("python-ace")
    except Exception:
        pyace_version = "?"
    blob = json.dumps({"recipe": recipe, "format": RECIPE_FORMAT, "pyace": pyace_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_cached(directory: Path) -> PotentialFiles | None:
    """Version 1 of a cached recipe directory, or None if absent or corrupted."""
    from autopipe.db import Database
    from autopipe.potentials.store import PotentialStore

    if not (directory / "autopipe.db").exists():
        return None
    db = Database(f"sqlite:///{directory / 'autopipe.db'}")
    try:
        return PotentialStore(db, directory / "potentials").latest()
    finally:
        db.dispose()


def cached_potential(
    cache_root: Path | str,
    recipe_name: str,
    recipe: dict[str, Any],
    build: Callable[[Path], None],
) -> PotentialFiles:
    """Return the potential of ``recipe``, building it with ``build(directory)`` on a cache miss.

    ``build`` must leave ``directory/autopipe.db`` and ``directory/potentials/`` with a
    published potential. The result lives in ``cache_root/<recipe_name>-<hash>/``.
    """
    cache_root = Path(cache_root).resolve()
    cache_root.mkdir(parents=True, exist_ok=True)
    ignore = cache_root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    final = cache_root / f"{recipe_name}-{recipe_key(recipe)}"
    if (pot := open_cached(final)) is not None:
        return pot
    with _file_lock(cache_root / f"{final.name}.lock"):
        if (pot := open_cached(final)) is not None:  # another process built it while we waited
            return pot
        if final.exists():
            shutil.rmtree(final)  # incomplete or corrupted: rebuild
        staging = Path(tempfile.mkdtemp(prefix=f".build-{recipe_name}-", dir=cache_root))
        try:
            build(staging)
            (staging / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True))
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    pot = open_cached(final)
    if pot is None:
        raise RuntimeError(f"building {recipe_name} left no usable potential in {final}")
    return pot


def build_lj_recipe(directory: Path, recipe: dict[str, Any]) -> None:
    """Generate, label and train version 1 of an LJ recipe into ``directory`` (see :func:`lj_recipe`)."""
    from autopipe.db import Database
    from autopipe.potentials.initial import build_initial_potential
    from autopipe.potentials.store import PotentialStore

    cfg = lj_run_config(recipe["name"], directory, dimension=recipe["dimension"], train=recipe["train"],
                        generate=recipe["generate"])
    template = lj3d_template(**recipe.get("template", {})) if recipe["dimension"] == 3 else lj2d_template(
        **recipe.get("template", {}))
    db = Database(f"sqlite:///{directory / 'autopipe.db'}")
    try:
        store = PotentialStore(db, directory / "potentials")
        build_initial_potential(db, store, cfg, lj_label, template=template)
    finally:
        db.dispose()


def lj_recipe(dimension: int = 3) -> dict[str, Any]:
    """The standard small LJ training recipe (≈40 basis functions, 60 BFGS iterations)."""
    return {
        "name": f"lj{dimension}d",
        "dimension": dimension,
        "template": {},
        "generate": {"n_structures": 32, "rattle": 0.12, "strain": 0.05, "min_distance": 0.0, "seed": 7},
        "train": {
            "number_of_functions_per_element": 40,
            "ranks": [6, 4, 3],
            "lmax": [0, 3, 2],
            "max_iterations": 60,
            "test_size": 0.1,
            "batch_size": 100,
            "seed": 42,
            "timeout": 900.0,
        },
    }


def fixture_train_dir(potential: PotentialFiles) -> Path:
    """Where a cached recipe's version 1 was fitted (pacemaker's input, log and processed data)."""
    from autopipe.layout import RunLayout

    return RunLayout(Path(potential.directory).parent.parent).train_dir(1)
