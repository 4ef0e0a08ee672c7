"""The one create path: hooks, the claim it holds, the retry primitive, and clean stops."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import SPEED, client_for, records, wait_for

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: Emulated seconds that keep a task running for the whole test.
FOREVER = 100_000.0


class CountingLimiter(nb.Limiter):
    """An in-process limiter that records the calls the client makes (overrides are called)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ready_calls: dict[str, int] = {"create": 0, "poll": 0}
        self.released: list[str] = []
        self.renewed: list[str] = []

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        self.ready_calls[kind] += 1
        await super().ready(kind)

    async def release(self, lease: nb.limiters.Lease) -> None:
        self.released.append(lease.token)
        await super().release(lease)

    async def renew(self, lease: nb.limiters.Lease) -> None:
        self.renewed.append(lease.token)


# --- hooks ----------------------------------------------------------------------------------------


async def test_a_vetoing_hook_abandons_the_create_unsent() -> None:
    """before_send returning False raises SubmitAbandonedError; nothing sent, nothing held."""
    seen: list[str] = []

    async def veto(request: nb.GenerationRequest) -> bool:
        seen.append(request.prompt)
        return False

    async with Emulator(speed=SPEED) as emu:
        limiter = nb.Limiter(max_concurrency=1, max_credits=100)
        async with client_for(emu, limiter=limiter, max_credits=100) as client:
            with pytest.raises(nb.errors.SubmitAbandonedError) as info:
                await client.submit("never", hooks=nb.events.SubmitHooks(before_send=veto))
            assert info.value.request.prompt == "never"
            assert seen == ["never"]
            assert client.credits == nb.credits.CreditUsage(budget=100)
            assert limiter.in_flight == 0
            assert limiter.committed_credits == 0
            await client.submit("the slot is free again")
        assert emu.ledger.creates_received == 1


async def test_hooks_see_the_create_leave_then_the_task_arrive() -> None:
    """before_send runs once the slot is held; on_created gets the task before submit returns."""
    order: list[str] = []
    limiter = nb.Limiter(max_concurrency=2)

    async def before(request: nb.GenerationRequest) -> None:
        order.append(f"before {request.prompt} in_flight={limiter.in_flight}")

    async def created(task: nb.Task) -> None:
        order.append(f"created {task.id} cost={task.credits_cost}")

    async with Emulator(speed=SPEED) as emu:
        async with client_for(emu, limiter=limiter) as client:
            hooks = nb.events.SubmitHooks(before_send=before, on_created=created)
            task = await client.submit("hooked", hooks=hooks)
            order.append("returned")
    assert order == ["before hooked in_flight=1", f"created {task.id} cost=15", "returned"]


async def test_on_created_runs_even_when_the_caller_is_cancelled_mid_create() -> None:
    """Cancelling submit() after the body left still reports the task to on_created."""
    created: list[str] = []

    async def on_created(task: nb.Task) -> None:
        created.append(task.id)

    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        emu.faults.inject(Fault.delay(0.3), endpoint="create", times=1)
        async with client_for(emu) as client:
            submit = asyncio.ensure_future(
                client.submit("late", hooks=nb.events.SubmitHooks(on_created=on_created))
            )
            await wait_for(lambda: len(records(emu, "create")) == 1)
            submit.cancel()
            await asyncio.wait([submit])
            await wait_for(lambda: len(created) == 1)
            assert client.in_flight == 1  # tracked, polled, holding its slot
    assert list(emu.tasks) == created


# --- the limiter interface ------------------------------------------------------------------------


async def test_one_rate_token_per_request_and_overrides_are_called() -> None:
    """A create takes one 'create' token, each poll one 'poll'; release/renew overrides run."""
    limiter = CountingLimiter(max_concurrency=2)
    async with Emulator(speed=SPEED, duration=20.0) as emu:
        async with client_for(emu, limiter=limiter) as client:
            task = await client.submit("counted")
            await task.wait()
    polls = len(records(emu, "result"))
    assert limiter.ready_calls == {"create": 1, "poll": polls}
    assert len(limiter.released) == 1
    assert len(limiter.renewed) == polls - 1  # every poll that found it still running
    assert limiter.in_flight == 0


async def test_a_shared_budget_of_the_limiter_refuses_unsent_and_refunds() -> None:
    """Limiter(max_credits) holds across clients; a failed task gives its credits back."""
    limiter = nb.Limiter(max_concurrency=4, max_credits=30)
    async with Emulator(speed=SPEED, failure_rate=1.0) as failing, Emulator(speed=SPEED) as ok:
        async with (
            client_for(failing, limiter=limiter) as one,
            client_for(ok, limiter=limiter) as two,
        ):
            failed = await one.submit("refunded")
            with pytest.raises(nb.TaskFailedError):
                await failed.wait()
            await wait_for(lambda: limiter.committed_credits == 0)
            await two.submit("a")
            await two.submit("b")
            with pytest.raises(nb.BudgetExceededError):
                await one.submit("over")
            assert limiter.committed_credits == 30
    assert failing.ledger.creates_received == 1
    assert ok.ledger.creates_received == 2


