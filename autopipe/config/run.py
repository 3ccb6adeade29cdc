"""Run files: what to do.

Units everywhere: lengths in Å, energies in eV, time in fs, temperature in K,
pressure in bar, plane-wave cutoffs in Ry, k-point spacing in 1/Å, wall times in s.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from autopipe.config.base import KeyProblem, StrictModel, load_model, one_line
from autopipe.errors import ConfigError


def _relative_to_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve a relative path against the directory of the file being loaded."""
    base = (info.context or {}).get("base_dir")
    if v is not None and base is not None and not v.is_absolute():
        return (Path(base) / v).resolve()
    return v

# ----------------------------------------------------------------------------- system


class FileStructure(StrictModel):
    """Start from a structure file any ASE reader understands (extxyz, POSCAR, lammps-data, ...)."""

    kind: Literal["file"]
    path: Path = Field(description="Structure file; relative paths are relative to the run file.")
    format: str | None = Field(default=None, description="ASE format name when the suffix is not enough.")

    _resolve = field_validator("path")(classmethod(_relative_to_file))


#: Crystals of ase.build.bulk with one species, and compound prototypes with their number of species.
ONE_ELEMENT_CRYSTALS = ("fcc", "bcc", "sc", "hcp", "diamond")
PROTOTYPES = {"rocksalt": 2, "zincblende": 2, "cesiumchloride": 2, "wurtzite": 2, "fluorite": 2}


class BulkStructure(StrictModel):
    """A crystal from ase.build.bulk, repeated and optionally rattled: one element, a random alloy of
    several on its sites (``composition``), or a compound prototype (``elements``)."""

    kind: Literal["bulk"]
    crystal: Literal["fcc", "bcc", "sc", "hcp", "diamond", "rocksalt", "zincblende", "cesiumchloride", "wurtzite",
                     "fluorite"] = Field(description="Lattice type; the last five are two-element prototypes.")
    element: str | None = Field(
        default=None,
        description="Element of a one-element crystal (one of system.elements); required when system.elements has "
        "more than one and neither composition nor elements is given, default: the only one.",
    )
    elements: list[str] | None = Field(
        default=None,
        description="Species of a prototype in its site order (rocksalt, zincblende, wurtzite, cesiumchloride: "
        "[cation, anion], e.g. [Mg, O]; fluorite: [Ca, F] for CaF2).",
    )
    composition: dict[str, float] | None = Field(
        default=None,
        description="Random alloy: element -> fraction of the repeated one-element crystal's sites (fractions sum "
        "to 1; counts rounded to whole atoms), substituted at random with seed.",
    )
    a: float = Field(gt=0, description="Lattice constant (Å).")
    repeat: tuple[int, int, int] = Field(default=(1, 1, 1), description="Supercell repetitions.")
    cubic: bool = Field(default=True, description="Use the conventional cubic cell.")
    rattle: float = Field(default=0.0, ge=0, description="Gaussian displacement std (Å).")
    vacancies: int = Field(default=0, ge=0, description="Atoms removed at random from the repeated crystal (point defects).")
    seed: int = Field(default=0, description="Random seed of the rattle, of the vacancy sites and of the alloy's "
                      "species.")


class Liquid2DStructure(StrictModel):
    """Atoms in the z=0 plane at a given areal density, vacuum along z (non-periodic)."""

    kind: Literal["liquid2d"]
    n_atoms: int = Field(gt=0, description="Number of atoms.")
    density: float = Field(gt=0, description="Areal number density (atoms/Å²).")
    min_distance: float = Field(default=0.0, ge=0, description="Smallest pair distance when placing atoms (Å).")
    vacuum: float = Field(default=20.0, gt=0, description="Cell height along z (Å).")
    seed: int = Field(default=0, description="Random seed.")


StructureSource = Annotated[Union[FileStructure, BulkStructure, Liquid2DStructure], Field(discriminator="kind")]


class SystemConfig(StrictModel):
    """The chemical system and the starting structure of every walker."""

    elements: list[str] = Field(min_length=1, description="Chemical symbols the potential covers.")
    structure: StructureSource = Field(description="Starting structure of the MD walkers.")

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, v: list[str]) -> list[str]:
        from ase.data import atomic_numbers

        bad = [e for e in v if e not in atomic_numbers]
        if bad:
            raise ValueError(f"unknown chemical symbol(s): {', '.join(bad)}")
        if len(set(v)) != len(v):
            raise ValueError("elements are repeated")
        return v


# ----------------------------------------------------------------------------- initial potential


class InitialPotentialFile(StrictModel):
    """Start from an existing pacemaker potential (B-basis .yaml; .asi computed if missing)."""

    kind: Literal["file"]
    path: Path = Field(description="Potential .yaml (B-basis) written by pacemaker.")
    asi: Path | None = Field(default=None, description="Active set .asi; computed from the training data if absent.")
    training_data: Path | None = Field(
        default=None,
        description="pacemaker dataset (.pckl.gzip: ase_atoms, forces, energy and/or energy_corrected, optional "
        "w_energy/w_forces) the potential was trained on. Imported into the database and trained on by every "
        "retrain, with its weights and energy reference; also gives the .asi. Required unless train.retrain is false.",
    )

    _resolve = field_validator("path", "asi", "training_data")(classmethod(_relative_to_file))


