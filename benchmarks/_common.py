"""Shared helpers: server subprocesses, statistics, CPU pinning, socket counting, machine info."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"

#: CPU the client (this process and its children) runs on; servers get the other one.
CLIENT_CPU = 0
SERVER_CPU = 1


def pin_client() -> str:
    """Pin this process to one CPU and return a description of the pinning.

    On two cores or more the client gets CPU 0 and each server CPU 1, so the server never
    steals the client's core and the client's wall time is its own.
    """
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return "none (fewer than 2 CPUs)"
    os.sched_setaffinity(0, {CLIENT_CPU})
    return f"client on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}"


def _server_affinity() -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {SERVER_CPU})


class ServerProcess:
    """A server in a child Python process; its first stdout line is ``PORT <n> [<n>...]``."""

    def __init__(self, module: str, *args: str) -> None:
        self.argv = [sys.executable, "-m", module, *args]
        self.proc: subprocess.Popen[str] | None = None
        self.ports: list[int] = []

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<first port>``."""
        return f"http://127.0.0.1:{self.ports[0]}"

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_server_affinity,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"{' '.join(self.argv)} did not start: {line!r}")
        self.ports = [int(p) for p in line.split()[1:]]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def get(self, path: str, port: int | None = None) -> Any:
        """GET a JSON control path of the server."""
        url = f"http://127.0.0.1:{port or self.ports[0]}{path}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: Any = None, port: int | None = None) -> Any:
        """POST JSON to a control path of the server."""
        url = f"http://127.0.0.1:{port or self.ports[0]}{path}"
        data = json.dumps(body if body is not None else {}).encode()
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def verdict(ok: bool) -> str:
    """``PASS`` or ``MISS``."""
    return "PASS" if ok else "MISS"


class SocketSampler:
    """Samples this process's TCP sockets to a port (``/proc/self/fd`` + ``/proc/net/tcp``).

    Runs in a thread every *interval* seconds; `peak` is the most sockets seen at once.
    """

    def __init__(self, port: int, interval: float = 0.05) -> None:
        self.port = port
        self.interval = interval
        self.peak = 0
        self.peak_fds = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SocketSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Take one sample."""
        count, fds = count_sockets(self.port)
        self.samples += 1
        self.peak = max(self.peak, count)
        self.peak_fds = max(self.peak_fds, fds)


_SOCKET = re.compile(r"socket:\[(\d+)\]")


def count_sockets(port: int) -> tuple[int, int]:
    """Return (TCP sockets of this process connected to *port*, open file descriptors)."""
    inodes: set[str] = set()
    fds = 0
    for name in os.listdir("/proc/self/fd"):
        fds += 1
        try:
            match = _SOCKET.match(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue
        if match:
            inodes.add(match.group(1))
    wanted = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[2].endswith(wanted) and fields[9] in inodes:
                        count += 1
        except OSError:
            continue
    return count, fds


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Platform, CPU model, cores, Python and library versions."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": _version("aiohttp"),
        "httpx": _version("httpx"),
        "nanobanana_async": _version("nanobanana-async"),
    }


def clock() -> tuple[float, float]:
    """(wall, CPU) now: `time.perf_counter()` and `time.process_time()` of this process."""
    return time.perf_counter(), time.process_time()
