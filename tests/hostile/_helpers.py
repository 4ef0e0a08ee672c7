"""Helpers of the hostile suite: a client tuned for it, and the checks every case makes."""

from __future__ import annotations

from typing import Any

import nanobanana_async as nb

from ._server import HostileServer, escaped_forms

#: Seconds one exchange may take before it times out: what a stall costs.
REQUEST_TIMEOUT = 2.0
#: Generous bound on a whole case: far above the configured timeouts, far below a hang.
CASE_BOUND = 60.0


def hostile_client(server: HostileServer, **options: Any) -> nb.Client:
    """Return a client of *server*: fast polls, sleepless retries, short request timeouts."""
    options.setdefault("retry", nb.RetryPolicy(attempts=4, sleep=False, deadline=30.0))
    options.setdefault("timeouts", nb.Timeouts(connect=10.0, request=REQUEST_TIMEOUT, task=30.0))
    options.setdefault(
        "poll", nb.PollPolicy(initial_delay=0.001, min_interval=0.001, max_interval=0.01)
    )
    options.setdefault("seed", 0)
    return nb.Client(server.api_key, base_url=server.base_url, **options)


def chain(exc: BaseException) -> list[BaseException]:
    """Every exception *exc* chains, through `__cause__` and `__context__`, itself included."""
    found: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        stack += [current.__cause__, current.__context__]
    return found


def texts_of(exc: BaseException) -> list[str]:
    """Every text the exceptions of *exc*'s chain show: str, repr, attributes, request info."""
    texts: list[str] = []
    for current in chain(exc):
        texts += [str(current), repr(current), repr(current.args)]
        texts += [repr(value) for value in getattr(current, "__dict__", {}).values()]
    return texts


def assert_no_key(key: str, *texts: str) -> None:
    """Assert that no form of *key* (raw, JSON-, URL- or HTML-escaped) shows in *texts*."""
    forms = escaped_forms(key)
    for text in texts:
        for form in forms:
            assert form not in text, (form, text[:500])


def assert_charged_at_most_once(server: HostileServer) -> None:
    """Assert the server's ledger: no prompt was charged twice."""
    twice = {prompt: n for prompt, n in server.charged.items() if n > 1}
    assert not twice, twice
