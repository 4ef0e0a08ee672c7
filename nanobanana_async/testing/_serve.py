"""Run the emulator as a standalone server (``nanobanana emulator``)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal

from ._emulator import Emulator

__all__ = ["serve"]


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    credits: int | None = None,
    speed: float = 1.0,
) -> None:
    """Serve the emulator until interrupted (Ctrl+C or SIGTERM), then return.

    Prints ``Nano Banana emulator on <base URL>`` and ``API key: <key>`` first.

    Args:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        api_key: The accepted key; None makes a random one, printed once.
        credits: Balance of the key; None for unlimited.
        speed: Time scale of the emulated generations.
    """
    key = api_key if api_key is not None else f"nb-{secrets.token_urlsafe(18)}"
    # Where signal handlers cannot be installed (Windows), Ctrl+C arrives as KeyboardInterrupt.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host=host, port=port, api_key=key, credits=credits, speed=speed))


async def _serve(*, host: str, port: int, api_key: str, credits: int | None, speed: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    async with Emulator(api_key=api_key, credits=credits, speed=speed, host=host, port=port) as emu:
        print(f"Nano Banana emulator on {emu.base_url}", flush=True)
        print(f"API key: {api_key}", flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        await stop.wait()
