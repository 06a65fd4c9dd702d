"""``ratebudget dashboard`` as a person sees it: a workload runs through the
httpx transport against ``FakeProvider`` on a SQLite store with its ledger,
the dashboard serves that store, and headless Chromium (Playwright) shows
numbers that match the store's snapshot and the ledger's report, and that
move while the workload runs. Also its JSON API (httpx), that it never
shows a password, asks no other host for anything, and that the core
install does without starlette and uvicorn.

The browser tests skip without Playwright or ``chromium`` (they fail when
``RATEBUDGET_REQUIRE_BROWSER=1``, as in CI); see tests/browser.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

import ratebudget

pytest.importorskip("starlette", reason="the extra dashboard is not installed")
pytest.importorskip("uvicorn", reason="the extra dashboard is not installed")

from browser import Browser, browser_or_skip
from dashboard_screenshot import screenshot
from ratebudget import BudgetExceeded, Cap, Ledger, Limiter, Rate, Report
from ratebudget.cli import main
from ratebudget.cli._status_reader import status
from ratebudget.dashboard import Source, serve_in_thread
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.testing import FakeProvider

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Left?"}]}
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = browser_or_skip()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'budgets.db'}"


class Team:
    """A root scope and its child on the store under test, with the ledger
    in the store's file, and the fake provider they call over loopback."""

    def __init__(self, url: str, provider_url: str) -> None:
        self.url = url
        self.root = Limiter(
            Cap(usd="1", per="day"),
            Rate(requests=6_000, per="minute"),
            store=url,
            name="team",
            ledger=True,
        )
        self.search = self.root.child("search", Cap(usd="0.5", per="hour"))
        self.provider_url = provider_url

    async def spend(
        self, calls: int, stop: anyio.Event | None = None, on: Limiter | None = None
    ) -> int:
        """Make ``calls`` calls through the transport (or until ``stop``) on
        the search team (or ``on``)."""
        transport = BudgetTransport(on or self.search)
        made = 0
        async with httpx.AsyncClient(
            transport=transport, base_url=self.provider_url
        ) as client:
            while made < calls and not (stop and stop.is_set()):
                r = await client.post("/v1/chat/completions", json=CHAT)
                r.raise_for_status()
                made += 1
                if stop is not None:
                    await anyio.sleep(0.02)  # a steady pace, not a flood
        return made

    async def report(self, *by: str, since: datetime | None = None) -> Report:
        """The ledger's report, as ``Ledger.report`` makes it."""
        ledger = Ledger(self.url)
        try:
            return await ledger.report(by=by, since=since)
        finally:
            ledger.close()

    async def shown(self) -> dict[str, str]:
        """What the page must show, by CSS selector: from the store's
        snapshots and the ledger's report."""
        want = {"#store": self.url, "#ledger": self.url}
        for name, limiter in (("team", self.root), ("team/search", self.search)):
            cap = (await limiter.snapshot())[0]
            at = f'.limit[data-scope="{name}"][data-index="0"]'
            want[f'{at} [data-field="used"]'] = usd(cap.used)
            want[f'{at} [data-field="reserved"]'] = usd(cap.reserved)
            want[f'{at} [data-field="remaining"]'] = usd(cap.remaining)
            want[f'{at} [data-field="limit"]'] = usd(cap.limit_amount)
            spent = f'figure.burn[data-scope="{name}"] [data-field="spent"]'
            want[spent] = usd(cap.used)  # the ledger's sum ends where the counter is
        rate = '.limit[data-scope="team"][data-index="1"] [data-field="limit"]'
        want[rate] = "6,000"
        report = await self.report("model")
        (row,) = report.rows
        assert row.usd is not None
        for group, r in ((MODEL, row), ("total", report.total)):
            at = f'#spenders tr[data-group="{group}"]'
            want[f'{at} [data-field="usd"]'] = usd(r.usd)
            want[f'{at} [data-field="requests"]'] = f"{r.requests:,}"
            want[f'{at} [data-field="tokens"]'] = f"{r.tokens:,}"
        return want


def usd(value: Decimal | int | None) -> str:
    assert isinstance(value, Decimal)
    return f"${value:f}"


@pytest.fixture
async def team(store_url: str) -> AsyncIterator[Team]:
    provider = FakeProvider()
    async with provider.serve() as provider_url:
        t = Team(store_url, provider_url)
        await t.spend(3)  # the store and its ledger exist before the dashboard
        yield t


