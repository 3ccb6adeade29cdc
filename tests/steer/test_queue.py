"""Priorities: queued DFT work runs before queued lower-priority work on the same executor."""

from __future__ import annotations

import time
from pathlib import Path

import parsl
import pytest
from parsl import python_app

from autopipe.config import load_site
from autopipe.config.site import HtexLocalExecutor, SiteConfig, ThreadsExecutor
from autopipe.steer.queue import PRIORITY, Dispatcher


def _record(path: str, tag: str, hold: float = 0.0, parsl_resource_specification: dict | None = None) -> str:
    """Append ``tag`` with a timestamp to ``path`` (works across processes).

    Parsl passes a task's resource specification only to apps that declare the keyword.
    """
    import time as _t

    _t.sleep(hold)
    with open(path, "a") as fh:
        fh.write(f"{_t.time():.6f} {tag}\n")
    return tag


def _held(path: str, tag: str, gate: str, parsl_resource_specification: dict | None = None) -> str:
    """Append ``tag`` to ``path`` as it starts, mark it started in the directory ``gate``, then hold
    the worker until ``gate/release`` exists (60 s at most)."""
    import time as _t
    from pathlib import Path as _P

    with open(path, "a") as fh:
        fh.write(f"{_t.time():.6f} {tag}\n")
    (_P(gate) / tag).touch()
    deadline = _t.monotonic() + 60
    while not (_P(gate) / "release").exists() and _t.monotonic() < deadline:
        _t.sleep(0.02)
    return tag


def _meet(gate: str, tag: str, peers: list[str], within: float = 60.0) -> bool:
    """Mark ``tag`` as started under the directory ``gate``, then wait for every one of ``peers`` to have
    started too: True if they all did within ``within`` s. Tasks that run at the same time all meet;
    one that could start only after another finished cannot (that one waits in vain)."""
    import time as _t
    from pathlib import Path as _P

    (_P(gate) / tag).touch()
    deadline = _t.monotonic() + within
    while _t.monotonic() < deadline:
        if all((_P(gate) / p).exists() for p in peers):
            return True
        _t.sleep(0.02)
    return False


def _order(path: Path) -> list[str]:
    rows = [ln.split() for ln in path.read_text().splitlines()]
    return [tag for _, tag in sorted(rows, key=lambda r: float(r[0]))]


@pytest.fixture
def threads_dfk(tmp_path):
    site = SiteConfig(name="t", executors=[ThreadsExecutor(label="one", kind="threads", roles=["md", "dft", "train"],
                                                           max_workers=1)])
    dfk = parsl.load(site.to_parsl_config(tmp_path / "parsl"))
    yield dfk
    dfk.cleanup()
    parsl.clear()


def test_dispatcher_runs_dft_before_queued_md_on_threads(threads_dfk, tmp_path):
    log = tmp_path / "order.txt"
    app = python_app(_record, executors=["one"])
    d = Dispatcher({"one": 1})
    d.push("one", PRIORITY["md"], "md-0", app, str(log), "md-0", 0.3)  # occupies the executor
    d.pump()
    for i in range(1, 4):
        d.push("one", PRIORITY["md"], f"md-{i}", app, str(log), f"md-{i}")
    d.push("one", PRIORITY["train"], "train", app, str(log), "train")
    for i in range(2):
        d.push("one", PRIORITY["dft"], f"dft-{i}", app, str(log), f"dft-{i}")
    assert d.running("one") == 1 and len(d.queued("one")) == 6
    deadline = time.time() + 30
    while not d.idle() and time.time() < deadline:
        d.done()
        d.pump()
        time.sleep(0.01)
    assert d.idle()
    assert _order(log) == ["md-0", "dft-0", "dft-1", "train", "md-1", "md-2", "md-3"]


def test_htex_honours_parsl_priorities(tmp_path, monkeypatch):
    """Tasks already handed to HTEX are ordered by Parsl's per-task priority too."""
    # Workers are separate processes; they import _record from this module.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    site = SiteConfig(name="h", executors=[HtexLocalExecutor(label="h", kind="htex-local", roles=["md", "dft", "train"],
                                                             max_workers_per_node=1)])
    dfk = parsl.load(site.to_parsl_config(tmp_path / "parsl"))
    try:
        log = tmp_path / "order.txt"
        app = python_app(_record, executors=["h"])
        # Warm up: make sure the worker is connected before the ordering matters.
        app(str(log), "warmup").result(timeout=120)
        d = Dispatcher({"h": 10}, priority_aware={"h"})  # room for all: HTEX itself must order them
        gate = tmp_path / "gate"
        gate.mkdir()
        d.push("h", PRIORITY["md"], "block", python_app(_held, executors=["h"]), str(log), "block", str(gate))
        d.pump()
        deadline = time.monotonic() + 60
        while not (gate / "block").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (gate / "block").exists()  # 'block' holds the only worker: the rest queue up in the interchange
        for i in range(3):
            d.push("h", PRIORITY["md"], f"md-{i}", app, str(log), f"md-{i}")
            d.pump()
        for i in range(2):
            d.push("h", PRIORITY["dft"], f"dft-{i}", app, str(log), f"dft-{i}")
            d.pump()
        # Submission reaches the interchange asynchronously (ZMQ): give the last pushes time to
        # arrive, or a released worker takes an md task that was there before dft-1 (seen under load).
        time.sleep(1.0)
        (gate / "release").touch()  # everything is submitted: now the worker frees up
        deadline = time.time() + 60
        while not d.idle() and time.time() < deadline:
            d.done()
            time.sleep(0.05)
        order = _order(log)[1:]
        assert order[0] == "block"
        assert set(order[1:3]) == {"dft-0", "dft-1"}, order
    finally:
        dfk.cleanup()
        parsl.clear()


def test_local_site_runs_a_fit_beside_both_walkers(tmp_path):
    """configs/local.yaml with the loop's capacities: a fit (queued first: it outranks MD) and
    one segment of each of two walkers all start at once, so training holds no walker up."""
    site = load_site(Path(__file__).resolve().parents[2] / "configs" / "local.yaml")
    dfk = parsl.load(site.to_parsl_config(tmp_path / "parsl"))
    try:
        gate = tmp_path / "started"
        gate.mkdir()
        tags = ["fit", "walker-0", "walker-1"]
        md, train = site.executor_for("md").label, site.executor_for("train").label
        d = Dispatcher({e.label: e.slots() for e in site.executors})
        d.push(train, PRIORITY["train"], "fit", python_app(_meet, executors=[train]), str(gate), "fit", tags)
        for w in range(2):
            d.push(md, PRIORITY["md"], f"walker-{w}", python_app(_meet, executors=[md]), str(gate), f"walker-{w}", tags)
        assert sorted(key for key, _ in d.pump()) == tags  # nobody waits in the dispatcher for a slot...
        met = {}
        deadline = time.monotonic() + 180  # only reached if the executors hold a task back
        while not d.idle() and time.monotonic() < deadline:
            met.update((key, fut.result()) for key, fut in d.done())
            time.sleep(0.01)
        # ...nor in Parsl: each one saw the other two start while it was still running
        assert met == dict.fromkeys(tags, True), met
    finally:
        dfk.cleanup()
        parsl.clear()
