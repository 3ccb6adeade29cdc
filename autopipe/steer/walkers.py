"""MD walkers: their state machine, the rewind rule, and starting their segments.

A walker is ``running`` (a segment may start), ``waiting`` (for a potential newer than
``waiting_for_version``) or ``finished`` (reached the step budget, or retired after
repeated failures; ``error`` says which). The transitions are plain functions over
anything with a walker's attributes, so they are tested without a database or Parsl:

* :func:`wake`: a waiting walker resumes when a newer potential is published (hot-swap), or
  when a rollback withdrew the version it waits on;
* :func:`segment_due`: how many steps its next segment runs, or ``None``;
* :func:`after_completed`, :func:`after_triggered`, :func:`after_failed`,
  :func:`after_refused`: what a finished segment (or an uncarvable trigger frame) does to
  it. The rewind rule lives in :func:`after_triggered`: the walker resumes from the state
  at the segment's last gamma check below the threshold and waits for a better potential.
  ``note`` says in words why it waits or why it stopped (``autopipe status`` shows it).

:func:`ensure_walkers` and :func:`start_segments` apply them to the database.

State route: on a site whose md executor has a ``shared_scratch``, checkpoints stay there and
the database keeps their :class:`autopipe.md.state.StateRef` (path, size, sha256, step) as text
in the checkpoint columns (:func:`start_state`, :func:`record_state`); a state the worker refuses
(checksum mismatch) puts the walker back on its previous good state (:func:`after_refused_state`).
Without one, states travel by value and :func:`check_state_route` refuses at start a walker
above the executor's payload bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterable, Protocol

from sqlalchemy import func, select

from autopipe.db import Origin, Segment, SegmentStatus, TaskKind, Walker, WalkerStatus, structure_from_atoms

if TYPE_CHECKING:
    from autopipe.config.run import RunConfig
    from autopipe.config.site import SiteConfig
    from autopipe.md.state import MDState, OnScratch, StateRef
    from autopipe.steer.context import Context


class WalkerLike(Protocol):
    status: WalkerStatus
    step: int
    checkpoint: str | None
    waiting_for_version: int | None
    segments_since_trigger: int
    failures: int
    error: str | None
    note: str | None


# ----------------------------------------------------------------------------- transitions


def wake(w: WalkerLike, newest_version: int, unserved: Collection[int] = ()) -> bool:
    """Resume a waiting walker once a potential newer than the one it waits on exists, or once the
    version it waits on is no longer served (``unserved``: a rollback withdrew it): it then goes on
    with ``newest_version``, the version walkers use now."""
    if w.status is not WalkerStatus.waiting:
        return False
    if newest_version > (w.waiting_for_version or 0):
        w.status, w.waiting_for_version = WalkerStatus.running, None
        w.note = f"hot-swapped to v{newest_version} at step {w.step}"
        return True
    if w.waiting_for_version in unserved:
        w.note = f"v{w.waiting_for_version} was withdrawn: going on with v{newest_version} at step {w.step}"
        w.status, w.waiting_for_version = WalkerStatus.running, None
        return True
    return False


def segment_due(w: WalkerLike, busy: bool, max_md_steps: int, segment_steps: int) -> int | None:
    """Steps of the walker's next segment, or ``None`` (not running, busy, or done: then finished)."""
    if w.status is not WalkerStatus.running or busy:
        return None
    if w.step >= max_md_steps:
        w.status = WalkerStatus.finished
        w.note = f"finished: reached {max_md_steps} MD steps"
        return None
    return min(segment_steps, max_md_steps - w.step)


def after_completed(w: WalkerLike, end_step: int, checkpoint: str) -> None:
    """A quiet segment: the walker moves on to its end state."""
    w.step, w.checkpoint, w.failures = end_step, checkpoint, 0
    w.segments_since_trigger += 1


def after_triggered(w: WalkerLike, version: int, trigger_step: int, rewind_step: int | None = None,
                    rewind_checkpoint: str | None = None) -> None:
    """The rewind rule: resume from the state at the last gamma check below the threshold
    (``rewind_step``/``rewind_checkpoint``, when the segment found it; else the walker keeps
    its last good state, the segment's start) and wait for a potential newer than ``version``."""
    if rewind_checkpoint is not None and rewind_step is not None and rewind_step >= w.step:
        w.step, w.checkpoint = rewind_step, rewind_checkpoint
    w.status, w.waiting_for_version = WalkerStatus.waiting, version
    w.segments_since_trigger, w.failures = 0, 0
    w.note = f"waits for a potential newer than v{version} (trigger at step {trigger_step}, resumes at step {w.step})"


