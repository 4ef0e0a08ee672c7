"""A CI-sized soak (the full one is `python -m benchmarks.soak`): every task accounted for."""

from __future__ import annotations

import os

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

pytestmark = pytest.mark.anyio

TASKS = 300
IN_FLIGHT = 30
SPEED = 1000.0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow  # about 10-20 s: started first by the suite
async def test_a_small_soak_accounts_for_every_task_and_reconciles_credits() -> None:
    """300 tasks through 3 % failures, 2 % poll 500s and 1 % 429s: all accounted, credits match."""
    fds_before = _open_fds()
    outcomes = {"succeeded": 0, "failed": 0, "errors": 0}
    ids: list[str] = []
    async with Emulator(speed=SPEED, credits=None, failure_rate=0.03, seed=7) as emu:
        emu.faults.inject(Fault.rate_limit(retry_after=0.01), rate=0.01)
        emu.faults.inject(Fault.status(500), endpoint="result", rate=0.02)
        retry = nb.RetryPolicy(attempts=10, initial_backoff=0.001, max_backoff=0.01)
        client = nb.Client(
            emu.api_key,
            base_url=emu.base_url,
            max_concurrency=IN_FLIGHT,
            poll=nb.PollPolicy(speed=SPEED),
            retry=retry,
            seed=0,
        )
        async with client:
            requests = (nb.GenerationRequest(prompt=f"soak {n}") for n in range(TASKS))
            with anyio.fail_after(100):
                async for outcome in client.as_completed(requests, return_exceptions=True):
                    if isinstance(outcome, nb.NanoBananaError):
                        outcomes["errors"] += 1
                        continue
                    ids.append(outcome.id)
                    try:
                        await outcome
                        outcomes["succeeded"] += 1
                    except nb.TaskFailedError:
                        outcomes["failed"] += 1
            usage = client.credits
            assert client.in_flight == 0
        ledger = emu.ledger
        assert emu.faults.fired_total > 0
        assert sum(outcomes.values()) == TASKS
        assert outcomes["errors"] == 0
        assert outcomes["failed"] > 0
        assert len(set(ids)) == len(ids) == ledger.tasks_created == TASKS
        assert usage.charged == ledger.credits_charged
        assert usage.refunded == ledger.credits_refunded
        assert usage.reserved == 0
    assert _open_fds() == fds_before
