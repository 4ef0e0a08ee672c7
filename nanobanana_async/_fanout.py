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
from typing import TypeVar, Union

from ._errors import NanoBananaError
from ._models import GenerationRequest
from ._task import Task

#: What fan-out accepts: requests or bare prompts, from a plain or an async iterable.
Requests = Union[
    Iterable[Union[GenerationRequest, str]], AsyncIterable[Union[GenerationRequest, str]]
]
Outcome = Union[Task, NanoBananaError]
_DONE = object()
T = TypeVar("T")


async def iterate(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    """Iterate a plain or an async iterable lazily, as an async iterator."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
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
    Plain asyncio primitives: this is the hot path of every fan-out.
    """
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(window)
    # Unbounded, but never longer than *window*: a job holds a slot until its outcome is taken.
    outcomes: asyncio.Queue[tuple[int, Outcome | BaseException] | object] = asyncio.Queue()
    jobs: set[asyncio.Task[None]] = set()

    async def job(index: int, item: GenerationRequest | str) -> None:
        outcome: Outcome | BaseException
        try:
            task = await submit(item)
            await task.join()
            outcome = task
        except Exception as exc:
            # Any error, ours or not (a limiter's store, a hook): the consumer must hear of it.
            outcome = exc
        outcomes.put_nowait((index, outcome))

    async def produce() -> None:
        try:
            index = 0
            async for item in iterate(requests):
                await slots.acquire()
                # Owned by this generator (no task group can span its yields): cancelled and
                # awaited in its `finally`.
                spawned = loop.create_task(job(index, item))
                jobs.add(spawned)
                spawned.add_done_callback(jobs.discard)
                index += 1
            if jobs:
                await asyncio.gather(*jobs)
        finally:
            outcomes.put_nowait(_DONE)

    # Owned by this generator, like the jobs: cancelled and awaited in its `finally`.
    producer = loop.create_task(produce())
    try:
        while True:
            entry = await outcomes.get()
            if entry is _DONE:
                break
            index, outcome = entry  # type: ignore[misc]
            slots.release()
            if isinstance(outcome, BaseException) and not (
                return_exceptions and isinstance(outcome, NanoBananaError)
            ):
                raise outcome
            yield index, outcome
        await producer  # the iterable's own error, if it raised
    finally:
        pending = [*jobs, producer]
        for spawned in pending:
            spawned.cancel()
        # Let the cancellations land; an error raised above was raised already.
        await asyncio.gather(*pending, return_exceptions=True)