def after_refused_state(w: WalkerLike, version: int, error: str | None, previous: tuple[int, str] | None,
                        max_failures: int) -> bool:
    """A segment whose start state the worker refused (its checkpoint on the shared scratch does not
    match the recorded checksum): the walker goes back to ``previous`` (step, checkpoint), the good
    state it held before, and runs on at once; counted as a failure. Without a previous state it
    is a failed segment (:func:`after_failed`). Returns True when the walker was retired."""
    if previous is None:
        return after_failed(w, version, error, max_failures)
    if _failure(w, error, max_failures):
        return True
    bad = w.step
    w.step, w.checkpoint = previous
    w.status, w.waiting_for_version = WalkerStatus.running, None
    w.note = f"checkpoint at step {bad} refused: restarts from step {w.step} ({w.failures} failure(s) in a row)"
    return False


def _failure(w: WalkerLike, error: str | None, max_failures: int) -> bool:
    """Count one failure; retire the walker at ``max_failures`` in a row. True when retired."""
    w.failures += 1
    w.error = error
    if w.failures >= max_failures:
        w.status = WalkerStatus.finished
        w.note = f"retired after {w.failures} failures in a row; last: {error}"
        return True
    return False


def after_failed(w: WalkerLike, version: int, error: str | None, max_failures: int) -> bool:
    """A failed segment: wait for a newer potential, or retire after ``max_failures`` in a row.
    Returns True when the walker was retired."""
    if _failure(w, error, max_failures):
        return True
    w.status, w.waiting_for_version = WalkerStatus.waiting, version
    w.note = f"waits for a potential newer than v{version} after a failed segment ({w.failures} in a row)"
    return False


def after_refused(w: WalkerLike, reason: str, max_failures: int) -> bool:
    """A trigger frame nothing could be labelled from: counts as a failed segment, but the walker
    goes on at once with the same potential (no label is coming). Returns True when retired."""
    if _failure(w, reason, max_failures):
        return True
    w.status, w.waiting_for_version = WalkerStatus.running, None
    w.note = f"going on with the same potential: {reason} ({w.failures} in a row)"
    return False


def all_waiting(walkers: Iterable[WalkerLike], newest_version: int | None) -> bool:
    """Every walker still going waits for a potential newer than the newest one."""
    going = [w for w in walkers if w.status is not WalkerStatus.finished]
    newest = newest_version or 0
    return bool(going) and all(
        w.status is WalkerStatus.waiting and newest <= (w.waiting_for_version or 0) for w in going)


# ----------------------------------------------------------------------------- state route


def scratch_root(ctx: Context) -> Path | None:
    """The run's directory on the md executor's shared scratch (as seen here and on the workers),
    or None: walker states then travel by value."""
    shared = ctx.site.executor_for("md").shared_scratch_path()
    return None if shared is None else Path(ctx.layout.on_worker(str(shared), ctx.run.name))


def start_state(ctx: Context, checkpoint: str, directory: Path) -> MDState | OnScratch:
    """What an MD task receives for the state it resumes from (``checkpoint``: a walker's checkpoint
    column): on the shared-scratch route an :class:`OnScratch` (reference, and where the segment in
    ``directory`` writes its states there), else the state itself, by value."""
    from autopipe.md.state import OnScratch, StateRef, load_state, load_state_ref, save_state_ref

    ref = StateRef.from_text(checkpoint)
    root = scratch_root(ctx)
    if root is None:
        if ref is None and (kept := ctx.recent_states.pop(checkpoint, None)) is not None:
            return kept[1]
        return load_state_ref(ref) if ref is not None else load_state(checkpoint)
    if ref is None:  # on the steering host (the run started without a shared scratch): put it there once
        ref = save_state_ref(root / ctx.layout.relative(checkpoint), load_state(checkpoint))
    return OnScratch(ref, str(root / ctx.layout.relative(directory)))


