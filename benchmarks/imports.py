"""Section 4: import time of `nanobanana_async` against `import aiohttp` alone.

No server. Each sample is a fresh interpreter: `python -c "import X"` timed from the parent
(wall clock) minus the median of `python -c "pass"` (bare start-up), interleaved, median of
several. `python -X importtime` shows which modules the package adds on top of aiohttp.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from ._common import ROOT, median

TARGETS = {
    "bare": "pass",
    "aiohttp": "import aiohttp",
    "nanobanana_async": "import nanobanana_async",
}


def _time(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - started


def _importtime(code: str) -> dict[str, tuple[int, int]]:
    """Return {module: (self us, cumulative us)} from `python -X importtime`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    modules: dict[str, tuple[int, int]] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:") :].split("|")
        modules[name.strip()] = (int(own), int(cumulative))
    return modules


def run(*, quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """Run the section and return its results."""
    rounds = rounds or (7 if quick else 15)
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    for code in TARGETS.values():  # warm the page cache and .pyc files
        _time(code)
    for _ in range(rounds):
        for name, code in TARGETS.items():
            samples[name].append(_time(code))
    bare = median(samples["bare"])
    aiohttp_ms = (median(samples["aiohttp"]) - bare) * 1000
    package_ms = (median(samples["nanobanana_async"]) - bare) * 1000
    # Self times of the modules the package imports that aiohttp alone does not (median of 5).
    extra: dict[str, list[int]] = {}
    cumulative: dict[str, list[int]] = {"aiohttp": [], "nanobanana_async": []}
    for _ in range(5):
        alone = _importtime(TARGETS["aiohttp"])
        full = _importtime(TARGETS["nanobanana_async"])
        cumulative["aiohttp"].append(alone["aiohttp"][1])
        cumulative["nanobanana_async"].append(full["nanobanana_async"][1])
        for module, (own, _) in full.items():
            if module not in alone:
                extra.setdefault(module, []).append(own)
    added = {module: median(values) / 1000 for module, values in extra.items()}
    by_package: dict[str, float] = {}
    for module, ms in added.items():
        top = module.split(".")[0]
        by_package[top] = by_package.get(top, 0.0) + ms
    return {
        "rounds": rounds,
        "bare_interpreter_ms": bare * 1000,
        "aiohttp_ms": aiohttp_ms,
        "nanobanana_async_ms": package_ms,
        "ratio": package_ms / aiohttp_ms,
        "importtime_cumulative_ms": {k: median(v) / 1000 for k, v in cumulative.items()},
        "added_by_top_package_ms": dict(
            sorted(by_package.items(), key=lambda item: item[1], reverse=True)[:10]
        ),
        "added_top_modules_ms": dict(
            sorted(added.items(), key=lambda item: item[1], reverse=True)[:8]
        ),
        "goals": [],
    }


def report(result: dict[str, Any]) -> list[str]:
    """Lines to print for this section."""
    cumulative = result["importtime_cumulative_ms"]
    added = ", ".join(f"{name} {ms:.1f}" for name, ms in result["added_by_top_package_ms"].items())
    modules = ", ".join(f"{name} {ms:.1f}" for name, ms in result["added_top_modules_ms"].items())
    return [
        f"4. Import time (fresh interpreters, minus bare start-up "
        f"{result['bare_interpreter_ms']:.1f} ms; median of {result['rounds']})",
        f"   import aiohttp {result['aiohttp_ms']:.1f} ms; import nanobanana_async "
        f"{result['nanobanana_async_ms']:.1f} ms; ratio {result['ratio']:.2f}x "
        f"(-X importtime cumulative: {cumulative['aiohttp']:.1f} vs "
        f"{cumulative['nanobanana_async']:.1f} ms)",
        f"   added on top of aiohttp (self ms by package): {added}",
        f"   slowest added modules (self ms): {modules}",
    ]
