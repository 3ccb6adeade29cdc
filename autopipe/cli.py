"""Command line: ``autopipe-steer`` runs the loop; ``autopipe`` inspects and reports (and rolls back).

Heavy imports (Parsl, LAMMPS, pyace, TensorFlow) happen inside commands, never at
import time, so ``--help`` and config checks answer at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from autopipe.errors import AutopipeError

app = typer.Typer(
    name="autopipe",
    help="Inspect and report on autopipe active-learning runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
steer_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    msg = str(exc).strip() or type(exc).__name__
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _load(site: Path, run: Path, workdir: Optional[Path]):
    from autopipe.config import load_run, load_site

    return load_site(site), load_run(run, workdir=workdir)


def plan_text(site_cfg, run_cfg) -> str:
    """A short human-readable plan of what a run will do and where (no passwords)."""
    from autopipe.db.session import redacted

    lines = [
        f"run {run_cfg.name!r} on site {site_cfg.name!r}",
        f"  work directory : {run_cfg.workdir}",
        f"  database       : {redacted(run_cfg.database_url())}",
        f"  elements       : {', '.join(run_cfg.system.elements)} (structure: {run_cfg.system.structure.kind})",
        f"  potential      : {run_cfg.initial_potential.kind}"
        + (f" -> {run_cfg.initial_potential.name}" if run_cfg.initial_potential.kind == "generate" else ""),
        f"  md             : {run_cfg.walkers.count} walker(s), {run_cfg.md.ensemble}, {run_cfg.md.temperature:g} K, "
        + (f"start {run_cfg.md.initial_temperature:g} K, " if run_cfg.md.initial_temperature is not None else "")
        + f"dt {run_cfg.md.timestep:g} fs, {run_cfg.md.segment_steps} steps/segment, {run_cfg.md.dimension}D",
        f"  otf            : gamma > {run_cfg.otf.uncertainty_threshold:g} checked every {run_cfg.otf.check_frequency} "
        f"steps, up to {run_cfg.otf.max_extractions} sub-cell(s) per trigger",
        "  embedding      : "
        + ("whole trigger frames (no carving)" if run_cfg.embedding.whole_frame == "always" else
           f"{run_cfg.embedding.strategy}: core {run_cfg.embedding.core_radius:g} Å + buffer "
           f"{run_cfg.embedding.buffer:g} Å (half-width {run_cfg.embedding.core_radius + run_cfg.embedding.buffer:g} Å)"
           + (f", k-points {run_cfg.embedding.kpoints}" if run_cfg.dft.code == "espresso" else "")),
        f"  dft            : {run_cfg.dft.code}",
        f"  training       : retrain after {run_cfg.train.min_new_labels} new labels, "
        f"{run_cfg.train.max_iterations} iterations, backend {run_cfg.train.backend}",
        f"  stop           : {run_cfg.stop.max_md_steps} MD steps per walker"
        + (f", {run_cfg.stop.converged_segments} quiet segments" if run_cfg.stop.converged_segments else "")
        + (f", {run_cfg.stop.max_dft_calls} DFT calls" if run_cfg.stop.max_dft_calls else "")
        + (f", {run_cfg.stop.max_dft_seconds:g} s of DFT" if run_cfg.stop.max_dft_seconds else "")
        + (f", {run_cfg.stop.max_trainings} trainings" if run_cfg.stop.max_trainings else "")
        + (f", {run_cfg.stop.max_walltime:g} s" if run_cfg.stop.max_walltime else ""),
        "  executors      : "
        + "; ".join(f"{e.label} ({e.kind}: {', '.join(e.roles)})" for e in site_cfg.executors),
    ]
    return "\n".join(lines)


@steer_app.command()
def steer(
    site: Path = typer.Option(..., "--site", help="Site file: where work runs (executors and roles)."),
    run: Path = typer.Option(..., "--run", help="Run file: system, potential, MD, OTF, DFT, training, stop rules."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Overrides the run file's work directory."),
    check: bool = typer.Option(False, "--check", help="Validate both files, print the plan and exit."),
    live: bool = typer.Option(True, "--live/--no-live", help="Rich live view while running."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Run the active-learning loop until a stopping rule fires. Run it again to resume."""
    try:
        site_cfg, run_cfg = _load(site, run, workdir)
        typer.echo(plan_text(site_cfg, run_cfg))
        if check:
            typer.echo("configuration OK")
            return
        from autopipe.steer.loop import run_loop

        outcome = run_loop(site_cfg, run_cfg, live=live)
        typer.echo(f"stopped: {outcome.stopped_because}")
    except AutopipeError as exc:
        _fail(exc, debug)
    except KeyboardInterrupt:
        typer.secho("interrupted; run the same command again to resume", err=True)
        raise typer.Exit(code=130)
    except Exception as exc:  # a bug or an environment problem: still one line unless --debug
        if debug:
            raise
        typer.secho(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback; "
                    "the same command resumes the run)", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1)


