"""``ratebudget.load``: a tree of scopes from a budgets file, and
``ratebudget status --config`` showing it (the real CLI, in a subprocess).
A mistake in the file is one ``InvalidRequest`` naming its line."""

from __future__ import annotations

import json
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

import ratebudget
from helpers import ratebudget as ratebudget_cli
from ratebudget import BudgetExceeded, Cap, InvalidRequest, Ledger, Rate

FILE = """\
# the company's LLM budgets
store = "{store}"

[{root}]
owner = "finance@acme.example"
caps = [{{ usd = "6", per = "month", alert_at = [0.5, 1.0] }}]
rates = [{{ requests = 100, per = "minute" }}]

[{root}.search]
owner = "search-lead@acme.example"
caps = [{{ usd = "4", per = "month" }}, {{ usd = "1", per = "day", soft = true }}]

[{root}.search.per_key]
max_keys = 1000
caps = [{{ usd = "0.5", per = "day" }}]
rates = [{{ requests = 10, per = "minute" }}]

[{root}.ads]
caps = [{{ usd = "3" }}]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def store_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{tmp_path / 'budgets.db'}"


def test_load_builds_the_tree_the_file_describes(
    tmp_path: Path, store_url: str
) -> None:
    root = f"acme-{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, FILE.format(store=store_url, root=root))
    seen: list[ratebudget.Alert] = []
    budgets = ratebudget.load(path, on_alert=seen.append)
    assert set(budgets) == {root, f"{root}/search", f"{root}/ads"}
    org, search = budgets[root], budgets[f"{root}/search"]
    assert budgets.root is org
    assert search.parent is org
    assert org.store.url == store_url
    assert org.limits == (
        Cap(usd="6", per="month", alert_at=(0.5, 1.0)),
        Rate(requests=100, per="minute"),
    )
    assert search.limits == (
        Cap(usd="4", per="month"),
        Cap(usd="1", per="day", soft=True),
    )
    assert budgets.owners == {
        root: "finance@acme.example",
        f"{root}/search": "search-lead@acme.example",
    }
    users = budgets.per_key(f"{root}/search")
    assert users.max_keys == 1000
    users["alice"].sync.record(usd="0.5")
    with pytest.raises(BudgetExceeded) as caught:
        users["alice"].sync.acquire(usd="0.01")
    assert caught.value.scope == f"{root}/search/alice"
    budgets[f"{root}/ads"].sync.record(usd="3")
    assert org.sync.snapshot()[0].used == Decimal("3.5")
    org.sync.flush_alerts()
    assert [(a.scope, a.threshold) for a in seen] == [(root, 0.5)]


def test_a_store_given_to_load_wins_over_the_files(tmp_path: Path) -> None:
    path = write(
        tmp_path, FILE.format(store="sqlite:////nonexistent/x.db", root="acme")
    )
    budgets = ratebudget.load(path, store="memory://")
    assert budgets.root.store.url == "memory://"
    budgets["acme/search"].sync.record(usd="1")
    assert budgets.root.sync.snapshot()[0].used == 1


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ('[acme]\ncaps = [{ usd = "1" }\n', 2, "not valid TOML"),
        ('[acme]\nowner = "x"\n\n[acme.search]\ncaps = [{ usd = "-1" }]\n', 5, "caps"),
        ('[acme]\nrates = [{ requests = 10, per = "fortnight" }]\n', 2, "rates"),
        ("[acme]\ncap = []\n", 2, "unknown setting 'cap'"),
        ('stor = "x"\n[acme]\n', 1, "unknown setting 'stor'"),
        ("[acme]\n[other]\n", 2, "exactly one top-level table"),
        ('store = "x"\n', 1, "exactly one top-level table"),
        ('[acme]\ncaps = { usd = "1" }\n', 2, "a list of tables"),
        ("[acme]\n\n[acme.search.per_key]\nmax_keys = 0\n", 4, "max_keys"),
        ("[acme]\n\n[acme.search.per_key]\nlimit = 3\n", 4, "unknown setting 'limit'"),
        ('[acme]\n\n[acme."a/b"]\n', 3, "without '/'"),
        ('shadow = "yes"\n[acme]\n', 1, "shadow"),
        ("[acme]\nowner = 3\n", 2, "owner"),
        ('[acme]\nrunaway = { action = "stop" }\n', 2, "'alert' or 'block'"),
        ('[acme]\nrunaway = { windw = "5m" }\n', 2, "runaway"),
        ('[acme]\nrunaway = "5m"\n', 2, "runaway: expected a table"),
        ("ledger = 3\n[acme]\n", 1, "ledger"),
    ],
)
def test_a_malformed_file_is_one_error_naming_its_line(
    tmp_path: Path, text: str, line: int, match: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidRequest, match=match) as caught:
        ratebudget.load(path)
    assert f"line {line}" in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_file_names_the_ledger_and_runaway_watches(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'budgets.db'}"
    path = write(
        tmp_path,
        f"""\
        store = "{store}"
        ledger = true

        [acme]
        caps = [{{ usd = "100", per = "day" }}]

        [acme.agents]
        runaway = {{ window = "1m", min_usd = "1", action = "block" }}
        """,
    )
    budgets = ratebudget.load(path)
    agents = budgets["acme/agents"]
    for _ in range(4):
        agents.sync.record(usd="0.3")
    with pytest.raises(BudgetExceeded) as caught:
        agents.sync.acquire(usd="0.1")
    assert (caught.value.reason, caught.value.scope) == ("runaway", "acme/agents")
    budgets.root.sync.acquire(usd="0.1").commit()  # acme itself is calm
    ledger = budgets.root._ledger
    assert ledger is not None
    assert ledger.sqlite_path == str(tmp_path / "budgets.db")
    reader = Ledger(store)
    try:
        entries = anyio.run(lambda: reader.entries())
    finally:
        reader.close()
    assert sorted(e.outcome for e in entries) == ["committed"] + ["recorded"] * 4


def test_a_missing_file_is_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read budgets file"):
        ratebudget.load(tmp_path / "none.toml")


def loaded(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Path, str, ratebudget.Budgets]:
    """``FILE`` on a store of ``kind``, a root of its own, and its tree."""
    url = (
        f"sqlite:///{tmp_path / 'budgets.db'}"
        if kind == "sqlite"
        else str(request.getfixturevalue("redis_url"))
    )
    root = f"acme-{uuid.uuid4().hex[:6]}"
    path = write(tmp_path, FILE.format(store=url, root=root))
    return path, root, ratebudget.load(path)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_status_config_shows_the_tree_with_owners_and_keys(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path, root, budgets = loaded(kind, tmp_path, request)
    users = budgets.per_key(f"{root}/search")
    users["alice"].sync.record(usd="0.25")
    users["bob"].sync.record(usd="0.125")
    got = ratebudget_cli("status", "--config", str(path), "--json")
    assert got.returncode == 0, got.stderr
    doc: dict[str, Any] = json.loads(got.stdout)
    rows = [(s["depth"], s["name"], s["owner"], s["per_key"]) for s in doc["scopes"]]
    assert rows == [
        (0, root, "finance@acme.example", False),
        (1, f"{root}/search", "search-lead@acme.example", False),
        (2, f"{root}/search/alice", None, True),
        (2, f"{root}/search/bob", None, True),
        (1, f"{root}/ads", None, False),
    ]
    used = {s["name"]: s["limits"][0]["used"] for s in doc["scopes"]}
    assert used[root] == used[f"{root}/search"] == "0.375"
    assert used[f"{root}/search/bob"] == "0.125"
    plain = ratebudget_cli("status", "--config", str(path), "--plain")
    assert plain.returncode == 0, plain.stderr
    assert "  " + f"{root}/search" in plain.stdout
    assert "finance@acme.example" in plain.stdout
    bad = ratebudget_cli("status", "--config", str(tmp_path / "none.toml"))
    assert bad.returncode == 2
    assert "cannot read budgets file" in bad.stderr


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_status_config_shows_the_live_limits(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Limits stored by ``update`` (a scope's, and a per-key template's)
    are the ones ``status --config`` shows, not the file's."""
    path, root, budgets = loaded(kind, tmp_path, request)
    users = budgets.per_key(f"{root}/search")
    users["alice"].sync.record(usd="0.25")
    budgets[f"{root}/ads"].sync.update(ratebudget.Cap(usd="2.5"))
    anyio.run(users.update, ratebudget.Cap(usd="0.75", per="day"))
    got = ratebudget_cli("status", "--config", str(path), "--json")
    assert got.returncode == 0, got.stderr
    doc: dict[str, Any] = json.loads(got.stdout)
    limits = {s["name"]: [x["limit"] for x in s["limits"]] for s in doc["scopes"]}
    assert limits[f"{root}/ads"] == ["2.5"]
    assert limits[f"{root}/search/alice"] == ["0.75"]
    assert limits[f"{root}/search"] == ["4", "1"]  # the file's