@pytest.fixture
def dashboard(team: Team) -> Iterator[str]:
    source = Source(team.url)
    try:
        with serve_in_thread(source) as url:
            yield url
    finally:
        source.close()


# -- on the page, in Chromium ----------------------------------------------------


def _live(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def _shows(page: Any, want: dict[str, str]) -> None:
    from playwright.sync_api import expect

    for selector, text in want.items():
        expect(page.locator(selector)).to_have_text(text)


def _changes(page: Any, selector: str, times: int) -> list[str]:
    """The text at ``selector`` now and after each of ``times`` changes."""
    from playwright.sync_api import expect

    where = page.locator(selector)
    seen = [str(where.text_content())]
    for _ in range(times):
        expect(where).not_to_have_text(seen[-1])
        seen.append(str(where.text_content()))
    return seen


class TestPage:
    async def test_numbers_match_the_store_and_the_ledger_and_follow_a_workload(
        self, browser: Browser, team: Team, dashboard: str
    ) -> None:
        async with browser.open(dashboard) as tab:
            await tab.do(_live)
            await tab.do(_shows, await team.shown())
            used = '.limit[data-scope="team"][data-index="0"] [data-field="used"]'
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(team.spend, 10_000, stop)
                seen = await tab.do(_changes, used, 2)  # live, while it runs
                stop.set()
            final = (await team.root.snapshot())[0].used
            amounts = [Decimal(s.removeprefix("$")) for s in seen]
            assert amounts == sorted(amounts)
            assert len(set(amounts)) == 3
            assert amounts[-1] <= final
            await tab.do(_shows, await team.shown())  # and settles on the store's

    async def test_asks_nothing_of_any_other_host(
        self, browser: Browser, team: Team, dashboard: str
    ) -> None:
        async with browser.open(dashboard) as tab:
            await tab.do(_live)
            await tab.do(lambda page: page.select_option("#by", "scope"))
            (row,) = (await team.report("scope")).rows
            assert row.group == {"scope": "team/search"}
            cell = '#spenders tr[data-group="team/search"] [data-field="usd"]'
            await tab.do(_shows, {"#group-key": "scope", cell: usd(row.usd)})
            await tab.do(_live)  # another round after the change
        origin = urlsplit(dashboard).netloc
        assert tab.requested
        assert {urlsplit(u).netloc for u in tab.requested} == {origin}
        paths = {urlsplit(u).path for u in tab.requested}
        assert {"/", "/static/dashboard.js", "/api/status", "/api/report"} <= paths

    async def test_alerts_and_refusals_are_the_ledger_s(
        self, browser: Browser, team: Team, dashboard: str
    ) -> None:
        tight = team.root.child("tight", Cap(usd="0.00001", per="day", alert_at=(0.5,)))
        await tight.record(usd="0.000006")  # past half: an alert
        with pytest.raises(BudgetExceeded):  # a call's estimate is past the cap
            await team.spend(1, on=tight)
        refused = '#alerts tr[data-kind="refused"] [data-field="scope"]'
        alerted = '#alerts tr[data-kind="threshold"] [data-field="scope"]'
        async with browser.open(dashboard) as tab:
            await tab.do(_shows, {refused: "team/tight", alerted: "team/tight"})
            shown = await tab.do(
                lambda page: page.locator(
                    "#alerts [data-field=message]"
                ).all_text_contents()
            )
        ledger = Ledger(team.url)
        try:
            events = await ledger.events()
        finally:
            ledger.close()
        assert shown == [e.message for e in events]
        assert {e.kind for e in events} == {"refused", "threshold"}

    async def test_never_shows_a_password(self, browser: Browser) -> None:
        from redis_server import redis_server_or_skip

        secret = "s3cret-Pa55"
        with redis_server_or_skip() as server:
            admin = server.client()
            admin.acl_setuser(
                "dash", enabled=True, passwords=[f"+{secret}"], keys="*",
                commands=["+@all"],
            )  # fmt: skip
            admin.close()
            url = server.url.replace("//", f"//dash:{secret}@", 1)
            limiter = Limiter(Cap(usd="2", per="day"), store=url, name="app")
            await limiter.record(usd="0.25")
            source = Source(url)
            try:
                with serve_in_thread(source) as dash:
                    async with browser.open(dash) as tab:
                        at = '.limit[data-scope="app"] [data-field="used"]'
                        await tab.do(_shows, {at: "$0.25"})
                        html = await tab.do(lambda page: page.content())
                        shown = await tab.do(lambda page: page.inner_text("#store"))
                    async with httpx.AsyncClient(base_url=dash) as client:
                        bodies = [
                            (await client.get(p)).text
                            for p in ("/api/status", "/api/burn", "/api/report")
                        ]
            finally:
                source.close()
        assert shown == server.url.replace("//", "//dash:***@", 1)
        for text in (html, *bodies):
            assert secret not in text

    async def test_screenshot_helper_draws_the_page(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        """tests/dashboard_screenshot.py makes docs/img/dashboard.png."""
        out = tmp_path / "dashboard.png"
        await screenshot(out, f"sqlite:///{tmp_path / 'acme.db'}", browser)
        assert out.read_bytes().startswith(b"\x89PNG")
        assert out.stat().st_size > 20_000


# -- the JSON API -----------------------------------------------------------------


class TestAPI:
    async def test_status_is_the_store_s(self, team: Team, dashboard: str) -> None:
        async with httpx.AsyncClient(base_url=dashboard) as client:
            got = (await client.get("/api/status")).json()
        ledger = Ledger(team.url)
        try:
            want = await anyio.to_thread.run_sync(status, team.url, None, ledger)
        finally:
            ledger.close()
        assert got["store"] == team.url
        assert [s["name"] for s in got["scopes"]] == ["team", "team/search"]
        assert [s["depth"] for s in got["scopes"]] == [0, 1]
        by_name = {s.name: s.to_json() for s in want}
        for scope in got["scopes"]:
            for shown, stored in zip(
                scope["limits"], by_name[scope["name"]]["limits"], strict=True
            ):
                if shown["kind"] == "cap":  # a rate refills between two reads
                    assert shown == stored

    async def test_report_is_the_ledger_s(self, team: Team, dashboard: str) -> None:
        everything = await team.report("model", "operation")
        midnight = datetime.now(timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        today = await team.report("model", since=midnight)
        async with httpx.AsyncClient(base_url=dashboard) as client:
            got = (await client.get("/api/report?by=model,operation")).json()
            got_today = (await client.get("/api/report?by=model&period=day")).json()
        assert got["rows"] == [r.as_dict() for r in everything.rows]
        assert got["total"] == everything.total.as_dict()
        assert got_today["since"] == midnight.isoformat()
        assert got_today["rows"] == [r.as_dict() for r in today.rows]
        assert got["rows"][0]["requests"] == 3

    async def test_burn_adds_up_to_the_cap_s_usage(
        self, team: Team, dashboard: str
    ) -> None:
        async with httpx.AsyncClient(base_url=dashboard) as client:
            charts = (await client.get("/api/burn")).json()["charts"]
        assert [(c["scope"], c["per"]) for c in charts] == [
            ("team", "day"),
            ("team/search", "hour"),
        ]
        for chart, limiter in zip(charts, (team.root, team.search), strict=True):
            cap = (await limiter.snapshot())[0]
            spent = [Decimal(v) for _t, v in chart["points"]]
            assert spent == sorted(spent)
            assert spent[-1] == cap.used
            times = [t for t, _v in chart["points"]]
            assert chart["start"] == times[0] < times[-1] == chart["now"] < chart["end"]
            assert chart["limit"] == f"{cap.limit_amount:f}"

    async def test_a_budgets_file_shows_its_tree(self, tmp_path: Path) -> None:
        budgets_file = tmp_path / "budgets.toml"
        budgets_file.write_text(
            f'store = "sqlite:///{tmp_path / "org.db"}"\n'
            f'ledger = "sqlite:///{tmp_path / "usage.db"}"\n'
            '[acme]\nowner = "finance@acme.example"\n'
            'caps = [{ usd = "100", per = "month" }]\n'
            '[acme.search]\ncaps = [{ usd = "20", per = "day" }]\n'
            '[acme.search.per_key]\ncaps = [{ usd = "5", per = "day" }]\n'
        )
        usage = Ledger(f"sqlite:///{tmp_path / 'usage.db'}")
        await usage.report()  # the file exists before the dashboard looks
        usage.close()
        budgets = ratebudget.load(budgets_file)
        await budgets.per_key("acme/search")["alice"].record(usd="0.5")
        source = Source(config=str(budgets_file))
        try:
            with serve_in_thread(source) as dash:
                async with httpx.AsyncClient(base_url=dash) as client:
                    got = (await client.get("/api/status")).json()
        finally:
            source.close()
        assert got["config"] == "budgets.toml"
        assert got["ledger"] == f"sqlite:///{tmp_path / 'usage.db'}"
        assert [
            (s["name"], s["depth"], s["owner"], s["per_key"], s["limits"][0]["used"])
            for s in got["scopes"]
        ] == [
            ("acme", 0, "finance@acme.example", False, "0.5"),
            ("acme/search", 1, None, False, "0.5"),
            ("acme/search/alice", 2, None, True, "0.5"),
        ]

    async def test_read_only_and_for_this_host_only(self, dashboard: str) -> None:
        async with httpx.AsyncClient(base_url=dashboard) as client:
            page = await client.get("/")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert "connect-src 'self'" in page.headers["content-security-policy"]
            assert (await client.post("/api/status")).status_code == 405
            assert (await client.delete("/")).status_code == 405
            rebound = await client.get("/api/status", headers={"host": "evil.example"})
            assert rebound.status_code == 400
            bad = await client.get("/api/report?period=week")
            assert bad.status_code == 400
            assert "period='week'" in bad.json()["error"]
            assert (await client.get("/static/../_app.py")).status_code == 404
            assert (await client.get("/static/dashboard.js")).status_code == 200

    async def test_unreachable_is_an_error_without_a_password(self) -> None:
        source = Source(
            "redis://:hunter2@127.0.0.1:1/0",
            ledger_url="postgresql://rb:hunter2@127.0.0.1:1/db",
        )
        try:
            with serve_in_thread(source) as dash:
                async with httpx.AsyncClient(base_url=dash, timeout=15) as client:
                    status = await client.get("/api/status")
                    report = await client.get("/api/report")
        finally:
            source.close()
        assert status.status_code == report.status_code == 503
        assert "redis://:***@127.0.0.1:1/0" in status.json()["error"]
        assert "postgresql://rb:***@127.0.0.1:1/db" in report.json()["error"]
        assert "hunter2" not in status.text + report.text


# -- the command ------------------------------------------------------------------


class TestCommand:
    def test_serves_the_url_it_prints(self, store_url: str) -> None:
        Limiter(Cap(usd="1"), store=store_url, name="cli").sync.record(usd="0.5")
        command = ["dashboard", "--port", "0", "--store", store_url]
        with subprocess.Popen(
            [sys.executable, "-m", "ratebudget", *command],
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stderr is not None
                line = proc.stderr.readline()
                url = line.split()[2].rstrip("/")
                assert url.startswith("http://127.0.0.1:")
                r = httpx.get(url + "/api/status", timeout=10)
                assert r.status_code == 200
                (scope,) = r.json()["scopes"]
                assert scope["limits"][0]["used"] == "0.5"
            finally:
                proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(10) == 130
            assert proc.stderr.read() == "interrupted\n"

    def test_without_the_extra_says_what_to_install(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        store_url: str,
    ) -> None:
        monkeypatch.setitem(sys.modules, "uvicorn", None)  # import fails
        assert main(["dashboard", "--store", store_url]) == 2
        err = capsys.readouterr().err
        assert "pip install 'ratebudget[dashboard]'" in err
        assert "uvicorn" in err

    def test_bad_arguments(
        self, capsys: pytest.CaptureFixture[str], store_url: str
    ) -> None:
        assert main(["dashboard"]) == 2
        assert "give --store URL" in capsys.readouterr().err
        assert main(["dashboard", "--store", store_url]) == 3  # no such file
        assert "does not exist" in capsys.readouterr().err
        Path(store_url.removeprefix("sqlite:///")).touch()
        missing = store_url + ".ledger"
        assert main(["dashboard", "--store", store_url, "--ledger", missing]) == 3
        assert "no ledger at" in capsys.readouterr().err

    def test_the_core_does_without_starlette_and_uvicorn(self) -> None:
        code = (
            "import sys, ratebudget, ratebudget.cli, ratebudget.dashboard, "
            "ratebudget.testing\n"
            "assert not {'starlette', 'uvicorn'} & set(sys.modules), sys.modules"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