def _database_for(workdir: Path):
    """The run's database, read-only (the commands that inspect a run never change it)."""
    from autopipe.db import Database

    return Database.for_run(workdir)


def _fail_on_database_error(exc: Exception, debug: bool) -> None:
    """A database error met while reading a run (server gone, file locked) as one line; any
    other exception goes on (a bug: its traceback is wanted)."""
    from sqlalchemy.exc import SQLAlchemyError

    if debug or not isinstance(exc, SQLAlchemyError):
        raise exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    _fail(AutopipeError(f"reading the run database failed: {first}"), debug)


@app.command()
def status(
    workdir: Path = typer.Option(..., "--workdir", help="Work directory of the run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Counts of structures, labels, potentials, segments and tasks from the database."""
    try:
        from autopipe.status import collect_status, render_status

        st = collect_status(_database_for(workdir))
        typer.echo(json.dumps(st, indent=None if as_json else 2, default=str) if as_json else render_status(st))
    except AutopipeError as exc:
        _fail(exc, debug)
    except Exception as exc:
        _fail_on_database_error(exc, debug)


@app.command()
def report(
    workdir: Path = typer.Option(..., "--workdir", help="Work directory of the run."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """(Re)build the HTML report (plots and tables) of a run from its database."""
    try:
        from autopipe.report import build_report

        path = build_report(_database_for(workdir), workdir)
        typer.echo(f"report written to {path}")
    except AutopipeError as exc:
        _fail(exc, debug)
    except Exception as exc:
        _fail_on_database_error(exc, debug)


@app.command()
def rollback(
    workdir: Path = typer.Option(..., "--workdir", help="Work directory of the run."),
    to: int = typer.Option(..., "--to", help="The earlier version the walkers go back to (e.g. 3 for v3)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Put the walkers back on an earlier published version, from their next segment on.

    Versions above it are withdrawn (kept in the store). Works while the loop runs: it reads the
    change from the database at its next cycle, or when the run is resumed."""
    try:
        from autopipe.db import Database
        from autopipe.layout import RunLayout
        from autopipe.potentials import PotentialStore
        from autopipe.steer.gate import rollback as roll_back

        url = _database_for(workdir).url  # checks run, database and schema (one line) before writing
        db = Database(url, create=False)
        try:
            withdrawn = roll_back(db, PotentialStore(db, RunLayout(workdir).potentials), to)
        except ValueError as exc:
            raise AutopipeError(str(exc)) from None
        finally:
            db.dispose()
        off = f" (withdrawn: {', '.join(f'v{v}' for v in withdrawn)})" if withdrawn else ""
        typer.echo(f"walkers use v{to} from their next segment on{off}")
    except AutopipeError as exc:
        _fail(exc, debug)
    except Exception as exc:
        _fail_on_database_error(exc, debug)


@app.command()
def replay(
    workdir: Path = typer.Option(..., "--workdir", help="Work directory of the run."),
    first: Optional[int] = typer.Option(None, help="Version to replay first (default: 1)."),
    last: Optional[int] = typer.Option(None, help="Version to compare with (default: newest)."),
    fresh_seeds: int = typer.Option(4, "--fresh-seeds", min=0,
                                    help="Fresh starts (new seeds) run with both potentials; 0 skips them."),
    contact_frames: int = typer.Option(3, "--contact-frames", min=0,
                                       help="Closest-contact frames taken from each fresh trajectory."),
    dft_frames: int = typer.Option(2, "--dft-frames", min=0,
                                   help="pw.x runs: how many of those frames to label (full MD cells); oracles label all."),
    seed_base: Optional[int] = typer.Option(None, "--seed-base", min=1,
                                            help="First fresh seed, default 1000 (seeds the run used are skipped)."),
    site: Optional[Path] = typer.Option(None, "--site", help="Site file whose dft_launcher runs pw.x (default: none)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """First vs newest potential: walker 0's own trajectory again (in-sample), then fresh trajectories
    from new seeds the loop never saw (held-out), with force errors on their closest contacts."""
    try:
        from autopipe.config import load_site
        from autopipe.config.run import load_resolved_run
        from autopipe.replay import compare, compare_fresh, describe

        run = load_resolved_run(workdir)
        typer.echo("in-sample replay (walker 0 from its first state: the trajectory the loop learnt from):")
        for r in compare(workdir, first, last):
            typer.echo("  " + describe(r, run.otf.uncertainty_threshold))
        if fresh_seeds:
            launcher = list(load_site(site).executor_for("dft").dft_launcher) if site else []
            fresh = compare_fresh(workdir, first, last, n_seeds=fresh_seeds, frames_per_trajectory=contact_frames,
                                  dft_frames=dft_frames, seed_base=seed_base, launcher=launcher,
                                  progress=lambda line: typer.echo("  " + line, err=True))
            typer.echo("\n".join(fresh.describe()))
    except (AutopipeError, ValueError, FileNotFoundError) as exc:
        _fail(exc, debug)
    except Exception as exc:
        _fail_on_database_error(exc, debug)


@app.command()
def check(
    site: Optional[Path] = typer.Option(None, "--site", help="Site file to validate."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run file to validate."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Validate site and/or run files and the rules between them (autopipe/config/checks.py).

    Builds the Parsl executors of the site (nothing starts), asks Slurm whether it would accept
    the blocks when it answers here (sbatch --test-only), and never contacts a Globus endpoint.
    """
    try:
        import tempfile

        from autopipe.config import checks, load_run, load_site

        if site is None and run is None:
            raise AutopipeError("give --site and/or --run")
        site_cfg = load_site(site) if site is not None else None
        run_cfg = load_run(run) if run is not None else None
        findings: list[checks.Finding] = []
        if site_cfg is not None:
            with tempfile.TemporaryDirectory(prefix="autopipe-check-") as tmp:
                findings += checks.check_site(site_cfg, checks.build_executors(site_cfg, Path(tmp)))
        data = None
        if run_cfg is not None:
            from autopipe.analysis.buffer_scan import buffer_warnings
            from autopipe.potentials.imported import check_training_data

            data = check_training_data(run_cfg)  # one-line error if the user's dataset is unusable
            findings += checks.check_run(run_cfg)
            for line in buffer_warnings(run_cfg):  # also parses an imported potential file
                level, _, message = line.partition(": ")
                findings.append(checks.Finding(level, message))  # type: ignore[arg-type]
        if site_cfg is not None and run_cfg is not None:
            findings += checks.check_pair(site_cfg, run_cfg)
        for f in findings:
            colour = {"error": typer.colors.RED, "warning": typer.colors.YELLOW}.get(f.level)
            typer.secho(str(f), err=f.level != "note", fg=colour)
        if any(f.level == "error" for f in findings):
            raise typer.Exit(code=2)
        if site_cfg is not None:
            typer.echo(f"{site}: OK ({len(site_cfg.executors)} executor(s))")
        if run_cfg is not None:
            typer.echo(f"{run}: OK" + (f" (training data: {len(data.rows)} structures, energy reference "
                                       f"{data.reference_source})" if data is not None else ""))
    except AutopipeError as exc:
        _fail(exc, debug)


@app.command("buffer-scan")
def buffer_scan(
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Run whose trigger frame to scan (its database)."),
    structure_id: Optional[int] = typer.Option(None, "--structure-id", help="Frame id in the run (default: the first trigger frame)."),
    structure: Optional[Path] = typer.Option(None, "--structure", help="Or a structure file (any ASE format) ..."),
    run: Optional[Path] = typer.Option(None, "--run", help="... with the run file whose labeller and embedding to use."),
    center: Optional[int] = typer.Option(None, "--center", help="Centre atom (default: where the loop carved, else max gamma)."),
    buffers: Optional[str] = typer.Option(None, "--buffers", help="Buffer widths in Å, comma-separated "
                                          "(default: 0.5, 1, 1.5, 2 and 3 times embedding.buffer)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: buffer-scan.png, or carve-scan/scan.png "
                                       "for the carving instrument, in the work directory or here)."),
    against_frame: bool = typer.Option(False, "--against-frame", help="Also label the whole frame and use its "
                                       "forces as the reference (exact; affordable for small frames)."),
    strategies: Optional[str] = typer.Option(None, "--strategies", help="Carving instrument: strategies to compare "
                                             "against the whole frame, comma-separated (cube, commensurate; "
                                             "default cube)."),
    kpoints: Optional[str] = typer.Option(None, "--kpoints", help="Carving instrument: k-point rules of the cells "
                                          "(density, fold; default density)."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Carving instrument: more frames from files "
                                         "(comma-separated), besides the run's trigger frame."),
    centres: Optional[str] = typer.Option(None, "--centres", help="Centre atom of each --frames file (default: "
                                          "the argmax of its gamma array)."),
    max_error_ratio: Optional[float] = typer.Option(None, "--max-error-ratio", help="Carving instrument: the "
                                                    "budget's bound, core rms over the potential's (default 0.5)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Label sub-cells of growing buffer around a trigger atom: how much do the core forces still change?

    Uses the run's labeller; prints and plots the largest core-force change against buffer
    width and each cell's cost (atoms, wall time). With --strategies, --kpoints or --frames it
    is the carving instrument: every strategy x buffer x k rule x frame against the whole
    frame's label (cached in <workdir>/carve-scan/cache) and the newest potential's error on
    the same atoms, with the budget's choice.
    """
    try:
        from autopipe.analysis.buffer_scan import (
            default_center, format_table, plot_scan, potential_cutoff, scan_buffers, trigger_frame,
        )
        from autopipe.config import load_run
        from autopipe.config.run import RunConfig
        from autopipe.dft import label

        instrument = strategies is not None or kpoints is not None or frames is not None
        if instrument:  # options first: a typo must not cost a whole-frame label
            from autopipe.carving.strategies import STRATEGIES

            chosen = _choices(strategies, "--strategies", STRATEGIES, ("cube",))
            rules = _choices(kpoints, "--kpoints", ("density", "fold"), None)
            extra = _file_frames(frames, centres) if frames else []
        if workdir is not None:
            cfg = RunConfig.model_validate_json((workdir / "run.resolved.json").read_text())
            db = _database_for(workdir)
            try:
                frame, c, sid = trigger_frame(db, structure_id)
            except AutopipeError:
                if not (instrument and extra and structure_id is None):
                    raise
                frame, c, sid = None, None, None  # no trigger frame yet: the files' frames alone
            base = workdir
        elif structure is not None and run is not None:
            from ase.io import read

            cfg, frame, sid, base = load_run(run), read(structure), None, Path.cwd()
            c = default_center(frame)
        else:
            raise AutopipeError("give --workdir (a run) or --structure with --run")
        c = c if center is None else center
        if c is None and frame is not None:
            raise AutopipeError("the frame has no per-atom gamma and no carved sub-cell: give --center")
        e = cfg.embedding
        widths = ([float(x) for x in buffers.split(",") if x.strip()] if buffers
                  else [round(k * e.buffer, 3) for k in (0.5, 1, 1.5, 2, 3)])
        if instrument:
            from autopipe.analysis.carve_scan import Frame

            own = [] if frame is None else [Frame(f"s{sid}" if sid is not None else Path(structure).stem, frame, c)]
            # Defaults from the run's own carving settings: the scan judges what the run would do.
            _carve_instrument(cfg, own + extra, base, workdir, widths, chosen, rules or (e.kpoints,),
                              e.max_error_ratio if max_error_ratio is None else max_error_ratio, out)
            return
        scratch = base / "buffer-scan"
        typer.echo(f"frame {sid if sid is not None else structure}: {len(frame)} atoms, centre atom {c}, "
                   f"buffers {widths} Å, labeller {cfg.dft.code}")

        calls = iter(range(1, 1000))

        def label_fn(atoms):
            return label(atoms, cfg.dft, workdir=scratch / f"cell-{next(calls)}-{len(atoms)}-atoms")

        scan = scan_buffers(frame, c, e.core_radius, widths, label_fn, min_distance=e.min_distance, code=cfg.dft.code,
                            potential_cutoff=potential_cutoff(cfg), against_frame=against_frame,
                            progress=lambda p: typer.echo(f"  buffer {p.buffer:g} Å: {p.n_atoms} atoms, "
                                                          f"{p.status} in {p.walltime:.1f} s"))
        typer.echo(format_table(scan))
        typer.echo(f"plot written to {plot_scan(scan, out or base / 'buffer-scan.png')}")
    except (AutopipeError, FileNotFoundError, ValueError) as exc:
        _fail(exc, debug)


def _choices(text: Optional[str], option: str, allowed, default) -> list[str]:
    """The comma-separated names of ``option``, each one of ``allowed`` (none given: ``default``, or empty)."""
    names = list(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))
    for name in names:
        if name not in allowed:
            raise AutopipeError(f"{option}: unknown {name!r} (one of {', '.join(allowed)})")
    return names or list(default or ())


def _file_frames(frames: str, centres: Optional[str]) -> list:
    """``--frames`` files as carve-scan frames, centred on ``--centres`` or each file's largest gamma."""
    from ase.io import read

    from autopipe.analysis.buffer_scan import default_center
    from autopipe.analysis.carve_scan import Frame

    paths = [Path(x.strip()) for x in frames.split(",") if x.strip()]
    given = [int(x) for x in centres.split(",") if x.strip()] if centres else None
    if given is not None and len(given) != len(paths):
        raise AutopipeError(f"--centres: {len(given)} centre(s) for {len(paths)} frame(s) in --frames")
    out = []
    for k, path in enumerate(paths):
        atoms = read(path)
        c = given[k] if given is not None else default_center(atoms)
        if c is None:
            raise AutopipeError(f"{path}: no per-atom gamma array to pick the centre atom: give --centres")
        if not 0 <= c < len(atoms):
            raise AutopipeError(f"{path}: centre atom {c} is not one of its {len(atoms)} atoms (--centres)")
        out.append(Frame(path.stem, atoms, int(c)))
    return out


def _newest_potential(workdir: Optional[Path]):
    """The run's newest intact potential (read-only), or None (no run, nothing published)."""
    if workdir is None:
        return None
    from autopipe.layout import RunLayout
    from autopipe.potentials import PotentialStore

    root = RunLayout(workdir).potentials
    return PotentialStore(_database_for(workdir), root).latest() if root.is_dir() else None


def _carve_instrument(cfg, frames, base: Path, workdir: Optional[Path], widths, strategies, rules,
                      max_error_ratio: float, out: Optional[Path]) -> None:
    """``buffer-scan --strategies/--kpoints/--frames``: scan, print the table, the pooled measurements and the
    budget's choice; write ``<base>/carve-scan/table.md`` and the plot. Whole-frame labels are cached."""
    import numpy as np

    from autopipe.analysis.carve_scan import (
        cached_whole_label, format_table, measurements, plot_points, scan_carves, whole_frame_key,
    )
    from autopipe.carving.budget import choose
    from autopipe.carving.reference import reference_lattice
    from autopipe.dft import label
    from autopipe.potentials.uncertainty import evaluate

    scratch, e = base / "carve-scan", cfg.embedding
    settings = cfg.dft.model_dump(mode="json")
    pot = _newest_potential(workdir)
    lattice = reference_lattice(cfg)
    typer.echo(f"{len(frames)} frame(s), strategies {', '.join(strategies)}, buffers {widths} Å, k rules "
               f"{', '.join(rules)}, labeller {cfg.dft.code}, potential "
               + (f"v{pot.version}" if pot else "none published (no potential error, no budget)")
               + ("" if lattice is not None or "commensurate" not in strategies
                  else "; no reference lattice: commensurate cells are refused"))
    names = {id(f.atoms): f.name for f in frames}
    calls = iter(range(1, 1_000_000))

    def label_cell(atoms):
        return label(atoms, cfg.dft, workdir=scratch / f"cell-{next(calls)}-{len(atoms)}-atoms")

    def whole(atoms):
        key = whole_frame_key(atoms, settings)
        cached = (scratch / "cache" / f"{key}.json").exists()
        forces, seconds, status = cached_whole_label(
            atoms, settings, scratch / "cache", lambda a: label(a, cfg.dft, workdir=scratch / f"whole-{key}"))
        typer.echo(f"  whole frame {names.get(id(atoms), '?')}: {len(atoms)} atoms, "
                   + (f"cached ({seconds:.1f} s of DFT)" if cached else f"{status} in {seconds:.1f} s"))
        return forces, seconds, status

    def progress(p) -> None:
        typer.echo(f"  {p.frame} {p.strategy}, buffer {p.buffer:g} Å, k {p.kpoints} ({p.mesh}): {p.n_atoms} atoms "
                   f"labelled: {p.status} in {p.dft_seconds:.1f} s")

    kpt = {k: getattr(cfg.dft, k) for k in ("kspacing", "gamma_only_length") if hasattr(cfg.dft, k)}
    points = scan_carves(frames, core_radius=e.core_radius, strategies=strategies, buffers=widths,
                         kpoint_rules=rules, label_fn=label_cell, whole_label=whole,
                         potential_forces=(lambda a: np.asarray(evaluate(a, pot)["forces"])) if pot else None,
                         lattice=lattice, min_distance=e.min_distance, progress=progress, **kpt)
    table = format_table(points)
    typer.echo(table)
    measured = measurements(points)
    typer.echo(f"measured (core atoms pooled over {len(frames)} frame(s)):")
    for m in measured:
        typer.echo(f"  {m.name}: core rms {1000 * m.core_rms:.0f} meV/Å, potential {1000 * m.potential_rms:.0f} "
                   f"meV/Å (ratio {m.ratio:.2f}), {m.cost:.1f} s per cell ({m.n_atoms} atoms), "
                   f"{m.frame_cost:.1f} s per whole frame")
    bound = cfg.embedding.max_core_force_error
    typer.echo("budget: " + (choose(measured, max_error_ratio, bound).reason if pot is not None else
                             "not chosen: no published potential whose error the carves could be weighed against"))
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "table.md").write_text(table + "\n")
    typer.echo(f"table written to {scratch / 'table.md'}")
    typer.echo(f"plot written to {plot_points(points, out or scratch / 'scan.png')}")


def main() -> None:
    """Entry point of ``autopipe``."""
    app()


def steer_main() -> None:
    """Entry point of ``autopipe-steer``."""
    steer_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
