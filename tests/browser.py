"""A headless Chromium for the tests, driven by Playwright on a thread of its own.

Playwright's sync API belongs to the thread that started it, and its async
API runs on asyncio only; so one thread owns the browser and the tests hand
it work: ``async with browser.open(url) as tab:`` opens a page, and
``await tab.do(fn, *args)`` calls ``fn(page, *args)`` on that thread (from
asyncio or trio alike) and returns what it returns.

``browser_or_skip()`` starts one for the tests: Debian's ``chromium``
(``CHROMIUM`` to use another binary; Playwright's own download is not
used). Without Playwright or the binary the calling test skips, or fails
when ``RATEBUDGET_REQUIRE_BROWSER=1`` (as in CI).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ("Browser", "Tab", "browser_or_skip", "chromium_or_skip")

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], "Future[Any]"]
TIMEOUT_MS = 10_000  # the longest any expectation of a page waits


def chromium_or_skip() -> str:
    """Chromium's binary, or skip (fail with RATEBUDGET_REQUIRE_BROWSER=1)."""
    reason = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not reason and binary is None:
        reason = "no chromium on PATH (apt-get install chromium, or set CHROMIUM)"
    if reason:
        if os.environ.get("RATEBUDGET_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and RATEBUDGET_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    assert binary is not None
    return binary


class Browser:
    """Chromium on a thread of its own; one page at a time per ``run``."""

    def __init__(self, binary: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(binary, started), name="chromium", daemon=True
        )
        self._thread.start()
        started.result(timeout=60)

    def _main(self, binary: str, started: Future[None]) -> None:
        from playwright.sync_api import sync_playwright

        try:
            manager = sync_playwright().start()
            chromium = manager.chromium.launch(executable_path=binary, headless=True)
        except BaseException as e:
            started.set_exception(e)
            return
        started.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, args, done = job
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(fn(chromium, *args))
                    except BaseException as e:
                        done.set_exception(e)
        finally:
            chromium.close()
            manager.stop()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        done: Future[T] = Future()
        self._jobs.put((fn, args, done))
        return done

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(chromium, *args)`` on the browser's thread."""
        future = self.submit(fn, *args)
        return await anyio.to_thread.run_sync(future.result)

    @contextlib.asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Tab]:
        """A new page (1280x900) showing ``url``, closed after the block."""
        page = await self.call(_open, url)
        try:
            yield Tab(self, page)
        finally:
            await self.call(lambda _chromium: page.context.close())

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)


class Tab:
    """A page of a ``Browser``: ``await tab.do(fn, *args)`` runs
    ``fn(page, *args)`` on the browser's thread; ``requested`` is every URL
    the page asked for."""

    def __init__(self, browser: Browser, page: Page) -> None:
        self._browser = browser
        self.page = page  # for the browser's thread only
        self.requested: list[str] = page.requested  # type: ignore[attr-defined]

    async def do(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._browser.call(lambda _chromium: fn(self.page, *args))


def _open(chromium: Any, url: str) -> Page:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page: Page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.requested = requested  # type: ignore[attr-defined]
    page.goto(url)
    return page


def browser_or_skip() -> Browser:
    """A started browser, or skip (see the module's docstring)."""
    return Browser(chromium_or_skip())
