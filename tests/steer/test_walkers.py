"""The walker state machine, without a database or Parsl."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from autopipe.db import WalkerStatus
from autopipe.steer import walkers as W


@dataclass
class Walker:
    status: WalkerStatus = WalkerStatus.running
    step: int = 0
    checkpoint: str | None = "ck-0"
    waiting_for_version: int | None = None
    segments_since_trigger: int = 0
    failures: int = 0
    error: str | None = None
    note: str | None = None


def test_a_running_walker_gets_segments_until_its_budget_then_finishes():
    w = Walker(step=900)
    assert W.segment_due(w, busy=False, max_md_steps=1000, segment_steps=200) == 100  # the last, shorter one
    assert W.segment_due(w, busy=True, max_md_steps=1000, segment_steps=200) is None
    W.after_completed(w, 1000, "ck-1000")
    assert (w.step, w.checkpoint, w.segments_since_trigger) == (1000, "ck-1000", 1)
    assert W.segment_due(w, busy=False, max_md_steps=1000, segment_steps=200) is None
    assert w.status is WalkerStatus.finished


def test_a_trigger_rewinds_to_the_last_good_check_and_waits_for_a_newer_potential():
    w = Walker(step=400, checkpoint="ck-400", segments_since_trigger=3, failures=1)
    W.after_triggered(w, version=2, trigger_step=530, rewind_step=520, rewind_checkpoint="ck-520")
    assert w.status is WalkerStatus.waiting and w.waiting_for_version == 2
    assert (w.step, w.checkpoint) == (520, "ck-520")  # only the steps after the last good check are lost
    assert w.segments_since_trigger == 0 and w.failures == 0
    assert "newer than v2" in w.note and "resumes at step 520" in w.note
    w2 = Walker(step=400, checkpoint="ck-400")
    W.after_triggered(w2, version=2, trigger_step=410)  # the first check after the start: keep the start
    assert (w2.step, w2.checkpoint) == (400, "ck-400")
    assert W.segment_due(w, busy=False, max_md_steps=1000, segment_steps=200) is None
    assert not W.wake(w, newest_version=2)  # the potential that triggered cannot serve it
    assert W.wake(w, newest_version=3)  # hot-swap
    assert w.status is WalkerStatus.running and w.waiting_for_version is None
    assert W.segment_due(w, busy=False, max_md_steps=1000, segment_steps=200) == 200
    assert w.note.startswith("hot-swapped to v3")


def test_failed_segments_wait_for_a_new_potential_and_retire_the_walker_after_the_limit():
    w = Walker()
    assert not W.after_failed(w, version=1, error="lost atoms", max_failures=2)
    assert w.status is WalkerStatus.waiting and w.waiting_for_version == 1 and w.error == "lost atoms"
    W.wake(w, newest_version=2)
    assert W.after_failed(w, version=2, error="NaN energy", max_failures=2)
    assert w.status is WalkerStatus.finished and w.error == "NaN energy"
    assert w.note.startswith("retired after 2 failures in a row") and "NaN energy" in w.note
    ok = Walker(failures=1)  # a good segment resets the count
    W.after_completed(ok, 10, "ck")
    assert ok.failures == 0


@pytest.mark.parametrize("states, newest, expected", [
    ([(WalkerStatus.waiting, 2), (WalkerStatus.waiting, 2)], 2, True),
    ([(WalkerStatus.waiting, 2), (WalkerStatus.finished, None)], 2, True),  # finished walkers don't count
    ([(WalkerStatus.waiting, 2), (WalkerStatus.running, None)], 2, False),
    ([(WalkerStatus.waiting, 1)], 2, False),  # v2 can serve it: it is about to wake
    ([(WalkerStatus.finished, None)], 2, False),  # nobody left to wait
    ([], None, False),
])
def test_all_waiting(states, newest, expected):
    ws = [Walker(status=st, waiting_for_version=v) for st, v in states]
    assert W.all_waiting(ws, newest) is expected
