"""Run the emulator as a standalone server (``nanobanana emulator``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import sys
from typing import TextIO

from ._emulator import Emulator
from ._state import Ledger

__all__ = ["ListenError", "ledger_line", "serve"]

#: The variables a client reads (the library and the ``nanobanana`` command alike).
BASE_URL_ENV = "NANOBANANA_BASE_URL"
API_KEY_ENV = "NANOBANANA_API_KEY"
POLL_SPEED_ENV = "NANOBANANA_POLL_SPEED"


class ListenError(OSError):
    """Raised when the emulator cannot listen on the host and port given."""


def ledger_line(ledger: Ledger) -> str:
    """Return the ledger in one line: creates, tasks, credits, most running at once, polls."""
    balance = "unlimited" if ledger.balance is None else str(ledger.balance)
    return (
        f"ledger: {ledger.creates_received} creates received, {ledger.tasks_created} tasks "
        f"created, {ledger.credits_charged} credits charged, {ledger.credits_refunded} refunded, "
        f"balance {balance}, {ledger.running} running now, {ledger.max_running} at most, "
        f"{ledger.polls_received} polls"
    )


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    credits: int | None = None,
    speed: float = 1.0,
    stream: TextIO | None = None,
) -> None:
    """Serve the emulator until interrupted (Ctrl+C or SIGTERM), then print its ledger and return.

    Prints ``Nano Banana emulator on <base URL>``, ``API key: <key>`` and an ``export`` line
    setting ``NANOBANANA_BASE_URL``, ``NANOBANANA_API_KEY`` and ``NANOBANANA_POLL_SPEED`` (the
    speed, so that polling matches the emulator's time scale) first. SIGUSR1 prints the ledger.

    Args:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        api_key: The accepted key; None makes a random one, printed once.
        credits: Balance of the key; None for unlimited.
        speed: Time scale of the emulated generations.
        stream: Where to print (default: standard output).

    Raises:
        ListenError: The host and port cannot be listened on (in use, or not an address here).
    """
    key = api_key if api_key is not None else f"nb-{secrets.token_urlsafe(18)}"
    out = stream if stream is not None else sys.stdout
    # Where signal handlers cannot be installed (Windows), Ctrl+C arrives as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve(host=host, port=port, api_key=key, credits=credits, speed=speed, out=out)
        )


def _print(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


async def _serve(
    *, host: str, port: int, api_key: str, credits: int | None, speed: float, out: TextIO
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    emulator = Emulator(api_key=api_key, credits=credits, speed=speed, host=host, port=port)
    try:
        await emulator.start()
    except OSError as exc:
        await emulator.aclose()
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from exc
    installed = []
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
        usr1 = getattr(signal, "SIGUSR1", None)
        if usr1 is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(usr1, lambda: _print(out, ledger_line(emulator.ledger)))
                installed.append(usr1)
        exports = {
            BASE_URL_ENV: emulator.base_url,
            API_KEY_ENV: api_key,
            POLL_SPEED_ENV: f"{speed:g}",
        }
        _print(out, f"Nano Banana emulator on {emulator.base_url}")
        _print(out, f"API key: {api_key}")
        _print(out, "Point the library or the nanobanana command at it, polling at its speed:")
        settings = " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items())
        _print(out, f"  export {settings}")
        ask = f"; `kill -USR1 {os.getpid()}` prints the ledger" if usr1 is not None else ""
        _print(out, f"Press Ctrl+C to stop{ask}.")
        await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        _print(out, ledger_line(emulator.ledger))
        await emulator.aclose()
