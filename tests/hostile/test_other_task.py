"""A poll answer about another task (issue 19) fails with `ProtocolError` after a few tries, not
after the retry policy's whole run of attempts (45 s by default)."""

from __future__ import annotations

import anyio
import pytest

import nanobanana_async as nb

from ._helpers import CASE_BOUND, hostile_client
from ._server import hostile_server

pytestmark = pytest.mark.anyio

#: Far more attempts than the few an answer about another task may take.
GENEROUS = nb.RetryPolicy(attempts=50, sleep=False, deadline=None)


async def test_a_tracked_task_fails_after_three_answers_about_another_task() -> None:
    """A task whose polls keep answering about another task ends with ProtocolError after 3."""
    async with hostile_server() as server, hostile_client(server, retry=GENEROUS) as client:
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            server.poll_plan = ["other-id"] * 40
            with pytest.raises(nb.ProtocolError, match="about task '3-somebody-else'"):
                await task.wait()
    assert server.seen["result", "other-id"] == 3


async def test_get_fails_after_three_answers_about_another_task() -> None:
    """`client.get` (one poll, as `nanobanana status` does) gives up after 3 such answers."""
    async with hostile_server() as server, hostile_client(server, retry=GENEROUS) as client:
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            await task.wait()
            server.poll_plan = ["other-id"] * 40
            with pytest.raises(nb.ProtocolError, match="about task '3-somebody-else'"):
                await client.get(task.id)
    assert server.seen["result", "other-id"] == 3


async def test_one_crossed_answer_is_still_retried() -> None:
    """A single answer about another task is retried: the task still succeeds."""
    async with hostile_server() as server, hostile_client(server, retry=GENEROUS) as client:
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            server.poll_plan = ["other-id", "other-id"]
            result = await task.wait()
    assert result.images
    assert server.seen["result", "other-id"] == 2
