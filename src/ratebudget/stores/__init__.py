"""Where limiter state lives: memory (default), SQLite (one host), Redis (many).

``Limiter(..., store="sqlite:///budgets.db", name="openai-prod")`` or a store
object. ``open_store(url)`` turns a URL into a store:

- ``memory://``: this process only (the default);
- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: every
  process of one host;
- ``redis://host:6379/0``, ``rediss://...``, ``unix:///path/redis.sock``:
  every process of every host (needs the ``redis`` extra);
- ``redis+cluster://host:7000[,host:7001...]``, ``rediss+cluster://...``:
  the same on a Redis Cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidRequest
from .._plan import limits_of, spec_of
from ._base import Binding, Call, Store
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore
    from .sqlite import SQLiteStore

__all__ = (
    "Binding",
    "Call",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "limits_of",
    "open_store",
    "spec_of",
)


def __getattr__(name: str) -> Any:  # the stores import their drivers lazily
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(name)


def open_store(url: str) -> Store:
    """The store a URL names (see the module's docstring)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"store={url!r}: expected a URL or a store object")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidRequest(
            f"store={url!r}: expected a URL like 'sqlite:///budgets.db' or "
            "'redis://localhost:6379/0'"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        if rest and not rest.startswith("/"):
            # a path after two slashes would be a host: say the right form
            raise InvalidRequest(
                f"store={url!r}: the path goes after three slashes: "
                f"'sqlite:///{rest}' (relative), or four for an absolute path "
                "('sqlite:////var/lib/budgets.db')"
            )
        path = rest[1:]
        if not path:
            raise InvalidRequest(f"store={url!r}: no file; try 'sqlite:///budgets.db'")
        from .sqlite import SQLiteStore

        return SQLiteStore(path)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from .redis import RedisStore

        return RedisStore(url)
    raise InvalidRequest(
        f"store={url!r}: unknown scheme {scheme!r}; use memory://, sqlite:///, "
        "redis:// or redis+cluster://"
    )