def record_state(ctx: Context, walker_index: int, number: int, state: MDState | StateRef) -> str:
    """The checkpoint column for a state a segment returned: its reference as text when it stayed
    on the shared scratch, else the path of the file written here, in the segment's directory."""
    from autopipe.layout import checkpoint_file
    from autopipe.md.state import StateRef, as_saved, save_state

    if isinstance(state, StateRef):
        return state.to_text()
    # As durable as the database row that will name it. SQLite commits with synchronous=NORMAL: they
    # survive a killed process (what resume guarantees) and a power loss may take the last few back,
    # so the file needs no fsync (6 ms of every segment's handling at 128 walkers, benchmarks/scale.py).
    # A PostgreSQL commit survives a power loss: the file is synced before the row can name it.
    path = str(save_state(checkpoint_file(ctx.layout.segment_dir(walker_index, number), state.step), state,
                          durable=not ctx.db.url.startswith("sqlite")))
    if len(state.atoms) <= RECENT_STATE_ATOMS:
        # Its walker's next segment starts from it: no need to read the file back (4 ms per segment at 64
        # walkers, benchmarks/scale.py). One per walker at most; big states are always read from disk.
        for stale in [k for k, v in ctx.recent_states.items() if v[0] == walker_index]:
            del ctx.recent_states[stale]
        ctx.recent_states[path] = (walker_index, as_saved(state))
    return path


#: States of at most this many atoms are kept in memory from being written until their next segment is sent.
RECENT_STATE_ATOMS = 5_000  # 128 walkers: at most ~40 MB held

#: Segments :func:`prune_checkpoints` clears each time, just beyond the kept ones (more than one:
#: a resumed run or a failed prune leaves one behind).
PRUNE_WINDOW = 2


def checkpoint_path(text: str | None) -> Path | None:
    """The file a checkpoint column names: a reference's path on the shared scratch, or the plain path."""
    from autopipe.md.state import StateRef

    if not text:
        return None
    ref = StateRef.from_text(text)
    return Path(ref.path if ref is not None else text)


def prune_checkpoints(ctx: Context, walker_index: int) -> list[Path]:
    """Delete the checkpoint files of ``walker_index``'s segments that just fell out of the newest
    ``md.keep_checkpoints``; returns the deleted paths.

    Never deleted: the walker's first state (replay starts there), its current checkpoint, the
    previous good one (where a refused state sends it back) and the start of every segment not
    finished yet. Files are deleted here and on the shared scratch. The database is committed
    before this runs, so a kill at any point leaves every checkpoint it names on disk. The cost
    per segment is flat (two queries over the newest few segments, one or two directories): a
    checkpoint that stayed because it was current while its segment fell out of the window (a
    walker that triggered over and over without moving) is left on disk."""
    keep_n = ctx.run.md.keep_checkpoints
    if keep_n is None:
        return []
    with ctx.db.session() as s:
        w = s.scalars(select(Walker).where(Walker.index == walker_index)).one()
        segs = list(s.scalars(select(Segment).where(Segment.walker_id == w.id).order_by(Segment.number.desc())
                              .limit(keep_n + PRUNE_WINDOW)))
        if len(segs) <= keep_n:
            return []
        named = [w.checkpoint] + [seg.start_checkpoint for seg in segs
                                  if seg.status in (SegmentStatus.pending, SegmentStatus.running)]
        # The previous good state: if it is older than these segments, so is its file.
        previous = _previous_start(segs, w.checkpoint)
        named.append(previous[1] if previous else None)
        old = [seg.number for seg in segs[keep_n:]]
    keep = {p.resolve() for p in map(checkpoint_path, named) if p is not None}
    dirs = [ctx.layout.segment_dir(walker_index, n) for n in old]
    if (scratch := scratch_root(ctx)) is not None:
        dirs += [scratch / ctx.layout.relative(d) for d in dirs]
    deleted = []
    for d in dirs:
        for f in d.glob("checkpoint-*.npz"):
            if f.resolve() not in keep:
                f.unlink(missing_ok=True)
                deleted.append(f)
    return deleted


def previous_state(s, walker: Walker) -> tuple[int, str] | None:
    """(step, checkpoint) the walker held before its current checkpoint: the start of its newest
    segment that started elsewhere (later ones, failed or refused, started from the current one)."""
    return _previous_start(s.scalars(select(Segment).where(Segment.walker_id == walker.id)
                                     .order_by(Segment.number.desc())), walker.checkpoint)


