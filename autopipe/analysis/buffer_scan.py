"""How wide must the embedding buffer be? Label sub-cells of growing buffer and watch the core forces.

The loop trains on the forces of the trusted core of a carved periodic cell (atoms within
``embedding.core_radius`` of the centre) and masks the rest. Those core forces equal the ones
in the parent frame only if nothing beyond the buffer reaches them. Carving removes masked
atoms closer than ``min_distance`` across the new faces, so the buffer's outer ``min_distance/2``
may have lost atoms (see ``extract_periodic_subsystem``, "Exactness"):

* a pair potential of range rc: buffer >= rc + min_distance/2 suffices;
* a many-body potential such as ACE of cutoff rc: the force on atom i is
  -dE/dr_i = -sum_j dE_j/dr_i over every j within rc of i, and each E_j depends on the
  neighbours of j, so forces depend on atoms up to 2*rc away: buffer >= 2*rc + min_distance/2;
* DFT: the range is physical (screening, band gap) and unknown beforehand.

:func:`scan_buffers` carves sub-cells around the same centre with a list of buffer widths,
labels each with the run's labeller and reports, per width, the largest change of any
core atom's force against the widest buffer, with the labelling cost (atoms, wall time).
The core forces converge once the buffer covers the force range; the plot shows where.

Units: Å, eV/Å, s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from ase import Atoms

    from autopipe.config.run import RunConfig
    from autopipe.db import Database

#: Largest displacement mismatch (Å) between matched core atoms of two sub-cells: they are
#: the same parent atoms at the same offsets from the centre, up to round-off.
MATCH_TOLERANCE = 1e-6


@dataclass(frozen=True)
class BufferPoint:
    """One sub-cell of the scan."""

    buffer: float  # Å
    side: float  # Å, cube side 2*(cutoff + buffer)
    n_atoms: int
    n_core: int
    status: str  # the label's status: done, failed, refused
    walltime: float  # s of labelling
    max_force_change: float | None  # eV/Å, max over core atoms of |F - F(reference)|; None without both labels
    rms_force_change: float | None  # eV/Å, RMS over core atoms of |F - F(reference)|
    error: str | None = None


@dataclass(frozen=True)
class BufferScan:
    """The whole scan: every point, and what it was measured against."""

    center: int
    cutoff: float  # Å, trusted-core radius
    min_distance: float  # Å
    code: str  # labeller
    points: list[BufferPoint] = field(default_factory=list)
    potential_cutoff: float | None = None  # Å, the ACE cutoff rc for orientation (rc and 2*rc)
    frame_point: BufferPoint | None = None  # the whole frame's label when it is the reference

    @property
    def reference_buffer(self) -> float:
        return max(p.buffer for p in self.points)

    @property
    def reference(self) -> str:
        if self.frame_point is not None:
            return f"the whole frame ({self.frame_point.n_atoms} atoms)"
        return f"the widest buffer ({self.reference_buffer:g} Å)"


def _core(sub: Atoms, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, parent indices, displacements from the centre in Å) of the unmasked atoms of ``sub``."""
    keep = np.setdiff1d(np.arange(len(sub)), masked)
    d = sub.positions[keep] - sub.positions[0]  # sub[0] is the centre; core atoms never wrap
    return keep, np.asarray(sub.arrays["parent_index"])[keep], d


