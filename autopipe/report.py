"""The run report: an HTML page with plots and tables, rebuilt from the database.

``autopipe report --workdir DIR`` writes ``DIR/report/index.html`` with:
max gamma against MD time coloured by potential version; the learning curve (force
RMSE per version on its training set, on the run's trigger frames (in-sample: their
environments were trained on) and, once ``autopipe replay`` has run, on the close-contact
frames of fresh trajectories (held-out)); the fresh-trajectory table and plot; one carved
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
from autopipe.db.session import redacted
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
    """Per version: force RMSE (eV/Å) on its training set (from pacemaker), on the run's trigger
    frames (``in_sample``) and on the labelled fresh close-contact frames (``fresh``, if any)."""
    from autopipe.potentials import PotentialStore
    from autopipe.heldout import force_rmse, read_labelled_frames, trigger_frames

    layout = RunLayout(workdir)
    store = PotentialStore(db, layout.potentials)
    frames = trigger_frames(db, dft_config)
    fresh = read_labelled_frames(layout.fresh_frames)
    rows = []
    for v in store.versions():
        try:
            pot = store.get(v)
        except Exception:  # corrupted: the store refuses it, the report says so
            rows.append({"version": v, "name": "(corrupted)", "train": None, "in_sample": None, "fresh": None})
            continue
        m = pot.metrics or {}
        rows.append({"version": v, "name": pot.name, "parent": pot.parent_version,
                     "train": m.get("train_forces_rmse"),
                     "in_sample": force_rmse(pot, frames) if frames else None,
                     "fresh": force_rmse(pot, fresh) if fresh else None,
                     "n_frames": len(frames) if frames else 0, "n_fresh": len(fresh)})
    return rows


def plot_learning(rows: list[dict[str, Any]], out: Path) -> Path | None:
    if not rows:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    v = [r["version"] for r in rows]
    series = (("train", "training set", "o"), ("in_sample", "run's trigger frames (in-sample)", "s"),
              ("fresh", "fresh close-contact frames (held-out)", "D"))
    for key, label, marker in series:
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


def plot_fresh(fresh, out: Path) -> Path | None:
    """Fresh trajectories: max gamma against MD step per potential (left), and each potential's
    force error on every close-contact frame against that frame's closest pair distance (right)."""
    if fresh is None or not fresh.trajectories:
        return None
    plt = _mpl()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {s.version: c for s, c in zip(fresh.scores, ("tab:red", "tab:blue", "tab:green", "tab:purple"))}
    seen: set[int] = set()
    for t in fresh.trajectories:
        trace = np.asarray(t.gamma_trace, dtype=float).reshape(-1, 2)
        if not len(trace):
            continue
        c = colors.get(t.version, "gray")
        left.plot(trace[:, 0], trace[:, 1], "-", color=c, lw=1, alpha=0.8,
                  label=f"v{t.version}" if t.version not in seen else None)
        if t.status == "triggered":
            left.plot(trace[-1, 0], trace[-1, 1], "x", color=c, ms=8)
        seen.add(t.version)
    left.axhline(fresh.threshold, color="crimson", ls="--", lw=1, label=f"threshold {fresh.threshold:g}")
    left.set_yscale("log")
    left.set_xlabel("MD step")
    left.set_ylabel("max extrapolation grade γ")
    left.set_title(f"{len(fresh.starts)} fresh starts per potential (x: trigger)")
    left.legend(fontsize=8)
    for s in fresh.scores:
        pts = [(f["min_distance"], 1000 * f["errors"][s.version]) for f in fresh.frames if s.version in f["errors"]]
        if pts:
            d, e = zip(*pts)
            right.scatter(d, e, s=18, color=colors.get(s.version, "gray"),
                          label=f"v{s.version}: {1000 * s.force_rmse:.0f} meV/Å overall")
    right.set_yscale("log")
    right.set_xlabel("closest pair distance in the frame (Å)")
    right.set_ylabel("force RMSE (meV/Å)")
    right.set_title(f"Close-contact frames vs {fresh.labeller}")
    right.legend(fontsize=8)
    fig.tight_layout()
    path = out / "fresh.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fresh_table(fresh) -> str:
    """The fresh-trajectory scores as an HTML table (drift meV/atom, force RMSE meV/Å)."""
    def num(x, scale=1.0, digits=1):
        return "–" if x is None or not np.isfinite(x) else f"{x * scale:.{digits}f}"

    rows = "".join(
        f"<tr><td>v{s.version}</td><td>{html.escape(s.name)}</td><td>{s.trajectories}</td><td>{s.triggers}</td>"
        f"<td>{num(s.mean_steps, 1, 0)} / {fresh.n_steps}</td><td>{num(s.max_drift, 1000, 2)}</td>"
        f"<td>{num(s.force_rmse, 1000)} ({s.n_frames})</td></tr>" for s in fresh.scores)
    return ("<table><tr><th>version</th><th>name</th><th>trajectories</th><th>triggered</th><th>mean steps run</th>"
            "<th>largest energy drift (meV/atom)</th><th>close-contact F RMSE (meV/Å) (frames)</th></tr>"
            f"{rows}</table>")


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


