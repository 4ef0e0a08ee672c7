"""The budget holds for every model: prices are configuration, and unpriced models are refused."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async._credits import CreditLedger
from nanobanana_async.testing import Emulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SPEED = 1000.0
NEW = "nano-banana-x"


def make_client(emu: Emulator, **options: Any) -> nb.Client:
    """Return a client of *emu* with fast polls and sleepless retries."""
    return nb.Client(
        emu.api_key,
        base_url=emu.base_url,
        poll=nb.PollPolicy(speed=SPEED),
        retry=nb.RetryPolicy(sleep=False),
        seed=0,
        **options,
    )


def test_model_costs_is_read_only() -> None:
    """MODEL_COSTS keeps its name and documented prices, and cannot be changed in place."""
    documented = {"nano-banana-fast": 5, "nano-banana": 15, "nano-banana-pro": 20}
    assert dict(nb.credits.MODEL_COSTS) == documented
    with pytest.raises(TypeError):
        nb.credits.MODEL_COSTS["nano-banana"] = 1  # type: ignore[index]


def test_a_budget_refuses_a_model_without_a_price() -> None:
    """With a budget, an unpriced model is refused, naming the model and how to give its price."""
    ledger = CreditLedger(100)
    with pytest.raises(nb.InvalidRequestError) as info:
        ledger.reserve(NEW)
    assert NEW in str(info.value)
    assert "prices=" in str(info.value)
    assert "--price" in str(info.value)
    assert ledger.usage().reserved == 0
    assert CreditLedger(100, prices={NEW: 18}).reserve(NEW) == 18
    assert CreditLedger(None).reserve(NEW) == 20  # no budget: sent, reserved at the dearest


def test_prices_merge_over_the_documented_ones_and_are_checked() -> None:
    """prices= adds models and replaces prices; a bad price names the field and the rule."""
    ledger = CreditLedger(None, prices={NEW: 7, "nano-banana": 16})
    assert ledger.prices[NEW] == 7
    assert ledger.prices["nano-banana"] == 16
    assert ledger.prices["nano-banana-pro"] == 20
    for bad in ({NEW: -1}, {NEW: 1.5}, {NEW: True}, {"bad name": 3}):
        with pytest.raises(nb.InvalidRequestError, match="prices"):
            CreditLedger(None, prices=bad)  # type: ignore[arg-type]


def test_a_dear_answer_counts_the_other_creates_in_flight_at_its_cost() -> None:
    """An answer dearer than its reservation stops grants the real costs could not pay."""
    ledger = CreditLedger(150, prices={NEW: 20})
    first, second = ledger.reserve(NEW), ledger.reserve(NEW)  # both sent at 20
    ledger.charge(first, NEW, 60)  # the server says 60: the second will cost 60 too
    assert ledger.usage().reserved == 60
    with pytest.raises(nb.BudgetExceededError):
        ledger.reserve(NEW)  # 60 charged + 60 expected + 60 > 150
    ledger.charge(second, NEW, 60)
    assert ledger.usage().charged == 120 <= 150
    assert ledger.usage().reserved == 0
    with pytest.raises(nb.BudgetExceededError):
        ledger.reserve(NEW)  # reserved at the learned 60 from now on


def test_an_uncertain_create_counts_what_its_model_was_seen_to_cost() -> None:
    """An uncertain create reserved before a dear answer is counted at the dear cost."""
    ledger = CreditLedger(None, prices={NEW: 20})
    first, second = ledger.reserve(NEW), ledger.reserve(NEW)
    ledger.charge(first, NEW, 50)
    ledger.uncertain(second)
    assert ledger.usage().charged == 100
    assert ledger.usage().reserved == 0


async def test_the_limiter_budget_counts_dear_answers_at_once() -> None:
    """A Limiter's budget counts a dear settle in full and the same-priced ones in flight too."""
    limiter = nb.Limiter(max_credits=150)
    await limiter.reserve(20)
    await limiter.reserve(20)
    await limiter.settle(20, 60)
    assert limiter.committed_credits == 120
    with pytest.raises(nb.BudgetExceededError):
        await limiter.reserve(20)
    await limiter.settle(20, 60)
    assert limiter.committed_credits == 120
    await limiter.refund(60)
    await limiter.reserve(20)
    assert limiter.committed_credits == 80


async def test_a_client_budget_refuses_an_unpriced_model_before_sending() -> None:
    """Client(max_credits=...) sends nothing for a model it has no price for."""
    async with Emulator(speed=SPEED, models={NEW: 60}) as emu:
        async with make_client(emu, max_credits=100) as client:
            with pytest.raises(nb.InvalidRequestError, match=NEW):
                await client.submit("a cat", model=nb.CustomModel(NEW))
            assert client.credits.reserved == 0
        assert emu.requests == []


async def test_a_limiter_budget_refuses_an_unpriced_model_before_sending() -> None:
    """A budget held by a shared Limiter also refuses a model without a price, unsent."""
    async with Emulator(speed=SPEED, models={NEW: 60}) as emu:
        limiter = nb.Limiter(max_credits=100)
        async with make_client(emu, limiter=limiter) as client:
            with pytest.raises(nb.InvalidRequestError, match=NEW):
                await client.submit("a cat", model=nb.CustomModel(NEW))
        assert emu.requests == []
        assert limiter.committed_credits == 0


