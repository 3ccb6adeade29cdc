"""Parsl apps: the worker functions of :mod:`autopipe.steer.work`, routed by role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from autopipe.steer import work


@dataclass(frozen=True)
class Apps:
    """One Parsl app per kind of work, each bound to the executor serving its role."""

    md: Callable
    dft: Callable
    train: Callable
    embed: Callable
    executors: dict[str, str]  # role or kind -> executor label


def build_apps(site) -> Apps:
    """Wrap the worker functions as python_apps on the site's executors (call after parsl.load)."""
    from parsl import python_app

    md = site.executor_for("md").label
    dft = site.executor_for("dft").label
    train = site.executor_for("train").label
    return Apps(
        md=python_app(work.md_work, executors=[md]),
        dft=python_app(work.dft_work, executors=[dft]),
        train=python_app(work.fit_work, executors=[train]),
        # Carving is milliseconds of numpy next to the frame it came from: the md executor.
        embed=python_app(work.embed_work, executors=[md]),
        executors={"md": md, "dft": dft, "train": train, "embed": md},
    )
