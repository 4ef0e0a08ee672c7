"""The emulator: an in-process aiohttp server speaking the Nano Banana API.

It is written from docs/api.md alone and imports nothing from the client, so a
misreading of the contract on either side shows up as a failing test.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import http
import json
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from types import MappingProxyType, TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import attrs
from aiohttp import BodyPartReader, hdrs, web

# The shared list of models, prices and values: pure data, no client code.
from .._catalogue import ASPECT_RATIOS, DOCUMENTED_PRICES, EXTRA_ASPECT_RATIOS, IMAGE_SIZES
from ._controls import Gate, GateEndpoint, Hold, matcher
from ._faults import Fault, FaultInjector
from ._png import png_size, render_png
from ._state import EmulatedTask, Endpoint, Ledger, ProgressMode, RequestRecord

__all__ = ["Emulator"]

CREATE_PATH = "/api/v1/image/nano-banana"
RESULT_PATH = "/api/v1/image/nano-banana/result"
_FILE_ROUTE = "nanobanana-file"

#: The models the emulator knows by default, with their credits: the package's one list.
DOCUMENTED_MODELS: Mapping[str, int] = DOCUMENTED_PRICES
_MODES = ("text-to-image", "image-to-image")
_IMAGE_SIZES = IMAGE_SIZES
_RATIOS = frozenset(ASPECT_RATIOS)
# Only the newer, undocumented models accept these.
_EXTENDED_RATIOS = frozenset(EXTRA_ASPECT_RATIOS)
_RATIO_SYNTAX = re.compile(r"^[0-9]+:[0-9]+$")
_MAX_REFERENCES = 14
_MAX_FILE_BYTES = 10 * 1024 * 1024
_IMAGE_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
}
_IMAGE_EXTENSIONS = {
    "png": "png",
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "webp": "webp",
    "heic": "heic",
    "heif": "heif",
}
# Content types that say nothing about the file, so the extension decides.
_VAGUE_TYPES = frozenset(("", "application/octet-stream", "binary/octet-stream"))
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[^;,]*)*;base64,(.+)\Z", re.DOTALL)
_TEXT_FIELDS = ("prompt", "model", "mode", "aspectRatio", "imageSize")
_LIST_FIELDS = ("imageUrl", "imageData")

# Uniform ranges of emulated seconds, from docs/api.md "Typical durations".
_PRO_DURATIONS = {"1K": (15.0, 20.0), "2K": (30.0, 40.0), "4K": (50.0, 70.0)}
_FAST_DURATION = (4.0, 10.0)
_DEFAULT_DURATION = (8.0, 20.0)
# The non-pro models have no published 2K/4K timings: 2K is taken as 1K, 4K as 1.5x.
_NON_PRO_SIZE_FACTOR = {"1K": 1.0, "2K": 1.0, "4K": 1.5}
_TAIL_DURATION = (150.0, 300.0)

_FAILURE_MESSAGES = {
    "error": "image generation failed upstream; please try again",
    "input_moderation": "the prompt or a reference image was rejected by content moderation",
    "output_moderation": "the generated image was rejected by content moderation",
}

# The emulator answers hung and delayed requests itself on close; this only bounds stragglers.
_SHUTDOWN_TIMEOUT = 2.0
_MAX_BODY_BYTES = 256 * 1024 * 1024

Handler = Callable[[web.Request, "_Context"], Awaitable[web.StreamResponse]]


class _BadRequestError(Exception):
    """Raised when a create body cannot be read; the message becomes the 400 answer."""


@attrs.define
class _Context:
    # What a request turned out to be, gathered while it is handled, for its RequestRecord.
    endpoint: Endpoint
    slot: int
    time: float
    real_time: float
    api_key_valid: bool
    fault: str | None = None
    envelope: bool = False
    task_id: str | None = None
    fields: dict[str, Any] | None = None
    recorded: bool = False
    # A create body read ahead of a delay (or the reason it could not be read).
    form: _CreateForm | _BadRequestError | None = None


@attrs.define
class _Upload:
    filename: str | None
    content_type: str
    size: int


@attrs.define
class _CreateForm:
    text: dict[str, str] = attrs.Factory(dict)
    urls: list[str] = attrs.Factory(list)
    data_urls: list[str] = attrs.Factory(list)
    uploads: list[_Upload] = attrs.Factory(list)
    fields: dict[str, Any] = attrs.Factory(dict)

    def add_text(self, name: str, value: str) -> None:
        if name == "imageUrl":
            self.urls.append(value)
        elif name == "imageData":
            self.data_urls.append(value)
        elif name in self.text:
            return  # the first of a repeated single-valued field wins
        else:
            self.text[name] = value
        if name in _LIST_FIELDS:
            self.fields.setdefault(name, []).append(value)
        else:
            self.fields[name] = value


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.alias} must be > 0, not {value!r}")


def _fraction(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.alias} must be between 0 and 1, not {value!r}")


def _optional_non_negative(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.alias} must be >= 0 or None, not {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.alias} must be an integer >= 1, not {value!r}")


def _to_models(models: Mapping[str, int] | None) -> dict[str, int]:
    chosen = dict(DOCUMENTED_MODELS if models is None else models)
    if not chosen:
        raise ValueError("models must not be empty")
    return chosen


def _to_reasons(reasons: Sequence[str]) -> tuple[str, ...]:
    if isinstance(reasons, str) or not reasons:
        raise ValueError("failure_reasons must be a non-empty sequence of strings")
    return tuple(reasons)


@attrs.define(kw_only=True, eq=False, repr=False)
class Emulator:
    """A faithful in-process Nano Banana API server, for tests and demos.

    Use it as an async context manager (or ``await start()`` / ``await aclose()``)::

        async with Emulator(speed=1000.0) as emu:
            ...  # point a client at emu.base_url with emu.api_key

    Args:
        api_key: The key accepted in ``Authorization: Bearer <key>``.
        credits: Balance of ``api_key``; None for unlimited.
        speed: Time scale: 1000.0 runs a 15 s generation in 15 ms.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        progress: ``smooth``, ``stuck`` (0 until done), ``jumpy`` or ``mixed`` (one per task).
        failure_rate: Fraction of tasks that end failed (their credits are refunded).
        failure_reasons: ``failure_reason`` values a failed task picks from.
        tail_rate: Fraction of tasks that take 150-300 emulated seconds.
        duration: Fixed emulated duration of every task, overriding the tables and the tail.
        seed: Seeds all randomness (ids, durations, outcomes, progress, rated faults).
        envelope: ``data`` wraps successes as ``{"data": ...}``; ``code`` as
            ``{"code": 0, "msg": "success", "data": ...}``.
        error_style: Shape of error bodies: ``error``, ``message``, ``code_msg``,
            ``success_false``, ``text`` or ``html``.
        image_downscale: Divide the documented pixel sizes by this.
        models: Model name to credit cost; None for the documented three.
    """

    _api_key: str = attrs.field(default="nb-emulator-key", repr=False)
    _credits: int | None = attrs.field(default=10_000, repr=False)
    _speed: float = attrs.field(default=1.0, validator=_positive)
    _host: str = "127.0.0.1"
    _port: int = 0
    _progress: Literal["smooth", "stuck", "jumpy", "mixed"] = attrs.field(
        default="smooth",
        validator=attrs.validators.in_(("smooth", "stuck", "jumpy", "mixed")),
    )
    _failure_rate: float = attrs.field(default=0.0, validator=_fraction)
    _failure_reasons: tuple[str, ...] = attrs.field(
        default=("error", "input_moderation", "output_moderation"), converter=_to_reasons
    )
    _tail_rate: float = attrs.field(default=0.0, validator=_fraction)
    _duration: float | None = attrs.field(default=None, validator=_optional_non_negative)
    _seed: int = 0
    _envelope: Literal["data", "code"] = attrs.field(
        default="data", validator=attrs.validators.in_(("data", "code"))
    )
    _error_style: Literal["error", "message", "code_msg", "success_false", "text", "html"] = (
        attrs.field(
            default="error",
            validator=attrs.validators.in_(
                ("error", "message", "code_msg", "success_false", "text", "html")
            ),
        )
    )
    _image_downscale: int = attrs.field(default=1, validator=_at_least_one)
    _models: dict[str, int] = attrs.field(default=None, converter=_to_models, repr=False)

    _app: web.Application = attrs.field(init=False, repr=False)
    _accounts: dict[str, Ledger] = attrs.field(init=False, factory=dict, repr=False)
    _tasks: dict[str, EmulatedTask] = attrs.field(init=False, factory=dict, repr=False)
    _slots: list[RequestRecord | None] = attrs.field(init=False, factory=list, repr=False)
    _faults: FaultInjector = attrs.field(init=False, repr=False)
    _rng: random.Random = attrs.field(init=False, repr=False)
    _t0: float = attrs.field(init=False, factory=time.monotonic, repr=False)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None, repr=False)
    _base_url: str | None = attrs.field(init=False, default=None)
    _closing: asyncio.Event = attrs.field(init=False, factory=asyncio.Event, repr=False)
    _closed: bool = attrs.field(init=False, default=False, repr=False)
    _holds: list[Hold] = attrs.field(init=False, factory=list, repr=False)
    _gates: list[Gate] = attrs.field(init=False, factory=list, repr=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self._seed)
        self._faults = FaultInjector(self._seed)
        self.add_key(self._api_key, credits=self._credits)
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post(CREATE_PATH, self._route("create", self._create))
        app.router.add_post(RESULT_PATH, self._route("result", self._result))
        app.router.add_get(
            "/files/{task_id}/{index:[0-9]+}.png",
            self._route("file", self._file),
            name=_FILE_ROUTE,
        )
        app.router.add_route("*", "/{tail:.*}", self._route("other", self._other))
        self._app = app

    def __repr__(self) -> str:
        url = self._base_url or "not started"
        return (
            f"{type(self).__name__}(base_url={url!r}, speed={self._speed!r}, "
            f"progress={self._progress!r}, failure_rate={self._failure_rate!r}, "
            f"seed={self._seed!r})"
        )

    # -- public surface -------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The aiohttp application, for mounting elsewhere instead of calling ``start()``."""
        return self._app

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` without a trailing slash; available once started."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started; use 'async with' or 'await start()'")
        return self._base_url

    @property
    def api_key(self) -> str:
        """The API key given at construction."""
        return self._api_key

    @property
    def ledger(self) -> Ledger:
        """The live ledger of ``api_key``."""
        return self._accounts[self._api_key]

    @property
    def requests(self) -> list[RequestRecord]:
        """Every HTTP request received, in order of arrival (a fresh list each time).

        A request shows up once it is answered, dropped or starts hanging.
        """
        return [record for record in self._slots if record is not None]

    @property
    def tasks(self) -> Mapping[str, EmulatedTask]:
        """Every task created, by id (a live read-only view)."""
        return MappingProxyType(self._tasks)

    @property
    def faults(self) -> FaultInjector:
        """Where faults are injected and counted."""
        return self._faults

    def hold(self, which: str | Collection[str] | Callable[[str], bool] | None = None) -> Hold:
        """Hide the end of tasks from polls until released: they report running (progress <= 99).

        Holds the tasks *which* names (an id, ids, or a predicate of the id), or every task,
        including tasks created later. Only polls change: the ledger, the tasks' timing and
        their files do not. Release with `Hold.release`, or use the hold as a context manager.
        """
        hold = Hold(None if which is None else matcher(which))
        self._holds.append(hold)
        return hold

    def gate(self, endpoint: GateEndpoint = "create") -> Gate:
        """Keep every request to *endpoint* (or ``any``) waiting at the door until opened.

        Returns the closed `Gate`. A waiting request is neither processed nor recorded: a create
        waiting there has left the client and costs nothing yet. `Gate.wait_until_waiting` waits
        for arrivals; `Gate.open` (or leaving its ``with`` block) lets them through.
        """
        gate = Gate(endpoint)
        self._gates.append(gate)
        return gate

    def now(self) -> float:
        """Emulated seconds since start: real elapsed time times ``speed``."""
        return (time.monotonic() - self._t0) * self._speed

    def ledger_for(self, key: str) -> Ledger:
        """Return the live ledger of another registered key.

        Raises:
            KeyError: If ``key`` was never registered.
        """
        try:
            return self._accounts[key]
        except KeyError:
            raise KeyError("unknown API key; register it with add_key()") from None

    def add_key(self, key: str, credits: int | None = None) -> Ledger:
        """Register another API key with its own balance (None for unlimited).

        Raises:
            ValueError: If the key is empty or already registered.
        """
        if not key or key != key.strip():
            raise ValueError("an API key must be non-empty without surrounding blanks")
        if key in self._accounts:
            raise ValueError("this API key is already registered")
        ledger = Ledger(credits, self.now)
        self._accounts[key] = ledger
        return ledger

    def set_balance(self, credits: int | None, key: str | None = None) -> None:
        """Set the balance of ``key`` (default ``api_key``); None for unlimited."""
        self.ledger_for(self._api_key if key is None else key)._set_balance(credits)

    async def start(self) -> None:
        """Start listening; the emulated clock starts at 0.

        Raises:
            RuntimeError: If started before or already closed.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("an Emulator can be started only once")
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        if ":" in host:
            host = f"[{host}]"
        self._base_url = f"http://{host}:{port}"
        self._t0 = time.monotonic()

    async def aclose(self) -> None:
        """Drop hung and delayed requests, close every connection and stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- request plumbing -----------------------------------------------------------------

    def _route(
        self, endpoint: Endpoint, impl: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, endpoint, impl)

        return handler

    async def _handle(
        self, request: web.Request, endpoint: Endpoint, impl: Handler
    ) -> web.StreamResponse:
        for gate in self._gates:
            if not await gate.pass_through(endpoint, self._closing):
                return self._drop(request)
        ctx = _Context(
            endpoint=endpoint,
            slot=len(self._slots),
            time=self.now(),
            real_time=time.monotonic(),
            api_key_valid=self._ledger_of(request) is not None,
        )
        self._slots.append(None)
        fault = self._faults.pick(endpoint)
        status: int | None = None
        response: web.StreamResponse | None
        try:
            if fault is None:
                response = await impl(request, ctx)
            else:
                ctx.fault = fault.name
                response = await self._apply(fault, request, ctx, impl)
            if response is None:
                return self._drop(request)
            status = response.status
            return response
        except Exception:
            status = 500  # what aiohttp answers for a handler's crash
            raise
        finally:
            self._record(request, ctx, status)

    async def _apply(
        self, fault: Fault, request: web.Request, ctx: _Context, impl: Handler
    ) -> web.StreamResponse | None:
        name = fault.name
        if name == "drop_before":
            return None
        if name == "drop_after":
            await impl(request, ctx)
            return None
        if name == "delay":
            # The whole request arrives first, as at a slow server: it is processed after the
            # delay even if the client gave up waiting (a create is then charged, answer lost).
            if ctx.endpoint == "create":
                try:
                    ctx.form = await _read_create_form(request)
                except _BadRequestError as exc:
                    ctx.form = exc
            else:
                await request.read()
            with anyio.move_on_after(fault.seconds or 0.0):
                await self._closing.wait()
            return None if self._closing.is_set() else await impl(request, ctx)
        if name == "hang":
            # Recorded now, so tests can see the hang while it lasts.
            self._record(request, ctx, None)
            await self._closing.wait()
            return None
        if name == "envelope":
            ctx.envelope = True
            return await impl(request, ctx)
        if name == "html":
            return self._html_page(fault.http_status or 502)
        if name == "malformed":
            # Cut off mid-string, as a proxy truncating an answer would.
            return web.Response(
                status=fault.http_status or 200,
                text='{"data": {"id": "3-2f9c1e0a-6b1d-4c',
                content_type="application/json",
            )
        if name == "insufficient_credits_200":
            return web.json_response({"code": -1, "msg": "insufficient credits"})
        status = fault.http_status or 500
        headers: dict[str, str] = {}
        extra: dict[str, Any] = {}
        if fault.retry_after is not None:
            headers[hdrs.RETRY_AFTER] = _retry_after_header(fault.retry_after, fault.http_date)
            if fault.hint_in_body:
                extra["retry_after"] = _number(fault.retry_after)
        message = "rate limit exceeded" if name == "rate_limit" else _reason(status).lower()
        return self._error(status, message, headers=headers, extra=extra)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        # Closing the transport makes the client see a disconnect; aiohttp then
        # quietly discards the response returned below.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    def _record(self, request: web.Request, ctx: _Context, status: int | None) -> None:
        if ctx.recorded:
            return
        ctx.recorded = True
        self._slots[ctx.slot] = RequestRecord(
            time=ctx.time,
            real_time=ctx.real_time,
            method=request.method,
            path=request.path,
            endpoint=ctx.endpoint,
            api_key_valid=ctx.api_key_valid,
            status=status,
            task_id=ctx.task_id,
            fields=ctx.fields,
            fault=ctx.fault,
        )

    def _ledger_of(self, request: web.Request) -> Ledger | None:
        scheme, _, key = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._accounts.get(key.strip())

    def _unauthorized(self, request: web.Request) -> web.Response:
        if hdrs.AUTHORIZATION in request.headers:
            return self._error(401, "not authenticated: invalid API key")
        return self._error(401, "not authenticated: missing 'Authorization: Bearer <api-key>'")

    # -- endpoints ------------------------------------------------------------------------

    async def _create(self, request: web.Request, ctx: _Context) -> web.StreamResponse:
        ledger = self._ledger_of(request)
        if ledger is None:
            return self._unauthorized(request)
        ledger._creates_received += 1
        try:
            form = ctx.form if ctx.form is not None else await _read_create_form(request)
            if isinstance(form, _BadRequestError):
                raise form
        except _BadRequestError as exc:
            return self._error(400, str(exc))
        ctx.fields = form.fields
        problem = self._validate(form)
        if problem is not None:
            return self._error(400, problem)
        model = form.text["model"]
        cost = self._models[model]
        if not ledger._can_afford(cost):
            return self._error(402, f"insufficient credits: {model} costs {cost}")
        task = self._new_task(form, ledger, cost)
        ledger._charge(task)
        self._tasks[task.id] = task
        ctx.task_id = task.id
        return self._success(
            ctx,
            {
                "id": task.id,
                "results": [],
                "progress": 0,
                "status": "running",
                "failure_reason": None,
                "error": None,
                "credits_cost": cost,
            },
        )

    async def _result(self, request: web.Request, ctx: _Context) -> web.StreamResponse:
        ledger = self._ledger_of(request)
        if ledger is None:
            return self._unauthorized(request)
        ledger._polls_received += 1
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            return self._error(400, 'missing task id: send JSON {"taskId": "..."}')
        task_id = None
        if isinstance(body, dict):
            task_id = body.get("taskId") or body.get("id")
        if not isinstance(task_id, str) or not task_id:
            return self._error(400, 'missing task id: send JSON {"taskId": "..."}')
        ctx.task_id = task_id
        task = self._tasks.get(task_id)
        if task is None or task._owner is not ledger:
            return self._error(404, "task not found")
        ledger._settle()
        now = self.now()
        status = task.status_at(now)
        progress = task.progress_at(now)
        # Every hold notes the hiding (its `hidden`), not just the first that matches.
        hidden = [hold.hide(task.id) for hold in self._holds] if status != "running" else []
        if any(hidden):
            status, progress = "running", min(progress, 99)
        results = []
        if status == "succeeded":
            results = [{"url": self._file_url(request, task), "content": task.prompt}]
        failed = status == "failed"
        return self._success(
            ctx,
            {
                "id": task.id,
                "results": results,
                "progress": progress,
                "status": status,
                "failure_reason": task.failure_reason if failed else None,
                "error": task.error if failed else None,
            },
        )

    async def _file(self, request: web.Request, ctx: _Context) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        ctx.task_id = task_id
        task = self._tasks.get(task_id)
        if (
            task is None
            or int(request.match_info["index"]) != 0
            or task.status_at(self.now()) != "succeeded"
        ):
            return self._error(404, "file not found")
        width, height = png_size(
            task.aspect_ratio, task.image_size, downscale=self._image_downscale
        )
        seed = "\0".join((task.prompt, task.model, task.aspect_ratio, task.image_size))
        return web.Response(body=render_png(width, height, seed.encode()), content_type="image/png")

    async def _other(self, request: web.Request, ctx: _Context) -> web.StreamResponse:
        if request.path in (CREATE_PATH, RESULT_PATH):
            return self._error(405, "method not allowed", headers={hdrs.ALLOW: "POST"})
        return self._error(404, "not found")

    # -- tasks ----------------------------------------------------------------------------

    def _validate(self, form: _CreateForm) -> str | None:
        text = form.text
        if not text.get("prompt", "").strip():
            return "missing required parameter: prompt"
        model = text.get("model", "")
        if not model.strip():
            return "missing required parameter: model"
        if model not in self._models:
            return f"invalid model {model!r}; expected one of: {', '.join(self._models)}"
        mode = text.get("mode") or "text-to-image"
        if mode not in _MODES:
            return f"invalid mode {mode!r}; expected text-to-image or image-to-image"
        references = len(form.uploads) + len(form.urls) + len(form.data_urls)
        if mode == "image-to-image" and references == 0:
            return "image-to-image requires a reference image (imageFile or imageUrl)"
        if references > _MAX_REFERENCES:
            return f"too many reference images: {references} (at most {_MAX_REFERENCES})"
        for upload in form.uploads:
            if upload.size > _MAX_FILE_BYTES:
                return f"imageFile {upload.filename or ''!r} is larger than 10 MB"
        pro = _is_pro(model)
        for upload in form.uploads:
            kind = _image_kind(upload)
            if kind is None or (kind in ("heic", "heif") and not pro):
                allowed = "png, jpeg, webp, heic or heif" if pro else "png, jpeg or webp"
                return f"unsupported imageFile type for {model}; expected {allowed}"
        for url in form.urls:
            if not _is_http_url(url):
                return f"invalid imageUrl {url[:100]!r}; expected an http(s) URL"
        for data in form.data_urls:
            if not _is_base64_data_url(data):
                return "invalid imageData; expected a base64 data: URL"
        size = text.get("imageSize") or "1K"
        if size not in _IMAGE_SIZES:
            return f"invalid imageSize {size!r}; expected 1K, 2K or 4K"
        ratio = text.get("aspectRatio") or "auto"
        if ratio != "auto":
            if not _RATIO_SYNTAX.match(ratio):
                return f"malformed aspectRatio {ratio!r}; expected 'auto' or 'W:H'"
            allowed_ratios = _RATIOS if model in DOCUMENTED_MODELS else _RATIOS | _EXTENDED_RATIOS
            if ratio not in allowed_ratios:
                return f"unsupported aspectRatio {ratio!r} for {model}"
        return None

    def _new_task(self, form: _CreateForm, ledger: Ledger, cost: int) -> EmulatedTask:
        text = form.text
        model = text["model"]
        size = text.get("imageSize") or "1K"
        task_id = f"3-{uuid.UUID(int=self._rng.getrandbits(128), version=4)}"
        # Each task gets its own stream and draws everything, so one option
        # never shifts the random values seen by another.
        rng = random.Random(self._rng.getrandbits(64))
        in_tail = rng.random() < self._tail_rate
        low, high = _duration_range(model, size)
        typical = rng.uniform(low, high)
        tail = rng.uniform(*_TAIL_DURATION)
        fails = rng.random() < self._failure_rate
        reason = rng.choice(self._failure_reasons)
        mode: ProgressMode = (
            rng.choice(("smooth", "stuck", "jumpy"))
            if self._progress == "mixed"
            else self._progress
        )
        count = rng.randint(1, 3)
        jumps = tuple(
            zip(
                sorted(rng.uniform(0.1, 0.9) for _ in range(count)),
                sorted(rng.sample(range(5, 96), count)),
                strict=True,
            )
        )
        duration = tail if in_tail else typical
        if self._duration is not None:
            duration = self._duration
        return EmulatedTask(
            id=task_id,
            model=model,
            prompt=text["prompt"],
            mode=text.get("mode") or "text-to-image",
            aspect_ratio=text.get("aspectRatio") or "auto",
            image_size=size,
            reference_count=len(form.uploads) + len(form.urls) + len(form.data_urls),
            credits_cost=cost,
            created_at=self.now(),
            duration=duration,
            outcome="failed" if fails else "succeeded",
            failure_reason=reason if fails else None,
            error=_FAILURE_MESSAGES.get(reason, f"generation failed: {reason}") if fails else None,
            progress_mode=mode,
            jumps=jumps,
            clock=self.now,
            owner=ledger,
        )

    def _file_url(self, request: web.Request, task: EmulatedTask) -> str:
        path = request.app.router[_FILE_ROUTE].url_for(task_id=task.id, index="0")
        origin = self._base_url or str(request.url.origin())
        return f"{origin}{path}"

    # -- bodies ---------------------------------------------------------------------------

    def _success(self, ctx: _Context, data: dict[str, Any]) -> web.Response:
        if self._envelope == "code" or ctx.envelope:
            return web.json_response({"code": 0, "msg": "success", "data": data})
        return web.json_response({"data": data})

    def _error(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> web.Response:
        style = self._error_style
        if style == "text":
            hint = f" (retry after {extra['retry_after']} s)" if extra else ""
            return web.Response(status=status, text=message + hint, headers=headers)
        if style == "html":
            return self._html_page(status, message, headers=headers)
        body: dict[str, Any]
        if style == "message":
            body = {"message": message}
        elif style == "code_msg":
            body = {"code": status, "msg": message}
        elif style == "success_false":
            body = {"success": False, "error": {"code": status, "message": message}}
        else:
            body = {"error": message}
        body.update(extra or {})
        return web.json_response(body, status=status, headers=headers)

    def _html_page(
        self, status: int, message: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        title = f"{status} {_reason(status)}"
        detail = f"<p>{escape(message)}</p>\n" if message else ""
        page = (
            f"<!DOCTYPE html>\n<html>\n<head><title>{title}</title></head>\n<body>\n"
            f"<center><h1>{title}</h1></center>\n{detail}<hr><center>nginx</center>\n"
            "</body>\n</html>\n"
        )
        return web.Response(status=status, text=page, content_type="text/html", headers=headers)


async def _read_create_form(request: web.Request) -> _CreateForm:
    form = _CreateForm()
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    await part.release()  # nested multipart: not part of the API
                elif part.name == "imageFile":
                    size = 0
                    # Counted, not kept: the emulator never looks at the pixels.
                    while chunk := await part.read_chunk(1 << 16):
                        size += len(chunk)
                    ctype = part.headers.get(hdrs.CONTENT_TYPE, "")
                    form.uploads.append(_Upload(part.filename, ctype, size))
                    form.fields.setdefault("imageFile", []).append(part.filename or "")
                elif part.name:
                    form.add_text(part.name, await part.text())
                else:
                    await part.release()
        except ValueError as exc:
            raise _BadRequestError(f"malformed multipart body: {exc}") from exc
        return form
    if content_type == "application/x-www-form-urlencoded":
        for name, value in (await request.post()).items():
            if isinstance(value, str):
                form.add_text(name, value)
        return form
    raw = await request.read()
    if not raw.strip():
        return form
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadRequestError("request body must be multipart/form-data or JSON") from exc
    if not isinstance(body, dict):
        raise _BadRequestError("request body must be a JSON object")
    for name, value in body.items():
        if value is None:
            continue
        if name in _LIST_FIELDS:
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _BadRequestError(f"{name} must be a string or a list of strings")
            for item in values:
                form.add_text(name, item)
        elif name in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise _BadRequestError(f"{name} must be a string")
            form.add_text(name, value)
    form.fields = dict(body)
    return form


def _is_pro(model: str) -> bool:
    # nano-banana-pro-vip and the like are taken as members of the pro family.
    return model.startswith("nano-banana-pro")


def _duration_range(model: str, size: str) -> tuple[float, float]:
    if _is_pro(model):
        return _PRO_DURATIONS[size]
    low, high = _FAST_DURATION if model == "nano-banana-fast" else _DEFAULT_DURATION
    factor = _NON_PRO_SIZE_FACTOR[size]
    return low * factor, high * factor


def _image_kind(upload: _Upload) -> str | None:
    content_type = upload.content_type.split(";")[0].strip().lower()
    if content_type not in _VAGUE_TYPES:
        return _IMAGE_TYPES.get(content_type)
    _, dot, extension = (upload.filename or "").rpartition(".")
    return _IMAGE_EXTENSIONS.get(extension.lower()) if dot else None


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _is_base64_data_url(value: str) -> bool:
    match = _DATA_URL.match(value)
    if match is None:
        return False
    try:
        base64.b64decode(match[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _number(seconds: float) -> int | float:
    return int(seconds) if seconds == int(seconds) else seconds


def _retry_after_header(seconds: float, http_date: bool) -> str:
    if not http_date:
        return str(_number(seconds))
    # Rounded up to a whole second so the advertised wait is never shorter.
    when = math.ceil(time.time() + seconds)
    return email.utils.format_datetime(datetime.fromtimestamp(when, timezone.utc), usegmt=True)
