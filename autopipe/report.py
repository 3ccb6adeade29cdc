"""The run report: an HTML page with plots and tables, rebuilt from the database.

``autopipe report --workdir DIR`` writes ``DIR/report/index.html`` with:
max gamma against MD time coloured by potential version; the learning curve (force
RMSE per version on its training set and on held-out collision frames); one carved
sub-cell with its masked atoms marked; a table of wall time per stage.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from autopipe.db import Database, Event, Label, Origin, Potential, Segment, Structure, Walker
from autopipe.layout import RunLayout


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _run_config(workdir: Path) -> dict[str, Any]:
    import json

    p = RunLayout(workdir).resolved_config
    return json.loads(p.read_text()) if p.is_file() else {}


def plot_gamma(db: Database, out: Path, timestep_fs: float, threshold: float | None) -> Path | None:
    """Max gamma (log scale) against MD time (ps), one colour per potential version."""
    with db.session() as s:
        rows = s.execute(select(Segment.potential_version, Segment.gamma_trace, Walker.index)
                         .join(Walker, Walker.id == Segment.walker_id).order_by(Segment.id)).all()
    rows = [r for r in rows if r[1] is not None and len(r[1])]
    if not rows:
        return None
    plt = _mpl()
    versions = sorted({r[0] for r in rows})
    cmap = plt.get_cmap("viridis", max(len(versions), 2))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    seen = set()
    for version, trace, walker in rows:
        t = trace[:, 0] * timestep_fs / 1000.0
        color = cmap(versions.index(version))
        ax.plot(t, trace[:, 1], "-", color=color, lw=1.2, marker=".", ms=3,
                label=f"v{version}" if version not in seen else None)
        seen.add(version)
    if threshold:
        ax.axhline(threshold, color="crimson", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("MD time (ps)")
    ax.set_ylabel("max extrapolation grade γ")
    ax.legend(title="potential", fontsize=8)
    ax.set_title("Uncertainty during MD (each line: one segment)")
    fig.tight_layout()
    path = out / "gamma.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def learning_curve(db: Database, workdir: Path, dft_config) -> list[dict[str, Any]]:
    """Per version: train force RMSE (from pacemaker) and RMSE on held-out collision frames (eV/Å)."""
    from autopipe.potentials import PotentialStore
    from autopipe.validation import force_rmse, trigger_frames

    store = PotentialStore(db, RunLayout(workdir).potentials)
    frames = trigger_frames(db, dft_config)
    rows = []
    for v in store.versions():
        try:
            pot = store.get(v)
        except Exception:  # corrupted: the store refuses it, the report says so
            rows.append({"version": v, "name": "(corrupted)", "train": None, "heldout": None})
            continue
        m = pot.metrics or {}
        train = m.get("train_forces_rmse")
        rows.append({"version": v, "name": pot.name, "parent": pot.parent_version,
                     "train": train, "heldout": force_rmse(pot, frames) if frames else None,
                     "n_frames": len(frames) if frames else 0})
    return rows


def plot_learning(rows: list[dict[str, Any]], out: Path) -> Path | None:
    if not rows:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    v = [r["version"] for r in rows]
    for key, label, marker in (("train", "training set", "o"), ("heldout", "held-out collision frames", "s")):
        y = [r[key] * 1000 if r.get(key) is not None else np.nan for r in rows]
        if not np.all(np.isnan(y)):
            ax.plot(v, y, marker=marker, label=label)
    ax.set_yscale("log")
    ax.set_xticks(v)
    ax.set_xlabel("potential version")
    ax.set_ylabel("force RMSE (meV/Å)")
    ax.set_title("Learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "learning.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_subcell(db: Database, out: Path) -> Path | None:
    """The first carved sub-cell projected on xy: core atoms, masked buffer atoms, centre."""
    from autopipe.db import atoms_from_structure

    with db.session() as s:
        row = s.scalars(select(Structure).where(Structure.origin == Origin.embedded).order_by(Structure.id)).first()
        if row is None:
            return None
        atoms, mask = atoms_from_structure(row), list(row.force_mask or [])
    plt = _mpl()
    pos = atoms.positions
    m = np.zeros(len(atoms), bool)
    m[mask] = True
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    cell = atoms.cell[:]
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]) @ cell[:2, :2]
    ax.plot(corners[:, 0], corners[:, 1], "k-", lw=1)
    ax.scatter(pos[m, 0], pos[m, 1], s=60, c="lightgray", edgecolors="gray", label=f"masked buffer ({m.sum()})")
    ax.scatter(pos[~m, 0], pos[~m, 1], s=60, c="tab:blue", edgecolors="k", label=f"trained core ({(~m).sum()})")
    ax.scatter(pos[:1, 0], pos[:1, 1], s=140, c="crimson", marker="*", label="most uncertain atom")
    rc = atoms.info.get("embedding_cutoff")
    if rc:
        ax.add_patch(plt.Circle(pos[0, :2], rc, fill=False, ls="--", color="tab:blue"))
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(f"Carved sub-cell (structure {row.id})")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = out / "subcell.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def stage_costs(db: Database) -> dict[str, float]:
    """Wall time (s) summed per stage, and the run's elapsed time from its events."""
    from sqlalchemy import func

    with db.session() as s:
        md = s.scalar(select(func.coalesce(func.sum(Segment.walltime), 0.0)))
        dft = s.scalar(select(func.coalesce(func.sum(Label.walltime), 0.0)))
        train = s.scalar(select(func.coalesce(func.sum(Potential.walltime), 0.0)))
        starts = list(s.scalars(select(Event).where(Event.kind == "start").order_by(Event.id)))
        stops = list(s.scalars(select(Event).where(Event.kind == "stop").order_by(Event.id)))
    elapsed = sum(float(e.data.get("walltime", 0.0)) for e in stops)
    return {"MD segments": float(md), "DFT labels": float(dft), "training": float(train), "elapsed": elapsed,
            "starts": len(starts)}


