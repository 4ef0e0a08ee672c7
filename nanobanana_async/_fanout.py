"""Fan-out: run many requests through one client with bounded memory."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from typing import Union

import anyio

from ._errors import NanoBananaError
from ._models import GenerationRequest
from ._task import Task

#: What fan-out accepts: requests or bare prompts, from a plain or an async iterable.
Requests = Union[
    Iterable[Union[GenerationRequest, str]], AsyncIterable[Union[GenerationRequest, str]]
]
Outcome = Union[Task, NanoBananaError]


async def _iterate(
    requests: Requests,
) -> AsyncIterator[GenerationRequest | str]:
    if isinstance(requests, AsyncIterable):
        async for item in requests:
            yield item
    else:
        for item in requests:
            yield item


async def fan_out(
    submit: Callable[[GenerationRequest | str], Awaitable[Task]],
    requests: Requests,
    *,
    window: int,
    return_exceptions: bool,
) -> AsyncGenerator[tuple[int, Outcome], None]:
    """Yield `(index, task or error)` in finishing order, holding at most *window* requests.

    Requests are pulled lazily from the iterable. A task is yielded once it is terminal (failed ones
    too: awaiting them raises). A submit error is yielded when *return_exceptions*, else raised
    after the jobs in flight are cancelled (their tasks stay tracked by the client until terminal).
    """
    send, receive = anyio.create_memory_object_stream[tuple[int, Outcome]](window)
    slots = anyio.Semaphore(window)

    async def job(index: int, item: GenerationRequest | str) -> None:
        try:
            outcome: Outcome
            try:
                task = await submit(item)
                await task._state_done()
                outcome = task
            except NanoBananaError as exc:
                outcome = exc
            await send.send((index, outcome))
        finally:
            slots.release()

    async def produce() -> None:
        async with send:
            async with anyio.create_task_group() as group:
                index = 0
                async for item in _iterate(requests):
                    await slots.acquire()
                    group.start_soon(job, index, item)
                    index += 1

    producer = asyncio.get_running_loop().create_task(produce())
    try:
        async with receive:
            async for index, outcome in receive:
                if isinstance(outcome, NanoBananaError) and not return_exceptions:
                    raise outcome
                yield index, outcome
        await producer
    finally:
        if not producer.done():
            producer.cancel()
            # Let the cancellation land; the producer's own error (if any) was raised already.
            await asyncio.gather(producer, return_exceptions=True)