# --- Retry-After is capped ------------------------------------------------------------------------


async def test_an_absurd_retry_after_fails_at_once_and_freezes_nothing() -> None:
    """A Retry-After past max_pause raises RateLimitError with the hint; the key waits the cap."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.rate_limit(retry_after=99999), endpoint="create", times=1)
        retry = nb.RetryPolicy(max_pause=0.05)
        async with client_for(emu, retry=retry) as client:
            with pytest.raises(nb.RateLimitError) as info:
                await client.submit("told to wait a day")
            assert info.value.retry_after == 99999
            with anyio.fail_after(10):  # a frozen key would wait a day
                await client.generate("next")
            assert client.credits.charged == 15
    assert emu.ledger.creates_received == 1


def test_the_pause_cap_defaults_to_the_retry_deadline() -> None:
    """RetryPolicy.pause_cap is max_pause when given, else the policy's deadline."""
    assert nb.RetryPolicy(deadline=30.0).pause_cap == 30.0
    assert nb.RetryPolicy(deadline=30.0, max_pause=5.0).pause_cap == 5.0
    assert nb.RetryPolicy(deadline=None).pause_cap is None


class BlockedPolls(nb.Limiter):
    """A limiter whose gate never lets a poll leave (an endless pause, as the gate sees it)."""

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        if kind == "poll":
            await anyio.sleep_forever()


async def test_a_task_deadline_holds_while_its_poll_waits_in_the_gate() -> None:
    """A poll stuck behind the gate ends its task at the deadline with TaskTimeoutError."""
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        limiter = BlockedPolls(max_concurrency=1)
        timeouts = nb.Timeouts(task=0.2)
        async with client_for(emu, limiter=limiter, timeouts=timeouts) as client:
            task = await client.submit("stuck")
            with anyio.fail_after(10), pytest.raises(nb.TaskTimeoutError) as info:
                await task.wait()
            assert info.value.task_id == task.id
            assert limiter.in_flight == 0


# --- closing and stopping -------------------------------------------------------------------------


async def test_aclose_wakes_every_waiting_submit_with_client_closed_error() -> None:
    """Submits waiting for a slot or in a pause raise ClientClosedError at once, uncharged."""
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        limiter = nb.Limiter(max_concurrency=1)
        client = client_for(emu, limiter=limiter, max_credits=1000)
        other = client_for(emu, max_credits=1000)  # its own limiter, paused below
        try:
            await client.submit("holds the only slot")
            waiting = [asyncio.ensure_future(client.submit(f"queued {i}")) for i in range(3)]
            await other.limiter.pause(10_000)
            paused = asyncio.ensure_future(other.submit("in a pause"))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not any(job.done() for job in [*waiting, paused])
        finally:
            with anyio.fail_after(10):
                await client.aclose()
                await other.aclose()
        for job in [*waiting, paused]:
            with pytest.raises(nb.errors.ClientClosedError):
                await job
        assert client.credits.charged == 15
        assert client.credits.reserved == 0
        assert other.credits == nb.credits.CreditUsage(budget=1000)
    assert emu.ledger.creates_received == 1


async def test_batch_stop_abandons_creates_queued_in_a_pause(tmp_path: Path) -> None:
    """stop() during a long pause returns promptly; the queued creates are never sent."""
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        async with client_for(emu, max_concurrency=8) as client:
            await client.limiter.pause(10_000)
            batch = nb.Batch(client, [f"p{i}" for i in range(5)], tmp_path, gallery=False)
            run = asyncio.ensure_future(batch.run())
            await wait_for(lambda: client.credits.reserved == 5 * 15)
            for _ in range(50):  # let them reach the gate (the outcome is the same if not)
                await asyncio.sleep(0)
            batch.stop()
            with anyio.fail_after(10):
                summary = await run
            assert summary.interrupted
            assert summary.pending == 5
            assert client.credits.charged == 0
    assert emu.ledger.creates_received == 0


async def test_batch_run_raises_one_typed_error_not_a_group(tmp_path: Path) -> None:
    """A client closed under a running batch makes run() raise one ClientClosedError."""
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        client = client_for(emu, max_concurrency=2)
        batch = nb.Batch(client, [f"p{i}" for i in range(4)], tmp_path, gallery=False)
        run = asyncio.ensure_future(batch.run())
        await wait_for(lambda: emu.ledger.tasks_created == 2)
        await client.aclose()
        with pytest.raises(nb.NanoBananaError) as info:
            await run
    assert not isinstance(info.value, BaseExceptionGroup)
    assert isinstance(info.value, nb.errors.ClientClosedError)


