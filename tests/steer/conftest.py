"""Fixtures of the steering tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ctx(lj2d_potential, tmp_path):
    from autopipe.config import load_site
    from autopipe.db import Database
    from autopipe.layout import RunLayout
    from autopipe.potentials import PotentialStore
    from autopipe.steer.apps import Apps
    from autopipe.steer.context import Context
    from autopipe.steer.handlers import HANDLERS
    from autopipe.steer.live import Progress
    from autopipe.steer.queue import Dispatcher
    from tests.lj import lj_run_config

    run = lj_run_config("sel", tmp_path, dimension=2).model_copy(deep=True)
    run.embedding = run.embedding.model_copy(update={"core_radius": 3.0, "buffer": 5.0, "min_distance": 0.5})
    db = Database(f"sqlite:///{tmp_path / 'autopipe.db'}")
    store = PotentialStore(db, RunLayout(tmp_path).potentials)
    files = {r: Path(getattr(lj2d_potential, r)) for r in ("yaml", "yace", "asi")}
    store.publish(files, name="v1", version=1, last_label_id=0)
    never = lambda *a, **k: pytest.fail("the handler must only queue work")  # noqa: E731
    c = Context(site=load_site(Path(__file__).parents[2] / "configs/local.yaml"), run=run, db=db, store=store,
                layout=RunLayout(tmp_path), progress=Progress(live=False), args={k: h.args for k, h in HANDLERS.items()})
    c.apps = Apps(md=never, dft=never, train=never, embed=never,
                  executors={"md": "local", "dft": "local", "train": "local", "embed": "steering"})
    c.dispatcher = Dispatcher({"local": 2, "steering": 1})
    return c
