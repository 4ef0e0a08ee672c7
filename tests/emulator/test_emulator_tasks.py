"""Polling, task lifecycle, progress modes, the ledger, envelopes and error styles."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nanobanana_async.testing import Emulator

from ._helpers import RESULT, auth, create, poll, text_to_image, wait_for, wait_until_done

pytestmark = pytest.mark.anyio


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as client:
        yield client


async def _create_id(session: aiohttp.ClientSession, emu: Emulator, **overrides: Any) -> str:
    status, body = await create(session, emu, json_body=text_to_image(**overrides))
    assert status == 200, body
    task_id: str = body["data"]["id"]
    return task_id


async def test_poll_by_task_id_and_by_id_until_success(session: aiohttp.ClientSession) -> None:
    """Polling by `taskId` or `id` gives the same answer, ending in a succeeded result."""
    async with Emulator(speed=1000.0, duration=20.0) as emu:
        task_id = await _create_id(session, emu, prompt="a moon cat")
        status, by_task_id = await poll(session, emu, task_id)
        status2, by_id = await poll(session, emu, task_id, field="id")
        assert (status, status2) == (200, 200)
        for body in (by_task_id, by_id):
            assert set(body["data"]) == {
                "id",
                "results",
                "progress",
                "status",
                "failure_reason",
                "error",
            }  # no credits_cost in result answers
            assert body["data"]["id"] == task_id
        seen = await wait_until_done(session, emu, task_id)
        assert seen[-1] == {
            "id": task_id,
            "results": [{"url": f"{emu.base_url}/files/{task_id}/0.png", "content": "a moon cat"}],
            "progress": 100,
            "status": "succeeded",
            "failure_reason": None,
            "error": None,
        }
        assert emu.tasks[task_id].status == "succeeded"
        assert emu.ledger.polls_received == len(seen) + 2
        assert [r.task_id for r in emu.requests if r.endpoint == "result"] == [task_id] * (
            len(seen) + 2
        )


async def test_poll_without_task_id_answers_400(session: aiohttp.ClientSession) -> None:
    """A result request without a task id, or with a non-JSON body, answers 400."""
    async with Emulator() as emu:
        url = emu.base_url + RESULT
        for kwargs in ({"json": {}}, {"json": {"taskId": ""}}, {"data": b"taskId=1"}, {}):
            async with session.post(url, headers=auth(emu.api_key), **kwargs) as response:
                assert response.status == 400
                assert "task id" in (await response.json())["error"]
        assert emu.ledger.polls_received == 4


async def test_poll_unknown_id_answers_404(session: aiohttp.ClientSession) -> None:
    """Polling an id that was never created answers 404 `task not found`."""
    async with Emulator() as emu:
        status, body = await poll(session, emu, "3-00000000-0000-4000-8000-000000000000")
        assert (status, body) == (404, {"error": "task not found"})


async def test_file_is_served_only_after_success(session: aiohttp.ClientSession) -> None:
    """The result PNG is 404 while running, then served as image/png without auth."""
    async with Emulator(duration=1e6) as forever:  # real time: still running at the GET
        task_id = await _create_id(session, forever)
        async with session.get(f"{forever.base_url}/files/{task_id}/0.png") as response:
            assert response.status == 404
        assert forever.tasks[task_id].status == "running"
    async with Emulator(speed=1000.0, duration=20.0, image_downscale=32) as emu:
        task_id = await _create_id(session, emu)
        url = f"{emu.base_url}/files/{task_id}/0.png"
        seen = await wait_until_done(session, emu, task_id)
        assert seen[-1]["results"][0]["url"] == url
        async with session.get(url) as response:
            assert response.status == 200
            assert response.content_type == "image/png"
            assert (await response.read())[:8] == b"\x89PNG\r\n\x1a\n"
        for missing in (f"/files/{task_id}/1.png", "/files/3-nope/0.png"):
            async with session.get(emu.base_url + missing) as response:
                assert response.status == 404
        assert [r.endpoint for r in emu.requests if r.path.startswith("/files/")] == ["file"] * 3


async def test_failed_tasks_are_refunded_without_polling(session: aiohttp.ClientSession) -> None:
    """A failing task's credits come back at its end time even though nobody polls it."""
    # 1,000 emulated seconds at speed 1000: the three creates are all in well before the first
    # task ends, even on a loaded machine.
    async with Emulator(speed=1000.0, duration=1000.0, failure_rate=1.0, credits=100) as emu:
        for _ in range(3):
            await _create_id(session, emu, model="nano-banana-pro")
        assert emu.ledger.balance == 40
        assert emu.ledger.running == 3
        await wait_for(lambda: emu.ledger.running == 0)
        ledger = emu.ledger
        assert (ledger.balance, ledger.credits_charged, ledger.credits_refunded) == (100, 60, 60)
        assert (ledger.polls_received, ledger.tasks_created, ledger.max_running) == (0, 3, 3)
        assert "balance=100" in repr(ledger)


