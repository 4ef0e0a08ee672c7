"""The gallery in a real browser: the system's headless Chromium, driven by Playwright.

No browser is downloaded: Playwright launches the Chromium the system packages installed
(``.ci/run`` installs it when missing). Without one, these tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright

import nanobanana_async as nb

from ._helpers import HOSTILE_PROMPT, decode_png, run_batches

pytestmark = pytest.mark.anyio

#: Set to a Chromium executable to use instead of the one on PATH.
CHROMIUM_ENV = "NANOBANANA_TEST_CHROMIUM"
CHROMIUM = (
    os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
)
# Headless, offline and quiet: no GPU, no sandbox (CI runs as root), no update or sync traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 960, "height": 640}

if CHROMIUM is None:
    pytestmark = [
        pytest.mark.anyio,
        pytest.mark.skip(
            reason=f"no chromium on PATH (apt-get install chromium, or set ${CHROMIUM_ENV}); "
            ".ci/run installs it"
        ),
    ]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """The system's Chromium, headless, launched by Playwright."""
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


class _Watch:
    """Every request a page makes and every error it reports."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _request(self, request: Request) -> None:
        self.urls.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(message.text)


def _png_width(path: Path) -> int:
    (width,) = struct.unpack(">I", path.read_bytes()[16:20])
    return int(width)


def _colours(pixels: bytes, bpp: int, stride: int, box: tuple[int, int, int, int]) -> int:
    """How many distinct colours the screenshot has inside *box* (x, y, width, height)."""
    x, y, width, height = box
    seen = set()
    for row in range(y, y + height):
        line = pixels[row * stride + x * bpp : row * stride + (x + width) * bpp]
        seen.update(line[i : i + 3] for i in range(0, len(line), bpp))
    return len(seen)


async def test_the_gallery_renders_in_a_browser(tmp_path: Path, browser: Browser) -> None:
    """Every thumbnail decodes, the failure shows its reason, a <script> prompt stays text."""
    runs = await run_batches(tmp_path / "out")
    gallery = nb.gallery.write_gallery(runs.folder)
    page = await browser.new_page(viewport=VIEWPORT)
    watch = _Watch(page)
    await page.goto(gallery.as_uri(), wait_until="load")

    # Lazy thumbnails below the fold would never load in a screenshot-sized window: ask for all.
    images = await page.evaluate(
        """async () => {
            const images = [...document.images];
            const lazy = images.map((img) => img.loading);
            images.forEach((img) => { img.loading = "eager"; });
            await Promise.all(images.map((img) => img.decode()));
            return images.map((img, n) => ({
                src: img.getAttribute("src"), lazy: lazy[n], width: img.naturalWidth,
            }));
        }"""
    )
    done = [
        item for item in runs.failed.items if item.status is nb.events.BatchItemStatus.SUCCEEDED
    ]
    paths = [path for item in done for path in item.paths]
    assert [image["src"] for image in images] == [path.name for path in paths]
    assert all(image["lazy"] == "lazy" for image in images)
    assert [image["width"] for image in images] == [_png_width(path) for path in paths]
    assert all(image["width"] > 0 for image in images)

    failed = runs.failed.items[4]
    reason = page.locator(".card.failed .reason")
    assert await reason.is_visible()
    assert failed.error is not None
    assert failed.error in await reason.inner_text()

    hostile = page.locator(".card").nth(1).locator(".prompt")
    assert await hostile.inner_text() == HOSTILE_PROMPT
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.evaluate("document.scripts.length") == 0
    assert await page.locator("main img").count() == len(paths)

    # Nothing but the page and its images was fetched, and the page reported no error.
    folder = runs.folder.resolve().as_uri() + "/"
    assert all(url.startswith(folder) for url in watch.urls), watch.urls
    assert watch.errors == []

    await page.evaluate("window.scrollTo(0, 0)")
    shot = await page.screenshot(path=tmp_path / "gallery.png")
    width, height, bpp, pixels = decode_png(shot)
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    assert _colours(pixels, bpp, width * bpp, (0, 0, width, height)) > 100
    thumb = await page.locator("main img").first.bounding_box()
    assert thumb is not None
    inner = (int(thumb["x"]) + 2, int(thumb["y"]) + 2, int(thumb["width"]) - 4, 40)
    # The first thumbnail's bands are gradients: many colours where the image is painted.
    assert _colours(pixels, bpp, width * bpp, inner) > 8


async def test_a_running_gallery_reloads_itself_in_a_browser(
    tmp_path: Path, browser: Browser
) -> None:
    """While the batch runs the page reloads on its own, so it shows the items that finish."""
    folder = tmp_path / "out"
    gallery = nb.gallery.Gallery(folder, refresh=1)
    live: list[Path] = []

    def on_event(event: nb.events.BatchEvent) -> None:
        if event.kind is nb.events.BatchEventKind.SUBMITTED and event.position == 0:
            live.append(gallery.write(running=True))

    await run_batches(folder, on_event=on_event)
    page = await browser.new_page(viewport=VIEWPORT)
    await page.goto(live[0].as_uri(), wait_until="load")
    assert await page.locator(".card.running").count() >= 1
    assert await page.locator('meta[http-equiv="refresh"]').count() == 1
    gallery.write()  # the batch is over: the next reload shows the final page, which stays
    await page.wait_for_function(
        """() => document.readyState === "complete"
            && document.querySelector(".card.done") !== null
            && document.querySelector("meta[http-equiv=refresh]") === null""",
        timeout=15_000,
    )
    assert await page.locator(".card.running").count() == 0
    assert await page.locator(".card.done").count() == 3
    assert await page.locator('meta[http-equiv="refresh"]').count() == 0


async def test_a_paged_gallery_navigates_in_a_browser(tmp_path: Path, browser: Browser) -> None:
    """The index links every page; each page shows its cards and images, a <script> stays text."""
    runs = await run_batches(tmp_path / "out")
    index = nb.gallery.write_gallery(runs.folder, page_size=2)
    page = await browser.new_page(viewport=VIEWPORT)
    watch = _Watch(page)
    await page.goto(index.as_uri(), wait_until="load")
    assert await page.locator(".card").count() == 0
    assert await page.locator(".pagelist a").all_inner_texts() == ["page 1", "page 2", "page 3"]

    await page.locator(".pagelist a", has_text="page 1").click()
    await page.wait_for_load_state("load")
    assert page.url.endswith("/page-0001.html")
    assert await page.locator(".card").nth(1).locator(".prompt").inner_text() == HOSTILE_PROMPT
    widths = await page.evaluate(
        """async () => {
            const images = [...document.images];
            images.forEach((img) => { img.loading = "eager"; });
            await Promise.all(images.map((img) => img.decode()));
            return images.map((img) => img.naturalWidth);
        }"""
    )
    assert len(widths) == 2
    assert all(width > 0 for width in widths)

    seen = []
    for _ in range(2):
        await page.locator("nav.pages a[rel=next]").click()
        await page.wait_for_load_state("load")
        seen += await page.locator(".card").evaluate_all("cards => cards.map(c => c.id)")
    assert page.url.endswith("/page-0003.html")
    assert seen == ["item-2", "item-3", "item-4"]
    assert await page.locator("nav.pages a[rel=next]").count() == 0
    assert await page.evaluate("typeof window.pwned") == "undefined"
    folder = runs.folder.resolve().as_uri() + "/"
    assert all(url.startswith(folder) for url in watch.urls), watch.urls
    assert watch.errors == []