class InitialPotentialGenerate(StrictModel):
    """Generate a small dataset (module A), label it with the run's DFT code, train version 1."""

    kind: Literal["generate"]
    name: str = Field(default="initial", description="Name of version 1 (e.g. 'lj_defective').")
    n_structures: int = Field(default=40, ge=2, description="Structures in the generated dataset.")
    rattle: float = Field(default=0.1, ge=0, description="Gaussian displacement std of rattled copies (Å).")
    strain: float = Field(default=0.03, ge=0, description="Largest isotropic/shear strain of strained copies.")
    min_distance: float = Field(
        default=0.0,
        ge=0,
        description="Reject generated structures with any pair closer than this (Å); >0 leaves short range untrained.",
    )
    seed: int = Field(default=1, description="Random seed.")
    structure: StructureSource | None = Field(
        default=None,
        description="Template of the generated cells (default: system.structure); a smaller cell keeps "
        "DFT cheap while the MD runs a larger one.",
    )


InitialPotential = Annotated[Union[InitialPotentialFile, InitialPotentialGenerate], Field(discriminator="kind")]


# ----------------------------------------------------------------------------- MD / OTF / embedding


class MDConfig(StrictModel):
    """Molecular dynamics of each walker, run in segments."""

    ensemble: Literal["nve", "nvt-langevin", "nvt-nose-hoover", "npt"] = Field(
        default="nvt-langevin", description="Integrator and thermostat."
    )
    temperature: float = Field(default=300.0, ge=0, description="Thermostat target temperature (K).")
    initial_temperature: float | None = Field(
        default=None, ge=0, description="Temperature of the initial Maxwell-Boltzmann velocities (K); default: temperature."
    )
    pressure: float = Field(default=1.0, description="Barostat target pressure for npt (bar).")
    timestep: float = Field(default=1.0, gt=0, description="Time step (fs).")
    segment_steps: int = Field(default=500, ge=1, description="MD steps per segment (between hot-swap points).")
    thermostat_damping: float = Field(default=100.0, gt=0, description="Thermostat relaxation time (fs).")
    barostat_damping: float = Field(default=1000.0, gt=0, description="Barostat relaxation time (fs).")
    dimension: Literal[2, 3] = Field(default=3, description="3 for bulk; 2 keeps atoms in the xy plane.")
    dump_every: int = Field(default=50, ge=1, description="Steps between trajectory frames.")
    thermo_every: int = Field(default=50, ge=1, description="Steps between thermodynamic records.")
    keep_checkpoints: int | None = Field(
        default=3, ge=1,
        description="Segments per walker whose checkpoint files are kept (newest first), besides the walker's "
        "first state, its current and previous good states and the starts of queued segments; older ones are "
        "deleted as the walker moves on (a 10^6-atom state is ~50 MB per segment). None: keep them all.",
    )
    seed: int = Field(default=12345, ge=1, description="Random seed of velocities and thermostat.")
    max_force: float = Field(
        default=1.0e3, gt=0, description="A force above this on any atom (eV/Å) counts as a blow-up."
    )
    max_energy_change: float = Field(
        default=10.0, gt=0,
        description="A potential-energy change above this since the segment's start (eV/atom) counts as a blow-up.",
    )


class OTFConfig(StrictModel):
    """On-the-fly uncertainty monitoring."""

    uncertainty_threshold: float = Field(default=5.0, gt=1.0, description="Max gamma that stops a segment.")
    check_frequency: int = Field(default=10, ge=1, description="MD steps between gamma checks.")
    max_extractions: int = Field(default=1, ge=1, description="Sub-cells carved per trigger frame.")
    probe_share: float = Field(
        default=0.05, ge=0, le=0.5,
        description="Share of the loop's DFT cost (label seconds; label counts while no seconds are known) spent "
        "labelling configurations the potential calls safe (the false-negative probe, autopipe.steer.probe): a "
        "cell carved around a random atom below the threshold at the end of a segment that did not trigger, held "
        "out of training, giving each version's measured force error and the calibration curve. 0: no probe.",
    )
    probe_every: int = Field(
        default=5, ge=1,
        description="A walker gives at most one probe per this many of its segments (spreads the probe over "
        "walkers and MD time).",
    )
    target_force_error: float | None = Field(
        default=None, gt=0,
        description="Force error (meV/Å, RMSE per component) the run aims at. Given: the loop sets and updates "
        "the gamma threshold from the calibration curve of the served version on the held-out labels (probe and "
        "triggered; autopipe.steer.threshold), within threshold_bounds, and records every change with its "
        "evidence (threshold events); uncertainty_threshold is then only the starting threshold. None: "
        "uncertainty_threshold stays fixed.",
    )
    threshold_bounds: tuple[float, float] = Field(
        default=(2.0, 10.0),
        description="[lowest, highest] gamma threshold the target_force_error rule may set (gamma above about 2 is "
        "extrapolation for pacemaker; above about 10 forces are rarely trustworthy).",
    )

    @model_validator(mode="after")
    def _bounds_hold_the_start(self) -> "OTFConfig":
        lo, hi = self.threshold_bounds
        if not 1.0 < lo < hi:
            raise KeyProblem("threshold_bounds", f"[{lo:g}, {hi:g}]: need 1 < lowest < highest")
        if self.target_force_error is not None and not lo <= self.uncertainty_threshold <= hi:
            raise KeyProblem("uncertainty_threshold", f"{self.uncertainty_threshold:g} (the starting threshold of "
                             f"target_force_error) lies outside threshold_bounds [{lo:g}, {hi:g}]")
        return self