# --- fan-out --------------------------------------------------------------------------------------


class BrokenStore(nb.Limiter):
    """A limiter whose store breaks on the nth slot (an error that is not ours)."""

    def __init__(self, breaks_at: int) -> None:
        super().__init__(max_concurrency=2)
        self.calls = 0
        self.breaks_at = breaks_at

    async def acquire(self) -> nb.limiters.Lease:
        self.calls += 1
        if self.calls == self.breaks_at:
            raise ConnectionResetError("the store went away")
        return await super().acquire()


@pytest.mark.parametrize("how", ["map", "as_completed", "map-return-exceptions"])
async def test_fan_out_surfaces_a_foreign_error_and_never_hangs(how: str) -> None:
    """An exception that is not ours (a limiter's store) is raised by map/as_completed."""
    limiter = BrokenStore(breaks_at=3)
    async with Emulator(speed=SPEED) as emu:
        async with client_for(emu, limiter=limiter) as client:
            prompts = [f"p{i}" for i in range(6)]

            async def consume() -> None:
                if how == "map":
                    await client.map(prompts)
                elif how == "map-return-exceptions":
                    await client.map(prompts, return_exceptions=True)
                else:
                    async for _ in client.as_completed(prompts):
                        pass

            with anyio.fail_after(20), pytest.raises(ConnectionResetError):
                await consume()
            # Creates already on their way are answered, tracked and polled to the end.
            await wait_for(
                lambda: (
                    client.in_flight == 0
                    and limiter.in_flight == 0
                    and client.credits.reserved == 0
                )
            )
        assert client.credits.charged == 15 * emu.ledger.creates_received