def element_gamma_section(db: Database, threshold: float | None, elements: list[str] | None = None) -> str:
    """HTML: the largest per-atom gamma of each element in every trigger frame (one row per
    trigger), so a run with several elements shows which species extrapolated; columns in the
    order of ``elements`` (the run's), then any other element found; empty without trigger frames."""
    from autopipe.analysis.element_gamma import trigger_gamma

    rows = trigger_gamma(db)
    if not rows:
        return ""
    elements = list(dict.fromkeys([*(elements or []), *(e for r in rows for e in r.per_element)]))

    def cell(r, e: str) -> str:
        g = r.per_element.get(e)
        if g is None:
            return "<td>–</td>"
        text = f"{g:.2f}"
        return f"<td><b>{text}</b></td>" if threshold is not None and g > threshold else f"<td>{text}</td>"

    def opt(x) -> str:
        return "–" if x is None else str(x)

    body = "".join(f"<tr><td>{opt(r.walker)}</td><td>{opt(r.segment)}</td><td>{opt(r.step)}</td>"
                   f"<td>v{opt(r.version)}{'*' if r.partial else ''}</td>" + "".join(cell(r, e) for e in elements) + "</tr>"
                   for r in rows)
    led = {e: sum(max(r.per_element, key=r.per_element.get) == e for r in rows) for e in elements}
    summary = ", ".join(f"{html.escape(e)}: largest over all triggers {max(r.per_element.get(e, 0.0) for r in rows):.2f},"
                        f" the frame's largest in {led[e]} of {len(rows)}" for e in elements)
    partial = (" *: a frame carved on the MD worker, of which only the atoms near the carved centres were kept: "
               "its maxima are over those atoms." if any(r.partial for r in rows) else "")
    return ("<h2>Extrapolation grade per element at each trigger</h2><p>The largest per-atom γ of each element in "
            "each trigger frame (bold: above the threshold"
            + ("" if threshold is None else f" {threshold:g}") + f"). {summary}.{partial}</p>"
            "<table><tr><th>walker</th><th>segment</th><th>step</th><th>potential</th>"
            + "".join(f"<th>max γ {html.escape(e)}</th>" for e in elements) + "</tr>" + body + "</table>")


def _rewinds(st: dict[str, Any]) -> str:
    """', N MD steps discarded per trigger on average (max M)', or nothing."""
    lost = st.get("discarded_steps_per_trigger") or []
    if not lost:
        return ""
    return f", {sum(lost) / len(lost):.0f} MD steps discarded per trigger on average (max {max(lost)})"


def _img(path: Path | None, alt: str) -> str:
    return f'<img src="{path.name}" alt="{alt}">' if path else f"<p><em>{alt}: nothing to show yet</em></p>"


def fresh_section(fresh, out: Path) -> str:
    """The report's fresh-trajectory section (text, table, plot); empty before ``autopipe replay`` ran."""
    if fresh is None:
        return ""
    ratio = fresh.ratio()
    structures = any(x.structure_seed is not None for x in fresh.starts)
    return (
        "<h2>Fresh trajectories (held-out)</h2>"
        f"<p>{len(fresh.starts)} new starts the loop never saw (seeds {', '.join(str(x.seed) for x in fresh.starts)}: "
        f"new velocities{', new starting structures' if structures else ''}), each run with every potential for "
        f"up to {fresh.n_steps} steps; a trigger (γ &gt; {fresh.threshold:g}) ends a trajectory. Force errors "
        f"against {html.escape(fresh.labeller)} on the {len(fresh.frames)} closest-contact frames of these "
        "trajectories (the same frames for every potential)"
        + (f": v{fresh.scores[0].version}/v{fresh.scores[-1].version} = <b>{ratio:.1f}x</b>"
           if np.isfinite(ratio) else "") + ". Read it with the trigger counts: a trajectory a trigger ends early "
        "adds fewer and milder close contacts to these frames.</p>"
        + fresh_table(fresh) + _img(plot_fresh(fresh, out), "fresh trajectories"))