class LatticeConfig(StrictModel):
    """The reference lattice of commensurate carving: a unit cell from ase.build.bulk, or a file."""

    crystal: Literal["fcc", "bcc", "sc", "hcp", "diamond", "rocksalt", "zincblende", "wurtzite", "cesiumchloride",
                     "fluorite"] | None = Field(default=None, description="Lattice type (ase.build.bulk).")
    elements: str | None = Field(
        default=None, description="Chemical formula of the unit cell's species for bulk (e.g. 'Si', 'MgO'); "
        "default: the bulk structure's element.")
    a: float | None = Field(default=None, gt=0, description="Lattice constant (Å).")
    c: float | None = Field(default=None, gt=0, description="Second lattice constant of hcp/wurtzite (Å).")
    cubic: bool = Field(default=True, description="Conventional cubic cell (else the primitive one).")
    file: Path | None = Field(default=None, description="A unit cell file any ASE reader understands, instead.")

    _resolve = field_validator("file")(classmethod(_relative_to_file))

    @model_validator(mode="after")
    def _one_source(self) -> "LatticeConfig":
        if (self.file is None) == (self.crystal is None):
            raise KeyProblem("crystal", "give either crystal (with a) or file")
        if self.crystal is not None and self.a is None:
            raise KeyProblem("a", "a crystal lattice needs its lattice constant a (Å)")
        return self


