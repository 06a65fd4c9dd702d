"""The usage ledger: a row for every settled lease, exactly once, and the
reports read from it, on a SQLite file and on PostgreSQL.

Every limiter here writes to a real database through the public API
(``Limiter(..., ledger=URL)``) and is read back through ``Ledger``; the
limiters run on every store (``make``).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Make
from helpers import ratebudget
from ratebudget import (
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Ledger,
    LedgerEntry,
    Limiter,
    Rate,
    Runaway,
    StoreUnavailable,
)
from ratebudget._ledger import Posted
from ratebudget.testing import FakeClock

START = datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc)


async def rows_of(limiter: Limiter, url: str) -> list[tuple[object, ...]]:
    """The ledger's rows, once the limiter's are written: (scope, outcome,
    amounts, labels), in a stable order."""
    ledger = limiter._ledger
    assert ledger is not None
    await ledger.flush()
    reader = Ledger(url)
    try:
        got = await reader.entries()
    finally:
        reader.close()
    return sorted(
        ((e.scope, e.outcome, dict(e.amounts), dict(e.labels)) for e in got), key=repr
    )


class TestEverySettledLeaseIsARow:
    async def test_commit_release_record_and_block_exits(
        self, make: Make, ledger_url: str
    ) -> None:
        org = make(Rate(requests=100, per="minute"), Cap(usd="10"), ledger=ledger_url)
        async with org.acquire(100, usd="0.01", labels={"model": "m1"}) as lease:
            await lease.commit(
                tokens=80, input_tokens=50, output_tokens=30, usd="0.008"
            )
        async with org.acquire(10, usd="0.5"):  # the estimate, committed as it is
            pass
        with pytest.raises(RuntimeError):
            async with org.acquire(10, usd="0.25"):
                raise RuntimeError("the call failed")  # released: $0
        held = await org.acquire(5, usd="1")
        await held.release()
        await held.release()  # idempotent: still one row
        await org.record(tokens=7, usd="0.003", labels={"model": "m2"})
        name = org.name or ""
        assert await rows_of(org, ledger_url) == sorted(
            [
                (
                    name,
                    "committed",
                    {
                        "requests": 1,
                        "tokens": 80,
                        "input_tokens": 50,
                        "output_tokens": 30,
                        "usd": Decimal("0.008"),
                    },
                    {"model": "m1"},
                ),
                (
                    name,
                    "committed",
                    {"requests": 1, "tokens": 10, "usd": Decimal("0.5")},
                    {},
                ),
                (name, "released", {"usd": Decimal(0)}, {}),
                (name, "released", {"usd": Decimal(0)}, {}),
                (
                    name,
                    "recorded",
                    {"tokens": 7, "usd": Decimal("0.003")},
                    {"model": "m2"},
                ),
            ],
            key=repr,
        )

    async def test_a_rate_only_limiter_writes_rows_too(
        self, make: Make, ledger_url: str
    ) -> None:
        limiter = make(Rate(tokens=1000, per="minute"), ledger=ledger_url)
        for _ in range(3):
            async with limiter.acquire(10):
                pass
        rows = await rows_of(limiter, ledger_url)
        assert [r[1:3] for r in rows] == [
            ("committed", {"requests": 1, "tokens": 10})
        ] * 3

    async def test_scopes_write_their_own_name(
        self, make: Make, ledger_url: str
    ) -> None:
        org = make(Cap(usd="10"), name="org", ledger=ledger_url)
        users = org.child("search", Cap(usd="5")).per_key(Cap(usd="1"))
        async with users["alice"].acquire(usd="0.1", labels={"feature": "qa"}):
            pass
        (row,) = await rows_of(org, ledger_url)
        assert row == (
            f"{org.name}/search/alice",
            "committed",
            {"requests": 1, "usd": Decimal("0.1")},
            {"feature": "qa"},
        )

    def test_the_blocking_facade(self, ledger_url: str) -> None:
        limiter = Limiter(Cap(tokens=1000), name="sync", ledger=ledger_url)
        with limiter.sync.acquire(10) as lease:
            lease.commit(tokens=4)
        limiter.sync.acquire(10).release()
        limiter.sync.record(tokens=3, labels={"job": "nightly"})
        assert limiter._ledger is not None
        limiter._ledger.flush_sync()
        got = anyio.run(Ledger(ledger_url).entries)
        assert sorted(((e.outcome, dict(e.amounts)) for e in got), key=repr) == [
            ("committed", {"requests": 1, "tokens": 4}),
            ("recorded", {"tokens": 3}),
            ("released", {"usd": Decimal(0)}),
        ]

    async def test_a_lease_dropped_unsettled_is_released(self, ledger_url: str) -> None:
        limiter = Limiter(Cap(usd="1"), ledger=ledger_url)
        leases = [await limiter.acquire(usd="0.5")]
        lease_id = leases[0].id
        with pytest.warns(ResourceWarning):
            leases.clear()
        assert limiter._ledger is not None
        await limiter._ledger.flush()
        (entry,) = await Ledger(ledger_url).entries()
        assert (entry.lease_id, entry.outcome) == (lease_id, "released")

    async def test_rows_carry_the_lease_id_and_the_clocks_time(
        self, ledger_url: str
    ) -> None:
        clock = FakeClock(START)
        limiter = Limiter(Cap(usd="1"), ledger=ledger_url, clock=clock)
        first = await limiter.acquire(usd="0.1")
        clock.advance(61.000001)
        await first.commit()
        second = await limiter.acquire(usd="0.1")
        await second.commit()
        assert limiter._ledger is not None
        await limiter._ledger.flush()
        got = await Ledger(ledger_url).entries()
        assert [(e.lease_id, e.at) for e in got] == [
            (first.id, START + timedelta(seconds=61, microseconds=1)),
            (second.id, START + timedelta(seconds=61, microseconds=1)),
        ] or [(e.lease_id, e.at) for e in got] == [
            (second.id, START + timedelta(seconds=61, microseconds=1)),
            (first.id, START + timedelta(seconds=61, microseconds=1)),
        ]
        assert first.id != second.id

    async def test_a_row_posted_twice_is_kept_once(self, ledger_url: str) -> None:
        ledger = Ledger(ledger_url)
        row: Posted = ("lease-1", 1, "org", {}, "committed", {"requests": 1, "usd": 5})
        ledger._post(row)
        ledger._post(row)  # a retry, a copy: the row is there already
        ledger._post(("lease-1", 2, "org", {}, "released", {}))
        await ledger.flush()
        (entry,) = await ledger.entries()
        assert (entry.lease_id, entry.outcome, entry.amounts["usd"]) == (
            "lease-1",
            "committed",
            Decimal("0.000000005"),
        )
        ledger.close()


async def test_a_shadow_refusal_is_a_row_never_spend(
    make: Make, ledger_url: str
) -> None:
    """Shadow mode grants what a cap would refuse: the lease's own row counts
    its spend, and a ``shadowed`` row says what the cap would have refused."""
    org = make(Cap(usd="1"), ledger=ledger_url, shadow=True)
    async with org.acquire(usd="0.75"):
        pass
    async with org.acquire(usd="0.5") as lease:  # over the cap: granted
        await lease.commit(usd="0.5")
    rows = await rows_of(org, ledger_url)
    name = org.name or ""
    assert (name, "shadowed", {"usd": Decimal("0.5")}, {}) in rows
    assert [r[1] for r in rows].count("committed") == 2
    reader = Ledger(ledger_url)
    try:
        report = await reader.report(by=("outcome",))
    finally:
        reader.close()
    assert report.total.usd == Decimal("1.25")  # the shadowed row is no spend
    assert {r.group["outcome"] for r in report.rows} >= {"committed", "shadowed"}


async def test_alerts_and_refusals_are_events(ledger_url: str) -> None:
    """Every alert, and refusals (one event a second per scope and reason,
    counting the others), newest first."""
    clock = FakeClock(START)
    org = Limiter(
        Cap(usd="1", alert_at=(0.5,)), name="org", ledger=ledger_url, clock=clock
    )
    team = org.child(
        "team", runaway=Runaway(window="1m", min_usd="0.2", action="block")
    )
    async with org.acquire(usd="0.6"):
        pass  # crosses 50%: an alert
    for _ in range(5):  # five refusals in one second: one event
        with pytest.raises(BudgetExceeded):
            await org.acquire(usd="2")
    clock.advance(1)
    with pytest.raises(BudgetExceeded):  # the next second: counts the four
        await org.acquire(usd="2")
    async with team.acquire(usd="0.25"):
        pass  # a runaway of team: an alert; then a refusal
    with pytest.raises(BudgetExceeded):
        await team.acquire(usd="0.01")
    assert org._ledger is not None
    await org._ledger.flush()
    reader = Ledger(ledger_url)
    try:
        got = await reader.events()
        mine = await reader.events(scope="org/team")
        last = await reader.events(limit=1)
        with pytest.raises(InvalidRequest, match="limit"):
            await reader.events(limit=0)
    finally:
        reader.close()
    assert [(e.scope, e.kind) for e in got] == [
        ("org/team", "refused"),
        ("org/team", "runaway"),
        ("org", "refused"),
        ("org", "refused"),
        ("org", "threshold"),
    ]
    assert [e.detail["count"] for e in got[2:4]] == [5, 1]
    assert got[0].detail["reason"] == "runaway"
    assert got[2].detail["reason"] == "cap"
    assert got[2].detail["requested"] == "2"
    assert got[4].detail["used"] == "0.6"
    assert "reached 50%" in got[4].message
    assert got[4].at == START
    assert [e.kind for e in mine] == ["refused", "runaway"]
    assert last == got[:1]


class TestReports:
    async def fill(self, url: str) -> Limiter:
        clock = FakeClock(START)
        org = Limiter(Cap(usd="100"), name="org", ledger=url, clock=clock)
        search = org.child("search")
        calls = [
            (search, "gpt-4o", "qa", "0.010", 100, 20),
            (search, "gpt-4o", "qa", "0.030", 300, 60),
            (search, "claude", "qa", "0.500", 1000, 200),
            (org, "gpt-4o", "chat", "0.001", 10, 2),
        ]
        for scope, model, feature, usd, inp, out in calls:
            labels = {"model": model, "feature": feature}
            async with scope.acquire(labels=labels) as lease:
                await lease.commit(
                    usd=usd, input_tokens=inp, output_tokens=out, tokens=inp + out
                )
        async with org.acquire(labels={"model": "mystery"}) as lease:
            await lease.commit(tokens=5)  # no price: unpriced, not $0
        await (await org.acquire(usd="0.7")).release()
        clock.advance(3600)  # December, UTC
        async with org.acquire(labels={"model": "gpt-4o"}) as lease:
            await lease.commit(usd="9", tokens=1)
        assert org._ledger is not None
        await org._ledger.flush()
        return org

    async def test_grouped_by_scope_and_model_sorted_by_spend(
        self, ledger_url: str
    ) -> None:
        await self.fill(ledger_url)
        report = await Ledger(ledger_url).report(
            by=("scope", "model"), until=datetime(2026, 12, 1, tzinfo=timezone.utc)
        )
        got = [
            (r.group["scope"], r.group["model"], r.requests, r.usd, r.unpriced)
            for r in report.rows
        ]
        assert got == [
            ("org/search", "claude", 1, Decimal("0.5"), 0),
            ("org/search", "gpt-4o", 2, Decimal("0.04"), 0),
            ("org", "gpt-4o", 1, Decimal("0.001"), 0),
            ("org", "mystery", 1, None, 1),
            ("org", None, 0, None, 0),  # the released lease
        ]
        search_gpt = report.rows[1]
        assert search_gpt.input_tokens == 400
        assert search_gpt.output_tokens == 80
        assert search_gpt.usd_per_request == Decimal("0.02")
        assert search_gpt.usd_per_1k_tokens == Decimal("0.083333333")  # 0.04/480k
        total = report.total
        assert (total.requests, total.usd, total.unpriced, total.released) == (
            5,
            Decimal("0.541"),
            1,
            1,
        )
        # over the priced requests only: an unpriced call is not $0
        assert total.usd_per_request == Decimal("0.13525")

    async def test_a_period_and_a_label_key(self, ledger_url: str) -> None:
        await self.fill(ledger_url)
        december = await Ledger(ledger_url).report(
            by=("feature",),
            since=datetime(2026, 12, 1, tzinfo=timezone.utc),
            until=datetime(2027, 1, 1, tzinfo=timezone.utc),
        )
        assert [(r.group, r.usd) for r in december.rows] == [
            ({"feature": None}, Decimal("9"))
        ]
        by_feature = await Ledger(ledger_url).report(by=("feature",))
        assert [(r.group["feature"], r.usd) for r in by_feature.rows] == [
            (None, Decimal("9")),
            ("qa", Decimal("0.54")),
            ("chat", Decimal("0.001")),
        ]

    async def test_json_and_csv(self, ledger_url: str) -> None:
        await self.fill(ledger_url)
        report = await Ledger(ledger_url).report(by=("model",))
        data = json.loads(report.to_json())
        assert data["rows"][0] == {
            "model": "gpt-4o",
            "requests": 4,
            "input_tokens": 410,
            "output_tokens": 82,
            "tokens": 493,
            "usd": "9.041",
            "usd_per_request": "2.260250000",
            "usd_per_1k_tokens": "18.338742394",
            "unpriced": 0,
            "released": 0,
            "expired": 0,
        }
        assert data["total"]["usd"] == "9.541"
        lines = report.to_csv().splitlines()
        assert lines[0].startswith(
            "model,requests,input_tokens,output_tokens,tokens,usd"
        )
        assert lines[-1].startswith(",6,")
        assert ",9.541," in lines[-1]

    async def test_bad_arguments_are_invalid_requests(self, ledger_url: str) -> None:
        ledger = Ledger(ledger_url)
        for by in ("scope", (), ("a b",), ("x", "x")):
            with pytest.raises(InvalidRequest):
                await ledger.report(by=by)
        with pytest.raises(InvalidRequest, match="aware"):
            await ledger.report(since=datetime(2026, 1, 1))
        with pytest.raises(InvalidRequest, match="before"):
            await ledger.report(
                since=datetime(2026, 2, 1, tzinfo=timezone.utc),
                until=datetime(2026, 1, 1, tzinfo=timezone.utc),
            )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    amounts=st.lists(
        st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False), max_size=30
    )
)
def test_money_adds_up_exactly(tmp_path: Path, amounts: list[Decimal]) -> None:
    """Commits of random nano-dollar amounts: the report's sum is theirs."""
    url = f"sqlite:///{tmp_path / f'sum-{threading.get_ident()}-{len(amounts)}.db'}"
    Path(url[len("sqlite:///") :]).unlink(missing_ok=True)

    async def run() -> None:
        limiter = Limiter(Cap(usd=10**6), ledger=Ledger(url))
        for usd in amounts:
            async with limiter.acquire(usd=usd):
                pass
        assert limiter._ledger is not None
        await limiter._ledger.flush()
        report = await limiter._ledger.report(by=("scope",))
        assert report.total.usd == (sum(amounts, Decimal(0)) if amounts else None)
        assert report.total.requests == len(amounts)
        limiter._ledger.close()

    anyio.run(run)


