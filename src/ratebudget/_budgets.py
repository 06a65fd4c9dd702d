"""``ratebudget.load``: a tree of scopes from a budgets file (TOML).

The file (see docs/organisations.md, "A budgets file")::

    store = "sqlite:///budgets.db"       # optional: load(store=...) wins
    shadow = false                       # optional

    [acme]                               # the root scope, by its name
    owner = "finance@acme.example"
    caps = [{ usd = "1000", per = "month", alert_at = [0.8, 1.0] }]
    rates = [{ requests = 1000, per = "minute" }]

    [acme.search]                        # a child scope: acme/search
    caps = [{ usd = "200", per = "month" }]
    runaway = { window = "5m", factor = 5, min_usd = "1", action = "block" }

    [acme.search.per_key]                # a scope per key, made on first use
    max_keys = 100000
    caps = [{ usd = "5", per = "day" }]

Each ``caps`` / ``rates`` entry holds the keywords of ``Cap`` / ``Rate``,
a ``runaway`` those of ``Runaway``; ``ledger`` (top level: a URL, or
``true`` for a SQLite store's own file) is the tree's usage ledger.
A mistake is one ``InvalidRequest`` naming the file and the line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidRequest
from ._limits import Cap, Rate
from ._runaway import Runaway

if TYPE_CHECKING:
    from ._alerts import AlertHandler
    from ._clock import Clock
    from ._keys import Keys
    from ._limiter import Limiter
    from .stores import Store

__all__ = ("Budgets", "ScopeSpec", "load", "read")

_TOP = {"store", "shadow", "lease_ttl", "on_store_error", "ledger"}
_SCOPE = {"owner", "caps", "rates", "per_key", "runaway"}
_PER_KEY = {"owner", "caps", "rates", "max_keys"}


@dataclass(frozen=True)
class ScopeSpec:
    """One scope of a budgets file: its full name, limits, owner, its
    per-key template (``per_key``: limits, ``max_keys``), its children."""

    name: str
    limits: tuple[Rate | Cap, ...]
    owner: str | None = None
    per_key: tuple[tuple[Rate | Cap, ...], int, str | None] | None = None
    children: tuple[ScopeSpec, ...] = ()
    runaway: Runaway | None = None

    def walk(self) -> Iterator[ScopeSpec]:
        """This scope and every descendant, parents first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class BudgetsFile:
    """What a budgets file says: its settings and its tree."""

    path: str
    root: ScopeSpec
    settings: dict[str, Any] = field(default_factory=dict)