class EmbeddingConfig(StrictModel):
    """Periodic sub-cell carved around an uncertain atom: side 2*(core_radius+buffer)."""

    strategy: Literal["cube", "commensurate", "budget"] = Field(
        default="cube",
        description="'cube': a cube of side 2*(core_radius+buffer) around the atom (any structure); "
        "'commensurate': whole periods of the reference lattice (crystals; embedding.lattice, or the bulk "
        "structure's own), one atom per site, so no bond is cut at a wrong length at the seams; 'budget': "
        "measure the candidates against a whole-frame label on the first trigger frame and carve with the "
        "cheapest whose core error is within max_error_ratio of the potential's (else label whole frames), "
        "re-checked every recheck_every carved labels.",
    )
    candidates: list[Literal["cube", "commensurate"]] | None = Field(
        default=None, min_length=1,
        description="Strategies the budget weighs; default: commensurate (with a reference lattice) and cube.")
    max_error_ratio: float = Field(
        default=0.5, gt=0,  # autopipe.carving.budget.DEFAULT_MAX_ERROR_RATIO (config imports no carving code)
        description="Budget: a carve is used when its core rms force error against the whole frame is at most "
        "this times the current potential's error on the same atoms. Default from the equal-pw.x comparison "
        "(README, 'Carving for real DFT': carves at 0.93x won early and plateaued).")
    max_core_force_error: float | None = Field(
        default=None, gt=0, description="Budget: an absolute bound on the carve's core rms force error (eV/Å) "
        "instead of the ratio.")
    recheck_every: int = Field(
        default=10, ge=0, description="Budget: carved labels between re-checks against a whole frame (0: never).")
    lattice: LatticeConfig | None = Field(
        default=None, description="Reference lattice of commensurate carving; default: the unit cell of a bulk "
        "system.structure.")
    kpoints: Literal["density", "fold"] = Field(
        default="density",
        description="k-points of carved cells (pw.x): 'density' keeps dft.kspacing; 'fold' takes the smallest "
        "Gamma-centred mesh holding every k-point of the parent's mesh (commensurate cells; a cube falls back "
        "to density).",
    )
    whole_frame_fraction: float = Field(
        default=0.75, gt=0, le=1,
        description="Label the whole frame instead when a carved cell holds at least this fraction of the "
        "frame's atoms (periodic images counted): the frame costs little more and is exact, with nothing masked.",
    )

    core_radius: float = Field(
        gt=0,
        description="Radius of the trusted core (Å); forces beyond it are masked. Formerly 'cutoff' (still read, "
        "with a warning).",
    )
    buffer: float = Field(
        gt=0,
        description="Buffer thickness (Å) between the trusted core and the cell faces. Core forces are exact for a "
        "pair potential of range rc when buffer >= rc + min_distance/2, for a many-body potential (ACE of cutoff "
        "rc) only when buffer >= 2*rc + min_distance/2; for DFT the range is physical: measure it with "
        "`autopipe buffer-scan`.",
    )
    min_distance: float = Field(default=0.5, ge=0, description="Remove masked atoms closer than this across the new boundary (Å).")
    charge_policy: Literal["none", "neutralise", "spin", "refuse"] = Field(
        default="none",
        description="pw.x only: a carved cell with an odd valence-electron count (from the UPF files) or a formal "
        "charge (from oxidation_states). 'neutralise': remove masked atoms farthest from the centre, none within "
        "core_radius + buffer, until it is neutral and even (else refuse); 'spin': label it spin-polarised and "
        "smeared; 'refuse': record the refusal; 'none': send it as carved (autopipe.carving.charge).",
    )
    oxidation_states: dict[str, float] = Field(
        default_factory=dict,
        description="Element -> formal charge (e) for the charge policy, e.g. {Mg: 2, O: -2}; neutralise needs every "
        "element's.",
    )
    whole_frame: Literal["if_smaller", "always"] = Field(
        default="if_smaller",
        description="Label the whole MD frame instead of carving: 'if_smaller' when the frame fits inside the "
        "sub-cell's box (cheaper and exact), 'always' to compare with whole-cell active learning (no masks).",
    )
    keep_frames_up_to: int = Field(
        default=2000, ge=0,
        description="Trigger frames of at most this many atoms travel to the steering host and are stored whole "
        "(about 40 bytes per atom; in-sample evaluation, buffer-scan and the report read them). Larger frames are "
        "carved on the MD worker: only the cells and a compact record (the atoms within core_radius of each "
        "centre) come back and are stored. 0: every frame is carved on the worker.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_cutoff(cls, data: Any, info: ValidationInfo) -> Any:
        # 'cutoff' meant the potential's range everywhere else; old run files and the
        # run.resolved.json of runs started before the rename still load.
        if isinstance(data, dict) and "cutoff" in data:
            if "core_radius" in data:
                raise ValueError("give core_radius only (cutoff is its old name)")
            source = (info.context or {}).get("source", "run file")
            # FutureWarning, not DeprecationWarning: the user of the file must see it, not only developers.
            warnings.warn(f"{source}: embedding.cutoff is deprecated: rename it to embedding.core_radius (the "
                          "trusted core's radius)", FutureWarning, stacklevel=2)
            data = {("core_radius" if k == "cutoff" else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _room_for_atoms(self) -> "EmbeddingConfig":
        # extract_periodic_subsystem refuses min_distance >= L/2: every carve would fail.
        if self.min_distance >= self.core_radius + self.buffer:
            raise KeyProblem("min_distance", f"{self.min_distance:g} Å must be smaller than core_radius + buffer "
                                             f"({self.core_radius + self.buffer:g} Å, half the carved box)")
        return self


# ----------------------------------------------------------------------------- DFT


class EspressoConfig(StrictModel):
    """Quantum ESPRESSO pw.x."""

    code: Literal["espresso"]
    command: list[str] = Field(default_factory=lambda: ["pw.x"], description="pw.x argv (site's dft_launcher goes before it).")
    pseudo_dir: Path = Field(default=Path("/usr/share/espresso/pseudo"), description="Directory of UPF files.")
    pseudopotentials: dict[str, str] = Field(
        default_factory=dict,
        description="Element -> UPF file name. Missing elements are looked up in pseudo_dir (first match by name), "
        "which can mix functionals: name them explicitly for production runs.",
    )
    ecutwfc: float = Field(default=30.0, gt=0, description="Wavefunction cutoff (Ry).")
    ecutrho: float | None = Field(default=None, gt=0, description="Density cutoff (Ry); default 4*ecutwfc.")
    kspacing: float = Field(default=0.25, gt=0, description="Largest k-point spacing (1/Å, 2π included).")
    gamma_only_length: float = Field(
        default=20.0, gt=0, description="Use the Gamma point alone when every periodic cell length exceeds this (Å)."
    )
    smearing: Literal["none", "gaussian", "mv", "mp", "fd"] = Field(default="mv", description="Occupation smearing.")
    degauss: float = Field(default=0.02, gt=0, description="Smearing width (Ry).")
    spin_polarized: bool = Field(default=False, description="Collinear spin (nspin=2).")
    starting_magnetization: dict[str, float] = Field(
        default_factory=dict,
        description="Element -> pw.x starting_magnetization (fraction of valence charge, -1..1); default 0.5 for all.",
    )
    mixing_beta: float = Field(default=0.7, gt=0, le=1, description="Charge mixing factor.")
    electron_maxstep: int = Field(default=100, ge=1, description="SCF iterations.")
    conv_thr: float = Field(default=1e-8, gt=0, description="SCF convergence threshold (Ry).")
    timeout: float = Field(default=3600.0, gt=0, description="Wall time of one pw.x attempt (s).")
    max_attempts: int = Field(default=3, ge=1, description="Attempts per structure, including SCF-recovery retries.")
    min_distance: float = Field(default=0.5, ge=0, description="Refuse structures with atoms closer than this (Å).")


class OracleLatency(StrictModel):
    """Wall time an oracle label is made to take, so a benchmark of the loop sees DFT-like latency:
    ``t = seconds_at_64 * (N / 64) ** exponent`` (s) for N atoms. The oracle's own time counts
    towards it; the rest is slept (no CPU used). Default exponent: pw.x's measured scaling for Si
    (benchmarks/dft.py)."""

    seconds_at_64: float = Field(gt=0, description="Emulated label time of a 64-atom structure (s).")
    exponent: float = Field(default=1.95, gt=0, description="Scaling of the emulated time with the atom count.")

    def seconds(self, n_atoms: int) -> float:
        """The emulated wall time (s) of a label of ``n_atoms`` atoms."""
        return self.seconds_at_64 * (n_atoms / 64) ** self.exponent


class _Oracle(StrictModel):
    latency: OracleLatency | None = Field(
        default=None, description="Benchmarks only: make each label take as long as DFT would (see OracleLatency)."
    )


class LJOracleConfig(_Oracle):
    """Analytic Lennard-Jones oracle (tests, demos)."""

    code: Literal["lj"]
    epsilon: float = Field(default=1.0, gt=0, description="Well depth (eV).")
    sigma: float = Field(default=1.0, gt=0, description="Zero-crossing distance (Å).")
    cutoff: float = Field(default=3.0, gt=0, description="Cutoff radius (Å); energy smoothly goes to zero there.")


class EMTOracleConfig(_Oracle):
    """ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O)."""

    code: Literal["emt"]


class ASECalculatorConfig(_Oracle):
    """Any ASE calculator named by import path."""

    code: Literal["ase"]
    calculator: str = Field(pattern=r"^[\w.]+:\w+$", description="'module.path:ClassName'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the calculator.")


DFTConfig = Annotated[
    Union[EspressoConfig, LJOracleConfig, EMTOracleConfig, ASECalculatorConfig], Field(discriminator="code")
]


# ----------------------------------------------------------------------------- training


class BasisGrowth(StrictModel):
    """When the fit is basis-limited, the next round enlarges ``number_of_functions_per_element`` from the
    parent (autopipe.potentials.basis). Basis-limited over the last ``rounds`` rounds at the current size:
    the training and the held-out force errors each fell by less than ``flat`` (relative) while the
    training structures grew by at least ``min_label_growth`` (relative)."""

    enabled: bool = Field(default=False, description="Grow the basis when the fit is basis-limited.")
    factor: float = Field(default=1.5, gt=1, description="New size = ceil(old size x factor), at least one more.")
    ceiling: int = Field(default=160, ge=1, description="Largest number_of_functions_per_element growth may reach.")
    rounds: int = Field(default=3, ge=2, description="Rounds at the current size the rule looks back over.")
    flat: float = Field(
        default=0.05, gt=0, lt=1,
        description="An error is flat when it fell by less than this fraction over those rounds (dimensionless).")
    min_label_growth: float = Field(
        default=0.2, ge=0,
        description="Training structures must have grown by at least this fraction over those rounds "
        "(0.2: 20 %); without new data a flat error says nothing about the basis.")


class TrainConfig(StrictModel):
    """pacemaker fits and the retraining trigger."""

    retrain: bool = Field(
        default=True,
        description="Retrain when new labels arrive. false: monitor gamma and collect labels only; an imported "
        "potential (initial_potential kind file) then needs no training_data.",
    )
    min_new_labels: int = Field(default=4, ge=1, description="New successful labels that start a retrain.")
    cutoff: float = Field(default=5.0, gt=0, description="ACE radial cutoff (Å).")
    number_of_functions_per_element: int = Field(default=40, ge=1, description="ACE basis size per element.")
    ranks: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [6, 4, 3], min_length=1, description="Max n per body order (nradmax_by_orders)."
    )
    lmax: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 3, 2], min_length=1, description="Max l per body order (lmax_by_orders)."
    )
    embedding: Literal["linear", "FinnisSinclair", "FinnisSinclairShiftedScaled"] = Field(
        default="FinnisSinclairShiftedScaled", description="ACE embedding function."
    )
    kappa: float = Field(default=0.3, ge=0, le=1, description="Loss weight of forces (1-kappa for energies).")
    max_iterations: int = Field(default=100, ge=1, description="Optimizer iterations of a fresh fit.")
    retrain_iterations: int | None = Field(default=None, ge=1, description="Iterations when continuing (default: max_iterations).")
    optimizer: Literal["BFGS", "L-BFGS-B"] = Field(default="BFGS", description="scipy optimizer.")
    backend: Literal["tensorpot", "pyace"] = Field(default="tensorpot", description="pacemaker evaluator.")
    batch_size: int = Field(default=100, ge=1, description="Structures per batch (tensorpot).")
    test_size: float = Field(default=0.0, ge=0, lt=1, description="Fraction held out for test metrics.")
    reference_energies: dict[str, float] | Literal["auto"] | None = Field(
        default=None,
        description="Per-element energies (eV/atom) subtracted before fitting; 'auto': a least-squares fit "
        "over the labels (use it for DFT, whose total energies are large); none: raw energies (oracles).",
    )
    embedded_energy_weight: float = Field(
        default=0.0, ge=0, description="Energy weight of carved sub-cells relative to ordinary structures."
    )
    continue_from_parent: bool = Field(default=True, description="Start a retrain from the previous potential (-p).")
    timeout: float = Field(default=3600.0, gt=0, description="Wall time of one pacemaker run (s).")
    warm_trainer: bool = Field(
        default=True,
        description="Run fits in a long-lived trainer process that keeps TensorFlow and the traced graphs "
        "loaded between fits (autopipe.potentials.warm); false: a fresh pacemaker program per fit.",
    )
    seed: int = Field(default=42, description="Random seed of the fit.")
    heldout_every: int = Field(
        default=10, ge=0,
        description="Every Nth successful DFT label of a triggered candidate is held out: never trained on, "
        "scored by the gate before each hot-swap. 0: no held-out slice of the triggered labels.",
    )
    gate: bool = Field(
        default=True,
        description="Publish a retrained version to the walkers only if its force RMSE (eV/Å, trusted atoms) on "
        "the held-out labels is at most its parent's times (1 + gate_tolerance); with no held-out labels yet "
        "every version passes. false: every successful fit is hot-swapped.",
    )
    gate_min_heldout: int = Field(
        default=3, ge=1,
        description="Held-out structures the gate needs before it may reject a version: a force RMSE over one "
        "carved cell's few core atoms swings too much to keep a fit from the walkers (seen on the demo: one "
        "6-atom probe cell rejected a fit and stalled the run). With fewer, the version passes and the gate "
        "says why, with both scores.",
    )
    gate_tolerance: float = Field(
        default=0.05, ge=0,
        description="Relative worsening of the held-out force RMSE the gate accepts (0.05: up to 5 % above the "
        "parent's; dimensionless).",
    )
    basis_growth: BasisGrowth = Field(
        default_factory=BasisGrowth,
        description="Enlarge the basis from the parent when the fit is basis-limited (see BasisGrowth).")

    @model_validator(mode="after")
    def _one_entry_per_body_order(self) -> "TrainConfig":
        if len(self.ranks) != len(self.lmax):
            raise KeyProblem("lmax", f"{len(self.lmax)} entries but ranks has {len(self.ranks)}: both give one "
                                     "value per body order")
        growth = self.basis_growth
        if growth.enabled and growth.ceiling < self.number_of_functions_per_element:
            raise KeyProblem("basis_growth.ceiling", f"{growth.ceiling} is below the starting basis "
                             f"(number_of_functions_per_element {self.number_of_functions_per_element})")
        return self


