"""The emulator in a child process, plus a control port that reports each task's real end time.

The polling benchmark needs to know when each task truly finished. The emulator knows
(`EmulatedTask.end_time`, in emulated seconds since its start), so this wrapper serves a small
control app beside it:

- ``POST /reset`` ``{"speed", "progress", "seed"}`` closes the current emulator (if any) and starts
  a fresh one (unlimited credits); answers ``{"base_url", "api_key"}``.
- ``GET /tasks`` answers every task with its real end time on the ``time.monotonic()`` clock
  (system-wide on Linux, so comparable with the client process), its poll count, and the
  server-side detection delay (arrival of the first poll that saw it terminal minus its end time,
  in API seconds).

Run: ``python -m benchmarks.emulator_server``; prints ``PORT <control port>`` once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from aiohttp import web

from nanobanana_async.testing import Emulator


class _Control:
    def __init__(self) -> None:
        self.emulator: Emulator | None = None
        self.speed = 1.0
        self.t0 = 0.0  # time.monotonic() when the emulated clock read 0

    async def reset(self, request: web.Request) -> web.Response:
        options = await request.json()
        if self.emulator is not None:
            await self.emulator.aclose()
        self.speed = float(options.get("speed", 1.0))
        emulator = Emulator(
            speed=self.speed,
            progress=options.get("progress", "smooth"),
            seed=int(options.get("seed", 0)),
            credits=None,
            image_downscale=8,
        )
        await emulator.start()
        self.emulator = emulator
        self.t0 = time.monotonic() - emulator.now() / self.speed
        return web.json_response({"base_url": emulator.base_url, "api_key": emulator.api_key})

    async def tasks(self, request: web.Request) -> web.Response:
        emulator = self.emulator
        if emulator is None:
            return web.json_response({"tasks": []})
        polls: dict[str, int] = {}
        detected: dict[str, float] = {}
        ends = {task_id: task.end_time for task_id, task in emulator.tasks.items()}
        for record in emulator.requests:
            if record.endpoint != "result" or record.task_id is None:
                continue
            polls[record.task_id] = polls.get(record.task_id, 0) + 1
            end = ends.get(record.task_id)
            if end is not None and record.time >= end and record.task_id not in detected:
                detected[record.task_id] = record.time - end
        rows: list[dict[str, Any]] = [
            {
                "id": task_id,
                "duration": task.duration,
                "progress_mode": task.progress_mode,
                "end_real": self.t0 + task.end_time / self.speed,
                "polls": polls.get(task_id, 0),
                "server_latency": detected.get(task_id),
            }
            for task_id, task in emulator.tasks.items()
        ]
        return web.json_response({"tasks": rows, "polls_received": emulator.ledger.polls_received})


async def _serve() -> None:
    control = _Control()
    app = web.Application()
    app.router.add_post("/reset", control.reset)
    app.router.add_get("/tasks", control.tasks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        if control.emulator is not None:
            await control.emulator.aclose()
        await runner.cleanup()


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
