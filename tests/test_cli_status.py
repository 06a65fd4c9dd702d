"""``ratebudget status``: the limiters on a store, read back from a real SQLite file."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from helpers import ratebudget
from ratebudget import Cap, InvalidRequest, Limiter, Rate, SyncLease
from ratebudget.cli import LimiterStatus, main, status
from ratebudget.stores.sqlite import SQLiteStore

TPM = 1000  # tokens refilled per minute by the rate of "openai-prod"


def _limiter(url: str) -> Limiter:
    return Limiter(
        Rate(tokens=TPM, per="minute"),
        Cap(usd="25", per="day"),
        Cap(tokens=10_000_000, per="month", soft=True),
        store=url,
        name="openai-prod",
    )


def _batch(url: str) -> Limiter:
    return Limiter(
        Rate(requests=60, per="minute", burst=10),
        Cap(usd="5"),
        store=url,
        name="anthropic-batch",
    )


def _keys() -> tuple[str, str]:
    """Today's day and month keys in UTC."""
    now = datetime.now(timezone.utc)
    return now.date().isoformat(), f"{now.year:04d}-{now.month:02d}"


@dataclass
class Used:
    """A store with usage on it, and how long ago the rate was first drawn."""

    url: str
    path: Path
    started: float  # time.monotonic() before the first draw
    held: SyncLease  # an outstanding lease: tokens=200, usd=1.25

    def drawn_bounds(self) -> tuple[int, int]:
        """What the rate of "openai-prod" may show as used now: 600 drawn,
        less what it refilled since (1000 tokens a minute)."""
        refilled = math.ceil((time.monotonic() - self.started) * TPM / 60) + 1
        return 600 - refilled, 600


@pytest.fixture
def used(tmp_path: Path) -> Iterator[Used]:
    """openai-prod: 300 + 100 tokens and $0.30 + $0.20 committed, a lease
    holding 200 tokens and $1.25; anthropic-batch: 1 request and $1.50."""
    path = tmp_path / "budgets.db"
    url = f"sqlite:///{path}"
    limiter = _limiter(url)
    started = time.monotonic()
    with limiter.sync.acquire(400, usd="0.50") as lease:
        lease.commit(tokens=300, usd="0.30")
    limiter.sync.record(tokens=100, usd="0.20")
    held = limiter.sync.acquire(200, usd="1.25")
    _batch(url).sync.record(requests=1, usd="1.50")
    try:
        yield Used(url, path, started, held)
    finally:
        held.release()


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    document: dict[str, Any] = json.loads(out)
    return document


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in document["limiters"]}


