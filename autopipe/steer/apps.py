"""Parsl apps: the worker functions of :mod:`autopipe.steer.work`, routed by role.

MD and training go to the executor serving ``md``/``train`` (GPU nodes at a site), DFT to
the one serving ``dft``. Carving a sub-cell is milliseconds of numpy on the critical path
of every trigger, so it runs on :data:`STEERING`, a one-thread executor inside the
steering process that every site gets: it never waits for a batch job to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from autopipe.steer import work

#: Label of the steering process's own one-thread executor.
STEERING = "steering"


@dataclass(frozen=True)
class Apps:
    """One Parsl app per kind of work, each bound to the executor serving its role."""

    md: Callable
    dft: Callable
    train: Callable
    embed: Callable
    executors: dict[str, str]  # kind -> executor label


def steering_executor():
    """The one-thread executor of the steering process (added to every site's Parsl config)."""
    from parsl.executors.threads import ThreadPoolExecutor

    return ThreadPoolExecutor(label=STEERING, max_threads=1)


def build_apps(site, functions: Mapping[str, Callable] | None = None) -> Apps:
    """Wrap the worker functions as python_apps on the site's executors (call after parsl.load).

    ``functions`` replaces the worker function of a kind (``md``, ``dft``, ``train``, ``embed``)
    with another taking the same arguments: the scale benchmark's stand-ins (``tests/standins.py``)."""
    from parsl import python_app

    fn = {"md": work.md_work, "dft": work.dft_work, "train": work.fit_work, "embed": work.embed_work,
          **(functions or {})}
    md = site.executor_for("md").label
    dft = site.executor_for("dft").label
    train = site.executor_for("train").label
    return Apps(
        md=python_app(fn["md"], executors=[md]),
        dft=python_app(fn["dft"], executors=[dft]),
        train=python_app(fn["train"], executors=[train]),
        embed=python_app(fn["embed"], executors=[STEERING]),
        executors={"md": md, "dft": dft, "train": train, "embed": STEERING},
    )
