"""HTTP transport: the aiohttp session, auth, timeouts, logging, and error classification."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import yarl

from ._config import RequestKind, Timeouts
from ._errors import ClientClosedError, TransportError

logger = logging.getLogger("nanobanana_async")

#: Failures that prove a request never left: no connection was made.
NOT_SENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
#: Failures we never retry even when nothing left (a retry cannot help).
HOPELESS_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientConnectorSSLError,
    aiohttp.InvalidURL,
)
#: Every network-level failure an exchange can raise.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)


#: Connections kept for image downloads, beside the API's own.
DOWNLOAD_CONNECTIONS = 4

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def env_proxy(url: yarl.URL) -> str | None:
    """Return the proxy the environment names for *url*, or None (never for loopback hosts)."""
    host = url.host or ""
    if host in _LOOPBACK_HOSTS or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(url.scheme)


def describe(exc: BaseException) -> str:
    """Return a short text for a network failure (aiohttp's texts can be empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Transport:
    """Sends requests to one base URL with one key; knows nothing of retries or tasks."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeouts: Timeouts,
        max_connections: int,
        session: aiohttp.ClientSession | None,
        proxy: str | None,
        ssl: ssl_module.SSLContext | bool | None,
        gate: Callable[[RequestKind], Awaitable[None]],
    ) -> None:
        self.base_url = yarl.URL(base_url.rstrip("/"))
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._json_headers = {**self._auth, "Content-Type": "application/json"}
        self._api_key = api_key
        self._key_bytes = api_key.encode()
        self.timeouts = timeouts
        self.max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._proxy = proxy
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeouts.request, sock_connect=timeouts.connect)
        # Our own bounds on exchanges in flight, which add up to the connector's limit: a request
        # never queues inside aiohttp's pool, where the wait would count against its timeout.
        self._slots = asyncio.Semaphore(max_connections)
        self.download_slots = asyncio.Semaphore(DOWNLOAD_CONNECTIONS)
        self._gate = gate
        self._closed = False
        self._urls: dict[str, yarl.URL] = {}
        #: Whether the server ever answered a request (a wrong URL never does).
        self.answered = False

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, made on first use (it must be made inside the event loop)."""
        if self._session is None:
            if self._closed:
                raise ClientClosedError("the client is closed")
            connector = aiohttp.TCPConnector(
                limit=self.max_connections + DOWNLOAD_CONNECTIONS,
                ssl=self._ssl if self._ssl is not None else True,
                ttl_dns_cache=300,
            )
            # The proxy comes from the environment (HTTP(S)_PROXY, NO_PROXY) once, here: aiohttp's
            # trust_env would look it up (and netrc, which clashes with our Authorization header)
            # in a worker thread on every request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                proxy=self._proxy if self._proxy is not None else env_proxy(self.base_url),
            )
        return self._session

    def redact(self, text: str) -> str:
        """Remove the API key from *text* (servers sometimes echo headers back)."""
        return text.replace(self._api_key, "[redacted]") if self._api_key else text

    def url(self, path: str) -> yarl.URL:
        """Return the absolute URL of an API path."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self.base_url.with_path(self.base_url.path.rstrip("/") + path)
        return url

    async def post(
        self,
        path: str,
        *,
        data: Any = None,
        json_body: bytes | None = None,
        task_id: str | None,
        kind: RequestKind,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> tuple[int, bytes, str | None]:
        """POST to an API path; return status, body and the Retry-After header.

        Waits for a connection slot, then for the gate of *kind* (pauses and rate cap: checked with
        the slot held, so no request slips out during a pause), then awaits *before_send* (it may
        raise to abandon the request unsent), and calls *on_send* right before the request may
        leave. Raises aiohttp's network errors (classified by the caller) unchanged.
        """
        url = self.url(path)
        headers = self._auth if json_body is None else self._json_headers
        async with self._slots:
            await self._gate(kind)
            if before_send is not None:
                await before_send()
            if on_send is not None:
                on_send()
            started = time.perf_counter()
            try:
                async with self.session.post(
                    url,
                    data=data if json_body is None else json_body,
                    headers=headers,
                    timeout=self._timeout,
                    ssl=self._ssl if self._ssl is not None else True,
                    # A redirected create would be re-sent (307/308) or turned into a GET
                    # (301/302) behind our back: a redirect is an answer, not an instruction.
                    allow_redirects=False,
                ) as response:
                    body = await response.read()
                    if self._key_bytes in body:
                        # Some servers echo the Authorization header back in error bodies.
                        body = body.replace(self._key_bytes, b"[redacted]")
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    self.answered = True
            except NETWORK_ERRORS as exc:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "POST %s failed after %.1f ms (task %s): %s",
                        path,
                        (time.perf_counter() - started) * 1000,
                        task_id,
                        self.redact(describe(exc)),
                    )
                raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "POST %s -> %d in %.1f ms (task %s)",
                path,
                status,
                (time.perf_counter() - started) * 1000,
                task_id,
            )
        return status, body, retry_after

    def network_error(self, exc: BaseException, what: str) -> TransportError:
        """Wrap a network failure as a `TransportError` whose text holds no secret."""
        where = "" if self.answered else f" (no answer yet from {self.base_url})"
        return TransportError(f"{what} failed{where}: {self.redact(describe(exc))}")

    async def aclose(self) -> None:
        """Close the session if this transport made it; make no new one after."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