class TestJson:
    def test_every_limiter_with_its_numbers(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        day, month = _keys()
        document = _json(["status", "--store", used.url], capsys)
        low, high = used.drawn_bounds()
        assert document["store"] == used.url
        assert [item["name"] for item in document["limiters"]] == [
            "anthropic-batch",
            "openai-prod",
        ]
        prod = _by_name(document)["openai-prod"]
        assert prod["error"] is None
        datetime.fromisoformat(prod["at"])  # ISO 8601
        rate, usd, tokens = prod["limits"]

        assert rate["kind"] == "rate"
        assert rate["axis"] == "tokens"
        assert (rate["limit"], rate["burst"], rate["per"]) == (1000, 1000, "minute")
        assert rate["per_seconds"] == 60.0
        assert low <= rate["used"] <= high
        assert rate["reserved"] == 0
        assert rate["remaining"] == rate["available"] == 1000 - rate["used"]
        assert rate["period"] is None
        assert rate["resets_at"] is None

        assert usd["kind"] == "cap"
        assert (usd["axis"], usd["per"], usd["soft"], usd["tz"]) == (
            "usd",
            "day",
            False,
            "UTC",
        )
        assert usd["limit"] == "25"  # Decimals are strings
        assert usd["used"] == "0.5"
        assert usd["reserved"] == "1.25"
        assert usd["remaining"] == "23.25"
        assert usd["period"] == day
        resets = datetime.fromisoformat(usd["resets_at"])
        assert resets == datetime.fromisoformat(day).replace(
            tzinfo=timezone.utc
        ) + timedelta(days=1)

        assert (tokens["axis"], tokens["per"], tokens["soft"]) == (
            "tokens",
            "month",
            True,
        )
        assert tokens["limit"] == 10_000_000
        assert tokens["used"] == 400
        assert tokens["reserved"] == 200
        assert tokens["remaining"] == 10_000_000 - 600
        assert tokens["period"] == month
        assert datetime.fromisoformat(tokens["resets_at"]).day == 1

        batch = _by_name(document)["anthropic-batch"]
        requests, lifetime = batch["limits"]
        assert (requests["limit"], requests["burst"]) == (60, 10)
        assert requests["used"] == 1  # a request refills every second
        assert requests["remaining"] in (9, 10)
        assert (lifetime["per"], lifetime["period"], lifetime["resets_at"]) == (
            None,
            None,
            None,
        )
        assert (lifetime["used"], lifetime["reserved"], lifetime["remaining"]) == (
            "1.5",
            "0",
            "3.5",
        )

    def test_a_settled_lease_frees_its_reservation(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        used.held.commit(tokens=150, usd="0.75")
        prod = _by_name(_json(["status", "--store", used.url], capsys))["openai-prod"]
        _rate, usd, tokens = prod["limits"]
        assert (usd["used"], usd["reserved"], usd["remaining"]) == (
            "1.25",
            "0",
            "23.75",
        )
        assert (tokens["used"], tokens["reserved"]) == (550, 0)

    def test_name_shows_only_that_limiter(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        document = _json(["status", "--store", used.url, "anthropic-batch"], capsys)
        assert [item["name"] for item in document["limiters"]] == ["anthropic-batch"]
        assert document["limiters"][0]["limits"][1]["used"] == "1.5"

    def test_an_empty_store_lists_nothing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "empty.db"
        SQLiteStore(path).limiters()  # makes the file and its tables
        url = f"sqlite:///{path}"
        assert _json(["status", "--store", url], capsys) == {
            "store": url,
            "limiters": [],
        }
        assert main(["status", "--store", url]) == 0
        assert "no limiters" in capsys.readouterr().out


async def test_usage_from_async_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    limiter = _limiter(url)
    async with limiter.acquire(1000, usd="2") as lease:
        await lease.commit(tokens=900, usd="1.75")
    await limiter.record(tokens=50, usd="0.05")
    held = await limiter.acquire(10, usd="3")
    try:
        prod = _by_name(_json(["status", "--store", url, "openai-prod"], capsys))
        _rate, usd, tokens = prod["openai-prod"]["limits"]
        assert (usd["used"], usd["reserved"], usd["remaining"]) == ("1.8", "3", "20.2")
        assert (tokens["used"], tokens["reserved"]) == (950, 10)
    finally:
        await held.release()


class TestTables:
    def test_plain_table_off_a_terminal(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        day, month = _keys()
        assert main(["status", "--store", used.url]) == 0
        out, err = capsys.readouterr()
        low, high = used.drawn_bounds()
        assert err == ""
        assert out.startswith(f"ratebudget status: {used.url}\n")
        assert "█" not in out  # no rich off a terminal
        lines = out.splitlines()
        titles = [line.split()[0] for line in lines if "(read at " in line]
        assert titles == ["anthropic-batch", "openai-prod"]
        headings = "kind axis limit period used reserved remaining usage resets"
        assert sum(line.split() == headings.split() for line in lines) == 2

        def row(start: str) -> list[str]:
            (found,) = [line for line in lines if re.match(start, line)]
            return re.split(r"\s{2,}", found)

        rate = row(r"rate\s+tokens")
        assert rate[2] == "1,000 / minute"
        drawn = int(rate[4].replace(",", ""))
        assert low <= drawn <= high
        assert rate[6] == f"{1000 - drawn:,} of 1,000 now"
        assert rate[7].startswith("[")
        assert rate[7].count("#") == round(drawn / 50)

        usd = row(r"cap\s+usd\s+\$25")
        assert usd[2:7] == ["$25.00 / day", day, "$0.50", "$1.25", "$23.25"]
        assert usd[7] == "[#+" + "." * 18 + "]"  # 2 % used, 5 % reserved
        assert usd[8] == "2%"
        assert usd[9].startswith(
            (datetime.fromisoformat(day) + timedelta(days=1)).strftime(
                "%Y-%m-%d 00:00 UTC (in "
            )
        )

        tokens = row(r"soft cap\s+tokens")
        assert tokens[2:7] == ["10,000,000 / month", month, "400", "200", "9,999,400"]

        lifetime = row(r"cap\s+usd\s+\$5")
        assert lifetime[2:7] == ["$5.00 lifetime", "-", "$1.50", "$0.00", "$3.50"]
        assert lifetime[7] == "[" + "#" * 6 + "." * 14 + "]"
        assert lifetime[8:] == ["30%", "-"]

    def test_name_filters_the_tables(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["status", "--store", used.url, "openai-prod", "--plain"]) == 0
        out = capsys.readouterr().out
        assert "openai-prod  (read at " in out
        assert "anthropic-batch" not in out
        assert "$23.25" in out

    def test_rich_tables_when_forced(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pytest.importorskip("rich")
        assert main(["status", "--store", used.url, "--rich"]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        for text in ("openai-prod", "anthropic-batch", "$23.25", "9,999,400", "█"):
            assert text in out
        assert "\x1b[" not in out  # not a terminal: no control codes

    def test_rich_on_a_terminal(
        self,
        used: Used,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        pytest.importorskip("rich")
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        monkeypatch.setenv("TERM", "xterm-256color")
        monkeypatch.setenv("COLUMNS", "200")
        assert main(["status", "--store", used.url]) == 0
        out = capsys.readouterr().out
        assert "\x1b[" in out  # drawn for a terminal
        assert "█" * 20 not in out  # 20-cell bars, none full
        assert "$1.25" in out
        assert " UTC (in " in out
        monkeypatch.setenv("COLUMNS", "115")  # too narrow: compact tables
        assert main(["status", "--store", used.url]) == 0
        out = capsys.readouterr().out
        assert "$23.25" in out
        assert "9,999,400" in out
        assert " UTC (in " not in out
        # the two largest units left ("5h 12m"; "15m 3s" near midnight UTC)
        assert re.search(r" in \d+[dhm] \d+[hms]", out)
        assert main(["status", "--store", used.url, "--plain"]) == 0
        assert "█" not in capsys.readouterr().out
        document = _json(["status", "--store", used.url], capsys)  # JSON wins
        assert len(document["limiters"]) == 2

    def test_without_rich_a_terminal_gets_plain_text(
        self,
        used: Used,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        assert main(["status", "--store", used.url]) == 0
        out = capsys.readouterr().out
        assert "[#+" in out
        assert main(["status", "--store", used.url, "--rich"]) == 2
        assert "rich is not installed" in capsys.readouterr().err


class TestErrors:
    def test_unknown_name_exits_2(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["status", "--store", used.url, "openai-dev"]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "no limiter named 'openai-dev'" in err
        assert "'anthropic-batch', 'openai-prod'" in err
        assert main(["status", "--store", used.url, "openai-dev", "--json"]) == 2
        assert capsys.readouterr().out == ""

    def test_memory_has_nothing_to_show(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["status", "--store", "memory://"]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert "memory://" in err
        assert "nothing to show" in err

    def test_a_directory_that_does_not_exist_exits_3(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        missing = tmp_path / "no" / "such" / "dir"
        assert main(["status", "--store", f"sqlite:///{missing / 'b.db'}"]) == 3
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("ratebudget status: error: store unavailable: ")
        assert str(missing) in err
        assert "Traceback" not in err
        assert not (tmp_path / "no").exists()

    def test_a_missing_file_is_not_created(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "typo.db"
        assert main(["status", "--store", f"sqlite:///{path}", "--json"]) == 3
        assert "does not exist" in capsys.readouterr().err
        assert not path.exists()

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["status"], "--store"),
            (["status", "--store", "budgets.db"], "expected a URL"),
            (["status", "--store", "ftp://x"], "unknown scheme"),
            (
                ["status", "--store", "sqlite:///x.db", "--json", "--plain"],
                "not allowed",
            ),
        ],
    )
    def test_bad_arguments_exit_2(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(argv) == 2
        assert message in capsys.readouterr().err

    def test_a_fixed_offset_zone_survives_the_registry(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        odd = Limiter(
            Cap(usd="1", per="day", tz=timezone(timedelta(hours=2))),
            store=used.url,
            name="fixed-offset",
        )
        odd.sync.record(usd="0.10")
        items = _by_name(_json(["status", "--store", used.url], capsys))
        assert items["fixed-offset"]["limits"][0]["used"] == "0.1"

    def test_a_spec_this_version_cannot_rebuild_is_reported(
        self, used: Used, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # a spec written by another version (here: a negative limit): that
        # limiter shows its error, the others their state
        store = SQLiteStore(used.path)
        try:
            store.register(
                "from-the-future",
                {
                    "limits": [
                        {
                            "kind": "rate",
                            "axis": "tokens",
                            "limit": "-1",
                            "burst": "1",
                            "per": 1,
                        }
                    ]
                },
            )
        finally:
            store.close()
        document = _json(["status", "--store", used.url], capsys)
        items = _by_name(document)
        assert items["from-the-future"]["limits"] == []
        assert "cannot rebuild" in items["from-the-future"]["error"]
        assert items["openai-prod"]["limits"][1]["used"] == "0.5"
        assert main(["status", "--store", used.url, "--plain"]) == 0
        assert "from-the-future\n  error: cannot rebuild" in capsys.readouterr().out


class TestApi:
    def test_status_of_a_store_object(self, used: Used) -> None:
        store = SQLiteStore(used.path)
        try:
            (item,) = status(store, "openai-prod")
            assert isinstance(item, LimiterStatus)
            again = status(store)  # the store was not closed behind our back
        finally:
            store.close()
        assert [s.name for s in again] == ["anthropic-batch", "openai-prod"]
        usd = item.limits[1]
        assert usd.used == Decimal("0.5")
        assert isinstance(usd.used, Decimal)
        assert usd.reserved == Decimal("1.25")
        assert usd.resets_at is not None
        assert usd.resets_at.tzinfo is not None
        encoded = item.to_json()
        assert json.loads(json.dumps(encoded)) == encoded
        assert encoded["limits"][1]["resets_at"] == usd.resets_at.isoformat()

    def test_status_matches_the_limiters_own_snapshot(self, used: Used) -> None:
        snap = _limiter(used.url).sync.snapshot()
        (item,) = status(used.url, "openai-prod")
        for mine, theirs in zip(item.limits[1:], snap.limits[1:], strict=True):
            assert (mine.used, mine.reserved, mine.remaining, mine.period) == (
                theirs.used,
                theirs.reserved,
                theirs.remaining,
                theirs.period,
            )

    def test_a_status_leaves_the_registered_specs_alone(self, used: Used) -> None:
        # a status reads: it must not write back the spec it rebuilt over
        # what the limiters registered (which may have changed meanwhile)
        store = SQLiteStore(used.path)
        try:
            spec = {**store.limiters()["openai-prod"], "owner": "billing"}
            store.register("openai-prod", spec)
            status(store)
            assert store.limiters()["openai-prod"] == spec
        finally:
            store.close()


def test_a_store_url_is_printed_without_its_password() -> None:
    """``status`` never prints a credential: not in its header, its JSON or
    its errors (the real CLI, in a subprocess)."""
    import subprocess

    from redis_server import redis_server_or_skip

    def run(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ratebudget", "status", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout + done.stderr

    with redis_server_or_skip() as server:
        admin = server.client()
        try:  # a user with a password
            admin.acl_setuser(
                "user", enabled=True, passwords=["+s3cret-pw"], keys="*",
                channels="*", commands=["+@all"],
            )  # fmt: skip
        finally:
            admin.close()
        url = server.url.replace("redis://", "redis://user:s3cret-pw@")
        for argv in (["--store", url], ["--store", url, "--json"]):
            out = run(*argv)
            assert "s3cret-pw" not in out, out
            assert "user:***@" in out, out
        assert json.loads(run("--store", url, "--json"))["store"].count("***") == 1
    out = run("--store", url)  # the server is gone: an error, no password
    assert "unavailable" in out, out
    assert "s3cret-pw" not in out, out


def test_a_sqlite_url_with_two_slashes_is_refused_with_the_right_form(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ratebudget", "status", "--store", "sqlite://b.db"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done
    assert "'sqlite:///b.db'" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no file made on the way


def _tables(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sorted(name for (name,) in rows)
    finally:
        conn.close()


class TestReadOnly:
    """``status`` opens an SQLite file read-only: it never writes to it."""

    def test_a_foreign_sqlite_file_is_not_a_ratebudget_store(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "app.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
        conn.commit()
        conn.close()
        before = path.read_bytes()
        done = ratebudget("status", "--store", f"sqlite:///{path}")
        assert done.returncode == 2, done
        assert "not a ratebudget store" in done.stderr
        assert _tables(path) == ["users"]  # no rb_* tables made in it
        assert path.read_bytes() == before

    def test_a_file_that_is_not_sqlite_is_not_a_ratebudget_store(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "notes.txt"
        path.write_text("remember the milk\n" * 100)
        done = ratebudget("status", "--store", f"sqlite:///{path}")
        assert done.returncode == 2, done
        assert "not a ratebudget store" in done.stderr
        assert path.read_text() == "remember the milk\n" * 100

    def test_status_writes_nothing_to_a_store(self, used: Used) -> None:
        wal = used.path.with_name(used.path.name + "-wal")
        before = (used.path.read_bytes(), wal.read_bytes() if wal.exists() else b"")
        done = ratebudget("status", "--store", used.url, "--json")
        assert done.returncode == 0, done
        assert {item["name"] for item in json.loads(done.stdout)["limiters"]} == {
            "openai-prod",
            "anthropic-batch",
        }
        after = (used.path.read_bytes(), wal.read_bytes() if wal.exists() else b"")
        assert after == before

    def test_a_read_only_store_refuses_a_limiter(self, tmp_path: Path) -> None:
        path = tmp_path / "b.db"
        Limiter(Cap(usd=1), store=f"sqlite:///{path}", name="x").sync.record(usd=1)
        store = SQLiteStore(path, readonly=True)
        try:
            with pytest.raises(InvalidRequest, match="read-only"):
                Limiter(Cap(usd=1), store=store, name="y").sync.snapshot()
        finally:
            store.close()
        with pytest.raises(InvalidRequest, match="readonly="):
            SQLiteStore(path, readonly="yes")  # type: ignore[arg-type]


class TestNamePatterns:
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        url = f"sqlite:///{tmp_path / 'org.db'}"
        for name in ("acme/search", "acme/chat", "globex/chat"):
            Limiter(Cap(usd=5), store=url, name=name).sync.record(usd=1)
        return url

    @pytest.mark.parametrize(
        "argv", [["--name", "acme/*"], ["acme/*"], ["--name", "acme/[cs]*"]]
    )
    def test_a_pattern_picks_the_limiters(self, url: str, argv: list[str]) -> None:
        done = ratebudget("status", "--store", url, "--json", *argv)
        assert done.returncode == 0, done
        names = [item["name"] for item in json.loads(done.stdout)["limiters"]]
        assert names == ["acme/chat", "acme/search"]

    def test_a_pattern_that_matches_nothing_says_so(self, url: str) -> None:
        done = ratebudget("status", "--store", url, "--name", "initech/*")
        assert done.returncode == 2, done
        assert "no limiter matches 'initech/*'" in done.stderr
        assert "'acme/chat'" in done.stderr

    def test_name_and_option_together_are_refused(self, url: str) -> None:
        done = ratebudget("status", "--store", url, "acme/chat", "--name", "acme/*")
        assert done.returncode == 2, done
        assert "not both" in done.stderr


class TestWatch:
    """``status --watch``: the same view, again and again, while a workload
    spends (a thread here, the CLI in a subprocess)."""

    @staticmethod
    def spending(url: str, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            limiter = Limiter(Cap(usd="1000", per="day"), store=url, name="watched")
            while not stop.is_set():
                with limiter.sync.acquire(usd="0.01") as lease:
                    lease.commit(usd="0.01")
                stop.wait(0.01)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def test_json_frames_follow_the_spend(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'w.db'}"
        Limiter(Cap(usd="1000", per="day"), store=url, name="watched")
        stop = threading.Event()
        thread = self.spending(url, stop)
        try:
            done = ratebudget(
                "status", "--store", url, "--json", "--watch", "0.3", "--count", "4"
            )
        finally:
            stop.set()
            thread.join()
        assert done.returncode == 0, done.stderr
        frames = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(frames) == 4
        used = [Decimal(f["limiters"][0]["limits"][0]["used"]) for f in frames]
        assert used == sorted(used)
        assert used[-1] > used[0]

    def test_plain_frames_one_after_another(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'w.db'}"
        limiter = Limiter(Cap(usd="1000", per="day"), store=url, name="watched")
        limiter.sync.record(usd="2.5")
        done = ratebudget("status", "--store", url, "--watch", "0.05", "--count", "2")
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("ratebudget status: ") == 2
        assert done.stdout.count("$2.50") == 2

    def test_a_terminal_is_redrawn_in_place(self, tmp_path: Path) -> None:
        pytest.importorskip("rich")
        url = f"sqlite:///{tmp_path / 'w.db'}"
        Limiter(Cap(usd="1000", per="day"), store=url, name="watched")
        stop = threading.Event()
        thread = self.spending(url, stop)
        main_fd, tty = os.openpty()
        argv = ["status", "--store", url, "--watch", "0.3", "--count", "3"]
        try:
            with subprocess.Popen(
                [sys.executable, "-m", "ratebudget", *argv],
                stdout=tty,
                stderr=subprocess.PIPE,
                env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"},
            ) as proc:
                os.close(tty)
                out = b""
                while True:
                    try:
                        chunk = os.read(main_fd, 65536)
                    except OSError:  # the terminal closed with the process
                        break
                    if not chunk:
                        break
                    out += chunk
                assert proc.stderr is not None
                errors = proc.stderr.read()
                assert proc.wait(timeout=60) == 0, errors
        finally:
            stop.set()
            thread.join()
            os.close(main_fd)
        text = out.decode()
        assert "\x1b[2K" in text or "\x1b[1A" in text  # lines erased: redrawn
        amounts = re.findall(r"\$(\d+\.\d\d)", text)
        spent = [Decimal(a) for a in amounts if Decimal(a) < 1000]
        assert len(set(spent)) >= 2  # the numbers changed between frames

    def test_count_needs_watch(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'w.db'}"
        Limiter(Cap(usd="1"), store=url, name="watched")
        done = ratebudget("status", "--store", url, "--count", "2")
        assert done.returncode == 2
        assert "--count goes with --watch" in done.stderr
        done = ratebudget("status", "--store", url, "--watch", "0")
        assert done.returncode == 2