async def test_failed_task_reports_reason_and_error(session: aiohttp.ClientSession) -> None:
    """A failed task answers status failed, its failure_reason, an error message and no results."""
    options = {"failure_rate": 1.0, "failure_reasons": ["output_moderation"]}
    async with Emulator(speed=1000.0, duration=10.0, **options) as emu:
        task_id = await _create_id(session, emu)
        final = (await wait_until_done(session, emu, task_id))[-1]
        assert final["status"] == "failed"
        assert final["failure_reason"] == "output_moderation"
        assert isinstance(final["error"], str)
        assert final["error"]
        assert final["results"] == []
        assert emu.ledger.credits_refunded == 15


async def test_failure_rate_splits_outcomes_reproducibly(session: aiohttp.ClientSession) -> None:
    """With failure_rate=0.5 some tasks fail and some succeed, identically for the same seed."""
    outcomes = []
    for _ in range(2):
        async with Emulator(failure_rate=0.5, seed=3, credits=None) as emu:
            for _ in range(20):
                await _create_id(session, emu)
            outcomes.append([(t.outcome, t.failure_reason) for t in emu.tasks.values()])
    assert outcomes[0] == outcomes[1]
    assert 3 <= sum(o == "failed" for o, _ in outcomes[0]) <= 17
    reasons = {r for o, r in outcomes[0] if o == "failed"}
    assert reasons <= {"error", "input_moderation", "output_moderation"}
    assert all(r is None for o, r in outcomes[0] if o == "succeeded")


async def test_running_and_max_running(session: aiohttp.ClientSession) -> None:
    """`running` counts unfinished tasks; `max_running` keeps the peak seen at creates."""
    async with Emulator(duration=1e6) as emu:
        for _ in range(3):
            await _create_id(session, emu)
        assert (emu.ledger.running, emu.ledger.max_running) == (3, 3)
    # A full second per task: the second create comes well before the first task ends.
    async with Emulator(speed=1000.0, duration=1000.0) as emu:
        await _create_id(session, emu)
        await _create_id(session, emu)
        await wait_for(lambda: emu.ledger.running == 0)
        await _create_id(session, emu)
        assert emu.ledger.max_running == 2


async def test_smooth_progress_increases(session: aiohttp.ClientSession) -> None:
    """In smooth mode progress rises linearly through intermediate values, then reaches 100."""
    # A full second of running: room for many polls, whatever the load on the machine.
    async with Emulator(speed=1000.0, duration=1000.0, progress="smooth") as emu:
        task_id = await _create_id(session, emu)
        seen = [d["progress"] for d in await wait_until_done(session, emu, task_id)]
        assert seen == sorted(seen)
        assert seen[-1] == 100
        assert len({p for p in seen if 0 < p < 100}) >= 2
        task = emu.tasks[task_id]
        start = task.created_at
        fractions = (0.0, 0.255, 0.505, 0.995, 1.001)
        assert [task.progress_at(start + f * 1000.0) for f in fractions] == [0, 25, 50, 99, 100]