async def test_map_return_exceptions_keeps_the_task_id_of_errors() -> None:
    """An error that ended a created task (not only TaskFailedError) names that task."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.status(400), endpoint="result", times=1)
        async with client_for(emu, max_concurrency=1) as client:
            (outcome,) = await client.map(["refused poll"], return_exceptions=True)
    assert isinstance(outcome, nb.BadRequestError)
    assert outcome.task_id == next(iter(emu.tasks))


# --- nothing leaks, whatever fails ----------------------------------------------------------------


STEPS = ["reserve", "acquire", "ready", "before_send", "on_created", "settle"]


class FailingAt(nb.Limiter):
    """A limiter that raises at one step of the create path."""

    def __init__(self, step: str) -> None:
        super().__init__(max_concurrency=2, max_credits=1000)
        self.step = step

    def _maybe(self, step: str) -> None:
        if self.step == step:
            raise RuntimeError(f"injected at {step}")

    async def reserve(self, credits: int) -> None:
        self._maybe("reserve")
        await super().reserve(credits)

    async def acquire(self) -> nb.limiters.Lease:
        self._maybe("acquire")
        return await super().acquire()

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        if kind == "create":
            self._maybe("ready")
        await super().ready(kind)

    async def settle(self, reserved: int, charged: int) -> None:
        await super().settle(reserved, charged)
        if charged:
            self._maybe("settle")


@pytest.mark.parametrize("step", STEPS)
async def test_a_failure_at_any_step_leaks_no_slot_and_no_reservation(step: str) -> None:
    """Whatever step of a create raises, slots and reservations come back to zero."""

    async def before(_: nb.GenerationRequest) -> None:
        if step == "before_send":
            raise RuntimeError("injected at before_send")

    async def created(_: nb.Task) -> None:
        if step == "on_created":
            raise RuntimeError("injected at on_created")

    limiter = FailingAt(step)
    async with Emulator(speed=SPEED) as emu:
        async with client_for(emu, limiter=limiter, max_credits=1000) as client:
            hooks = nb.events.SubmitHooks(before_send=before, on_created=created)
            if step == "settle":
                # The create was paid for: the limiter's error is logged, the task goes on.
                await (await client.submit("x", hooks=hooks)).wait()
            elif step == "on_created":
                # The task is paid for: the error names it, and it stays tracked to its end.
                hook_error = nb.errors.SubmitHookError
                with pytest.raises(hook_error, match="injected at on_created") as info:
                    await client.submit("x", hooks=hooks)
                assert isinstance(info.value.__cause__, RuntimeError)
                await info.value.task.wait()
            else:
                with pytest.raises(RuntimeError, match=f"injected at {step}"):
                    await client.submit("x", hooks=hooks)
            await wait_for(lambda: client.in_flight == 0 and limiter.in_flight == 0)
            assert client.credits.reserved == 0
            sent = emu.ledger.creates_received
            assert client.credits.charged == 15 * sent
            if step != "settle":
                # A limiter that overrides settle() hears of it from the client's task group.
                await wait_for(lambda: limiter.committed_credits == 15 * sent)
    assert sent == (1 if step in ("on_created", "settle") else 0)


# --- what the wire says --------------------------------------------------------------------------


async def test_a_create_answered_as_failed_counts_refunded() -> None:
    """A create whose answer already says `failed` is refunded at once (the service refunds it)."""

    async def create(_: web.Request) -> web.Response:
        task = {
            "id": "t-1",
            "status": "failed",
            "progress": 0,
            "results": [],
            "failure_reason": "input_moderation",
            "error": "no",
            "credits_cost": 20,
        }
        return web.json_response({"data": task})

    app = web.Application()
    app.router.add_post("/api/v1/image/nano-banana", create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    limiter = nb.Limiter(max_credits=100)
    try:
        async with nb.Client(
            "sk-x", base_url=f"http://127.0.0.1:{port}", limiter=limiter
        ) as client:
            task = await client.submit("refused", model="nano-banana-pro")
            with pytest.raises(nb.TaskFailedError) as info:
                await task.wait()
            assert info.value.failure_reason == "input_moderation"
            await wait_for(lambda: limiter.committed_credits == 0)
            assert client.credits.charged == 20
            assert client.credits.refunded == 20
            assert client.credits.spent == 0
    finally:
        await runner.cleanup()


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: nb.Client("k", max_download_bytes=-5), "max_download_bytes"),
        (lambda: nb.Client("k", max_connections=0), "max_connections"),
        (lambda: nb.Client("k", max_credits=-1), "max_credits"),
        (lambda: nb.Client("k", max_concurrency=0), "max_concurrency"),
        (lambda: nb.Client("k", retry=3), "retry"),  # type: ignore[arg-type]
        (lambda: nb.RetryPolicy(attempts=0), "RetryPolicy.attempts"),
        (lambda: nb.RetryPolicy(max_pause=-1), "RetryPolicy.max_pause"),
        (lambda: nb.Timeouts(request=-1), "Timeouts.request"),
        (lambda: nb.Timeouts(create_keepalive=-1), "Timeouts.create_keepalive"),
        (lambda: nb.PollPolicy(min_interval=0), "PollPolicy.min_interval"),
        (lambda: nb.PollPolicy(speed=0), "PollPolicy.speed"),
        (lambda: nb.Limiter(burst=0), "burst"),
        (lambda: nb.Limiter(max_requests_per_second=0), "max_requests_per_second"),
    ],
)
def test_bad_configuration_names_the_field(build: Any, field: str) -> None:
    """Every bad option raises InvalidRequestError naming its field, before anything runs."""
    with pytest.raises(nb.InvalidRequestError) as info:
        build()
    assert info.value.field == field


# --- rooms ----------------------------------------------------------------------------------------


def test_the_batch_and_fan_out_use_only_public_names_of_the_client() -> None:
    """Batch, journal, events, gallery, fan-out and the CLI reach into no private attribute."""
    import ast

    package = Path(nb.__file__).parent
    files = [
        package / name
        for name in ("_batch.py", "_journal.py", "_events.py", "_gallery.py", "_fanout.py")
    ] + sorted((package / "cli").glob("*.py"))
    problems = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                problems.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.level:
                problems += [
                    f"{path.name}:{node.lineno} imports {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert problems == []


class SettleFails(nb.Limiter):
    """A limiter whose store fails when a create is settled."""

    async def settle(self, reserved: int, charged: int) -> None:
        raise nb.errors.LimiterUnavailableError("store unreachable")


async def test_a_limiter_failing_to_settle_never_hides_an_uncertain_create(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A create whose answer was lost stays SubmitUncertainError if the limiter's settle fails."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        limiter = SettleFails(max_concurrency=1)
        async with client_for(emu, limiter=limiter) as client:
            with pytest.raises(nb.SubmitUncertainError):
                await client.submit("charged, answer lost")
            # The slot is held on while the generation may run on the server, then comes back.
            await wait_for(lambda: limiter.in_flight == 0)
            assert client.credits.charged == 15
    assert emu.ledger.tasks_created == 1
    assert "failed to settle" in caplog.text


async def test_a_cancelled_aclose_still_closes_everything() -> None:
    """aclose() cancelled midway still frees every slot and wakes every waiter; again is a no-op."""
    limiter = nb.Limiter(max_concurrency=2)
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        client = client_for(emu, limiter=limiter)
        task = await client.submit("running when the client closes")
        closing = asyncio.ensure_future(client.aclose())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with anyio.fail_after(10):
            await client.aclose()
        assert limiter.in_flight == 0
        assert task.done()
        with pytest.raises(nb.errors.ClientClosedError):
            await task.wait()
