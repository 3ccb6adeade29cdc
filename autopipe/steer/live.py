"""Progress while the loop runs: a Rich live table on a terminal, plain log lines elsewhere,
and the run's log file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autopipe.config.run import RunConfig
    from autopipe.steer.view import RunView

log = logging.getLogger("autopipe")


def log_to_file(path: Path) -> None:
    """Log to ``path`` (the run's log); keep library chatter off the terminal.

    pyace calls logging.basicConfig at import, which would print every INFO line of every
    library (Parsl's included) on stderr: a root handler installed first stops that.
    """
    root = logging.getLogger()
    if not any(getattr(h, "_autopipe", False) for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler._autopipe = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    logging.getLogger("parsl").propagate = False  # Parsl keeps its own parsl.log in the run dir


def snapshot(view: RunView, run: RunConfig) -> dict[str, Any]:
    """What the live table shows: the loop's read of the run (:func:`autopipe.steer.view.read_view`)
    and the run's limits; no queries of its own."""
    return {
        "walkers": [(w.index, w.status.value, w.step, w.last_max_gamma, w.waiting_for_version) for w in view.walkers],
        "labels": dict(view.labels),
        "tasks": dict(view.tasks),
        "version": view.newest_version,
        "elapsed": view.elapsed,
        "max_md_steps": run.stop.max_md_steps,
        "threshold": run.otf.uncertainty_threshold,
    }


class Progress:
    """Shows walkers (step, max gamma, potential version, state), the DFT queue, trainings."""

    def __init__(self, live: bool = True):
        from rich.console import Console

        self.console = Console(stderr=False, log_path=False)
        self.live_enabled = live and self.console.is_terminal
        self._live = None
        self._last = 0.0

    def _table(self, snap: dict[str, Any]):
        from rich.table import Table

        t = Table(title=f"autopipe  {snap['elapsed']:.0f} s  potential v{snap['version'] or '-'}", expand=False)
        for col in ("walker", "state", "step", "last max γ", "waits for >"):
            t.add_column(col)
        for idx, state, step, gmax, wv in snap["walkers"]:
            over = gmax is not None and gmax > snap["threshold"]
            t.add_row(str(idx), state, f"{step}/{snap['max_md_steps']}",
                      "-" if gmax is None else f"[{'red' if over else 'green'}]{gmax:.2f}[/]",
                      f"v{wv}" if wv else "")
        tasks = snap["tasks"]

        def n(kind, state):
            return tasks.get((kind, state), 0)

        t.caption = (f"DFT: {n('dft', 'pending')} queued, {n('dft', 'running')} running, "
                     f"labels {', '.join(f'{k} {v}' for k, v in sorted(snap['labels'].items())) or 'none'}  |  "
                     f"training: {n('train', 'running') + n('train', 'pending')} active, {n('train', 'done')} done")
        return t

    def due(self) -> bool:
        """True when the live view should be redrawn (terminal only, at most twice a second)."""
        return self.live_enabled and time.monotonic() - self._last >= 0.5

    def update(self, snap: dict[str, Any]) -> None:
        if not self.live_enabled:
            return
        self._last = time.monotonic()
        if self._live is None:
            from rich.live import Live

            self._live = Live(self._table(snap), console=self.console, auto_refresh=False)
            self._live.start()
        self._live.update(self._table(snap), refresh=True)

    def log(self, message: str) -> None:
        log.info(message)  # to the log file; the console gets it below
        self.console.log(message, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