def carving_section(st: dict[str, Any]) -> str:
    """HTML: how trigger frames were carved: every budget decision with its measurements (carve error
    against the whole frame and the potential's error on the same core atoms), and whole-frame notes."""
    if not st.get("carving"):
        return ""
    rows = []
    for d in st["carving"]:
        ms = d.get("measured") or []
        detail = "; ".join(
            f"{m['strategy']}: core {1000 * m['core_rms']:.0f} meV/Å vs potential {1000 * m['potential_rms']:.0f} "
            f"meV/Å, {m['cost']:.0f} s vs whole {m['frame_cost']:.0f} s" for m in ms) or "–"
        rows.append(f"<tr><td>{html.escape(d['at'])}</td><td>{html.escape(str(d.get('chosen') or 'whole'))}</td>"
                    f"<td style='text-align:left'>{html.escape(detail)}</td>"
                    f"<td style='text-align:left'>{html.escape(d['message'])}</td></tr>")
    return ("<h2>How trigger frames were carved</h2><p>Each carving-budget decision measured the candidate "
            "carves of one trigger frame against its whole-frame label, beside the potential's own error on the "
            f"same core atoms. DFT time of the loop's labels: {st.get('dft_seconds', 0.0):.0f} s.</p>"
            "<table><tr><th>when</th><th>chosen</th><th>measured</th><th>decision</th></tr>" + "".join(rows)
            + "</table>")


def gate_section(st: dict[str, Any]) -> str:
    """HTML: every gate decision before a hot-swap (new version against its parent on the held-out
    labels) and every rollback; empty when there were neither."""
    if not st.get("gate") and not st.get("rollbacks"):
        return ""

    def mev(x):
        return "–" if x is None else f"{1000 * x:.1f}"

    rows = "".join(
        f"<tr><td>v{g.get('version')}</td><td>v{g.get('parent_version')}</td><td>{mev(g.get('force_rmse'))}</td>"
        f"<td>{mev(g.get('parent_force_rmse'))}</td><td>{100 * (g.get('tolerance') or 0):g} %</td>"
        f"<td>{g.get('n_atoms', 0)}</td><td>{'accepted' if g.get('accepted') else '<b>rejected</b>'}</td>"
        f"<td style='text-align:left'>{html.escape(g.get('message', ''))}</td></tr>" for g in st.get("gate", []))
    held = ", ".join(f"{k} {n}" for k, n in sorted((st.get("heldout") or {}).items())) or "none yet"
    back = "".join(f"<li>{html.escape(r['at'])}: {html.escape(r['message'])}</li>" for r in st.get("rollbacks", []))
    return ("<h2>Gate before each hot-swap</h2><p>A retrained version reaches the walkers only if its force RMSE "
            "on the held-out labels (trusted atoms only; never trained on) is at most its parent's times "
            f"(1 + tolerance). Held-out structures: {html.escape(held)}.</p>"
            "<table><tr><th>version</th><th>parent</th><th>held-out F RMSE (meV/Å)</th><th>parent's (meV/Å)</th>"
            "<th>tolerance</th><th>atoms</th><th>decision</th><th>message</th></tr>" + rows + "</table>"
            + (f"<h3>Rollbacks</h3><ul>{back}</ul>" if back else ""))


def _bin_name(b: dict[str, Any]) -> str:
    return f"{b['lo']:g}–{b['hi']:g}" if b.get("hi") is not None else f"≥ {b['lo']:g}"


