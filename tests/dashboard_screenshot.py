"""Draw docs/img/dashboard.png: the dashboard of a day's work, in Chromium.

    python tests/dashboard_screenshot.py [OUT.png]

An organisation ``acme`` with two teams spends through the day on a SQLite
store with its ledger in the store's file: its history is recorded with a
``FakeClock`` walking from the start of the day to now (the ledger's rows
are stamped by the limiter's clock), then calls go through the httpx
transport to ``FakeProvider``. The caps' day is in a zone where it is about
3 pm, so that the forecasts have history whatever the hour of the run.
tests/test_dashboard.py runs this too (to a temporary file).
"""

from __future__ import annotations

import os
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx

from browser import Browser, browser_or_skip
from ratebudget import BudgetExceeded, Cap, Limiter, Rate
from ratebudget.dashboard import Source, serve_in_thread
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.testing import FakeClock, FakeProvider

__all__ = ("screenshot",)

DOCS = Path(__file__).parent.parent / "docs" / "img" / "dashboard.png"
STEP = timedelta(minutes=20)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4")


def afternoon_zone(now: datetime) -> ZoneInfo:
    """A fixed-offset zone where ``now`` is about 3 pm."""
    shift = (15 - now.hour) % 24
    if shift > 14:
        shift -= 24
    return ZoneInfo(f"Etc/GMT{-shift:+d}")  # POSIX signs: Etc/GMT-2 is UTC+2


def acme(url: str, zone: ZoneInfo, **kw: Any) -> tuple[Limiter, Limiter, Limiter]:
    root = Limiter(
        Cap(usd="40", per="day", tz=zone, alert_at=(0.8, 1.0)),
        Rate(requests=600, per="minute"),
        store=url,
        name="acme",
        ledger=True,
        **kw,
    )
    search = root.child("search", Cap(usd="25", per="day", tz=zone))
    chat = root.child(
        "chat", Cap(usd="15", per="day", tz=zone, soft=True, alert_at=(0.4,))
    )
    return root, search, chat


async def history(url: str, zone: ZoneInfo, until: datetime) -> None:
    """The day so far: search spends more each hour, chat steadily."""
    start = until.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = FakeClock(start)
    _root, search, chat = acme(url, zone, clock=clock)
    rng = random.Random(14)
    t = start
    while t + STEP < until:
        hours = (t - start) / timedelta(hours=1)
        for team, usd, feature in (
            (search, 0.15 + 0.035 * hours, "summarise"),
            (chat, 0.14, "assistant"),
        ):
            spent = round(usd * rng.uniform(0.6, 1.4), 4)
            labels = {"model": rng.choice(MODELS), "feature": feature}
            calls = rng.randint(20, 40)
            await team.record(
                tokens=int(spent * 90_000), usd=spent, requests=calls, labels=labels
            )
        clock.advance(STEP.total_seconds())
        t += STEP


async def workload(url: str, zone: ZoneInfo, calls: int) -> None:
    """Calls through the transport, now: alice's go through, bob's is refused."""
    _root, search, _chat = acme(url, zone)
    users = search.per_key(Cap(usd="0.05", per="day", tz=zone))
    provider = FakeProvider()
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    async with provider.serve() as base:
        for user, n in (("alice", calls), ("bob", 1)):
            if user == "bob":
                await users[user].record(usd="0.049", labels={"model": "gpt-4o"})
            transport = BudgetTransport(users[user])
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                for _ in range(n):
                    try:
                        r = await client.post("/v1/chat/completions", json=chat)
                    except BudgetExceeded:
                        continue
                    r.raise_for_status()


def _draw(page: Any, out: Path) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(
        page.locator('[data-scope="acme/search"] [data-field="exhausts_at"]')
    ).to_have_count(1)
    expect(page.locator("figure.burn polyline")).to_have_count(3)
    expect(page.locator('#alerts tr[data-kind="refused"]')).to_have_count(1)
    expect(page.locator('#alerts tr[data-kind="threshold"]')).to_have_count(1)
    page.screenshot(path=str(out), full_page=True)


async def screenshot(out: Path, url: str, browser: Browser) -> None:
    """Make the store at ``url`` (a new SQLite file) and draw its dashboard
    into ``out``."""
    now = datetime.now(timezone.utc)
    zone = afternoon_zone(now)
    await history(url, zone, now)
    await workload(url, zone, 5)
    source = Source(url)
    try:
        with serve_in_thread(source) as dash:
            async with browser.open(dash) as tab:
                await tab.do(_draw, out)
    finally:
        source.close()


async def _main(out: Path) -> None:
    import tempfile

    browser = browser_or_skip()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            os.chdir(workdir)  # the page shows the URL as given: sqlite:///acme.db
            await screenshot(out, "sqlite:///acme.db", browser)
    finally:
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    anyio.run(_main, Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DOCS)