async def test_stuck_progress_stays_zero_until_done(session: aiohttp.ClientSession) -> None:
    """In stuck mode every running poll reports 0 and the finished task 100."""
    async with Emulator(speed=1000.0, duration=30.0, progress="stuck") as emu:
        task_id = await _create_id(session, emu)
        seen = await wait_until_done(session, emu, task_id)
        assert all(d["progress"] == 0 for d in seen if d["status"] == "running")
        assert seen[-1]["progress"] == 100
        task = emu.tasks[task_id]
        assert {task.progress_at(task.created_at + f * 30.0) for f in (0, 0.5, 0.99)} == {0}


async def test_jumpy_progress_moves_in_a_few_jumps(session: aiohttp.ClientSession) -> None:
    """In jumpy mode progress takes two to four running values and never decreases."""
    async with Emulator(speed=1000.0, duration=50.0, progress="jumpy", seed=5) as emu:
        task_ids = [await _create_id(session, emu) for _ in range(5)]
        for task_id in task_ids:
            task = emu.tasks[task_id]
            curve = [task.progress_at(task.created_at + i / 1000 * 50.0) for i in range(1000)]
            assert curve == sorted(curve)
            values = sorted(set(curve))
            assert values[0] == 0
            assert 2 <= len(values) <= 4
            assert 5 <= values[1] < values[-1] <= 95 or len(values) == 2
        seen = [d["progress"] for d in await wait_until_done(session, emu, task_ids[-1])]
        assert seen == sorted(seen)
        assert seen[-1] == 100


async def test_mixed_progress_uses_every_mode(session: aiohttp.ClientSession) -> None:
    """In mixed mode each task picks smooth, stuck or jumpy, and all three occur."""
    async with Emulator(progress="mixed", credits=None) as emu:
        for _ in range(30):
            await _create_id(session, emu)
        assert {t.progress_mode for t in emu.tasks.values()} == {"smooth", "stuck", "jumpy"}


@pytest.mark.parametrize(
    ("model", "size", "low", "high"),
    [
        ("nano-banana-fast", "1K", 4, 10),
        ("nano-banana-fast", "4K", 6, 15),
        ("nano-banana", "1K", 8, 20),
        ("nano-banana", "2K", 8, 20),
        ("nano-banana", "4K", 12, 30),
        ("nano-banana-pro", "1K", 15, 20),
        ("nano-banana-pro", "2K", 30, 40),
        ("nano-banana-pro", "4K", 50, 70),
    ],
)
async def test_durations_follow_the_table(
    session: aiohttp.ClientSession, model: str, size: str, low: float, high: float
) -> None:
    """Emulated durations are drawn within the documented range for the model and size."""
    async with Emulator(credits=None) as emu:
        for _ in range(10):
            await _create_id(session, emu, model=model, imageSize=size)
        assert all(low <= t.duration <= high for t in emu.tasks.values())


async def test_tail_and_fixed_duration(session: aiohttp.ClientSession) -> None:
    """tail_rate=1 puts every task at 150-300 s; `duration` overrides everything."""
    async with Emulator(tail_rate=1.0) as emu:
        for _ in range(5):
            await _create_id(session, emu)
        assert all(150 <= t.duration <= 300 for t in emu.tasks.values())
        assert all(t.status == "running" for t in emu.tasks.values())
    async with Emulator(tail_rate=1.0, duration=2.5) as emu:
        task_id = await _create_id(session, emu)
        assert emu.tasks[task_id].duration == 2.5
        assert emu.tasks[task_id].end_time == emu.tasks[task_id].created_at + 2.5