def plot_calibration(probe: dict[str, Any], out: Path) -> Path | None:
    """The calibration curve: force RMSE (meV/Å) of each version on the probe's labels per gamma
    bin (gamma from that version), with the bootstrap interval as error bars."""
    versions = [v for v in probe.get("versions", []) if v.get("curve")]
    if not versions:
        return None
    plt = _mpl()
    cmap = plt.get_cmap("viridis", max(len(versions), 2))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, v in enumerate(versions):
        bins = [b for b in v["curve"] if b.get("rms") is not None]
        x = np.array([(b["lo"] + b["hi"]) / 2 if b.get("hi") is not None else 1.25 * b["lo"] for b in bins])
        y = np.array([1000 * b["rms"] for b in bins])
        lo = np.array([1000 * b["low"] if b.get("low") is not None else np.nan for b in bins])
        hi = np.array([1000 * b["high"] if b.get("high") is not None else np.nan for b in bins])
        yerr = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0)
        ax.errorbar(x, y, yerr=yerr, marker="o", ms=4, capsize=3, color=cmap(i), label=f"v{v['version']}")
    if probe.get("threshold"):
        ax.axvline(probe["threshold"], color="crimson", ls="--", lw=1, label=f"threshold {probe['threshold']:g}")
    ax.set_yscale("log")
    ax.set_xlabel("extrapolation grade γ of the atom (bin centre)")
    ax.set_ylabel("force RMSE (meV/Å)")
    ax.set_title("Calibration: force error against γ (probe labels)")
    ax.legend(title="potential", fontsize=8)
    fig.tight_layout()
    path = out / "calibration.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def calibration_section(st: dict[str, Any], out: Path) -> str:
    """HTML: the false-negative probe's spending, each version's force error on its labels with its
    interval, and the calibration curve (plot and table); empty when the run has no probe label."""
    from autopipe.status import interval_text

    probe = st.get("probe")
    if not probe:
        return ""
    sh = probe["share"]
    spent = "nothing yet" if sh["spent"] is None else (
        f"{100 * sh['spent']:.1f} % of the loop's DFT {'seconds' if sh['unit'] == 's' else 'labels'}")
    versions = probe.get("versions", [])
    bins = list(dict.fromkeys(_bin_name(b) for v in versions for b in v.get("curve", [])))

    def cell(b: dict[str, Any] | None) -> str:
        if b is None or b.get("rms") is None:
            return "–"
        ci = (f" [{1000 * b['low']:.1f}–{1000 * b['high']:.1f}]" if b.get("low") is not None
              and b.get("high") is not None else "")
        return f"{1000 * b['rms']:.1f}{ci}<br><small>{b.get('n_atoms', 0)} atoms</small>"

    rows = "".join(
        f"<tr><td>v{v['version']}</td><td style='text-align:left'>{html.escape(interval_text(v))}</td>"
        + "".join(f"<td>{cell(next((b for b in v.get('curve', []) if _bin_name(b) == name), None))}</td>"
                  for name in bins) + "</tr>" for v in versions)
    return ("<h2>Measured error where the MD goes (false-negative probe)</h2>"
            f"<p>{sh['n_labels']} probe label(s) ({sh['in_flight']} queued), {spent}: cells carved around random "
            "atoms the potential called safe (γ below the threshold) at the ends of segments that did not trigger, "
            "held out of training. Force RMSE over their trusted atoms, per version, with a 95 % percentile "
            "bootstrap interval over probe structures; per γ bin (γ from that version) the calibration curve "
            "(meV/Å [interval]).</p>"
            + _img(plot_calibration(probe, out), "calibration curve")
            + "<table><tr><th>version</th><th>all probe atoms</th>"
            + "".join(f"<th>γ {html.escape(n)}</th>" for n in bins) + "</tr>" + rows + "</table>")


