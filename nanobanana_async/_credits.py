"""Credit accounting: what a client spent, the prices it knows, and the budget it must not pass.

The budget rule: a create is granted only if its price fits what the budget still allows, counting
what was charged (less refunds) and what creates in flight may still cost. A model without a known
price is refused while a budget is set. When an answer costs more than its reservation, the
difference is charged at once, the reservations still in flight at that price are counted at the
new cost, and the model is reserved at the new cost from then on: new grants stop until the books
balance again, so that the budget is not passed by what the client grants after it learns.

With a budget, a model's price (documented or given) is trusted only once an answer confirmed it
(charged no more than the create reserved): until then one create of that model is in flight at a
time, so that a wrong price costs at most one create's difference instead of a whole window's.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

import anyio
import attrs

from ._catalogue import DOCUMENTED_PRICES
from ._errors import BudgetExceededError, InvalidRequestError

logger = logging.getLogger("nanobanana_async")

#: A wait longer than this is told at INFO level, with its reason (seconds).
TOLD_WAIT = 2.0

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_prices(prices: Mapping[str, int] | None, field: str = "prices") -> dict[str, int]:
    """Return *prices* as a dict, or raise `InvalidRequestError` naming *field* and the rule."""
    if prices is None:
        return {}
    if not isinstance(prices, Mapping):
        raise InvalidRequestError(field, f"must map model names to credits; got {prices!r}")
    checked: dict[str, int] = {}
    for model, credits in prices.items():
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise InvalidRequestError(field, f"{model!r} is not a model name")
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise InvalidRequestError(
                field, f"the price of {model} must be a non-negative whole number; got {credits!r}"
            )
        checked[model] = credits
    return checked


def price_hint(model: str) -> str:
    """How to give the price of *model*, for error messages."""
    return (
        f"give its price: Client(prices={{{model!r}: CREDITS}}), "
        f"or on the command line --price {model}=CREDITS"
    )


class Reservation(int):
    """An amount of credits reserved for one create of *model* (an `int` everywhere else)."""

    model: str
    #: Whether this create checks a price no answer has confirmed yet (it runs alone).
    probe: bool

    def __new__(cls, amount: int, model: str, *, probe: bool = False) -> Reservation:
        """Return *amount* tagged with its model."""
        self = super().__new__(cls, amount)
        self.model = model
        self.probe = probe
        return self


class OpenReservations:
    """Reservations not yet settled, by amount, with what each is now expected to cost.

    A reservation is known by its amount only (what `reserve` returned). When one create of an
    amount costs more than that amount, every other open reservation of the same amount is
    expected to cost as much: `total` grows at once, before those creates are answered.
    """

    def __init__(self) -> None:
        self._open: Counter[int] = Counter()
        self._expected: dict[int, int] = {}
        #: What the open reservations are expected to cost, in all.
        self.total = 0

    def expected(self, amount: int) -> int:
        """Return what a reservation of *amount* is expected to cost now."""
        return max(amount, self._expected.get(amount, amount))

    def add(self, amount: int) -> None:
        """Open a reservation of *amount*."""
        self._open[amount] += 1
        self.total += self.expected(amount)

    def close(self, amount: int) -> int:
        """Close one reservation of *amount*; return what it was expected to cost."""
        expected = self.expected(amount)
        if self._open[amount] <= 0:
            # Not opened here (a caller settling what it never reserved): count it as given.
            self._open.pop(amount, None)
            self.total -= amount
            return amount
        self._open[amount] -= 1
        self.total -= expected
        if self._open[amount] == 0:
            del self._open[amount]
            self._expected.pop(amount, None)
        return expected

    def cost_more(self, amount: int, actual: int) -> None:
        """One create reserved at *amount* cost *actual*: expect as much of the others."""
        expected = self.expected(amount)
        if actual > expected and self._open[amount] > 0:
            self.total += (actual - expected) * self._open[amount]
            self._expected[amount] = actual
        elif self._open[amount] <= 0:
            self._open.pop(amount, None)


@attrs.frozen(kw_only=True)
class CreditUsage:
    """Credits as one client counted them.

    `charged` is what creates cost, `refunded` what failed tasks gave back, `reserved` what creates
    in flight may still cost (an uncertain create stays reserved: it may have been charged).
    """

    charged: int = 0
    refunded: int = 0
    reserved: int = 0
    budget: int | None = None

    @property
    def spent(self) -> int:
        """Credits charged and not refunded."""
        return self.charged - self.refunded

    @property
    def remaining(self) -> int | None:
        """Credits the budget still allows, or None without a budget."""
        if self.budget is None:
            return None
        return self.budget - self.spent - self.reserved


class CreditLedger:
    """The client's running totals, its prices and its optional budget (`max_credits`).

    Args:
        budget: The client's budget, or None.
        prices: Prices that replace or add to the documented ones (`MODEL_COSTS`).
        shared_budget: A limiter holds a budget too: models need a known price even when
            *budget* is None.
    """

    def __init__(
        self,
        budget: int | None,
        *,
        prices: Mapping[str, int] | None = None,
        shared_budget: bool = False,
    ) -> None:
        if budget is not None and budget < 0:
            raise ValueError("max_credits: must not be negative")
        self.budget = budget
        self.charged = 0
        self.refunded = 0
        self._open = OpenReservations()
        self._prices: Mapping[str, int] = MappingProxyType(
            {**DOCUMENTED_PRICES, **check_prices(prices)}
        )
        self._priced_only = budget is not None or shared_budget
        self._learned: dict[str, int] = {}
        # Models whose price an answer confirmed (it charged no more than the create reserved).
        self._confirmed: set[str] = set()
        # Models whose price a create in flight is checking, and the event it sets.
        self._probes: dict[str, anyio.Event] = {}

    @property
    def reserved(self) -> int:
        """What the creates in flight may still cost."""
        return self._open.total

    @property
    def prices(self) -> Mapping[str, int]:
        """The prices this ledger reserves at: the documented ones merged with the given ones."""
        return self._prices

    def usage(self) -> CreditUsage:
        """Return the totals as a value."""
        return CreditUsage(
            charged=self.charged, refunded=self.refunded, reserved=self.reserved, budget=self.budget
        )

    def cost_of(self, model: str) -> int | None:
        """Return what a create of *model* is reserved at, if known.

        That is its price (documented or given), or the most an answer ever charged for it, if
        that is more.
        """
        listed, learned = self._prices.get(model), self._learned.get(model)
        if listed is None or learned is None:
            return learned if listed is None else listed
        return max(listed, learned)

    def reserve(self, model: str) -> int:
        """Reserve a create's cost before it is sent; return the amount reserved.

        Raises:
            InvalidRequestError: A budget is set and *model* has no known price.
            BudgetExceededError: The create won't fit the budget.
        """
        cost = self.cost_of(model)
        if cost is None:
            if self._priced_only:
                raise InvalidRequestError(
                    "model",
                    f"{model!r} has no known price and a budget is set, so it could pass the "
                    f"budget; {price_hint(model)}",
                )
            # No budget: the amount only feeds the totals, so the dearest known price will do.
            cost = max([*self._prices.values(), *self._learned.values()])
        if self.budget is not None:
            committed = self.charged - self.refunded + self._open.total
            if committed + self._open.expected(cost) > self.budget:
                raise BudgetExceededError(self._open.expected(cost), committed, self.budget)
        self._open.add(cost)
        return cost

    def _unconfirmed(self, model: str) -> bool:
        # With a budget, a price (documented or given) is trusted once an answer confirmed it.
        return self._priced_only and model not in self._confirmed

    async def admit(self, model: str) -> Reservation:
        """Reserve a create of *model* like `reserve`, first waiting while its price is checked.

        With a budget, a create of a model whose price no answer has confirmed yet runs alone:
        the others wait for its answer, so a wrong price (documented or given) costs at most one
        create's difference instead of a whole window's. A wait over `TOLD_WAIT` seconds is
        logged at INFO level.
        """
        told = False
        while self._unconfirmed(model) and (probe := self._probes.get(model)) is not None:
            if told:
                await probe.wait()
                continue
            with anyio.move_on_after(TOLD_WAIT):
                await probe.wait()
            if not probe.is_set():
                told = True
                logger.info(
                    "a create of %s waits for the answer to another create of it: with a budget "
                    "set, one create of a model runs at a time until an answer confirms its "
                    "price (%s credits)",
                    model,
                    self.cost_of(model),
                )
        reservation = self.admit_nowait(model)
        assert reservation is not None  # no await since the check: no probe started meanwhile
        return reservation

    def admit_nowait(self, model: str) -> Reservation | None:
        """`admit` at once, or return None while another create checks *model*'s price."""
        probe = self._unconfirmed(model)
        if probe and model in self._probes:
            return None
        reservation = Reservation(self.reserve(model), model, probe=probe)
        if probe:
            self._probes[model] = anyio.Event()
        return reservation

    def _closed(self, reserved: int) -> None:
        if isinstance(reserved, Reservation) and reserved.probe:
            event = self._probes.pop(reserved.model, None)
            if event is not None:
                event.set()

    def cancel(self, reserved: int) -> None:
        """Drop a reservation whose create definitely did not happen."""
        self._open.close(reserved)
        self._closed(reserved)

    def charge(self, reserved: int, model: str, actual: int | None) -> int:
        """Turn a reservation into a charge of *actual* (or the expected amount if not told).

        An answer dearer than its reservation is charged in full, and the other creates in
        flight at that amount are expected to cost as much. An answer no dearer than its
        reservation confirms the model's price; a dearer one takes the confirmation back. An
        answer that tells no cost confirms the price too: no later answer would tell more, and
        creates of that model must not stay one at a time for ever.
        """
        expected = self._open.close(reserved)
        cost = expected if actual is None else actual
        if actual is None:
            self._confirmed.add(model)
        else:
            if actual > self._learned.get(model, -1):
                self._learned[model] = actual
            self._open.cost_more(reserved, actual)
            if actual <= reserved:
                self._confirmed.add(model)
            else:
                self._confirmed.discard(model)
        self.charged += cost
        self._closed(reserved)
        return cost

    def uncertain(self, reserved: int) -> None:
        """Count an uncertain create as charged: it may have been."""
        self.charged += self._open.close(reserved)
        self._closed(reserved)

    def refund(self, amount: int) -> None:
        """Record the refund of a failed task."""
        self.refunded += amount