def _previous_start(newest_first: Iterable[Segment], current: str | None) -> tuple[int, str] | None:
    """:func:`previous_state` over segments given newest first."""
    for seg in newest_first:
        if seg.start_checkpoint and seg.start_checkpoint != current:
            return seg.start_step, seg.start_checkpoint
    return None


def check_state_route(site: SiteConfig, run: RunConfig) -> int:
    """Refuse, with one line, a walker whose state cannot travel: no shared scratch on the md
    executor and the pickled state above its ``max_payload_mb``. Returns the pickled state's size
    (bytes) of the run's starting structure (positions, momenta, masses, numbers, cell, step)."""
    from autopipe.errors import ConfigError
    from autopipe.generate import template_atoms
    from autopipe.md.state import initial_state
    from autopipe.transfer import human, pickled_size

    ex = site.executor_for("md")
    shared = ex.shared_scratch_path()  # a variable not set here: refused now, not at the first segment
    atoms = template_atoms(run.system)
    size = pickled_size(initial_state(atoms, run.md))
    if shared is None and size > ex.payload_bytes():
        raise ConfigError(f"site executor {ex.label!r}: a walker of {len(atoms)} atoms is {human(size)} pickled, above "
                          f"its max_payload_mb ({ex.max_payload_mb:g} MB) and it has no shared_scratch: set "
                          "shared_scratch (e.g. '$PSCRATCH/autopipe') or run md on an executor with a larger bound")
    return size


# ----------------------------------------------------------------------------- database


def ensure_walkers(ctx: Context) -> None:
    """Create the run's walkers with their first checkpoints (once)."""
    if ctx.walkers_exist:
        return
    with ctx.db.session() as s:
        if s.scalar(select(func.count()).select_from(Walker)):
            ctx.walkers_exist = True
            return
    from autopipe.generate import template_atoms
    from autopipe.md import initial_state, save_state
    from autopipe.md.state import save_state_ref

    atoms = template_atoms(ctx.run.system)
    for i in range(ctx.run.walkers.count):
        md = ctx.run.md.model_copy(update={"seed": ctx.run.md.seed + i})
        state = initial_state(atoms, md)
        ck = str(save_state(ctx.layout.initial_checkpoint(i), state))  # here too: replay starts from it
        if (root := scratch_root(ctx)) is not None:
            ck = save_state_ref(root / ctx.layout.relative(ck), state).to_text()
        with ctx.db.session() as s:
            s.add(structure_from_atoms(atoms, Origin.initial, info={"walker": i}))
            s.add(Walker(index=i, status=WalkerStatus.running, step=0, checkpoint=ck))
    ctx.walkers_exist = True
    ctx.progress.log(f"{ctx.run.walkers.count} walker(s) start with {len(atoms)} atoms")


def start_segments(ctx: Context) -> None:
    """Wake walkers a newer potential can serve and give every idle running walker a segment."""
    latest = ctx.store.latest()
    if latest is None:
        return
    ensure_walkers(ctx)
    stop = ctx.run.stop
    unserved = ctx.store.unserved()
    with ctx.db.session() as s:
        busy = select(Segment.walker_id).where(Segment.status.in_([SegmentStatus.pending, SegmentStatus.running]))
        new_tasks = []
        # Only walkers with no segment on its way: a pass at 128 walkers finds a few (loading every
        # walker's row each pass cost more than the segments it started, benchmarks/scale.py).
        for w in s.scalars(select(Walker).where(Walker.status.in_([WalkerStatus.running, WalkerStatus.waiting]),
                                                Walker.id.not_in(busy)).order_by(Walker.index)):
            if wake(w, latest.version, unserved):
                ctx.progress.log(f"walker {w.index}: hot-swap to v{latest.version}, resuming at step {w.step}")
            n_steps = segment_due(w, False, stop.max_md_steps, ctx.run.md.segment_steps)
            if n_steps is None:
                continue
            number = s.scalar(select(func.coalesce(func.max(Segment.number), -1)).where(Segment.walker_id == w.id)) + 1
            seg = Segment(walker_id=w.id, number=number, potential_version=latest.version,
                          status=SegmentStatus.pending, start_step=w.step, start_checkpoint=w.checkpoint)
            s.add(seg)
            s.flush()
            task = ctx.new_task(TaskKind.md, segment_id=seg.id, payload={"n_steps": n_steps})
            s.add(task)
            s.flush()
            new_tasks.append(task.id)
    ctx.push(*new_tasks)