def _match(ref: tuple[np.ndarray, np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """For each core atom of ``ref``, the index into ``other``'s core of the same atom."""
    _, p_ref, d_ref = ref
    _, p_oth, d_oth = other
    out = np.empty(len(p_ref), dtype=int)
    for k, (p, d) in enumerate(zip(p_ref, d_ref)):
        cand = np.flatnonzero(p_oth == p)  # several only when the parent is smaller than the core
        if cand.size == 0:
            raise AutopipeError(f"core atom {int(p)} is missing from a sub-cell: the cores differ")
        dist = np.linalg.norm(d_oth[cand] - d, axis=1)
        if dist.min() > MATCH_TOLERANCE:
            raise AutopipeError(f"core atom {int(p)} sits elsewhere in another sub-cell: the cores differ")
        out[k] = cand[int(np.argmin(dist))]
    return out


def scan_buffers(
    frame: Atoms,
    center: int,
    cutoff: float,
    buffers: Sequence[float],
    label_fn: Callable[[Atoms], Any],
    *,
    min_distance: float = 0.5,
    code: str = "",
    potential_cutoff: float | None = None,
    against_frame: bool = False,
    progress: Callable[[BufferPoint], None] | None = None,
) -> BufferScan:
    """Label sub-cells of ``frame`` around atom ``center`` for each buffer width; compare core forces.

    ``label_fn(atoms)`` returns a :class:`autopipe.dft.LabelResult` (or anything with
    ``status``, ``forces``, ``walltime``, ``error``). The reference is the widest buffer
    (its own change is then 0 by definition) or, with ``against_frame``, the whole frame
    labelled once more: the exact answer when the frame is small enough for DFT (a core
    atom's force is that of the frame atom it images). Buffers are labelled narrowest
    first and ``progress`` is called after each. Carving errors (e.g. ``min_distance``
    not below half the cell) raise :class:`AutopipeError`.
    """
    from autopipe.embedding import extract_periodic_subsystem

    widths = sorted({float(b) for b in buffers})
    if not widths or widths[0] <= 0:
        raise AutopipeError("give at least one positive buffer width (Å)")
    cells = []
    for b in widths:
        try:
            sub, masked = extract_periodic_subsystem(frame, center, cutoff, b, min_distance=min_distance)
        except ValueError as exc:
            raise AutopipeError(f"cannot carve a sub-cell with buffer {b:g} Å: {exc}") from None
        cells.append((b, sub, masked))
    results = []
    for b, sub, masked in cells:
        results.append(label_fn(sub))
        if progress is not None:
            r = results[-1]
            progress(BufferPoint(b, 2 * (cutoff + b), len(sub), len(sub) - len(masked), str(r.status),
                                 float(r.walltime or 0.0), None, None, r.error))
    frame_point = None
    ref_sub, ref_masked = cells[-1][1], cells[-1][2]
    ref_core = _core(ref_sub, ref_masked)
    if against_frame:
        whole = label_fn(frame)
        frame_point = BufferPoint(float("inf"), float("nan"), len(frame), len(ref_core[0]), str(whole.status),
                                  float(whole.walltime or 0.0), 0.0, 0.0, whole.error)
        ref_ok = whole.status == "done"
        f_ref = np.asarray(whole.forces)[ref_core[1]] if ref_ok else None  # images carry their atom's force
    else:
        ref_ok = results[-1].status == "done"
        f_ref = np.asarray(results[-1].forces)[ref_core[0]] if ref_ok else None
    points = []
    for (b, sub, masked), r in zip(cells, results):
        core = _core(sub, masked)
        dmax = drms = None
        if ref_ok and r.status == "done":
            idx = _match(ref_core, core)
            df = np.linalg.norm(np.asarray(r.forces)[core[0][idx]] - f_ref, axis=1)
            dmax, drms = float(df.max()), float(math.sqrt(np.mean(df**2)))
        points.append(BufferPoint(buffer=b, side=2 * (cutoff + b), n_atoms=len(sub), n_core=len(core[0]),
                                  status=str(r.status), walltime=float(r.walltime or 0.0),
                                  max_force_change=dmax, rms_force_change=drms, error=r.error))
    return BufferScan(center=int(center), cutoff=float(cutoff), min_distance=float(min_distance), code=code,
                      points=points, potential_cutoff=potential_cutoff, frame_point=frame_point)


def format_table(scan: BufferScan) -> str:
    """The scan as a plain-text table (one line per buffer)."""
    lines = [f"centre atom {scan.center}, core radius {scan.cutoff:g} Å, labeller {scan.code or '?'}; "
             f"core forces against {scan.reference}"]
    if scan.potential_cutoff:
        rc = scan.potential_cutoff
        lines.append(f"potential cutoff rc = {rc:g} Å: exact for a pair potential at buffer >= rc, "
                     f"for ACE (many-body) at buffer >= 2*rc = {2 * rc:g} Å")
    lines.append(f"{'buffer Å':>9} {'cell Å':>7} {'atoms':>6} {'core':>5} {'max |dF| eV/Å':>14} "
                 f"{'rms |dF| eV/Å':>14} {'wall s':>8}  status")
    for p in scan.points:
        fmt = (lambda x: f"{x:14.2e}" if x is not None else f"{'-':>14}")
        lines.append(f"{p.buffer:9.2f} {p.side:7.2f} {p.n_atoms:6d} {p.n_core:5d} {fmt(p.max_force_change)} "
                     f"{fmt(p.rms_force_change)} {p.walltime:8.2f}  {p.status}" + (f" ({p.error})" if p.error else ""))
    if scan.frame_point is not None:
        f = scan.frame_point
        lines.append(f"{'frame':>9} {'':>7} {f.n_atoms:6d} {f.n_core:5d} {'(reference)':>14} {'':>14} "
                     f"{f.walltime:8.2f}  {f.status}" + (f" ({f.error})" if f.error else ""))
    return "\n".join(lines)


def plot_scan(scan: BufferScan, path: Path | str) -> Path:
    """PNG: largest core-force change against buffer width (log scale), and atoms / wall time per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b = np.array([p.buffer for p in scan.points])
    dmax = np.array([np.nan if p.max_force_change is None else p.max_force_change for p in scan.points])
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ref = (b == b.max()) if scan.frame_point is None else np.zeros(len(b), bool)
    # The reference itself has change 0, which a log axis cannot show.
    ax.semilogy(b[~ref], np.clip(dmax[~ref], 1e-12, None), "o-", label="max |ΔF| of core atoms")
    if scan.potential_cutoff:
        for x, name in ((scan.potential_cutoff, "rc"), (2 * scan.potential_cutoff, "2 rc")):
            ax.axvline(x, color="grey", ls="--", lw=1)
            ax.text(x, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", color="grey")
    ax.set_ylabel("core force error (eV/Å)")
    ax.set_title(f"core forces against {scan.reference}", fontsize=9)
    fig.suptitle(f"buffer convergence ({scan.code or 'labeller'}, core {scan.cutoff:g} Å)")
    ax.legend(loc="lower left")
    ax2.plot(b, [p.n_atoms for p in scan.points], "s-", color="tab:green", label="atoms")
    ax2.set_ylabel("atoms in the cell", color="tab:green")
    ax2.set_xlabel("buffer width (Å)")
    ax3 = ax2.twinx()
    ax3.plot(b, [p.walltime for p in scan.points], "^-", color="tab:red")
    ax3.set_ylabel("labelling wall time (s)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- inputs from a run


def trigger_frame(db: Database, structure_id: int | None = None) -> tuple[Atoms, int | None, int]:
    """(frame, centre atom, structure id) of a run's trigger frame: ``structure_id`` or the first one.

    The centre is the one the loop carved around (an embedded child's ``center_index``),
    else the frame's most uncertain atom, else None.
    """
    from sqlalchemy import select

    from autopipe.db import Origin, Structure, atoms_from_structure
    from autopipe.heldout import not_probe

    with db.session() as s:
        if structure_id is None:
            row = s.scalars(select(Structure).where(Structure.origin == Origin.md_frame, not_probe())
                            .order_by(Structure.id)).first()
            if row is None:
                raise AutopipeError("the run has no trigger frame yet (no MD frame stopped on gamma)")
        else:
            row = s.get(Structure, structure_id)
            if row is None:
                raise AutopipeError(f"the run has no structure {structure_id}")
        child = s.scalars(select(Structure).where(Structure.parent_id == row.id).order_by(Structure.id)).first()
        atoms = atoms_from_structure(row)
        if child is not None and child.center_index is not None:
            center = int(child.center_index)
        elif row.gamma is not None:
            center = int(np.argmax(row.gamma))
        else:
            center = None
        return atoms, center, int(row.id)


def default_center(atoms: Atoms) -> int | None:
    """The most uncertain atom of a frame read from a file (its ``gamma`` array), else None."""
    if "gamma" in atoms.arrays:
        return int(np.argmax(atoms.arrays["gamma"]))
    return None


def potential_cutoff(run_config: RunConfig) -> float:
    """The cutoff rc (Å) of the run's initial potential: ``train.cutoff``, or an imported file's ``rcutij``."""
    init = run_config.initial_potential
    if init.kind == "file":
        from autopipe.potentials.imported import validate_potential_file

        return validate_potential_file(init.path, run_config.system.elements).cutoff
    return float(run_config.train.cutoff)


def buffer_warnings(run_config: RunConfig) -> list[str]:
    """What ``autopipe check`` says about ``embedding.buffer`` against the potential's cutoff rc.

    Exactness needs the force range plus ``min_distance/2`` (atoms that close to a face may be
    removed by the carving). Lines start with ``warning:`` (buffer below rc + min_distance/2: not
    exact even for a pair potential) or ``note:`` (below 2*rc + min_distance/2: not exact for a
    many-body labeller; DFT's range must be measured; or no carving at all with
    ``embedding.whole_frame: always``).
    """
    rc = potential_cutoff(run_config)
    emb = run_config.embedding
    buf, half_gap = emb.buffer, emb.min_distance / 2
    if emb.whole_frame == "always":
        return ["note: embedding.whole_frame is 'always': trigger frames are labelled whole (exact, nothing "
                "masked), so embedding.buffer is not used"]
    if emb.strategy == "budget":
        bound = (f"{1000 * emb.max_core_force_error:g} meV/Å" if emb.max_core_force_error is not None
                 else f"{emb.max_error_ratio:g} x the potential's error on the same atoms")
        return [f"note: embedding.strategy is 'budget': the first trigger frame is labelled whole and the carves "
                f"of buffer {buf:g} Å are measured against it; they are used only while their core error is within "
                f"{bound} (else whole frames), so the buffer is judged by measurement, not by the rule "
                f"buffer >= 2*rc + min_distance/2 = {2 * rc + half_gap:g} Å"]
    if buf < rc + half_gap:
        return [f"warning: embedding.buffer {buf:g} Å is below the potential's cutoff {rc:g} Å + min_distance/2 "
                f"({rc + half_gap:g} Å), so the core forces of carved cells feel the artificial boundary even for a "
                f"pair potential (a many-body potential needs 2*rc + min_distance/2 = {2 * rc + half_gap:g} Å); "
                "measure the labeller's range with `autopipe buffer-scan`"]
    if buf < 2 * rc + half_gap and run_config.dft.code != "lj":  # the LJ oracle is a pair potential
        return [f"note: embedding.buffer {buf:g} Å is below 2*rc + min_distance/2 = {2 * rc + half_gap:g} Å: core "
                "forces are exact for a many-body potential (ACE) only from there; for DFT measure the range "
                "with `autopipe buffer-scan`"]
    return []