# ----------------------------------------------------------------------------- steering


class WalkersConfig(StrictModel):
    count: int = Field(default=1, ge=1, description="Concurrent MD walkers.")


class FaultsConfig(StrictModel):
    """How much failure the run absorbs before it gives up on a walker or a task."""

    segment_failures: int = Field(
        default=3, ge=1,
        description="Consecutive failed segments (or trigger frames no sub-cell could be carved from) "
        "after which a walker is retired.",
    )
    app_attempts: int = Field(
        default=3, ge=1, description="Submissions of a task whose app crashed (not a failed label or segment)."
    )


class AccuracyStop(StrictModel):
    """The accuracy rule (autopipe.steer.stopping.accurate): converged when the false-negative probe's force
    error of the served version is below the target at the stated confidence (the one-sided upper bound of a
    bootstrap over probe structures) and no walker triggered for ``quiet_segments`` segments."""

    force_error: float | None = Field(
        default=None, gt=0, description="Target force error (meV/Å, RMSE per component); default: "
        "otf.target_force_error.")
    confidence: float = Field(default=0.95, ge=0.5, lt=1, description="One-sided confidence of the upper bound.")
    quiet_segments: int = Field(default=3, ge=1, description="Segments without a trigger, on every walker.")
    min_labels: int = Field(
        default=5, ge=2, description="Probe structures the bound needs at least (a bootstrap over fewer is "
        "not an interval worth stopping on).")


