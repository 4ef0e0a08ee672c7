"""A small hostile API look-alike (raw aiohttp, not the emulator) whose misbehaviour tests script.

Each create and poll takes the next behaviour from its plan (then "ok"). The server counts what it
charged per prompt, so tests can prove that no create was charged twice, and counts connections
and requests per connection.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

CREATE = "/api/v1/image/nano-banana"
RESULT = "/api/v1/image/nano-banana/result"

#: A key with every character that JSON, URL and form encodings like to escape.
HOSTILE_KEY = "sk-live/ab+cd=ef/GH+ij=="

#: Behaviours answered before any processing: nothing is charged.
UNCHARGED = frozenset(
    {
        "429",
        "429-date",
        "429-none",
        "429-absurd",
        "503",
        "redirect",
        "drop-before",
        "echo-key",
        "bad-status-line",
    }
)

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)


def escaped_forms(key: str) -> list[str]:
    """The forms a server may echo *key* in: raw, JSON `\\/`, `\\u002f`, percent, HTML refs."""
    percent = "".join(c if c.isalnum() or c in "-_" else f"%{ord(c):02X}" for c in key)
    lower = "".join(c if c.isalnum() or c in "-_" else f"%{ord(c):02x}" for c in key)
    return [
        key,
        key.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" if not c.isalnum() else c for c in key),
        percent,
        lower,
        "".join(f"&#{ord(c)};" if not c.isalnum() else c for c in key),
    ]


@functools.cache
def _gzip_bomb() -> bytes:
    return gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)


class HostileServer:
    """An API look-alike that misbehaves on cue and keeps an honest ledger."""

    def __init__(self, api_key: str = HOSTILE_KEY, *, polls_to_finish: int = 1) -> None:
        self.api_key = api_key
        self.polls_to_finish = polls_to_finish
        self.create_plan: list[str] = []
        self.poll_plan: list[str] = []
        self.file_plan: list[str] = []
        #: Creates processed (charged) per prompt.
        self.charged: Counter[str] = Counter()
        #: Requests that reached a handler, per (endpoint, behaviour).
        self.seen: Counter[tuple[str, str]] = Counter()
        self.tasks: dict[str, dict[str, Any]] = {}
        #: Drop, unprocessed, any request that is not the first on its connection: as a server
        #: that closes each connection right after answering, racing the client's next request.
        self.close_after_answer = False
        self.per_connection: Counter[Any] = Counter()
        self.base_url = ""
        #: What a failed task says (tests put hostile text here).
        self.failure_reason = "error"
        self.failure_error = "failed to generate image"
        #: Set once a ``stall-mid-body`` download has sent its first bytes.
        self.stalled = asyncio.Event()
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()

    # --- plumbing ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CREATE, self._create)
        app.router.add_post(RESULT, self._poll)
        app.router.add_get("/files/{name}", self._file)
        return app

    def _next(self, plan: list[str]) -> str:
        return plan.pop(0) if plan else "ok"

    def _connection_seen(self, request: web.Request) -> bool:
        """Count the request on its connection; True when it may be processed."""
        # The client's address and port name a live connection (ids of objects are reused).
        conn = request.transport.get_extra_info("peername") if request.transport else None
        self.per_connection[conn] += 1
        return not (self.close_after_answer and self.per_connection[conn] > 1)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)

    @staticmethod
    def _raw(request: web.Request, data: bytes) -> web.Response:
        if request.transport is not None:
            request.transport.write(data)
            request.transport.close()
        return web.Response(status=204)

    async def _stall(self) -> None:
        await self._closing.wait()

    def task_json(self, task_id: str) -> dict[str, Any]:
        task = self.tasks[task_id]
        done = task["polls"] >= self.polls_to_finish
        if not done:
            return {"id": task_id, "status": "running", "progress": 10, "results": []}
        if task["prompt"].startswith("fail"):
            return {
                "id": task_id,
                "status": "failed",
                "progress": 0,
                "results": [],
                "failure_reason": self.failure_reason,
                "error": self.failure_error,
            }
        return {
            "id": task_id,
            "status": "succeeded",
            "progress": 100,
            "results": [{"url": f"{self.base_url}/files/{task_id}.png", "content": "a banana"}],
            "credits_cost": 15,
        }

    async def _answer_common(
        self, request: web.Request, behaviour: str
    ) -> web.StreamResponse | None:
        """Behaviours shared by creates and polls; None when *behaviour* is not one of them."""
        if behaviour == "429":
            return web.json_response(
                {"error": "rate limited"}, status=429, headers={"Retry-After": "0"}
            )
        if behaviour == "429-date":
            return web.json_response(
                {"error": "rate limited"},
                status=429,
                headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
            )
        if behaviour == "429-none":
            return web.json_response({"error": "rate limited"}, status=429)
        if behaviour == "429-absurd":
            return web.json_response(
                {"error": "rate limited"}, status=429, headers={"Retry-After": "99999999999"}
            )
        if behaviour == "503":
            return web.Response(
                text="<html><body>503 Service Unavailable</body></html>",
                status=503,
                content_type="text/html",
            )
        if behaviour == "500":
            return web.json_response({"code": 500, "message": "downstream failure"}, status=500)
        if behaviour == "redirect":
            return web.Response(status=307, headers={"Location": "/elsewhere"})
        if behaviour == "drop-before":
            return self._drop(request)
        if behaviour == "echo-key":
            header = request.headers.get("Authorization", "")
            # PHP-style JSON: every "/" escaped; plus the key percent- and HTML-encoded.
            forms = escaped_forms(header.removeprefix("Bearer "))
            body = json.dumps({"error": f"bad key {header}", "seen": forms}).replace("/", "\\/")
            return web.Response(text=body, status=401, content_type="application/json")
        if behaviour == "bad-status-line":
            header = request.headers.get("Authorization", "")
            return self._raw(request, f"HTTP/1.1 ??? {header}\r\n\r\n".encode())
        return None

    async def _answer_body(
        self, request: web.Request, behaviour: str, obj: dict[str, Any]
    ) -> web.StreamResponse:
        """Answer *obj* (a task object) the way *behaviour* says."""
        if behaviour == "drop-after":
            return self._drop(request)
        if behaviour == "truncated":
            text = json.dumps({"data": obj})
            return web.Response(text=text[: len(text) // 2], content_type="application/json")
        if behaviour == "html200":
            return web.Response(
                text="<html><body>Welcome to nginx!</body></html>", content_type="text/html"
            )
        if behaviour == "stall":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = 500
            await response.prepare(request)
            await self._stall()
            return response
        if behaviour == "gzip-bomb":
            # 64 kB on the wire, 64 MB once inflated.
            return web.Response(
                body=_gzip_bomb(),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if behaviour in ("endless", "huge"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            if behaviour == "huge":
                response.content_length = 100 * 1024 * 1024
            else:
                response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = b" " * 65536
            try:
                for _ in range(1600):  # 100 MB at most
                    await response.write(chunk)
            except (ConnectionError, RuntimeError):
                pass  # the client hung up, as it should
            return response
        return web.json_response({"data": obj})

    async def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    # --- endpoints -----------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        if not self._connection_seen(request):
            self.seen["create", "dropped-on-reuse"] += 1
            return self._drop(request)
        behaviour = self._next(self.create_plan)
        self.seen["create", behaviour] += 1
        form = await request.post()
        prompt = str(form.get("prompt", ""))
        common = await self._answer_common(request, behaviour)
        if common is not None:
            return common
        if not await self._authorised(request):
            return web.json_response({"error": "not authenticated"}, status=401)
        self.charged[prompt] += 1
        number = next(self._ids)
        task_id = str(10_000 + number) if behaviour == "wrong-types" else f"3-hostile-{number}"
        self.tasks[task_id] = {"prompt": prompt, "polls": 0, "flipped": False}
        if behaviour == "failed":
            obj = {
                **self.task_json(task_id),
                "status": "failed",
                "failure_reason": "error",
                "error": "failed to generate image",
                "credits_cost": 15,
            }
            self.tasks[task_id]["polls"] = -(10**9)  # stays failed if polled
            return web.json_response({"code": 500, "msg": "failed to generate image", "data": obj})
        obj = {"id": task_id, "status": "running", "progress": 0, "results": [], "credits_cost": 15}
        if behaviour == "wrong-types":
            obj = {"id": int(task_id), "status": "running", "progress": "50", "results": None}
        return await self._answer_body(request, behaviour, obj)

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        if not self._connection_seen(request):
            self.seen["result", "dropped-on-reuse"] += 1
            return self._drop(request)
        behaviour = self._next(self.poll_plan)
        self.seen["result", behaviour] += 1
        body = await request.json()
        task_id = str(body.get("taskId"))
        common = await self._answer_common(request, behaviour)
        if common is not None:
            return common
        if task_id not in self.tasks:
            return web.json_response({"error": "task not found"}, status=404)
        task = self.tasks[task_id]
        if behaviour == "flip" and task["flipped"]:
            return web.json_response({"data": {"id": task_id, "status": "running", "progress": 50}})
        task["polls"] += 1
        obj = self.task_json(task_id)
        if obj["status"] == "succeeded":
            task["flipped"] = True
        if behaviour == "other-id":
            obj = {**obj, "id": "3-somebody-else"}
        if behaviour == "wrong-types":
            obj = {**obj, "progress": str(obj["progress"]), "results": obj["results"] or None}
        return await self._answer_body(request, behaviour, obj)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        behaviour = self._next(self.file_plan)
        self.seen["file", behaviour] += 1
        if behaviour == "html":
            return web.Response(
                text="<html><body>This link has expired</body></html>", content_type="text/html"
            )
        if behaviour == "png-type-html-body":
            return web.Response(body=b"<html><body>expired</body></html>", content_type="image/png")
        if behaviour == "empty":
            return web.Response(body=b"", content_type="image/png")
        if behaviour == "stall-mid-body":
            # The head of the image, then nothing until the server closes: a download in flight.
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.content_length = len(PNG)
            await response.prepare(request)
            await response.write(PNG[:32])
            self.stalled.set()
            await self._stall()
            return response
        return web.Response(body=PNG, content_type="image/png")

    async def close(self) -> None:
        self._closing.set()


@asynccontextmanager
async def hostile_server(**options: Any) -> AsyncIterator[HostileServer]:
    """Start a `HostileServer` on 127.0.0.1:0; stop it (and every stalled answer) after."""
    server = HostileServer(**options)
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await server.close()
        await runner.cleanup()
