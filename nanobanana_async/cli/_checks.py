"""Local checks of the command line, made before anything is sent or spent.

Every check raises `UsageError` (exit code 2) with one line naming the option and the problem, or
`InvalidRequestError` for a request field (also exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, cast

from .. import (
    Client,
    InvalidRequestError,
    ModelName,
    PollPolicy,
    RedisLimiter,
)
from .._catalogue import REPORTED_MODELS
from .._client import API_KEY_ENV, DEFAULT_MAX_CONCURRENCY
from ..credits import MODEL_COSTS
from ..limiters import BaseLimiter

#: Divides every poll delay (for emulators running faster than real time); also `--poll-speed`.
POLL_SPEED_ENV = "NANOBANANA_POLL_SPEED"
#: Model names the command sends as given: the documented ones, whose prices it knows. Any other
#: needs its price (``--price NAME=CREDITS``), which keeps every budget checkable.
KNOWN_MODELS = tuple(MODEL_COSTS)
#: Image sizes, as the API spells them.
IMAGE_SIZES = ("1K", "2K", "4K")
#: The highest TCP port.
MAX_PORT = 65535


class UsageError(Exception):
    """Raised when the command line cannot be carried out as given (exit code 2)."""


# --- argparse types ----------------------------------------------------------------------------


def number_arg(
    cast: Callable[[str], float], what: str, *, minimum: float, inclusive: bool
) -> Callable[[str], float]:
    """Return an argparse type: *cast* the text and check it against *minimum*."""

    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum):  # NaN fails too
            rule = "at least" if inclusive else "more than"
            raise argparse.ArgumentTypeError(f"must be {rule} {minimum:g}: {text!r}")
        return value

    return parse


positive_int = number_arg(int, "a whole number", minimum=1, inclusive=True)
credits_arg = number_arg(int, "a whole number of credits", minimum=0, inclusive=True)
positive_float = number_arg(float, "a number", minimum=0, inclusive=False)


def port_arg(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0 picks a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be 0 to {MAX_PORT}: {text!r}")
    return port


def normalise_image_size(text: str) -> str:
    """Return *text* as the API spells image sizes (``1k`` -> ``1K``); others are left as given."""
    upper = text.strip().upper()
    return upper if upper in IMAGE_SIZES else text


def image_size_arg(text: str) -> str:
    """An argparse type: an image size, in either case."""
    size = normalise_image_size(text)
    if size not in IMAGE_SIZES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(IMAGE_SIZES)}: {text!r}")
    return size


def price_arg(text: str) -> tuple[str, int]:
    """An argparse type: ``MODEL=CREDITS``, the price of one create of a model."""
    name, sep, credits = text.partition("=")
    name = name.strip()
    try:
        value = int(credits)
    except ValueError:
        value = -1
    if not sep or not name or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be MODEL=CREDITS, a whole number of credits (e.g. nano-banana-2=18): {text!r}"
        )
    return name, value


def prices(args: argparse.Namespace) -> dict[str, int]:
    """Return the prices the command knows: the documented ones merged with ``--price``."""
    return {**MODEL_COSTS, **dict(getattr(args, "price", None) or ())}


def check_model(
    name: str, *, prices: Mapping[str, int] = MODEL_COSTS, any_model: bool = False
) -> ModelName:
    """Return *name* if its price is known (documented or given with ``--price``); raise otherwise.

    Names are not rewritten (not even their case): a batch journal keys its items by the request,
    and a rewritten name would make an item sent by an earlier version look new.

    Raises:
        InvalidRequestError: *name* has no known price.
    """
    if name in prices:
        # A name the user priced is the typed escape hatch's run-time twin: the API judges it.
        return cast("ModelName", name)
    close = difflib.get_close_matches(name.strip().lower(), list(prices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if name in REPORTED_MODELS:
        what = f"model {name!r} is reported by third parties, but its price is not published."
    else:
        what = f"unknown model {name!r}{hint}"
    old = " (--any-model alone is not enough: a model without a price could pass any budget)"
    raise InvalidRequestError(
        "model",
        f"{what} Known: {', '.join(prices)}. To send another model, give its price: "
        f"--price {name}=CREDITS{old if any_model else ''}",
    )


# --- destinations ------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def check_folder(path: Path, option: str, *, given: Path | None = None) -> None:
    """Raise `UsageError` unless *path* is a writable folder, or one that can be made.

    The message names *option* and *given* (the path as given, default *path*).
    """
    path = Path(os.path.abspath(path))
    shown = f"{option} {given if given is not None else path}"
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{shown}: {path} is not writable")
        return
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise UsageError(f"{shown}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{shown}: cannot create {path} ({ancestor} is not writable)")


def check_file(path: Path, option: str) -> None:
    """Raise `UsageError` unless a file can be written at *path* (its folder made if need be)."""
    absolute = Path(os.path.abspath(path))
    if absolute.is_dir():
        raise UsageError(f"{option} {absolute}: a folder is there, not a file")
    if absolute.exists() and not os.access(absolute, os.W_OK):
        raise UsageError(f"{option} {absolute}: the file is not writable")
    check_folder(absolute.parent, option, given=absolute)


# --- the client --------------------------------------------------------------------------------


def api_key(args: argparse.Namespace) -> str:
    """Return the key from ``--api-key`` or the environment, or raise `UsageError`."""
    key: str = args.api_key or os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise UsageError(f"no API key: pass --api-key or set {API_KEY_ENV}")
    return key.strip()


def poll_policy(args: argparse.Namespace) -> PollPolicy:
    """Return the poll policy of ``--poll-speed`` or ``$NANOBANANA_POLL_SPEED``."""
    speed = args.poll_speed
    if speed is None:
        raw = os.environ.get(POLL_SPEED_ENV, "").strip()
        if raw:
            try:
                speed = float(raw)
            except ValueError:
                raise UsageError(f"{POLL_SPEED_ENV} must be a number; got {raw!r}") from None
    if speed is None:
        return PollPolicy()
    if not speed > 0:
        raise UsageError(f"the poll speed ({POLL_SPEED_ENV} or --poll-speed) must be positive")
    return PollPolicy(speed=speed)


@contextlib.asynccontextmanager
async def open_client(
    args: argparse.Namespace, *, max_concurrency: int = DEFAULT_MAX_CONCURRENCY, **options: Any
) -> AsyncIterator[Client]:
    """Open a client configured by the command line (key, base URL, poll speed, shared limits).

    With ``--redis URL``, the generations in flight, pauses, request rate and budget are shared
    with every process using the same URL and ``--limiter-name``.
    """
    redis_url: str | None = getattr(args, "redis", None)
    try:
        key = api_key(args)
        poll = poll_policy(args)
        limiter: BaseLimiter | None = None
        if redis_url is not None:
            limiter = RedisLimiter(
                redis_url,
                name=args.limiter_name,
                max_concurrency=max_concurrency,
                lease_seconds=args.lease_seconds,
                max_credits=options.pop("max_credits", None),
            )
        client = Client(
            key,
            base_url=args.base_url,
            max_concurrency=max_concurrency,
            poll=poll,
            limiter=limiter,
            prices=dict(getattr(args, "price", None) or ()),
            **options,
        )
    except InvalidRequestError as exc:
        raise UsageError(str(exc)) from exc
    try:
        async with client:
            yield client
    finally:
        if limiter is not None:
            await limiter.aclose()
