"""Credit accounting: what a client spent, and the budget it must not pass."""

from __future__ import annotations

import attrs

from ._errors import BudgetExceededError
from ._inputs import MODEL_COSTS


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
    """The client's running totals and its optional budget (`max_credits`)."""

    def __init__(self, budget: int | None) -> None:
        if budget is not None and budget < 0:
            raise ValueError("max_credits: must not be negative")
        self.budget = budget
        self.charged = 0
        self.refunded = 0
        self.reserved = 0
        self._learned: dict[str, int] = {}

    def usage(self) -> CreditUsage:
        """Return the totals as a value."""
        return CreditUsage(
            charged=self.charged, refunded=self.refunded, reserved=self.reserved, budget=self.budget
        )

    def cost_of(self, model: str) -> int | None:
        """Return what a create of *model* costs, if known (documented or learned)."""
        return MODEL_COSTS.get(model, self._learned.get(model))

    def reserve(self, model: str) -> int:
        """Reserve a create's cost before it is sent; raise `BudgetExceededError` if it won't fit.

        An unknown model is reserved at the dearest known cost until its first answer tells.
        """
        cost = self.cost_of(model)
        if cost is None:
            cost = max([*MODEL_COSTS.values(), *self._learned.values()])
        if self.budget is not None:
            committed = self.charged - self.refunded + self.reserved
            if committed + cost > self.budget:
                raise BudgetExceededError(cost, committed, self.budget)
        self.reserved += cost
        return cost

    def cancel(self, reserved: int) -> None:
        """Drop a reservation whose create definitely did not happen."""
        self.reserved -= reserved

    def charge(self, reserved: int, model: str, actual: int | None) -> int:
        """Turn a reservation into a charge of *actual* (or the reserved amount if not told)."""
        self.reserved -= reserved
        cost = reserved if actual is None else actual
        if actual is not None and model not in MODEL_COSTS:
            self._learned[model] = actual
        self.charged += cost
        return cost

    def uncertain(self, reserved: int) -> None:
        """Count an uncertain create as charged: it may have been."""
        self.reserved -= reserved
        self.charged += reserved

    def refund(self, amount: int) -> None:
        """Record the refund of a failed task."""
        self.refunded += amount