class StopConfig(StrictModel):
    """Stopping rules; the first that fires ends the run."""

    max_md_steps: int = Field(default=10_000, ge=1, description="MD steps every walker must reach.")
    converged_segments: int | None = Field(
        default=None, ge=1, description="Stop after this many consecutive segments without a trigger (all walkers)."
    )
    max_dft_calls: int | None = Field(default=None, ge=1, description="Budget of DFT labels.")
    max_dft_seconds: float | None = Field(
        default=None, gt=0, description="Budget of DFT wall time (s, every attempt of every label the loop chose): "
        "compares strategies at equal DFT cost.")
    max_trainings: int | None = Field(default=None, ge=1, description="Budget of retrains.")
    max_walltime: float | None = Field(default=None, gt=0, description="Wall-time budget of this process (s).")
    max_train_failures: int = Field(default=3, ge=1, description="Stop after this many failed fits in a row.")
    accuracy: AccuracyStop | None = Field(
        default=None, description="Stop when the probe shows the served version accurate enough (see AccuracyStop).")


class RunConfig(StrictModel):
    """A whole active-learning run."""

    name: str = Field(description="Run name.")
    workdir: Path = Field(default=Path("autopipe-run"), description="Where the database, potentials and files go.")
    database: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite:///<workdir>/autopipe.db.")
    system: SystemConfig
    initial_potential: InitialPotential
    md: MDConfig = Field(default_factory=MDConfig)
    otf: OTFConfig = Field(default_factory=OTFConfig)
    embedding: EmbeddingConfig
    dft: DFTConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    walkers: WalkersConfig = Field(default_factory=WalkersConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    stop: StopConfig = Field(default_factory=StopConfig)

    _resolve = field_validator("workdir")(classmethod(_relative_to_file))

    @model_validator(mode="after")
    def _check_consistency(self) -> "RunConfig":
        if self.md.dimension == 2 and isinstance(self.system.structure, BulkStructure):
            raise ValueError("md.dimension is 2 but system.structure is a 3D bulk crystal")
        if self.md.ensemble == "npt" and self.md.dimension == 2:
            raise ValueError("npt is not supported for 2D systems")
        init = self.initial_potential
        if init.kind == "file" and init.training_data is None and self.train.retrain:
            raise ValueError(
                "initial_potential.training_data is required: retraining needs the data the potential was "
                "trained on (or set train.retrain: false to only monitor and label)"
            )
        self._check_elements()
        self._check_error_targets()
        uses_lattice = self.embedding.strategy == "commensurate" or (
            self.embedding.strategy == "budget" and "commensurate" in (self.embedding.candidates or []))
        if uses_lattice:
            if self.embedding.lattice is None and not isinstance(self.system.structure, BulkStructure):
                raise KeyProblem("embedding.lattice", "commensurate carving needs a reference lattice: give "
                                 "embedding.lattice, or start from a bulk system.structure")
            if self.md.dimension == 2:
                raise KeyProblem("embedding.strategy", "commensurate carving needs a 3D crystal (md.dimension is 2)")
        return self

    def _check_error_targets(self) -> None:
        """A force-error target needs held-out labels to measure it; the accuracy rule needs the probe."""
        if self.otf.target_force_error is not None and self.otf.probe_share == 0 and self.train.heldout_every == 0:
            raise KeyProblem("otf.target_force_error", "nothing can measure it: otf.probe_share and "
                             "train.heldout_every are both 0, so no label is held out to score the potential on")
        acc = self.stop.accuracy
        if acc is None:
            return
        if acc.force_error is None and self.otf.target_force_error is None:
            raise KeyProblem("stop.accuracy.force_error", "required: give it, or otf.target_force_error")
        if self.otf.probe_share == 0:
            raise KeyProblem("stop.accuracy", "the accuracy rule needs the probe's labels, but otf.probe_share is 0")
        if acc.force_error is None:
            acc.force_error = self.otf.target_force_error  # resolved once: run.resolved.json shows it

    def _check_elements(self) -> None:
        """Keys named after elements name the run's elements, and a bulk crystal says which it is."""
        elements = self.system.elements
        known = ", ".join(elements)
        refs = self.train.reference_energies
        if isinstance(refs, dict):
            missing = [e for e in elements if e not in refs]
            extra = [e for e in refs if e not in elements]
            if missing or extra:
                raise KeyProblem("train.reference_energies", (f"no energy for {', '.join(missing)}" if missing else
                                 f"{', '.join(extra)} is not one of system.elements") + f" (the run's elements: {known})")
        extra = [e for e in self.embedding.oxidation_states if e not in elements]
        if extra:
            raise KeyProblem("embedding.oxidation_states", f"{', '.join(extra)} is not one of system.elements ({known})")
        missing = [e for e in elements if e not in self.embedding.oxidation_states]
        if self.embedding.charge_policy == "neutralise" and missing:
            raise KeyProblem("embedding.oxidation_states", f"no oxidation state for {', '.join(missing)}: "
                                                           "charge_policy neutralise needs one per element")
        if isinstance(self.dft, EspressoConfig):
            for key in ("pseudopotentials", "starting_magnetization"):
                extra = [e for e in getattr(self.dft, key) if e not in elements]
                if extra:
                    raise KeyProblem(f"dft.{key}", f"{', '.join(extra)} is not one of system.elements ({known})")
        for key, src in (("system.structure", self.system.structure),
                         ("initial_potential.structure", getattr(self.initial_potential, "structure", None))):
            if isinstance(src, BulkStructure):
                _check_bulk(key, src, elements)

    def database_url(self) -> str:
        """The SQLAlchemy URL of this run's database."""
        from autopipe.layout import RunLayout

        return self.database or f"sqlite:///{RunLayout(self.workdir).database_file.resolve()}"



def _check_bulk(key: str, src: BulkStructure, elements: list[str]) -> None:
    """A bulk crystal names which of the run's elements it holds, in a form ase.build.bulk builds.
    Raises :class:`KeyProblem` naming ``key``'s sub-key."""
    from autopipe.bulk import alloy_counts, bulk_unit_cell

    known = ", ".join(elements)
    given = [k for k in ("element", "elements", "composition") if getattr(src, k) is not None]
    if len(given) > 1:
        raise KeyProblem(f"{key}.{given[-1]}", f"give one of element, elements or composition, not {' and '.join(given)}")
    n_species = PROTOTYPES.get(src.crystal)
    if n_species is not None:
        if src.elements is None or len(src.elements) != n_species:
            raise KeyProblem(f"{key}.elements", f"{src.crystal} is a prototype of two species: give elements, two "
                                                "symbols in site order (e.g. [Mg, O])")
    elif src.elements is not None:
        raise KeyProblem(f"{key}.elements", f"{src.crystal} has one species: give element, or composition for a "
                                            "random alloy")
    if src.composition is not None:
        empty = [e for e, f in src.composition.items() if not f > 0]
        if empty:
            raise KeyProblem(f"{key}.composition", f"{', '.join(empty)} has no positive fraction: leave it out")
        total = sum(src.composition.values())
        if abs(total - 1.0) > 1e-6:
            raise KeyProblem(f"{key}.composition", f"the fractions sum to {total:g}, not 1")
    species = list(src.elements or src.composition or ([src.element] if src.element else []))
    extra = [e for e in species if e not in elements]
    if extra:
        raise KeyProblem(f"{key}.{given[0]}", f"{', '.join(extra)} is not one of system.elements ({known})")
    if not species and len(elements) > 1:
        # ase.build.bulk makes a one-element crystal: which one must not be a silent guess.
        raise KeyProblem(f"{key}.element", f"required: system.elements has {len(elements)} elements ({known}); "
                                           "name the crystal's, or give composition (a random alloy)")
    try:
        unit = bulk_unit_cell(src, elements)
    except Exception as exc:  # ASE refuses combinations (a cubic wurtzite, ...) with its own exceptions
        raise KeyProblem(f"{key}.crystal", f"ase.build.bulk cannot build it: {' '.join(str(exc).split())}") from None
    if src.composition is not None:
        try:
            alloy_counts(src.composition, len(unit) * src.repeat[0] * src.repeat[1] * src.repeat[2])
        except ValueError as exc:
            raise KeyProblem(f"{key}.composition", str(exc)) from None


def load_resolved_run(workdir: Path | str) -> RunConfig:
    """The run configuration an existing run was started with (its ``run.resolved.json``)."""
    from autopipe.errors import AutopipeError
    from autopipe.layout import RunLayout

    path = RunLayout(Path(workdir)).resolved_config
    if not path.is_file():
        raise AutopipeError(f"{workdir}: no autopipe run here ({path.name} is missing)")
    return RunConfig.model_validate_json(path.read_text())


def _file_structures(cfg: RunConfig) -> list[tuple[str, FileStructure]]:
    """``(key path of its file, section)`` of each structure read from a file."""
    structures = [("system.structure", cfg.system.structure),
                  ("initial_potential.structure", getattr(cfg.initial_potential, "structure", None))]
    return [(f"{key}.path", src) for key, src in structures if isinstance(src, FileStructure)]


def _input_files(cfg: RunConfig) -> list[tuple[str, Path]]:
    """``(key path, path)`` of every file or directory a run reads (the work directory is written)."""
    found = [(key, src.path) for key, src in _file_structures(cfg)]
    if isinstance(cfg.initial_potential, InitialPotentialFile):
        for name in ("path", "asi", "training_data"):
            if getattr(cfg.initial_potential, name) is not None:
                found.append((f"initial_potential.{name}", getattr(cfg.initial_potential, name)))
    if cfg.embedding.lattice is not None and cfg.embedding.lattice.file is not None:
        found.append(("embedding.lattice.file", cfg.embedding.lattice.file))
    if isinstance(cfg.dft, EspressoConfig):
        found.append(("dft.pseudo_dir", cfg.dft.pseudo_dir))
        found += [(f"dft.pseudopotentials.{el}", cfg.dft.pseudo_dir / name)
                  for el, name in cfg.dft.pseudopotentials.items()]
    return found


def _structure_elements(key: str, src: FileStructure) -> set[str]:
    """The elements of a structure file; ConfigError naming ``key`` when ASE cannot read it."""
    from ase.io import read

    try:
        atoms = read(src.path, format=src.format)
    except Exception as exc:  # ASE raises whatever its format's parser raises
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise KeyProblem(key, f"{src.path} cannot be read{' as ' + src.format if src.format else ''}: {reason}") from None
    return set(atoms.get_chemical_symbols())


def check_run_files(cfg: RunConfig) -> None:
    """The checks of a run file that need its files: each exists, and a structure file holds only
    the run's elements. Raises :class:`KeyProblem` naming the key."""
    for key, path in _input_files(cfg):
        if not path.exists():
            raise KeyProblem(key, f"{path} does not exist")
    for key, src in _file_structures(cfg):
        extra = sorted(_structure_elements(key, src) - set(cfg.system.elements))
        if extra:
            raise KeyProblem(key, f"{src.path} holds {', '.join(extra)}, not in system.elements "
                                  f"({', '.join(cfg.system.elements)})")
    if isinstance(cfg.dft, EspressoConfig) and cfg.embedding.charge_policy != "none":
        from autopipe.carving.charge import ChargeRule
        from autopipe.errors import AutopipeError

        try:
            ChargeRule.from_run(cfg)  # reads every element's valence, as each carve will
        except AutopipeError as exc:
            raise KeyProblem("dft.pseudopotentials", f"embedding.charge_policy needs valences: {exc}") from None
    if cfg.embedding.strategy == "commensurate" or (cfg.embedding.strategy == "budget" and (
            cfg.embedding.lattice is not None or isinstance(cfg.system.structure, BulkStructure))):
        _check_tiling(cfg)


def _check_tiling(cfg: RunConfig) -> None:
    """The reference lattice must tile the starting structure's cell (within 2 %)."""
    import numpy as np

    from autopipe.carving.lattice import LatticeMismatch, tiling_matrix
    from autopipe.carving.reference import reference_lattice, starting_cell

    key = "embedding.lattice" if cfg.embedding.lattice is not None else "system.structure"
    try:
        lattice = reference_lattice(cfg)
        parent = starting_cell(cfg)
        if not np.all(parent.pbc):
            raise LatticeMismatch("the starting structure is not periodic along all three axes")
        tiling_matrix(np.array(parent.cell), lattice, max_strain=0.02)
    except LatticeMismatch as exc:
        raise KeyProblem(key, f"commensurate carving: {exc}") from None
    except Exception as exc:  # an unreadable lattice file, a crystal ASE cannot build with these elements
        raise KeyProblem(key, f"commensurate carving: no reference lattice: {' '.join(str(exc).split())}") from None


def load_run(path: Path | str, workdir: Path | None = None) -> RunConfig:
    """Load and validate a run file, including the files it names (``check_run_files``);
    ``workdir`` overrides the file's work directory. Nothing is written."""
    cfg = load_model(RunConfig, Path(path))
    try:
        check_run_files(cfg)
    except KeyProblem as problem:
        raise ConfigError(f"{path}: {problem.key}: {one_line(str(problem))}") from None
    if workdir is not None:
        cfg.workdir = Path(workdir).resolve()
    return cfg