def build_report(db: Database, workdir: Path | str) -> Path:
    """Write ``<workdir>/report/index.html`` (and its PNGs); returns its path."""
    from autopipe.status import collect_status

    workdir = Path(workdir)
    layout = RunLayout(workdir)
    out = layout.report
    out.mkdir(parents=True, exist_ok=True)
    cfg = _run_config(workdir)
    md = cfg.get("md", {})
    otf = cfg.get("otf", {})
    st = collect_status(db)
    gamma_png = plot_gamma(db, out, md.get("timestep", 1.0), otf.get("uncertainty_threshold"))
    curve = learning_curve(db, workdir, cfg.get("dft"))
    learn_png = plot_learning(curve, out)
    sub_png = plot_subcell(db, out)
    costs = stage_costs(db)

    replay_html = ""
    replay_file = layout.replay_summary
    if replay_file.is_file():
        import json

        from autopipe.replay import ReplayResult, describe

        thr = otf.get("uncertainty_threshold", float("nan"))
        items = [describe(ReplayResult(**r), thr) for r in json.loads(replay_file.read_text())]
        replay_html = ("<h2>The proof: replaying the same collisions</h2><p>Walker 0 from its first state, "
                       "same NVE settings, with the first and the newest potential:</p><ul>"
                       + "".join(f"<li>{html.escape(x)}</li>" for x in items) + "</ul>")

    def img(p, alt):
        return f'<img src="{p.name}" alt="{alt}">' if p else f"<p><em>{alt}: nothing to show yet</em></p>"

    def fmt(x, scale=1.0, unit=""):
        return "–" if x is None else f"{x * scale:.2f}{unit}"

    rows = "".join(
        f"<tr><td>v{r['version']}</td><td>{html.escape(str(r['name']))}</td><td>{r.get('parent') or '–'}</td>"
        f"<td>{fmt(r['train'], 1000)}</td><td>{fmt(r['heldout'], 1000)}</td></tr>" for r in curve)
    total = costs["elapsed"] or 1.0
    cost_rows = "".join(
        f"<tr><td>{k}</td><td>{v:.1f}</td><td>{100 * v / total:.0f}%</td></tr>"
        for k, v in costs.items() if k not in ("elapsed", "starts"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autopipe report: {html.escape(cfg.get('name', ''))}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
.grid{{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}}</style></head><body>
<h1>autopipe run “{html.escape(cfg.get('name', str(workdir)))}”</h1>
<p>Generated {dt.datetime.now().isoformat(timespec='seconds')} from <code>{html.escape(db.url)}</code>.
Stopped because: <b>{html.escape(str(st['stopped_because'] or 'not stopped (running or killed)'))}</b>.</p>
<p>Structures {st['structures'].get('total', 0)} (embedded sub-cells {st['embedded']}), labels {st['labels']},
segments {st['segments']}, triggers {st['triggers']}.</p>
{replay_html}
<h2>Uncertainty during MD</h2>{img(gamma_png, 'max gamma against MD time')}
<div class="grid"><div><h2>Learning curve</h2>{img(learn_png, 'force RMSE per version')}
<table><tr><th>version</th><th>name</th><th>parent</th><th>train F RMSE (meV/Å)</th><th>held-out collision frames F RMSE (meV/Å)</th></tr>{rows}</table>
<p>Held-out frames: the MD frames at each trigger, labelled by the oracle for this report (not trained on; pw.x runs are not relabelled).</p></div>
<div><h2>A carved sub-cell</h2>{img(sub_png, 'carved sub-cell')}
<p>Grey atoms lie in the buffer: their forces are masked (weight 0) in training.</p></div></div>
<h2>Where the wall time went</h2>
<table><tr><th>stage</th><th>wall time (s)</th><th>of elapsed</th></tr>{cost_rows}
<tr><td>elapsed (all starts)</td><td>{costs['elapsed']:.1f}</td><td>100%</td></tr></table>
<p>Stages overlap when executors run in parallel, so the fractions need not add up to 100%.</p>
</body></html>"""
    path = out / "index.html"
    path.write_text(page)
    return path
