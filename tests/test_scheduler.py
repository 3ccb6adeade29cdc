"""Reading Slurm's own words out of what Parsl reports, and which failures are retried."""

from __future__ import annotations

import pytest
from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

from autopipe.scheduler import refusal_from_exception, retry_lost_workers, slurm_errors

# Verbatim from Parsl 2026.10 and Slurm 22.05 (tests/hpc produce them for real).
BLOCK_STATUS = (
    "Failed to start block 0: Cannot launch job parsl.cpu.block-0.1795976114.7150753: Could not read job ID from "
    "submit command standard output; recode=1, stdout=, stderr=sbatch: error: Batch job submission failed: "
    "Invalid feature specification\n"
)
LUA_REFUSAL = (
    "stderr=sbatch: error: Job request does not match any supported policy: give a node type with -C gpu or -C cpu\n"
    "sbatch: error: Batch job submission failed: Unspecified error\n"
)
TEST_ONLY = "allocation failure: Requested time limit is invalid (missing or exceeds some limit)\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (BLOCK_STATUS, ["Batch job submission failed: Invalid feature specification"]),
        (LUA_REFUSAL, ["Job request does not match any supported policy: give a node type with -C gpu or -C cpu"]),
        (TEST_ONLY, ["Requested time limit is invalid (missing or exceeds some limit)"]),
        ("sbatch: error: Batch job submission failed: Unspecified error\n", ["Batch job submission failed: Unspecified error"]),
        (repr(BLOCK_STATUS), ["Batch job submission failed: Invalid feature specification"]),  # quoted in a repr
        ("ManagerLost: task lost with its block", []),
    ],
)
def test_slurm_errors(text, expected):
    assert slurm_errors(text) == expected


def test_refusal_from_a_bad_state_exception():
    from parsl.executors.errors import BadStateException

    class Executor:
        label = "cpu"

    exc = BadStateException(Executor(), Exception("Error 1:\n\t" + BLOCK_STATUS))
    assert refusal_from_exception(exc) == "Batch job submission failed: Invalid feature specification"
    assert refusal_from_exception(ValueError("pw.x crashed")) is None


def test_only_lost_workers_are_retried():
    budget = 2
    assert retry_lost_workers(ManagerLost(b"m", "host"), None) <= budget
    assert retry_lost_workers(WorkerLost(3, "host"), None) <= budget
    assert retry_lost_workers(ValueError("the app's own error"), None) > budget
