"""A worker process of the multi-process tests: one client, one RedisLimiter, some tasks.

Run as ``python worker.py '<json config>'``. It prints one line per event, flushed:
``ready`` (limiter connected), ``created <task id>``, ``retrying <kind>`` (a retry of a create or
poll began, the pause already shared), and last ``summary <json>`` with its counts. With
``"wait_go": true`` it reads one line from stdin between ``ready`` and its first submit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

import nanobanana_async as nb


def say(*words: object) -> None:
    """Print one event line at once."""
    print(*words, flush=True)


async def main(config: dict[str, Any]) -> None:
    """Submit the configured tasks through a shared RedisLimiter and wait for all of them."""
    counts: Counter[str] = Counter()
    limiter = nb.RedisLimiter(
        config["redis_url"],
        name=config["name"],
        max_concurrency=config["cap"],
        lease_seconds=config.get("lease", 3.0),
        max_credits=config.get("max_credits"),
    )
    speed = config["speed"]
    duration = config["duration"]
    # The first poll comes just after the task's end; later ones (after a restart, say) often.
    poll = nb.PollPolicy(
        initial_delay=duration * 1.05,
        min_interval=duration / 10,
        max_interval=duration / 10,
        jitter=0.0,
        speed=speed,
    )
    retry = nb.RetryPolicy(
        on_retry=lambda event: say("retrying", event.endpoint),
    )
    async with limiter:
        async with nb.Client(
            config["api_key"], base_url=config["base_url"], limiter=limiter, poll=poll, retry=retry
        ) as client:
            await limiter.ready("poll")  # connect and learn the store's epoch
            say("ready")
            if config.get("wait_go"):
                sys.stdin.readline()

            async def one(index: int) -> None:
                while True:
                    try:
                        task = await client.submit(
                            f"{config['name']} {config['worker']} {index}",
                            model=config.get("model", "nano-banana-fast"),
                        )
                    except nb.errors.LimiterUnavailableError:
                        counts["unavailable"] += 1
                        if config.get("retry_unavailable"):
                            await asyncio.sleep(0.2)
                            continue
                        return
                    except nb.BudgetExceededError:
                        counts["over_budget"] += 1
                        return
                    break
                counts["created"] += 1
                say("created", task.id)
                try:
                    await task.wait()
                except nb.TaskFailedError:
                    counts["failed"] += 1
                else:
                    counts["succeeded"] += 1

            if config.get("sequential"):
                for index in range(config["tasks"]):
                    await one(index)
            else:
                await asyncio.gather(*(one(index) for index in range(config["tasks"])))
    say("summary", json.dumps(dict(counts)))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