class TestUrlsAndFailures:
    def test_bad_urls(self) -> None:
        for url in ("sqlite://", "sqlite:///:memory:", "mysql://x/y", "usage.db"):
            with pytest.raises(InvalidRequest):
                Ledger(url)
        with pytest.raises(InvalidRequest):
            Limiter(Cap(usd=1), ledger=5)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="schema"):
            Ledger("postgresql://127.0.0.1/test?schema=a;b")

    def test_limiters_naming_one_url_share_its_ledger(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        a = Limiter(Cap(usd=1), ledger=url)
        b = Limiter(Cap(usd=1), ledger=url)
        assert a._ledger is b._ledger is not None
        child = a.child("x")
        assert child._ledger is a._ledger

    def test_an_unreachable_database_fails_flush_and_keeps_the_rows(self) -> None:
        ledger = Ledger("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1")
        limiter = Limiter(Cap(usd=1), ledger=ledger)
        with limiter.sync.acquire(usd="0.1"):
            pass
        with pytest.raises(StoreUnavailable, match="not written"):
            ledger.flush_sync(timeout=1.0)
        with pytest.raises(StoreUnavailable, match="not written"):
            ledger.close(timeout=0.1)  # what it could not write is logged


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return ratebudget("report", *argv)


class TestReportCommand:
    @pytest.fixture
    def filled(self, ledger_url: str) -> str:
        anyio.run(TestReports().fill, ledger_url)
        return ledger_url

    def test_table_csv_and_json(self, filled: str) -> None:
        done = cli("--ledger", filled, "--by", "scope,model", "--period", "2026-11")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert (
            "from 2026-11-01T00:00:00+00:00 until 2026-12-01T00:00:00+00:00" in lines[0]
        )
        assert lines[1].split()[:5] == ["scope", "model", "requests", "input", "tok"]
        assert lines[2].split()[:3] == ["org/search", "claude", "1"]
        assert "unpriced" in next(x for x in lines if "mystery" in x)
        assert lines[-1].split()[:2] == ["(total)", "5"]
        assert "0.541" in lines[-1].split()

        done = cli("--ledger", filled, "--by", "model", "--format", "csv")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[1].startswith("gpt-4o,4,410,82,493,9.041,")

        done = cli("--ledger", filled, "--format", "json", "--since", "2026-12-01")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert [(r["scope"], r["usd"]) for r in data["rows"]] == [("org", "9")]

    def test_errors(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        for argv, message in [
            (("--period", "2026-13"), "month must be in 1..12"),
            (("--period", "11/2026"), "use 2026, 2026-11 or 2026-11-05"),
            (("--period", "2026", "--since", "2026-01-01"), "not both"),
            (("--since", "yesterday"), "ISO date"),
            (("--by", "a b"), "is not 'scope'"),
        ]:
            done = cli("--ledger", url, *argv)
            assert done.returncode == 2, (argv, done.stderr)
            assert message in done.stderr
        done = cli("--ledger", "mysql://x/y")
        assert (done.returncode, "use sqlite:///usage.db") == (
            2,
            "use sqlite:///usage.db" if "use sqlite:///usage.db" in done.stderr else "",
        )
        done = cli(
            "--ledger", "postgresql://user:secret@127.0.0.1:1/x?connect_timeout=1"
        )
        assert done.returncode == 3
        assert "error: unavailable" in done.stderr
        assert "secret" not in done.stderr


@pytest.mark.parametrize(
    ("text", "bounds"),
    [
        ("2026", ((2026, 1, 1), (2027, 1, 1))),
        ("2026-12", ((2026, 12, 1), (2027, 1, 1))),
        ("2026-02", ((2026, 2, 1), (2026, 3, 1))),
        ("2028-02-29", ((2028, 2, 29), (2028, 3, 1))),
        ("2026-12-31", ((2026, 12, 31), (2027, 1, 1))),
    ],
)
def test_periods(text: str, bounds: tuple[tuple[int, int, int], ...]) -> None:
    from ratebudget.cli._report import period

    assert period(text) == tuple(datetime(*b, tzinfo=timezone.utc) for b in bounds)


def test_the_docs_report_is_what_the_command_prints(tmp_path: Path) -> None:
    """docs/reports.md's console block: its example's ledger, reported by the CLI."""
    text = (Path(__file__).parent.parent / "docs" / "reports.md").read_text()
    code = text.split("```python\n", 1)[1].split("```\n", 1)[0]
    console = text.split("```console\n", 1)[1].split("```\n", 1)[0].splitlines()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    command = console[0].removeprefix("$ ratebudget report ").split()
    done = subprocess.run(
        [sys.executable, "-m", "ratebudget", "report", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == console[1:]


def commit_then_die(options: str, record: bool = False) -> str:
    """In another process: a limiter made with ``options`` commits $0.75
    (and records $0.50), then the process is killed (SIGKILL) at once; the
    committed lease's id."""
    code = (
        "import os, signal\n"
        "from ratebudget import Cap, Limiter\n"
        f"lim = Limiter(Cap(usd='10'), {options})\n"
        "with lim.sync.acquire(usd='1') as lease:\n"
        "    lease.commit(usd='0.75')\n"
        + ("lim.sync.record(usd='0.5')\n" if record else "")
        + "print(lease.id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == -9, done.stderr
    return done.stdout.strip()


class TestInTheStoresTransaction:
    """A SQLite store with its ledger in its own file (``ledger=True``, or
    the file's URL) writes each row in the transaction of the commit,
    release or record: there when the call returns, and for leases it
    reclaims too."""

    def entries(self, url: str) -> list[LedgerEntry]:
        reader = Ledger(url)
        try:
            return anyio.run(reader.entries)
        finally:
            reader.close()

    def test_rows_are_written_with_the_commit(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
        org = Limiter(Cap(usd="10"), store=url, name="org", ledger=True)
        team = org.child("search")
        with team.sync.acquire(usd="1", labels={"model": "m"}) as lease:
            lease.commit(usd="0.25", tokens=10)
        org.sync.acquire(usd="2").release()
        org.sync.record(usd="0.5")
        assert org._ledger is not None
        assert org._ledger._thread is None  # no writer: the store wrote them
        got = sorted(
            (
                (e.scope, e.outcome, dict(e.amounts), dict(e.labels))
                for e in self.entries(url)
            ),
            key=repr,
        )
        assert got == sorted(
            [
                (
                    "org/search",
                    "committed",
                    {"requests": 1, "tokens": 10, "usd": Decimal("0.25")},
                    {"model": "m"},
                ),
                ("org", "released", {"usd": Decimal(0)}, {}),
                ("org", "recorded", {"usd": Decimal("0.5")}, {}),
            ],
            key=repr,
        )
        # the same file named by its URL books too
        again = Limiter(Cap(usd="10"), store=url, name="org", ledger=url)
        assert again._booked

    def test_a_commit_that_returned_survives_a_killed_process(
        self, tmp_path: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
        lease_id = commit_then_die(f"store={url!r}, name='org', ledger=True")
        (entry,) = self.entries(url)
        assert (entry.lease_id, entry.outcome, entry.amounts["usd"]) == (
            lease_id,
            "committed",
            Decimal("0.75"),
        )

    def test_a_reclaimed_lease_is_expired_then_a_late_commit_counts(
        self, tmp_path: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
        clock = FakeClock(START)
        limiter = Limiter(
            Cap(usd="10"), store=url, name="org", ledger=True, clock=clock, lease_ttl=1
        )
        late = limiter.sync.acquire(usd="1")
        clock.advance(2)
        limiter.sync.snapshot()  # any call: the store reclaims the lease
        (entry,) = self.entries(url)
        assert (entry.lease_id, entry.outcome, entry.amounts) == (
            late.id,
            "expired",
            {"usd": Decimal(0)},
        )
        assert entry.at == START + timedelta(seconds=2)
        late.commit(usd="0.5")  # a late commit still counts: so does its row
        (entry,) = self.entries(url)
        assert (entry.outcome, entry.amounts["usd"]) == ("committed", Decimal("0.5"))
        assert limiter.sync.snapshot().limits[0].used == Decimal("0.5")

    def test_ledger_true_needs_a_store_with_a_file(self) -> None:
        with pytest.raises(InvalidRequest, match="keeps no ledger of its own"):
            Limiter(Cap(usd=1), ledger=True)


def verify_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return ratebudget("ledger", "verify", *argv)


class TestVerify:
    def spend(self, store: str, ledger: str | bool, name: str = "org") -> Limiter:
        """Usage on a tree of scopes with daily, monthly and lifetime caps."""
        org = Limiter(
            Cap(usd="100", per="month", tz="Europe/Paris"),
            Cap(tokens=10**6),
            store=store,
            name=name,
            ledger=ledger,
        )
        search = org.child("search", Cap(usd="50", per="day"))
        users = search.per_key(Cap(usd="5", per="day"))
        with users["alice"].sync.acquire(usd="1", tokens=100) as lease:
            lease.commit(usd="0.123456789", tokens=80)
        with search.sync.acquire(usd="2", tokens=10):
            pass  # the estimate, committed
        org.sync.acquire(usd="3").release()
        org.sync.record(usd="0.5", tokens=7)
        return org

    def test_a_complete_ledger_matches(self, tmp_path: Path) -> None:
        store = f"sqlite:///{tmp_path / 'budgets.db'}"
        self.spend(store, True)
        done = verify_cli("--store", store, "--ledger", store)
        assert (done.returncode, done.stdout) == (
            0,
            f"ok: 3 caps on {store} match the ledger\n",
        ), done.stderr
        done = verify_cli("--store", store, "--ledger", store, "--json")
        data = json.loads(done.stdout)
        got = {(c["scope"], c["axis"]): c["ledger"] for c in data["checks"]}
        assert got == {
            ("org", "usd"): "2.623456789",
            ("org", "tokens"): "97",
            ("org/search", "usd"): "2.123456789",
        }
        assert all(c["ok"] for c in data["checks"])

    def test_a_lost_row_is_a_difference(self, tmp_path: Path) -> None:
        path = tmp_path / "budgets.db"
        store = f"sqlite:///{path}"
        self.spend(store, True)
        with sqlite3.connect(path) as conn:  # a row lost (as a kill would lose it)
            conn.execute("DELETE FROM rb_ledger WHERE scope = 'org/search'")
        done = verify_cli("--store", store, "--ledger", store)
        assert done.returncode == 1, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == f"3 of 3 caps on {store} differ from the ledger:"
        assert lines[1].split() == [
            "scope",
            "axis",
            "period",
            "store",
            "ledger",
            "difference",
        ]
        rows = {tuple(line.split()[:2]): line.split()[3:] for line in lines[2:]}
        assert rows[("org", "usd")] == ["2.623456789", "0.623456789", "+2.000000000"]
        assert rows[("org/search", "usd")] == [
            "2.123456789",
            "0.123456789",
            "+2.000000000",
        ]
        assert rows[("org", "tokens")] == ["97", "87", "+10"]

    @pytest.mark.parametrize("server", ["redis_url", "redis_cluster_url"])
    def test_a_redis_store_and_a_ledger_of_its_own(
        self, server: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """(On a cluster too: the rows wait on the tree's own shard, and the
        per-key scopes are found on every shard.)"""
        redis_url = str(request.getfixturevalue(server))
        ledger = f"sqlite:///{tmp_path / 'usage.db'}"
        name = f"verify-{uuid.uuid4().hex[:8]}"  # the server is shared
        org = self.spend(redis_url, ledger, name)
        assert org._ledger is not None
        org._ledger.flush_sync()
        done = verify_cli("--store", redis_url, "--ledger", ledger, f"{name}*")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("ok: 3 caps")

    def test_errors(self, tmp_path: Path) -> None:
        done = verify_cli(
            "--store",
            f"sqlite:///{tmp_path / 'none.db'}",
            "--ledger",
            f"sqlite:///{tmp_path / 'u.db'}",
        )
        assert done.returncode == 3
        assert "does not exist" in done.stderr
        done = verify_cli(
            "--store", "memory://", "--ledger", f"sqlite:///{tmp_path / 'u.db'}"
        )
        assert done.returncode == 2


async def test_the_transport_books_every_call_priced_or_not(
    anyio_backend: str, tmp_path: Path
) -> None:
    """Through the real OpenAI SDK and ``BudgetTransport``: a limiter that
    counts no USD but keeps a ledger gets each call priced for the ledger
    (exactly what the provider's log costs), and a model nobody prices is
    unpriced, not $0; the transport's labels come along."""
    if anyio_backend != "asyncio":
        pytest.skip("the SDKs' async clients run on asyncio only")
    import httpx2
    import openai

    from ratebudget.integrations.httpx import BudgetTransport
    from ratebudget.integrations.prices import price
    from ratebudget.integrations.usage import Usage
    from ratebudget.testing import FakeProvider

    url = f"sqlite:///{tmp_path / 'usage.db'}"
    provider = FakeProvider()
    limiter = Limiter(Rate(tokens=10**6, per="minute"), name="app", ledger=url)
    client = openai.AsyncOpenAI(
        api_key="x",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(
            transport=BudgetTransport(
                limiter, transport=httpx2.ASGITransport(app=provider)
            )
        ),
    )
    messages: Any = [{"role": "user", "content": "a question about budgets"}]
    for model in ("gpt-4o", "gpt-4o-mini", "house-model-7b"):
        await client.chat.completions.create(
            model=model, messages=messages, max_tokens=16
        )
    assert limiter._ledger is not None
    await limiter._ledger.flush()
    report = await Ledger(url).report(by=("model", "provider", "operation"))
    rows = {r.group["model"]: r for r in report.rows}
    assert set(rows) == {"gpt-4o", "gpt-4o-mini", "house-model-7b"}
    for r in provider.requests:
        row = rows[str(r.model)]
        assert (row.requests, row.input_tokens, row.output_tokens) == (
            1,
            r.prompt_tokens,
            r.output_tokens,
        )
        if r.model == "house-model-7b":
            assert (row.usd, row.unpriced) == (None, 1)
        else:
            cost = price(str(r.model), Usage(r.prompt_tokens, r.output_tokens))
            assert (row.usd, row.unpriced) == (cost, 0)
        assert (row.group["provider"], row.group["operation"]) == ("openai", "chat")
    assert report.total.unpriced == 1


def check_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return ratebudget("check", *argv)


class TestCheck:
    """``ratebudget check``: a cost gate for CI, on the ledger ``fill`` wrote
    ($0.541 in November: search $0.54, org $0.001, one unpriced call; $9
    in December)."""

    @pytest.fixture
    def filled(self, tmp_path: Path) -> str:
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        anyio.run(TestReports().fill, url)
        return url

    def test_within_and_over(self, filled: str) -> None:
        done = check_cli(
            "--ledger", filled, "--period", "2026-11", "--max-usd", "0.541"
        )
        assert done.returncode == 0, done.stderr
        assert (
            done.stdout
            == "ok: $0.541 spent by all scopes in 5 requests, within $0.541\n"
        )
        assert "1 calls have no price" in done.stderr

        done = check_cli(
            "--ledger",
            filled,
            "--period",
            "2026-11",
            "--max-usd",
            "0.54",
            "--by",
            "model",
        )
        assert done.returncode == 1
        lines = done.stdout.splitlines()
        assert lines[0].startswith("over: $0.541 spent by all scopes")
        # where it went: a table of the spend per model, dearest first
        assert lines[1].split()[:3] == ["model", "requests", "input"]
        assert [line.split()[0] for line in lines[2:]] == [
            "claude",
            "gpt-4o",
            "mystery",
            "(none)",
            "-------",
            "(total)",
        ]

        done = check_cli(
            "--ledger", filled, "--max-usd", "9.5"
        )  # November and December
        assert done.returncode == 1

        done = check_cli(
            "--ledger", filled, "--scope", "org/search", "--max-usd", "0.54"
        )
        assert (done.returncode, done.stdout) == (
            0,
            "ok: $0.54 spent by scope org/search in 3 requests, within $0.54\n",
        )
        assert done.stderr == ""  # the unpriced call is org's, not search's

    def test_unpriced_calls_can_fail_the_gate(self, filled: str) -> None:
        done = check_cli(
            "--ledger",
            filled,
            "--period",
            "2026-11",
            "--max-usd",
            "5",
            "--fail-unpriced",
        )
        assert done.returncode == 1

    def test_errors(self, filled: str) -> None:
        for argv in (("--max-usd", "lots"), ("--max-usd", "-1"), ("--max-usd", "NaN")):
            done = check_cli("--ledger", filled, *argv)
            assert done.returncode == 2, argv
            assert "expected an amount of USD" in done.stderr


async def test_a_report_of_one_scope_and_below(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    await TestReports().fill(url)
    report = await Ledger(url).report(by=("scope",), scope="org/search")
    assert [(r.group["scope"], r.usd) for r in report.rows] == [
        ("org/search", Decimal("0.54"))
    ]
    # a name that only begins the same is not below it
    assert (await Ledger(url).report(scope="org/sea")).rows == ()
    with pytest.raises(InvalidRequest):
        await Ledger(url).report(scope="")


class TestOnARedisStream:
    """A Redis store writes each row on its tree's stream in the script call
    of the commit; limiters with the ledger copy the stream into it, and
    ``ratebudget ledger sync`` copies what a killed process left."""

    def test_the_row_is_on_the_stream_before_it_is_copied(
        self, redis_url: str, tmp_path: Path
    ) -> None:
        import redis

        ledger = f"sqlite:///{tmp_path / 'usage.db'}"
        name = f"stream-{uuid.uuid4().hex[:8]}"
        org = Limiter(Cap(usd="10"), store=redis_url, name=name, ledger=ledger)
        assert org._booked
        team = org.child("search")
        with team.sync.acquire(usd="1", labels={"model": "m"}) as lease:
            lease.commit(usd="0.25")
        client = redis.Redis.from_url(redis_url)
        try:
            entries = client.xrange(f"{{{name}}}:ledger") or []
            assert len(entries) == 1  # written by the commit's own script call
            at = int((entries[0][1] or {})[b"at"])
            assert org._ledger is not None
            org._ledger.flush_sync()  # copies the stream, then empties it
            assert client.xlen(f"{{{name}}}:ledger") == 0
        finally:
            client.close()
        (entry,) = anyio.run(Ledger(ledger).entries)
        assert (entry.lease_id, entry.scope, entry.outcome, entry.amounts) == (
            lease.id,
            f"{name}/search",
            "committed",
            {"requests": 1, "usd": Decimal("0.25")},
        )
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        assert entry.at == epoch + timedelta(microseconds=at)  # the store's time

    def test_a_killed_processes_rows_are_copied_by_sync(
        self, redis_url: str, tmp_path: Path
    ) -> None:
        ledger = f"sqlite:///{tmp_path / 'usage.db'}"
        name = f"killed-{uuid.uuid4().hex[:8]}"
        # killed before its ledger's thread copies the stream
        lease_id = commit_then_die(
            f"store={redis_url!r}, name={name!r}, ledger={ledger!r}", record=True
        )
        copied = ratebudget("ledger", "sync", "--store", redis_url, "--ledger", ledger)
        assert copied.returncode == 0, copied.stderr
        assert copied.stdout.startswith("copied 2 rows from redis://")
        got = anyio.run(Ledger(ledger).entries)
        assert sorted((e.outcome, e.amounts["usd"]) for e in got) == [
            ("committed", Decimal("0.75")),
            ("recorded", Decimal("0.5")),
        ]
        assert lease_id in {e.lease_id for e in got}
        again = ratebudget("ledger", "sync", "--store", redis_url, "--ledger", ledger)
        assert again.stdout.startswith("copied 0 rows")
        verified = verify_cli("--store", redis_url, "--ledger", ledger, name)
        assert verified.returncode == 0, verified.stdout

    def test_sync_needs_a_redis_store(self, tmp_path: Path) -> None:
        store = f"sqlite:///{tmp_path / 'budgets.db'}"
        Limiter(Cap(usd=1), store=store, name="x")
        done = ratebudget("ledger", "sync", "--store", store, "--ledger", store)
        assert done.returncode == 2
        assert "only a Redis store" in done.stderr


def test_a_lease_a_redis_store_reclaims_is_expired_then_a_late_commit_counts(
    redis_url: str, tmp_path: Path
) -> None:
    ledger = f"sqlite:///{tmp_path / 'usage.db'}"
    name = f"expiry-{uuid.uuid4().hex[:8]}"
    clock = FakeClock(START)
    org = Limiter(
        Cap(usd="10"),
        store=redis_url,
        name=name,
        ledger=ledger,
        clock=clock,
        lease_ttl=1,
    )
    team = org.child("team")
    late = team.sync.acquire(usd="1")
    clock.advance(2)
    # any call of the tree reclaims it; the row names the scope whose call
    # found it (an ancestor's call would name the ancestor)
    team.sync.snapshot()
    assert org._ledger is not None
    org._ledger.flush_sync()
    (entry,) = anyio.run(Ledger(ledger).entries)
    assert (entry.lease_id, entry.scope, entry.outcome, entry.amounts) == (
        late.id,
        f"{name}/team",
        "expired",
        {"usd": Decimal(0)},
    )
    assert entry.at == START + timedelta(seconds=2)
    late.commit(usd="0.5")  # a late commit still counts: so does its row
    org._ledger.flush_sync()
    (entry,) = anyio.run(Ledger(ledger).entries)
    assert (entry.outcome, entry.amounts["usd"]) == ("committed", Decimal("0.5"))


WORKER = str(Path(__file__).with_name("ledger_worker.py"))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_many_processes_killed_or_not_every_settled_lease_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four processes settle random leases on one tree; two are killed
    (SIGKILL) right after a commit returns. Every lease whose settle
    returned is in the ledger once, and the ledger adds up to the store's
    counters (``verify``) to the nano-dollar."""
    name = f"many-{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        store = ledger = f"sqlite:///{tmp_path / 'budgets.db'}"
        option = "True"
    else:
        store = request.getfixturevalue("redis_url")
        ledger = option = f"sqlite:///{tmp_path / 'usage.db'}"
    # made before the race, as the workers make it
    Limiter(Cap(usd="1000"), Cap(tokens=10**9), store=store, name=name)
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, store, option, name, str(seed), "40"]
            + (["12"] if seed % 2 else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    settled: list[str] = []
    recorded = 0
    for seed, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == (-9 if seed % 2 else 0), err
        for line in out.splitlines():
            if line.startswith("settled "):
                settled.append(line.split()[1])
            elif line == "recorded":
                recorded += 1
    if kind == "redis":  # what the killed ones left on the stream
        done = ratebudget("ledger", "sync", "--store", store, "--ledger", ledger)
        assert done.returncode == 0, done.stderr
    entries = anyio.run(Ledger(ledger).entries)
    ids = [e.lease_id for e in entries if e.outcome != "recorded"]
    assert sorted(ids) == sorted(settled)  # each once: none lost, none twice
    assert sum(e.outcome == "recorded" for e in entries) == recorded
    done = verify_cli("--store", store, "--ledger", ledger, f"{name}*")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 3 caps")  # org's two, org/a's one


def test_a_ledger_dropped_without_close_ends_its_writer(tmp_path: Path) -> None:
    import gc

    def writers() -> int:
        return sum(t.name == "ratebudget-ledger" for t in threading.enumerate())

    before = writers()
    ledger = Ledger(f"sqlite:///{tmp_path / 'usage.db'}")
    ledger._post(("a", 1, "s", {}, "committed", {"requests": 1}))
    ledger.flush_sync()
    assert writers() == before + 1
    del ledger
    gc.collect()
    for _ in range(100):  # its thread ends on its own (it was told at once)
        if writers() == before:
            break
        threading.Event().wait(0.02)
    assert writers() == before


def test_a_row_for_a_closed_ledger_is_an_error_not_silence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'usage.db'}")
    limiter = Limiter(Cap(usd="1"), ledger=ledger)
    ledger.close()
    with limiter.sync.acquire(usd="0.1") as lease:
        pass
    assert f"the row of lease {lease.id} is not written" in caplog.text