async def test_without_a_budget_an_unknown_model_is_sent() -> None:
    """Without a budget, a CustomModel is sent as given and its cost learned from the answer."""
    async with Emulator(speed=SPEED, models={NEW: 60}) as emu:
        async with make_client(emu) as client:
            task = await client.submit("a cat", model=nb.CustomModel(NEW))
            await task.wait(timeout=30)
            assert client.credits.charged == 60
        assert emu.ledger.credits_charged == 60


async def test_a_priced_model_never_passes_the_budget_when_sent_at_once() -> None:
    """Five creates of a priced model at once with room for one: one is sent, four refused."""
    async with Emulator(speed=SPEED, models={NEW: 60}, credits=None) as emu:
        async with make_client(emu, max_credits=100, prices={NEW: 60}) as client:
            outcomes: list[object] = []

            async def one() -> None:
                try:
                    outcomes.append(await client.submit("a cat", model=nb.CustomModel(NEW)))
                except nb.BudgetExceededError as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(one)
            refused = [o for o in outcomes if isinstance(o, nb.BudgetExceededError)]
            assert len(refused) == 4
        assert emu.ledger.credits_charged == 60


async def test_a_model_dearer_than_its_price_is_not_granted_past_the_budget() -> None:
    """When the server charges more than the known price, later creates stop before the budget."""
    async with Emulator(speed=SPEED, models={"nano-banana": 60}, credits=None) as emu:
        async with make_client(emu, max_credits=100) as client:
            await client.submit("a cat", model="nano-banana")  # reserved 15, charged 60
            with pytest.raises(nb.BudgetExceededError):
                await client.submit("a cat", model="nano-banana")  # 60 more would pass 100
        assert emu.ledger.credits_charged == 60


async def test_a_wrong_given_price_costs_one_create_not_a_window() -> None:
    """Five creates at once of a model priced 20 that costs 60, budget 100: only 60 is charged."""
    async with Emulator(speed=SPEED, models={NEW: 60}, credits=None) as emu:
        async with make_client(emu, max_credits=100, prices={NEW: 20}) as client:
            refused: list[nb.BudgetExceededError] = []

            async def one() -> None:
                try:
                    await client.submit("a cat", model=nb.CustomModel(NEW))
                except nb.BudgetExceededError as exc:
                    refused.append(exc)

            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(one)
            assert len(refused) == 4
            assert client.credits.charged == 60
        assert emu.ledger.credits_charged == 60 <= 100


async def test_a_confirmed_price_lets_creates_run_side_by_side() -> None:
    """Once an answer confirmed a given price, creates of that model no longer wait in line."""
    ledger = CreditLedger(100, prices={NEW: 20})
    probe = await ledger.admit(NEW)
    with anyio.move_on_after(0.05) as waited:
        await ledger.admit(NEW)  # waits: the first create checks the price
    assert waited.cancelled_caught
    ledger.charge(probe, NEW, 20)
    with anyio.fail_after(5):
        second, third = await ledger.admit(NEW), await ledger.admit(NEW)
    assert (second, third) == (20, 20)
    assert ledger.usage().reserved == 40


async def test_a_wrong_documented_price_costs_one_create_not_a_window() -> None:
    """Five creates at once of nano-banana (documented 15) that costs 60, budget 100: only 60."""
    async with Emulator(speed=SPEED, models={"nano-banana": 60}, credits=None) as emu:
        async with make_client(emu, max_credits=100) as client:
            refused: list[nb.BudgetExceededError] = []

            async def one() -> None:
                try:
                    await client.submit("a cat", model="nano-banana")
                except nb.BudgetExceededError as exc:
                    refused.append(exc)

            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(one)
            assert len(refused) == 4
            assert client.credits.charged == 60
        assert emu.ledger.credits_charged == 60 <= 100


async def test_a_wait_for_an_unconfirmed_price_is_told(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create that waits past TOLD_WAIT for another to confirm its model's price says so."""
    from nanobanana_async import _credits

    monkeypatch.setattr(_credits, "TOLD_WAIT", 0.01)
    ledger = CreditLedger(100)
    probe = await ledger.admit("nano-banana")
    with caplog.at_level("INFO", logger="nanobanana_async"):
        with anyio.move_on_after(0.2):
            await ledger.admit("nano-banana")
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert "nano-banana" in message
    assert "confirms its price" in message
    ledger.charge(probe, "nano-banana", 15)
    with anyio.fail_after(5):
        assert await ledger.admit("nano-banana") == 15


def test_a_confirmed_documented_price_costs_no_wait() -> None:
    """Once an answer confirmed a documented price, creates of it are granted side by side."""
    ledger = CreditLedger(100)
    first = ledger.admit_nowait("nano-banana-fast")
    assert first is not None
    assert first.probe
    assert ledger.admit_nowait("nano-banana-fast") is None  # waits for the first's answer
    ledger.charge(first, "nano-banana-fast", 5)
    granted = [ledger.admit_nowait("nano-banana-fast") for _ in range(3)]
    assert granted == [5, 5, 5]
    assert not any(g.probe for g in granted if g is not None)


def test_an_answer_without_a_cost_does_not_keep_creates_one_at_a_time() -> None:
    """An answer without credits_cost confirms the price: creates of the model run side by side."""
    ledger = CreditLedger(100)
    first = ledger.admit_nowait("nano-banana")
    assert first is not None
    assert first.probe
    assert ledger.admit_nowait("nano-banana") is None  # waits for the first's answer
    assert ledger.charge(first, "nano-banana", None) == 15  # charged at the price it reserved
    granted = [ledger.admit_nowait("nano-banana") for _ in range(3)]
    assert granted == [15, 15, 15]
    assert not any(g.probe for g in granted if g is not None)
