"""What a run has done so far, read from its database (``autopipe status``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from autopipe.db import Candidate, Database, Event, Label, Potential, Segment, SegmentStatus, Structure, Task, Walker
from autopipe.db.models import Origin


def _counts(session, column) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    return {getattr(k, "value", str(k)): int(n) for k, n in rows}


def collect_status(db: Database) -> dict[str, Any]:
    """One JSON-able dict: structures, labels, potentials, segments, triggers, tasks, stop reason."""
    with db.session() as s:
        structures = _counts(s, Structure.origin)
        labels = _counts(s, Label.status)
        segments = _counts(s, Segment.status)
        tasks = _counts(s, Task.state)
        potentials = [
            {
                "version": p.version,
                "name": p.name,
                "parent_version": p.parent_version,
                "n_train": p.n_train,
                "status": p.status.value if p.status is not None else "served",
                "metrics": p.metrics,
                "created_at": p.created_at.isoformat(timespec="seconds"),
            }
            for p in s.scalars(select(Potential).order_by(Potential.version))
        ]
        walkers = [
            {"index": w.index, "status": w.status.value, "step": w.step, "waiting_for_version": w.waiting_for_version,
             "failures": w.failures, "note": w.note, "last_error": w.error}
            for w in s.scalars(select(Walker).order_by(Walker.index))
        ]
        candidates = _counts(s, Candidate.status)
        triggered = s.execute(select(Segment.start_step, Segment.end_step, Segment.rewind_step)
                              .where(Segment.status == SegmentStatus.triggered).order_by(Segment.id)).all()
        max_gamma = s.scalar(select(func.max(Segment.max_gamma)))
        stop = s.scalars(select(Event).where(Event.kind == "stop").order_by(Event.id.desc()).limit(1)).first()
        # How trigger frames are carved: the carving budget's decisions, or why frames go whole.
        carving = [{"at": e.created_at.isoformat(timespec="seconds"), "kind": e.kind, "message": e.message,
                    "chosen": (e.data or {}).get("chosen"), "measured": (e.data or {}).get("measured", [])}
                   for e in s.scalars(select(Event).where(Event.kind.in_(["carve_budget", "whole_frames"]))
                                      .order_by(Event.id))]
        gate = gate_history(s)
        heldout = _counts(s, Structure.heldout)
        dft_seconds = s.scalar(select(func.sum(Label.walltime)).join(Structure).where(
            Structure.origin.not_in([Origin.generated, Origin.imported])))
    return {
        "structures": {"total": sum(structures.values()), **structures},
        "labels": labels,
        "potentials": potentials,
        "segments": segments,
        "triggers": segments.get("triggered", 0),
        "embedded": structures.get(Origin.embedded.value, 0),
        "tasks": tasks,
        "walkers": walkers,
        "candidates": candidates,
        # MD steps thrown away per trigger: from the trigger back to where the walker resumed.
        "discarded_steps_per_trigger": [end - (start if rewind is None else rewind)
                                        for start, end, rewind in triggered if end is not None],
        "max_gamma": max_gamma,
        "stopped_because": stop.message if stop else None,
        "carving": carving,
        "dft_seconds": float(dft_seconds or 0.0),
        # Structures kept out of training per role (None: trained on), and the gate's decisions and rollbacks.
        "heldout": {k: n for k, n in heldout.items() if k != "None"},
        **gate,
        "probe": probe_status(db),
        # Changes of the gamma threshold by a force-error target (steer.threshold), and of the ACE basis.
        "threshold_changes": threshold_changes(db),
        "basis_changes": events_of(db, BASIS_EVENT),
    }


#: Events of a basis change (a larger ACE basis for the next fits; written by the training side).
BASIS_EVENT = "basis"


def events_of(db: Database, kind: str) -> list[dict[str, Any]]:
    """Every event of ``kind``, oldest first: its data, ``message`` and ``at``."""
    with db.session() as s:
        return [{**(e.data or {}), "message": e.message, "at": e.created_at.isoformat(timespec="seconds")}
                for e in s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id))]


def threshold_changes(db: Database) -> list[dict[str, Any]]:
    """Every change of the gamma threshold (``threshold`` events): old, new, version, target (eV/Å),
    bounds, reason, the calibration bins it was read from, message, at."""
    from autopipe.steer.threshold import THRESHOLD_EVENT

    return events_of(db, THRESHOLD_EVENT)


def probe_status(db: Database) -> dict[str, Any] | None:
    """The false-negative probe (:mod:`autopipe.steer.probe`): its spending, and each existing version's
    force error on its labels as the loop last stored it (``probe_scores`` event: nothing is evaluated
    here). None when the run has no probe label, queued or done.

    ``share``: probe and total cost in ``unit`` (s or labels), ``spent`` (fraction), ``n_labels``,
    ``n_done``, ``in_flight``; ``versions``: per version ``rms``, ``low``, ``high`` (eV/Å; the
    interval at ``confidence``, a bootstrap over probe structures), ``n_atoms``, ``n_structures``,
    ``curve`` (gamma bins ``lo``/``hi`` with the same numbers)."""
    from dataclasses import asdict

    from autopipe.steer.probe import SCORES_EVENT, share_state

    share = share_state(db)
    ev = db.last_event(SCORES_EVENT)
    if not share.n_labels and not share.in_flight and ev is None:
        return None
    with db.session() as s:
        existing = set(s.scalars(select(Potential.version)))
    data = ev.data if ev is not None else {}
    return {"share": {**asdict(share), "spent": share.spent},
            "versions": [v for v in data.get("versions", []) if v.get("version") in existing],
            "threshold": data.get("threshold"), "n_scored": data.get("n_labels", 0),
            "at": ev.created_at.isoformat(timespec="seconds") if ev is not None else None}


def interval_text(v: dict[str, Any]) -> str:
    """``123.4 meV/Å (95 % interval 100.1-140.2, 12 structures, 480 atoms)`` of a stored estimate."""
    if v.get("rms") is None:
        return "no trusted atom scored"
    what = f"{v.get('n_structures', 0)} structure(s), {v.get('n_atoms', 0)} atoms"
    if v.get("low") is None or v.get("high") is None:
        return f"{v['rms'] * 1000:.1f} meV/Å (no interval: {what})"
    upper = (f"; below {v['upper'] * 1000:.1f} at {100 * v['upper_confidence']:g} % confidence"
             if v.get("upper") is not None and v.get("upper_confidence") else "")
    return (f"{v['rms'] * 1000:.1f} meV/Å ({100 * v.get('confidence', 0.95):g} % interval {v['low'] * 1000:.1f}-"
            f"{v['high'] * 1000:.1f}, {what}{upper})")


def threshold_line(t: dict[str, Any]) -> str:
    """One threshold change in words: ``gamma 5 -> 3.1 (v2, target 80 meV/Å): <reason>``."""
    target = f", target {t['target'] * 1000:.3g} meV/Å" if t.get("target") is not None else ""
    return f"gamma {t.get('old', 0):g} -> {t.get('new', 0):g} (v{t.get('version')}{target}): {t.get('reason', '')}"


def gate_history(session) -> dict[str, list[dict[str, Any]]]:
    """The gate's decisions and the rollbacks, oldest first: ``{"gate": [...], "rollbacks": [...]}``.

    A gate entry: version, parent_version, force_rmse and parent_force_rmse (eV/Å, None when
    nothing was held out), tolerance, n_atoms, accepted, message; a rollback: version,
    previous_version, withdrawn, message."""
    from autopipe.steer.gate import GATE_EVENT, ROLLBACK_EVENT

    out: dict[str, list[dict[str, Any]]] = {"gate": [], "rollbacks": []}
    for e in session.scalars(select(Event).where(Event.kind.in_([GATE_EVENT, ROLLBACK_EVENT])).order_by(Event.id)):
        entry = {**(e.data or {}), "message": e.message, "at": e.created_at.isoformat(timespec="seconds")}
        out["gate" if e.kind == GATE_EVENT else "rollbacks"].append(entry)
    return out


def gate_line(g: dict[str, Any]) -> str:
    """One gate decision in words: ``v5 (parent v4): rejected, held-out force RMSE 212.0 vs 150.0 meV/Å ...``."""
    verdict = "accepted" if g.get("accepted") else "rejected"
    new, old = g.get("force_rmse"), g.get("parent_force_rmse")
    if new is None or old is None:
        return str(g.get("message") or f"v{g.get('version')}: {verdict}")
    return (f"v{g['version']} (parent v{g['parent_version']}): {verdict}, held-out force RMSE "
            f"{new * 1000:.1f} vs {old * 1000:.1f} meV/Å (tolerance {g.get('tolerance', 0) * 100:g} %, "
            f"{g.get('n_atoms', 0)} atoms)")


def render_status(st: dict[str, Any]) -> str:
    """A few readable lines of :func:`collect_status`'s result."""

    def fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    lines = [
        f"structures : {fmt(st['structures'])}",
        f"labels     : {fmt(st['labels'])}",
        f"segments   : {fmt(st['segments'])} (triggers {st['triggers']})",
        f"tasks      : {fmt(st['tasks'])}",
        "potentials : "
        + (", ".join(f"v{p['version']} {p['name']} (parent {p['parent_version']}, {p['n_train']} structures"
                     + ("" if p.get("status", "served") == "served" else f", {p['status']}") + ")"
                     for p in st["potentials"]) or "none"),
    ]
    if st.get("candidates"):
        lines.insert(3, f"candidates : {fmt(st['candidates'])}")
    lost = st.get("discarded_steps_per_trigger") or []
    if lost:
        lines.insert(3, f"rewinds    : {sum(lost) / len(lost):.0f} MD steps discarded per trigger (max {max(lost)})")
    for w in st["walkers"]:
        lines.append(f"walker {w['index']}   : {w['status']} at step {w['step']}"
                     + (f" ({w['note']})" if w.get("note") else ""))
    if st.get("dft_seconds"):
        lines.insert(2, f"dft time   : {st['dft_seconds']:.0f} s of labelling the loop's choices")
    if st.get("heldout"):
        lines.append(f"held out   : {fmt(st['heldout'])} (never trained on; the gate scores on them)")
    for g in st.get("gate", []):
        lines.append(f"gate       : {gate_line(g)}")
    for r in st.get("rollbacks", []):
        lines.append(f"rollback   : {r['message']}")
    if st.get("carving"):
        lines.append(f"carving    : {st['carving'][-1]['message']}")
    if probe := st.get("probe"):
        sh = probe["share"]
        spent = "nothing spent yet" if sh["spent"] is None else (
            f"{100 * sh['spent']:.1f} % of the loop's DFT {'seconds' if sh['unit'] == 's' else 'labels'}")
        lines.append(f"probe      : {sh['n_labels']} label(s) ({sh['in_flight']} queued), {spent} "
                     "(configurations the potential called safe; held out, never trained on)")
        for v in probe["versions"]:
            lines.append(f"probe error: v{v['version']} {interval_text(v)}")
    for t in st.get("threshold_changes", []):
        lines.append(f"threshold  : {threshold_line(t)}")
    for b in st.get("basis_changes", []):
        lines.append(f"basis      : {b['message']}")
    lines.append(f"stopped    : {st['stopped_because'] or 'not stopped (running, or killed)'}")
    return "\n".join(lines)
