"""Command line: ``autopipe-steer`` runs the loop; ``autopipe`` inspects and reports.

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
    """A short human-readable plan of what a run will do and where."""
    lines = [
        f"run {run_cfg.name!r} on site {site_cfg.name!r}",
        f"  work directory : {run_cfg.workdir}",
        f"  database       : {run_cfg.database_url()}",
        f"  elements       : {', '.join(run_cfg.system.elements)} (structure: {run_cfg.system.structure.kind})",
        f"  potential      : {run_cfg.initial_potential.kind}"
        + (f" -> {run_cfg.initial_potential.name}" if run_cfg.initial_potential.kind == "generate" else ""),
        f"  md             : {run_cfg.walkers.count} walker(s), {run_cfg.md.ensemble}, {run_cfg.md.temperature:g} K, "
        + (f"start {run_cfg.md.initial_temperature:g} K, " if run_cfg.md.initial_temperature is not None else "")
        + f"dt {run_cfg.md.timestep:g} fs, {run_cfg.md.segment_steps} steps/segment, {run_cfg.md.dimension}D",
        f"  otf            : gamma > {run_cfg.otf.uncertainty_threshold:g} checked every {run_cfg.otf.check_frequency} "
        f"steps, up to {run_cfg.otf.max_extractions} sub-cell(s) per trigger",
        f"  embedding      : cutoff {run_cfg.embedding.cutoff:g} Å + buffer {run_cfg.embedding.buffer:g} Å "
        f"-> box {2 * (run_cfg.embedding.cutoff + run_cfg.embedding.buffer):g} Å",
        f"  dft            : {run_cfg.dft.code}",
        f"  training       : retrain after {run_cfg.train.min_new_labels} new labels, "
        f"{run_cfg.train.max_iterations} iterations, backend {run_cfg.train.backend}",
        f"  stop           : {run_cfg.stop.max_md_steps} MD steps per walker"
        + (f", {run_cfg.stop.converged_segments} quiet segments" if run_cfg.stop.converged_segments else "")
        + (f", {run_cfg.stop.max_dft_calls} DFT calls" if run_cfg.stop.max_dft_calls else "")
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
    from autopipe.db import Database

    return Database.for_run(workdir)


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


@app.command()
def check(
    site: Optional[Path] = typer.Option(None, "--site", help="Site file to validate."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run file to validate."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Validate site and/or run files; with --site also build the Parsl config."""
    try:
        from autopipe.config import load_run, load_site

        if site is None and run is None:
            raise AutopipeError("give --site and/or --run")
        if site is not None:
            s = load_site(site)
            from autopipe.config.offline import make_offline_globus_executor

            s.to_parsl_config(globus_executor_factory=make_offline_globus_executor)
            typer.echo(f"{site}: OK ({len(s.executors)} executor(s))")
        if run is not None:
            load_run(run)
            typer.echo(f"{run}: OK")
    except AutopipeError as exc:
        _fail(exc, debug)


def main() -> None:
    """Entry point of ``autopipe``."""
    app()


def steer_main() -> None:
    """Entry point of ``autopipe-steer``."""
    steer_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
