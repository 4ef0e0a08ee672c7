"""A minimal, fast HTTP/1.1 server speaking just enough of the API for client-side benchmarks.

Why not the emulator: its per-request cost (aiohttp.web routing, multipart parsing, request log)
is about the cost of the client under test, so on a 2-core machine the server would set the
pace and hide the client's overhead. This server is a bare `asyncio.Protocol` (keep-alive,
Content-Length and chunked bodies) that costs a few tens of microseconds per request.

Semantics: a create (``POST /api/v1/image/nano-banana``, any body) makes a task; a poll
(``POST /api/v1/image/nano-banana/result`` with ``{"taskId": ...}``) answers ``running`` with
progress 50 until the task's ``--polls`` poll, which answers ``succeeded`` and forgets the task.
``GET /_stats`` returns counters; ``POST /_reset`` zeroes them. Every API request must carry
``Authorization: Bearer <--key>``. With ``--files``, result URLs point at this server, whose
``GET /files/...`` answers a tiny PNG (for batches, which download every image).

``--alias 127.0.0.2`` also listens on that address (same port): the client skips proxy and netrc
look-ups for 127.0.0.1 and localhost only, so the alias exercises the path a remote API takes.

Run: ``python -m benchmarks.fast_server --polls 1``; prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

CREATE_PATH = b"/api/v1/image/nano-banana"
RESULT_PATH = b"/api/v1/image/nano-banana/result"


class _State:
    def __init__(self, polls: int, key: str) -> None:
        self.polls_to_finish = polls
        # Where result URLs point: port 9 (discard) unless --files serves them here.
        self.files_host = b"127.0.0.1:9"
        self.auth = f"bearer {key}".encode()
        self.tasks: dict[str, int] = {}
        self.next_id = 0
        self.reset()

    def reset(self) -> None:
        self.creates = 0
        self.polls = 0
        self.files = 0
        self.unauthorized = 0
        self.bad = 0
        self.max_tracked = 0
        self.create_types: dict[str, int] = {}
        self.connections = 0
        self.max_connections = 0
        self.open_connections = 0

    def stats(self) -> dict[str, object]:
        return {
            "creates": self.creates,
            "polls": self.polls,
            "files": self.files,
            "unauthorized": self.unauthorized,
            "bad": self.bad,
            "tracked": len(self.tasks),
            "max_tracked": self.max_tracked,
            "create_types": self.create_types,
            "connections": self.connections,
            "max_open_connections": self.max_connections,
        }


def _response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_CREATED = (
    b'{"data": {"id": "%s", "results": [], "progress": 0, "status": "running", '
    b'"failure_reason": null, "error": null, "credits_cost": 15}}'
)
_RUNNING = (
    b'{"data": {"id": "%s", "results": [], "progress": 50, "status": "running", '
    b'"failure_reason": null, "error": null}}'
)
_SUCCEEDED = (
    b'{"data": {"id": "%s", "results": [{"url": "http://%s/files/%s/0.png", '
    b'"content": "a banana cat"}], "progress": 100, "status": "succeeded", '
    b'"failure_reason": null, "error": null}}'
)


# A valid 1x1 PNG, the body of every GET /files/... answer.
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b49444154789c6360000200000500017a5eab3f0000000049454e44ae426082"
)
_PNG_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: "
    + str(len(_PNG)).encode()
    + b"\r\n\r\n"
    + _PNG
)


class _Http(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        state = self.state
        state.connections += 1
        state.open_connections += 1
        state.max_connections = max(state.max_connections, state.open_connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            start = end + 4
            length_at = head.find(b"\r\ncontent-length:")
            if length_at >= 0:
                stop = head.find(b"\r\n", length_at + 2)
                size = int(head[length_at + 17 : stop if stop >= 0 else None])
                if len(buffer) < start + size:
                    return
                body = bytes(buffer[start : start + size])
                del buffer[: start + size]
            elif b"\r\ntransfer-encoding: chunked" in head:
                parsed = _dechunk(buffer, start)
                if parsed is None:
                    return
                body, consumed = parsed
                del buffer[:consumed]
            else:
                body = b""
                del buffer[:start]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        state = self.state
        line_end = head.find(b"\r\n")
        method, path, _ = head[: line_end if line_end >= 0 else None].split(b" ", 2)
        if path in (CREATE_PATH, RESULT_PATH) and state.auth not in head:
            state.unauthorized += 1
            self.transport.write(_response(b"401 Unauthorized", b'{"error": "no key"}'))
            return
        if path == RESULT_PATH:
            state.polls += 1
            try:
                task_id = json.loads(body)["taskId"]
                seen = state.tasks[task_id] + 1
            except (ValueError, KeyError, TypeError):
                state.bad += 1
                self.transport.write(_response(b"404 Not Found", b'{"error": "task not found"}'))
                return
            raw = task_id.encode()
            if seen >= state.polls_to_finish:
                del state.tasks[task_id]
                answer = _SUCCEEDED % (raw, state.files_host, raw)
            else:
                state.tasks[task_id] = seen
                answer = _RUNNING % raw
            self.transport.write(_response(b"200 OK", answer))
        elif path == CREATE_PATH:
            state.creates += 1
            type_at = head.find(b"\r\ncontent-type:")
            kind = "none"
            if type_at >= 0:
                kind = head[type_at + 15 :].split(b"\r\n", 1)[0].split(b";", 1)[0].strip().decode()
            state.create_types[kind] = state.create_types.get(kind, 0) + 1
            if b'name="prompt"' not in body and b"prompt=" not in body:
                state.bad += 1
            state.next_id += 1
            task_id = f"3-bench-{state.next_id:09d}"
            state.tasks[task_id] = 0
            if len(state.tasks) > state.max_tracked:
                state.max_tracked = len(state.tasks)
            self.transport.write(_response(b"200 OK", _CREATED % task_id.encode()))
        elif path.startswith(b"/files/") and method == b"get":
            state.files += 1
            self.transport.write(_PNG_ANSWER)
        elif path == b"/_stats":
            self.transport.write(_response(b"200 OK", json.dumps(state.stats()).encode()))
        elif path == b"/_reset" and method == b"post":
            state.reset()
            state.tasks.clear()
            self.transport.write(_response(b"200 OK", b"{}"))
        else:
            self.transport.write(_response(b"404 Not Found", b'{"error": "not found"}'))


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """Return (body, bytes consumed) of a complete chunked body at *start*, or None if partial."""
    chunks: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";", 1)[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", at)
            if trailer_end < 0:
                return None
            return b"".join(chunks), trailer_end + 2
        if len(buffer) < at + size + 2:
            return None
        chunks.append(bytes(buffer[at : at + size]))
        at += size + 2


async def _serve(
    host: str, port: int, polls: int, key: str, alias: str | None, files: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    state = _State(polls, key)
    server = await loop.create_server(lambda: _Http(state), host, port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if files:
        state.files_host = f"{host}:{port}".encode()
    servers = [server]
    if alias:
        # Same port on a second loopback address, for clients that treat 127.0.0.1 specially.
        servers.append(await loop.create_server(lambda: _Http(state), alias, port, backlog=1024))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"PORT {port}", flush=True)
    try:
        await stop.wait()
    finally:
        for each in servers:
            each.close()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--polls", type=int, default=1, help="the poll that answers succeeded")
    parser.add_argument("--key", default="bench-key")
    parser.add_argument("--alias", default=None, help="also listen on this address, same port")
    parser.add_argument("--files", action="store_true", help="serve the result images (a PNG)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.polls, args.key, args.alias, args.files))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