class _Lines:
    """Where a table or a key of a TOML text is, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def _header(self, table: Sequence[str]) -> int | None:
        if not table:
            return 0
        segs = [
            rf"\s*(?:{re.escape(t)}|\"{re.escape(t)}\"|'{re.escape(t)}')\s*"
            for t in table
        ]
        pattern = re.compile(r"^\s*\[" + r"\.".join(segs) + r"\]\s*(?:#.*)?$")
        for i, line in enumerate(self.lines):
            if pattern.match(line):
                return i + 1
        return None

    def of(self, table: Sequence[str], key: str | None = None) -> int:
        """The line of ``key`` in ``table`` (or of the table's header)."""
        start = self._header(table)
        if start is None:
            return 1
        if key is None:
            return max(start, 1)
        pattern = re.compile(
            rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*="
        )
        for i in range(start, len(self.lines)):
            line = self.lines[i]
            if line.lstrip().startswith("["):
                break
            if pattern.match(line):
                return i + 1
        return max(start, 1)


def _toml(text: str, path: str) -> dict[str, Any]:
    import importlib

    try:  # tomllib on Python 3.11+; tomli (the same parser) on 3.10
        toml: Any = importlib.import_module("tomllib")
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            toml = importlib.import_module("tomli")
        except ModuleNotFoundError:
            raise InvalidRequest(
                "reading a budgets file on Python 3.10 needs tomli: "
                "pip install 'ratebudget[toml]'"
            ) from None
    try:
        got: dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as e:
        what = str(e)
        found = re.search(r"line (\d+)", what)
        line = int(found[1]) if found else max(1, len(text.splitlines()))
        raise InvalidRequest(f"{path}, line {line}: not valid TOML: {what}") from None
    return got


def read(path: str | os.PathLike[str]) -> BudgetsFile:
    """Parse and check a budgets file (nothing is built): ``InvalidRequest``
    naming the line of the first mistake."""
    where = os.fspath(path)
    try:
        with open(where, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidRequest(
            f"cannot read budgets file {where}: {e.strerror}"
        ) from None
    doc = _toml(text, where)
    lines = _Lines(text)

    def fail(table: Sequence[str], key: str | None, what: str) -> InvalidRequest:
        return InvalidRequest(f"{where}, line {lines.of(table, key)}: {what}")

    tables = [k for k, v in doc.items() if isinstance(v, dict)]
    for key in doc:
        if key not in tables and key not in _TOP:
            raise fail(
                (),
                key,
                f"unknown setting {key!r}: expected {', '.join(sorted(_TOP))} or the root scope's table",
            )
    if len(tables) != 1:
        raise fail(
            tables[1:2],
            None,
            "a budgets file holds exactly one top-level table, the root scope"
            + (f" (found {', '.join(map(repr, tables))})" if tables else ""),
        )
    settings = {k: v for k, v in doc.items() if k in _TOP}
    if "store" in settings and not isinstance(settings["store"], str):
        raise fail((), "store", "store: expected a URL string")
    if "shadow" in settings and not isinstance(settings["shadow"], bool):
        raise fail((), "shadow", "shadow: expected true or false")
    if "ledger" in settings and not isinstance(settings["ledger"], (str, bool)):
        raise fail((), "ledger", "ledger: expected a URL string, or true")

    def runaway_of(table: Sequence[str], body: dict[str, Any]) -> Runaway | None:
        value = body.get("runaway")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise fail(
                table,
                "runaway",
                'runaway: expected a table (runaway = { window = "5m", ... })',
            )
        try:
            return Runaway(**value)
        except (InvalidRequest, TypeError) as e:
            raise fail(table, "runaway", f"runaway: {e}") from None

    def limits_of(table: Sequence[str], body: dict[str, Any]) -> tuple[Rate | Cap, ...]:
        out: list[Rate | Cap] = []
        for key, kind in (("caps", Cap), ("rates", Rate)):
            entries = body.get(key, [])
            if not isinstance(entries, list) or not all(
                isinstance(x, dict) for x in entries
            ):
                raise fail(
                    table,
                    key,
                    f"{key}: expected a list of tables ({key} = [{{ ... }}])",
                )
            for entry in entries:
                kw = dict(entry)
                if (
                    kind is Cap
                    and "alert_at" in kw
                    and isinstance(kw["alert_at"], list)
                ):
                    kw["alert_at"] = tuple(kw["alert_at"])
                try:
                    out.append(kind(**kw))
                except (InvalidRequest, TypeError, ValueError) as e:
                    raise fail(table, key, f"{key}: {e}") from None
        return tuple(out)

    def owner_of(table: Sequence[str], body: dict[str, Any]) -> str | None:
        owner = body.get("owner")
        if owner is not None and not isinstance(owner, str):
            raise fail(table, "owner", "owner: expected a string")
        return owner

    def scope(table: tuple[str, ...], body: dict[str, Any]) -> ScopeSpec:
        from ._limiter import _segment

        for key in table:
            try:
                _segment(key, "scope name")
            except InvalidRequest as e:
                raise fail(table, None, str(e)) from None
        children: list[ScopeSpec] = []
        per_key = None
        for key, value in body.items():
            if key == "per_key":
                if not isinstance(value, dict):
                    raise fail(table, key, "per_key: expected a table ([...per_key])")
                sub = (*table, key)
                for k in value:
                    if k not in _PER_KEY:
                        raise fail(
                            sub,
                            k,
                            f"unknown setting {k!r} of per_key: expected {', '.join(sorted(_PER_KEY))}",
                        )
                max_keys = value.get("max_keys", 100_000)
                if type(max_keys) is not int or max_keys < 1:
                    raise fail(sub, "max_keys", "max_keys: expected a positive integer")
                per_key = (limits_of(sub, value), max_keys, owner_of(sub, value))
            elif isinstance(value, dict) and key not in _SCOPE:
                children.append(scope((*table, key), value))
            elif key not in _SCOPE:
                raise fail(
                    table,
                    key,
                    f"unknown setting {key!r} of scope {'/'.join(table)!r}: expected {', '.join(sorted(_SCOPE))}, or a child scope's table",
                )
        return ScopeSpec(
            "/".join(table),
            limits_of(table, body),
            owner_of(table, body),
            per_key,
            tuple(children),
            runaway_of(table, body),
        )

    return BudgetsFile(where, scope((tables[0],), doc[tables[0]]), settings)


class Budgets(Mapping[str, "Limiter"]):
    """The scopes a budgets file built, by full name (``budgets["acme/search"]``).

    ``root`` is the root scope; ``owners`` each scope's owner, if the file
    names one; ``per_key(name)`` the per-key scopes of scope ``name``.
    """

    def __init__(
        self,
        root: Limiter,
        scopes: dict[str, Limiter],
        keys: dict[str, Keys],
        owners: dict[str, str],
    ) -> None:
        self.root = root
        self._scopes = scopes
        self._keys = keys
        self.owners: Mapping[str, str] = owners

    def per_key(self, name: str) -> Keys:
        """The per-key scopes of scope ``name`` (``KeyError``: it has none)."""
        return self._keys[name]

    def __getitem__(self, name: str) -> Limiter:
        return self._scopes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scopes)

    def __len__(self) -> int:
        return len(self._scopes)

    def __repr__(self) -> str:
        return f"<Budgets {list(self._scopes)!r}>"


def load(
    path: str | os.PathLike[str],
    *,
    store: str | Store | None = None,
    clock: Clock | None = None,
    on_alert: AlertHandler | Sequence[AlertHandler] | None = None,
) -> Budgets:
    """Build the tree of scopes a budgets file describes.

    ``store`` (a URL or a store object) replaces the file's ``store``;
    without either, the scopes live in this process's memory. ``on_alert``
    receives the alerts of every scope (each scope's alerts also reach its
    ancestors' handlers). A mistake in the file is one ``InvalidRequest``
    naming its line.
    """
    from ._limiter import Limiter

    spec = read(path)
    settings = spec.settings
    kw: dict[str, Any] = {}
    if clock is not None:
        kw["clock"] = clock
    for key in ("lease_ttl", "on_store_error"):
        if key in settings:
            kw[key] = settings[key]
    root = Limiter(
        *spec.root.limits,
        store=store if store is not None else settings.get("store"),
        name=spec.root.name,
        on_alert=on_alert,
        shadow=settings.get("shadow", False),
        ledger=settings.get("ledger"),
        runaway=spec.root.runaway,
        **kw,
    )
    scopes: dict[str, Limiter] = {}
    keys: dict[str, Keys] = {}
    owners: dict[str, str] = {}

    def build(node: ScopeSpec, limiter: Limiter) -> None:
        scopes[node.name] = limiter
        if node.owner is not None:
            owners[node.name] = node.owner
        if node.per_key is not None:
            limits, max_keys, _owner = node.per_key
            keys[node.name] = limiter.per_key(*limits, max_keys=max_keys)
        for child in node.children:
            segment = child.name.rsplit("/", 1)[1]
            build(child, limiter.child(segment, *child.limits, runaway=child.runaway))

    build(spec.root, root)
    return Budgets(root, scopes, keys, owners)
