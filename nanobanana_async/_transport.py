"""HTTP transport: the aiohttp session, auth, timeouts, logging, and error classification."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import re
import ssl as ssl_module
import time
import urllib.request
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import multidict
import yarl

from ._config import DEFAULT_MAX_REPLY_BYTES, RequestKind, Timeouts
from ._errors import ClientClosedError, InvalidRequestError, TransportError
from ._wire import Answer, CappedBody

logger = logging.getLogger("nanobanana_async")

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


#: Seconds without an answer before the transport logs (INFO) what it waits for, then between
#: such notices: no wait longer than a few seconds is silent.
WAIT_NOTICE = 3.0
WAIT_NOTICE_REPEAT = 10.0

#: Which attempt the next request of this task (asyncio task) is: ``(endpoint, task_id,
#: attempt)``, set by whoever retries (``endpoint`` is ``"create"`` or ``"result"``), read and
#: cleared by the next `Transport.post` of that endpoint and task id, for its wait notices.
REQUEST_ATTEMPT: contextvars.ContextVar[tuple[str, str | None, int] | None] = (
    contextvars.ContextVar("nanobanana_request_attempt", default=None)
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


#: Named HTML entities of characters API keys are made of (besides letters and digits).
_ENTITIES = {"/": "sol", "+": "plus", "=": "equals", "-": "hyphen", "_": "lowbar", ".": "period"}


#: The shortest part of a key after its prefix (``sk-``) that is redacted on its own.
MIN_KEY_REST = 8
_URLSAFE = str.maketrans("+/", "-_")


def _char_forms(char: str) -> str:
    """Return the alternatives one character of the key may come as (case-insensitive)."""
    code = ord(char)
    forms = [re.escape(char), r"\\+" + re.escape(char)]
    if code <= 0xFFFF:
        forms.append(rf"\\+u{code:04x}")
    forms.append("".join(rf"%(?:25)*{byte:02x}" for byte in char.encode()))
    forms.append(rf"&#0*{code};")
    forms.append(rf"&#x0*{code:x};")
    if char in _ENTITIES:
        forms.append(f"&{_ENTITIES[char]};")
    if char == "+":
        forms.append(" ")
    return "(?:" + "|".join(forms) + ")"


def key_rest(key: str) -> str | None:
    """Return the key without its prefix (up to the first ``-`` or ``_``), if long enough alone."""
    cut = min((i for i in (key.find("-"), key.find("_")) if i >= 0), default=-1)
    rest = key[cut + 1 :] if cut >= 0 else ""
    return rest if len(rest) >= MIN_KEY_REST else None


def base64_runs(key: str) -> list[str]:
    """Return the base64 text the key shows as inside any base64 blob (standard and urlsafe).

    The key may start at any of three byte offsets of the encoded data; for each, the characters
    that depend on the key's bytes alone are the same whatever surrounds it.
    """
    data = key.encode("utf-8", "surrogatepass")
    runs: list[str] = []
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + data + b"\0\0").decode()
        start, end = -(-8 * align // 6), 8 * (align + len(data)) // 6
        run = encoded[start:end]
        for form in (run, run.translate(_URLSAFE)):
            if len(form) >= MIN_KEY_REST and form not in runs:
                runs.append(form)
    return runs


def key_pattern(key: str) -> str:
    """Return a regular expression matching *key* in every form a server may echo it in.

    Each character may come raw, backslash-escaped (JSON's `\\/`, at any depth), as a JSON
    `\\uXXXX` escape, percent-encoded (also twice), as an HTML character reference, or (`+`)
    as the space a form decoder makes of it. Forms may mix within one key, in any letter case.
    The key may also come without its prefix (`sk-`, see `key_rest`), or base64-encoded
    (standard or urlsafe, at any alignment, see `base64_runs`; a `/` may be JSON-escaped).
    """
    rest = key_rest(key)
    if rest is None:
        text = "".join(_char_forms(char) for char in key)
    else:
        prefix = key[: len(key) - len(rest)]
        text = (
            "(?:"
            + "".join(_char_forms(char) for char in prefix)
            + ")?"
            + "".join(_char_forms(char) for char in rest)
        )
    alternatives = ["(?i:" + text + ")"]
    for run in base64_runs(key):
        alternatives.append("".join(r"\\*/" if char == "/" else re.escape(char) for char in run))
    return "|".join(alternatives)


def key_hints(key: str) -> tuple[str, ...]:
    """Return texts one of which every form `key_pattern` matches holds (a cheap test first).

    The longest run of letters and digits of the key's part after its prefix shows as it is
    (in its case, lower, upper or swapped case) unless escaping reached letters too, which
    leaves its own marks; a base64 form holds its own longest run.
    """
    rest = key_rest(key) or key
    core = max(re.findall(r"[A-Za-z0-9]+", rest), key=len, default="")
    if not core:
        return ()
    hints = [core, core.lower(), core.upper(), core.swapcase(), "&#", "\\u", "\\U", "%"]
    for run in base64_runs(key):
        hints.append(max(re.findall(r"[A-Za-z0-9]+", run), key=len, default=run))
    return tuple(dict.fromkeys(hints))


#: Seconds a server's announced keep-alive timeout must exceed our reuse window by.
KEEPALIVE_MARGIN = 0.5
_KEEPALIVE_TIMEOUT = re.compile(r"(?i)(?:^|[,;\s])timeout\s*=\s*([0-9]+(?:\.[0-9]+)?)")


def keep_alive_timeout(header: str) -> float | None:
    """Return the `timeout=` seconds of a `Keep-Alive` header, or None if it names none."""
    match = _KEEPALIVE_TIMEOUT.search(header[:200])
    return float(match.group(1)) if match else None


class _WriteMark:
    """What a create passes aiohttp as its trace context: the call that marks it written."""

    __slots__ = ("on_write",)

    def __init__(self, on_write: Callable[[], None]) -> None:
        self.on_write = on_write


async def _on_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    # Called by aiohttp right before a request's first bytes are written to an open connection.
    # Only our creates' marks: a caller's session may carry trace contexts of its own.
    mark = context.trace_request_ctx
    if type(mark) is _WriteMark:
        mark.on_write()


_WRITE_TRACE = aiohttp.TraceConfig()
_WRITE_TRACE.on_request_headers_sent.append(_on_headers_sent)
_WRITE_TRACE.freeze()


def write_trace() -> aiohttp.TraceConfig:
    """The aiohttp trace config that tells a client when a create's first bytes are written.

    A session given to `Client(session=...)` that carries it (``aiohttp.ClientSession(
    trace_configs=[write_trace()])``) lets a create count as sent only once its bytes are written,
    as with the client's own sessions. One shared, frozen object.
    """
    return _WRITE_TRACE


def describe(exc: BaseException) -> str:
    """Return a short text for a network failure (aiohttp's texts can be empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _WaitNotice:
    """Logs (INFO) what a request waits for while no answer comes, every few seconds."""

    __slots__ = ("_attempt", "_handle", "_limit", "_loop", "_source", "_started", "_task_id")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        source: str,
        task_id: str | None,
        attempt: int,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        # Made for every request: the text is only put together if a notice is due.
        self._loop = loop
        self._started = loop.time()
        self._source = source
        self._task_id = task_id
        self._attempt = attempt
        self._limit = timeout.total
        self._handle: asyncio.TimerHandle | None = loop.call_later(WAIT_NOTICE, self._say)

    def _say(self) -> None:
        waited = self._loop.time() - self._started
        limit = f"; gives up after {self._limit:g} s" if self._limit else ""
        what = "the create" if self._task_id is None else f"a poll of task {self._task_id}"
        logger.info(
            "waiting for the answer to %s (%s, attempt %d): none for %.0f s%s",
            self._source,
            what,
            self._attempt,
            waited,
            limit,
        )
        self._handle = self._loop.call_later(WAIT_NOTICE_REPEAT, self._say)

    def cancel(self) -> None:
        """Stop the notices (the answer came, or the request failed)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


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
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.base_url = yarl.URL(base_url.rstrip("/"))
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._json_headers = {**self._auth, "Content-Type": "application/json"}
        self._api_key = api_key
        pattern = key_pattern(api_key) if api_key else None
        self._key_text = re.compile(pattern) if pattern else None
        self._key_bytes = re.compile(pattern.encode()) if pattern else None
        # A cheap test before the regex (which costs ~20 us a body): see `key_hints`.
        self._key_hints = key_hints(api_key) or None if api_key else None
        self._key_hints_bytes = (
            tuple(hint.encode() for hint in self._key_hints) if self._key_hints else None
        )
        if max_reply_bytes < 1:
            raise InvalidRequestError("max_reply_bytes", "must be at least 1")
        self.max_reply_bytes = max_reply_bytes
        self.timeouts = timeouts
        self.max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        # A caller's session tells us when a create's bytes are written only if it carries our
        # trace config (see `write_trace`); without it, a create counts as sent as it starts.
        self._write_traced = session is None or any(
            config is _WRITE_TRACE for config in session.trace_configs
        )
        self._create_session: aiohttp.ClientSession | None = None
        self._proxy = proxy
        self._ssl = ssl
        self._timeout = aiohttp.ClientTimeout(total=timeouts.request, sock_connect=timeouts.connect)
        # Our own bounds on exchanges in flight, which add up to the connector's limit: a request
        # never queues inside aiohttp's pool, where the wait would count against its timeout.
        # Creates open fresh connections beside the keep-alive pool of polls: the two shares add
        # up to max_connections, so the sockets open never exceed it. With a single connection
        # both kinds share it, and the pool keeps nothing idle (see `session`).
        self._create_share = max(1, max_connections // 4) if max_connections >= 2 else 1
        self._poll_share = max_connections - self._create_share if max_connections >= 2 else 1
        self._slots = asyncio.Semaphore(self._poll_share)
        self._create_slots = (
            asyncio.Semaphore(self._create_share) if max_connections >= 2 else self._slots
        )
        self.download_slots = asyncio.Semaphore(DOWNLOAD_CONNECTIONS)
        self._gate = gate
        self._closed = False
        self._urls: dict[str, yarl.URL] = {}
        self._sources: dict[tuple[str, yarl.URL], str] = {}
        #: Whether the server ever answered a request (a wrong URL never does).
        self.answered = False

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, made on first use (it must be made inside the event loop)."""
        if self._session is None:
            if self._closed:
                raise ClientClosedError("the client is closed")
            connector = aiohttp.TCPConnector(
                limit=self._poll_share + DOWNLOAD_CONNECTIONS,
                ssl=self._ssl if self._ssl is not None else True,
                ttl_dns_cache=300,
                # One connection in all: an idle pooled one would be a second beside a create's.
                force_close=self.max_connections < 2,
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

    @property
    def create_session(self) -> aiohttp.ClientSession:
        """The session of creates: connections reused only while idle for a short time.

        A pooled keep-alive connection may have just been closed by the server (servers close
        idle connections after 2 s (gunicorn), 5 s (uvicorn, Node) or more): a create sent on it
        is lost with no way to tell whether it arrived, a false `SubmitUncertainError`. So creates
        reuse only connections idle for less than `Timeouts.create_keepalive` (1 s by default,
        below the shortest common server timeout, and below any `Keep-Alive: timeout=` the server
        announces), and take a fresh connection otherwise (`create_keepalive=0`: always). A create
        counts as sent only once its first bytes are written (see `post`), so a connection that
        fails to open or to take the request proves nothing left. A session given by the caller
        is used as it is.
        """
        if not self._owns_session:
            return self.session
        if self._create_session is None:
            if self._closed:
                raise ClientClosedError("the client is closed")
            reuse = self.timeouts.create_keepalive
            ssl = self._ssl if self._ssl is not None else True
            connector = (
                aiohttp.TCPConnector(
                    limit=self._create_share, ssl=ssl, ttl_dns_cache=300, keepalive_timeout=reuse
                )
                if reuse
                else aiohttp.TCPConnector(
                    limit=self._create_share, ssl=ssl, ttl_dns_cache=300, force_close=True
                )
            )
            self._create_session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                proxy=self._proxy if self._proxy is not None else env_proxy(self.base_url),
                trace_configs=[_WRITE_TRACE],
            )
        return self._create_session

    def redact(self, text: str) -> str:
        """Remove the API key, in any escaped form, from *text* (servers echo headers back)."""
        if self._key_text is None:
            return text
        if self._key_hints is not None and not any(hint in text for hint in self._key_hints):
            return text
        return self._key_text.sub("[redacted]", text)

    def redact_bytes(self, body: bytes) -> bytes:
        """Remove the API key, in any escaped form, from a raw body."""
        if self._key_bytes is None:
            return body
        hints = self._key_hints_bytes
        if hints is not None and not any(hint in body for hint in hints):
            return body
        return self._key_bytes.sub(b"[redacted]", body)

    def scrub(self, exc: BaseException) -> BaseException:
        """Strip the key from *exc* and every exception it chains, in place; return *exc*.

        aiohttp's response errors carry the request's headers (`request_info`), Authorization
        included, and parser errors quote the bytes they choked on. Callers chain our errors
        from these (`raise ... from exc`), so they are cleaned before they leave the transport.
        """
        stack: list[BaseException | None] = [exc]
        seen: set[int] = set()
        while stack:
            current = stack.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            args = tuple(self._scrub_value(arg) for arg in current.args)
            if any(new is not old for new, old in zip(args, current.args, strict=True)):
                current.args = args
            for name, value in list(getattr(current, "__dict__", {}).items()):
                clean = self._scrub_value(value)
                if clean is not value:
                    setattr(current, name, clean)
            stack += [current.__cause__, current.__context__]
        return exc

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            clean = self.redact(value)
            return value if clean == value else clean
        if isinstance(value, (bytes, bytearray)):
            cleaned = self.redact_bytes(bytes(value))
            return value if cleaned == value else cleaned
        if isinstance(value, aiohttp.RequestInfo):
            return value._replace(headers=self._scrub_headers(value.headers))
        if isinstance(value, (multidict.CIMultiDictProxy, multidict.CIMultiDict)):
            return self._scrub_headers(value)
        if isinstance(value, tuple) and any(
            isinstance(item, aiohttp.ClientResponse) for item in value
        ):
            # Redirect history: responses that carry the request's headers.
            return ()
        return value

    def _scrub_headers(self, headers: Any) -> multidict.CIMultiDictProxy[str]:
        kept = multidict.CIMultiDict(
            (key, self.redact(str(item)))
            for key, item in headers.items()
            if key.lower() not in ("authorization", "proxy-authorization")
        )
        return multidict.CIMultiDictProxy(kept)

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
        on_write: Callable[[], None] | None = None,
    ) -> tuple[int, bytes, str | None]:
        """POST to an API path; return status, body and the Retry-After header.

        Waits for a connection slot, then for the gate of *kind* (pauses and rate cap: checked with
        the slot held, so no request slips out during a pause), then awaits *before_send* (it may
        raise to abandon the request unsent). A create calls *on_write* at the moment its first
        bytes are about to be written, once the connection is open (it may raise to abandon the
        request: nothing is written then); with a session given by the caller that does not
        carry `write_trace()`, right before the request starts. Raises aiohttp's network errors,
        for the caller to classify, scrubbed of the key (see `scrub`). An answer over
        `max_reply_bytes` comes back cut, as a `CappedBody` that `decode_answer` refuses: pass the
        body on to it as it is. The body is an `Answer`: it names the request, and the errors
        `decode_answer` raises name it.
        """
        url = self.url(path)
        headers = self._auth if json_body is None else self._json_headers
        mark = REQUEST_ATTEMPT.get()
        endpoint = "create" if kind == "create" else "result"
        attempt = 1
        if mark is not None:
            REQUEST_ATTEMPT.set(None)
            if mark[0] == endpoint and mark[1] == task_id:
                attempt = mark[2]
        async with self._create_slots if kind == "create" else self._slots:
            await self._gate(kind)
            if before_send is not None:
                await before_send()
            started = time.perf_counter()
            session = self.create_session if kind == "create" else self.session
            notice = _WaitNotice(
                asyncio.get_running_loop(),
                self.source(url),
                None if kind == "create" else task_id,
                attempt,
                self._timeout,
            )
            traced = kind == "create" and self._write_traced
            if on_write is not None and not traced:
                on_write()
            try:
                async with session.post(
                    url,
                    data=data if json_body is None else json_body,
                    headers=headers,
                    timeout=self._timeout,
                    ssl=self._ssl if self._ssl is not None else True,
                    # A redirected create would be re-sent (307/308) or turned into a GET
                    # (301/302) behind our back: a redirect is an answer, not an instruction.
                    allow_redirects=False,
                    trace_request_ctx=(
                        _WriteMark(on_write) if traced and on_write is not None else None
                    ),
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    self.answered = True
                    body = await self._read_capped(response, self.source(url))
                    if (
                        kind == "create"
                        and self._owns_session
                        and not self._keep_alive_fits(response)
                    ):
                        # The server closes idle connections sooner than we would reuse them.
                        response.close()
            except NETWORK_ERRORS as exc:
                self.scrub(exc)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "POST %s failed after %.1f ms (task %s): %s",
                        path,
                        (time.perf_counter() - started) * 1000,
                        task_id,
                        self.redact(describe(exc)),
                    )
                raise
            finally:
                notice.cancel()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "POST %s -> %d in %.1f ms (task %s)",
                path,
                status,
                (time.perf_counter() - started) * 1000,
                task_id,
            )
        return status, body, retry_after

    def source(self, url: yarl.URL, method: str = "POST") -> str:
        """Return ``"METHOD URL"`` for error messages: no user, password or key in it."""
        text = self._sources.get((method, url))
        if text is None:
            shown = url.with_user(None) if url.user or url.password else url
            text = self._sources[method, url] = f"{method} {self.redact(str(shown))}"
        return text

    def _keep_alive_fits(self, response: aiohttp.ClientResponse) -> bool:
        """Whether the server's `Keep-Alive: timeout=N` (if any) outlasts our reuse window.

        A connection the server may close before we stop reusing it is dropped after its answer,
        so that the next create takes a fresh one instead of racing the server's close.
        """
        hint = response.headers.get("Keep-Alive")
        if hint is None:
            return True
        timeout = keep_alive_timeout(hint)
        return timeout is None or timeout >= self.timeouts.create_keepalive + KEEPALIVE_MARGIN

    async def _read_capped(self, response: aiohttp.ClientResponse, source: str) -> bytes:
        """Read an answer of at most `max_reply_bytes`, key redacted; beyond, drop the connection.

        A larger answer comes back as a `CappedBody` holding its first `max_reply_bytes`: the
        decoder raises `ProtocolError` for it on a 2xx (and keeps the status's error otherwise),
        so every caller classifies it as it already does an unreadable answer.
        """
        limit = self.max_reply_bytes
        # Read in steps even when a length is declared: it is the length on the wire, and a
        # compressed answer may inflate far beyond it.
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = await response.content.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if size > limit:
            # Never hand the rest of an oversized answer to the pool's next request.
            response.close()
            return CappedBody(self.redact_bytes(body[:limit]), limit=limit, source=source)
        # Some servers echo the Authorization header back in error bodies.
        return Answer(self.redact_bytes(body), source=source)

    def network_error(self, exc: BaseException, what: str) -> TransportError:
        """Wrap a network failure as a `TransportError` whose text holds no secret."""
        where = "" if self.answered else f" (no answer yet from {self.base_url})"
        return TransportError(f"{what} failed{where}: {self.redact(describe(exc))}")

    async def aclose(self) -> None:
        """Close the session if this transport made it; make no new one after."""
        self._closed = True
        if self._create_session is not None:
            await self._create_session.close()
            self._create_session = None
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