def changes_section(st: dict[str, Any]) -> str:
    """HTML: every change of the gamma threshold by a force-error target (with the calibration bins it
    was read from) and every basis change; empty when there were neither."""
    from autopipe.status import threshold_line

    out = ""
    if st.get("threshold_changes"):
        def evidence(t: dict[str, Any]) -> str:
            return ", ".join(f"γ {_bin_name(b)}: {1000 * b['rms']:.1f} ({b.get('n_structures', 0)} str.)"
                             for b in t.get("bins", []) if b.get("rms") is not None)

        rows = "".join(f"<tr><td>{html.escape(t['at'])}</td><td>{html.escape(threshold_line(t))}</td>"
                       f"<td style='text-align:left'><small>{html.escape(evidence(t))}</small></td></tr>"
                       for t in st["threshold_changes"])
        out += ("<h2>Threshold from the force-error target</h2><p>Each change of the γ threshold, read off the "
                "served version's calibration curve on the held-out labels (probe and triggered); evidence: "
                "force RMSE per γ bin (meV/Å, structures).</p><table><tr><th>when</th><th>change</th>"
                "<th>evidence</th></tr>" + rows + "</table>")
    if st.get("basis_changes"):
        items = "".join(f"<li>{html.escape(b['at'])}: {html.escape(b['message'])}</li>" for b in st["basis_changes"])
        out += f"<h2>Basis changes</h2><ul>{items}</ul>"
    return out


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
        replay_html = ("<h2>In-sample replay: the trajectory the loop learnt from</h2><p>Walker 0 from its first "
                       "state, same MD settings, with the first and the newest potential. In-sample: the loop "
                       "carved and trained on the environments of this trajectory's triggers, so this shows the "
                       "fit took, not that it generalises (see the fresh trajectories below).</p><ul>"
                       + "".join(f"<li>{html.escape(x)}</li>" for x in items) + "</ul>")
    from autopipe.replay import read_fresh

    fresh_html = fresh_section(read_fresh(workdir), out)

    def fmt(x, scale=1.0, unit=""):
        return "–" if x is None else f"{x * scale:.2f}{unit}"

    rows = "".join(
        f"<tr><td>v{r['version']}</td><td>{html.escape(str(r['name']))}</td><td>{r.get('parent') or '–'}</td>"
        f"<td>{fmt(r['train'], 1000)}</td><td>{fmt(r['in_sample'], 1000)}</td><td>{fmt(r.get('fresh'), 1000)}</td></tr>"
        for r in curve)
    total = costs["elapsed"] or 1.0
    cost_rows = "".join(
        f"<tr><td>{k}</td><td>{v:.1f}</td><td>{100 * v / total:.0f}%</td></tr>"
        for k, v in costs.items() if k not in ("elapsed", "starts"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autopipe report: {html.escape(cfg.get('name', ''))}</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
.grid{{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}}</style></head><body>
<h1>autopipe run “{html.escape(cfg.get('name', str(workdir)))}”</h1>
<p>Generated {dt.datetime.now().isoformat(timespec='seconds')} from <code>{html.escape(redacted(db.url))}</code>.
Stopped because: <b>{html.escape(str(st['stopped_because'] or 'not stopped (running or killed)'))}</b>.</p>
<p>Structures {st['structures'].get('total', 0)} (embedded sub-cells {st['embedded']}), labels {st['labels']},
segments {st['segments']}, triggers {st['triggers']}{_rewinds(st)}.</p>
{replay_html}
{fresh_html}
{carving_section(st)}
{gate_section(st)}
{calibration_section(st, out)}
{changes_section(st)}
<h2>Uncertainty during MD</h2>{_img(gamma_png, 'max gamma against MD time')}
{element_gamma_section(db, otf.get("uncertainty_threshold"), cfg.get("system", {}).get("elements"))}
<div class="grid"><div><h2>Learning curve</h2>{_img(learn_png, 'force RMSE per version')}
<table><tr><th>version</th><th>name</th><th>parent</th><th>train F RMSE (meV/Å)</th><th>trigger frames (in-sample) F RMSE (meV/Å)</th><th>fresh close-contact frames F RMSE (meV/Å)</th></tr>{rows}</table>
<p>In-sample: the run's MD frames at each trigger, labelled by the oracle for this report (pw.x runs are not
relabelled); the loop carved and trained on the environments around their trigger atoms. Fresh: the labelled
close-contact frames of the fresh trajectories of <code>autopipe replay</code>, which the loop never saw.</p></div>
<div><h2>A carved sub-cell</h2>{_img(sub_png, 'carved sub-cell')}
<p>Grey atoms lie in the buffer: their forces are masked (weight 0) in training.</p></div></div>
<h2>Where the wall time went</h2>
<table><tr><th>stage</th><th>wall time (s)</th><th>of elapsed</th></tr>{cost_rows}
<tr><td>elapsed (all starts)</td><td>{costs['elapsed']:.1f}</td><td>100%</td></tr></table>
<p>Stages overlap when executors run in parallel, so the fractions need not add up to 100%.</p>
</body></html>"""
    path = out / "index.html"
    path.write_text(page)
    return path