async def test_request_log(session: aiohttp.ClientSession) -> None:
    """Every request is recorded in order with its endpoint, status, task id and fields."""
    async with Emulator(speed=10.0) as emu:
        task_id = await _create_id(session, emu, prompt="logged")
        await poll(session, emu, task_id)
        await poll(session, emu, "3-missing")
        records = emu.requests
        assert [(r.method, r.path, r.endpoint, r.status) for r in records] == [
            ("POST", "/api/v1/image/nano-banana", "create", 200),
            ("POST", "/api/v1/image/nano-banana/result", "result", 200),
            ("POST", "/api/v1/image/nano-banana/result", "result", 404),
        ]
        assert [r.task_id for r in records] == [task_id, task_id, "3-missing"]
        assert records[0].fields == {"prompt": "logged", "model": "nano-banana"}
        assert records[1].fields is None
        assert all(r.api_key_valid and r.fault is None for r in records)
        assert records[0].time <= records[1].time <= records[2].time <= emu.now()
        assert records[0].real_time <= records[2].real_time


async def test_code_envelope_option(session: aiohttp.ClientSession) -> None:
    """envelope="code" wraps create and result answers as {code: 0, msg: success, data}."""
    async with Emulator(envelope="code") as emu:
        status, body = await create(session, emu, json_body=text_to_image())
        assert status == 200
        assert (body["code"], body["msg"], body["data"]["status"]) == (0, "success", "running")
        status, polled = await poll(session, emu, body["data"]["id"])
        assert (polled["code"], polled["msg"]) == (0, "success")
        assert polled["data"]["id"] == body["data"]["id"]


STYLES: list[tuple[str, str, Any]] = [
    ("error", "application/json", {"error": "task not found"}),
    ("message", "application/json", {"message": "task not found"}),
    ("code_msg", "application/json", {"code": 404, "msg": "task not found"}),
    (
        "success_false",
        "application/json",
        {"success": False, "error": {"code": 404, "message": "task not found"}},
    ),
    ("text", "text/plain", "task not found"),
]


@pytest.mark.parametrize(("style", "content_type", "expected"), STYLES, ids=[s[0] for s in STYLES])
async def test_error_styles(
    session: aiohttp.ClientSession, style: Any, content_type: str, expected: Any
) -> None:
    """Each error_style renders the error body in its documented shape."""
    async with Emulator(error_style=style) as emu:
        async with session.post(
            emu.base_url + RESULT, json={"taskId": "3-x"}, headers=auth(emu.api_key)
        ) as response:
            assert response.status == 404
            assert response.content_type == content_type
            text = await response.text()
        assert (json.loads(text) if content_type == "application/json" else text) == expected


async def test_html_error_style(session: aiohttp.ClientSession) -> None:
    """error_style="html" answers an HTML page that contains the message, with the right status."""
    async with Emulator(error_style="html") as emu:
        status, body = await create(session, emu, json_body=text_to_image(), key=None)
        assert status == 401
        assert "<html>" in body
        assert "401 Unauthorized" in body
        assert "not authenticated" in body


async def test_app_can_be_mounted_under_a_prefix(session: aiohttp.ClientSession) -> None:
    """`Emulator.app` works as a sub-application, and result URLs keep the mount prefix."""
    emu = Emulator(speed=1000.0, duration=5.0)
    parent = web.Application()
    parent.add_subapp("/nb", emu.app)
    runner = web.AppRunner(parent)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/nb"
        headers = auth(emu.api_key)
        async with session.post(
            base + "/api/v1/image/nano-banana", json=text_to_image(), headers=headers
        ) as response:
            task_id = (await response.json())["data"]["id"]
        await wait_for(lambda: emu.tasks[task_id].status == "succeeded")
        async with session.post(
            base + "/api/v1/image/nano-banana/result", json={"id": task_id}, headers=headers
        ) as response:
            url = (await response.json())["data"]["results"][0]["url"]
        assert url == f"{base}/files/{task_id}/0.png"
        async with session.get(url) as response:
            assert response.status == 200
    finally:
        await runner.cleanup()
        await emu.aclose()
