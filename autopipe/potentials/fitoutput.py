"""The result of one pacemaker fit, shared by the trainer's two routes (a fresh ``pacemaker``
process, :mod:`autopipe.potentials.trainer`, and the long-lived one, :mod:`autopipe.potentials.warm`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autopipe.transfer import FileBlob


@dataclass
class FitOutput:
    """A finished pacemaker fit, not yet published: files by role, metrics, status.

    ``files``: role -> path where the fit wrote it (on the worker); ``blobs``: the same files
    by value (:func:`fit_round` fills them), which :func:`publish_round` publishes.
    """

    status: str  # "done" | "failed"
    files: dict[str, str] = field(default_factory=dict)  # role -> path: yaml, yace, asi, input, log
    blobs: dict[str, FileBlob] = field(default_factory=dict)  # role -> content
    metrics: dict[str, Any] = field(default_factory=dict)
    walltime: float = 0.0  # s
    argv: list[str] = field(default_factory=list)
    error: str | None = None
    log_tail: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # s: dataset, pacemaker, export
    n_train: int = 0  # structures in the training set

    @property
    def ok(self) -> bool:
        return self.status == "done"
